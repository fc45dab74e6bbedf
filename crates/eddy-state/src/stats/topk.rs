//! [`TopK`]: the `k` largest and `k` smallest values of a key, for the
//! top-k means.

use std::cmp::Ordering;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

/// Inline room for the two top-k heaps: both of the default `k = 5` fit
/// without an allocation.
const TOP_INLINE: usize = 10;

/// The `k` largest and `k` smallest values seen, as two binary heaps laid
/// out in one buffer of `2k` slots (inline for `k <= 5`): `[largest |
/// smallest]`. Each heap holds `min(count, k)` values, since both take every
/// value until full.
///
/// The heaps are kept exactly as `std::collections::BinaryHeap` keeps them
/// (same sift-up on push, same sift-down after replacing the top), so their
/// slots, and therefore the order in which the means sum them, are the same
/// bit for bit as with the two `BinaryHeap`s this replaced (tested).
#[derive(Clone, Debug)]
pub(super) struct TopK {
    pub(super) slots: SmallVec<[f64; TOP_INLINE]>,
}

/// Heap order of the `largest` heap: a min-heap, so its top is the smallest
/// of the `k` largest (`BinaryHeap<Reverse<_>>` under `total_cmp`).
fn largest_order(a: f64, b: f64) -> Ordering {
    b.total_cmp(&a)
}

/// Heap order of the `smallest` heap: a max-heap under `total_cmp`.
fn smallest_order(a: f64, b: f64) -> Ordering {
    a.total_cmp(&b)
}

/// `BinaryHeap::push`'s sift-up of the element at `pos` (the heap's top is
/// the greatest element under `order`).
fn sift_up(data: &mut [f64], mut pos: usize, order: fn(f64, f64) -> Ordering) {
    let elem = data[pos];
    while pos > 0 {
        let parent = (pos - 1) / 2;
        if order(elem, data[parent]) != Ordering::Greater {
            break;
        }
        data[pos] = data[parent];
        pos = parent;
    }
    data[pos] = elem;
}

/// `BinaryHeap`'s `sift_down_range(0, data.len())`, run when a `PeekMut`
/// that replaced the top is dropped.
fn sift_down(data: &mut [f64], order: fn(f64, f64) -> Ordering) {
    let end = data.len();
    let elem = data[0];
    let mut pos = 0;
    let mut child = 1;
    while child <= end.saturating_sub(2) {
        if order(data[child], data[child + 1]) != Ordering::Greater {
            child += 1;
        }
        if order(elem, data[child]) != Ordering::Less {
            data[pos] = elem;
            return;
        }
        data[pos] = data[child];
        pos = child;
        child = 2 * pos + 1;
    }
    if end.checked_sub(1) == Some(child) && order(elem, data[child]) == Ordering::Less {
        data[pos] = data[child];
        pos = child;
    }
    data[pos] = elem;
}

impl TopK {
    pub(super) fn new(k: usize) -> Self {
        Self { slots: SmallVec::from_elem(0.0, 2 * k) }
    }

    fn k(&self) -> usize {
        self.slots.len() / 2
    }

    /// Adds `v` to both heaps, which hold `seen` values each (capped at `k`).
    pub(super) fn push(&mut self, v: f64, seen: u64) {
        let k = self.k();
        if k == 0 {
            return;
        }
        let (largest, smallest) = self.slots.split_at_mut(k);
        let len = usize::try_from(seen).map_or(k, |n| n.min(k));
        if len < k {
            largest[len] = v;
            sift_up(&mut largest[..=len], len, largest_order);
            smallest[len] = v;
            sift_up(&mut smallest[..=len], len, smallest_order);
            return;
        }
        if v > largest[0] {
            largest[0] = v;
            sift_down(largest, largest_order);
        }
        if v < smallest[0] {
            smallest[0] = v;
            sift_down(smallest, smallest_order);
        }
    }

    /// The used slots of both heaps, for `count` values seen.
    pub(super) fn heaps(&self, count: u64) -> (&[f64], &[f64]) {
        let k = self.k();
        let len = usize::try_from(count).map_or(k, |n| n.min(k));
        (&self.slots[..len], &self.slots[k..k + len])
    }

    pub(super) fn largest_mean(&self, count: u64) -> f64 {
        let largest = self.heaps(count).0;
        let sum: f64 = largest.iter().sum();
        sum / largest.len() as f64
    }

    pub(super) fn smallest_mean(&self, count: u64) -> f64 {
        let smallest = self.heaps(count).1;
        let sum: f64 = smallest.iter().sum();
        sum / smallest.len() as f64
    }
}

/// Saved as the `2k` slots, as a sequence of `f64` (every slot, bit for
/// bit: the heaps' order is state).
impl Serialize for TopK {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.slots.as_slice().serialize(serializer)
    }
}

/// Restored inline for `k <= 5`, as [`TopK::new`] builds it. Read through a
/// `Vec` rather than `SmallVec`'s own `Deserialize`, which reserves whatever
/// length the input claims; a slot count that is odd (two heaps of `k`)
/// is an error.
impl<'de> Deserialize<'de> for TopK {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut slots = Vec::<f64>::deserialize(deserializer)?;
        if slots.len() % 2 != 0 {
            return Err(D::Error::custom(format_args!(
                "top-k heaps need an even number of slots (2k), got {}",
                slots.len()
            )));
        }
        slots.shrink_to_fit();
        Ok(Self { slots: SmallVec::from_vec(slots) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::testing::{cfg, close, run, HOUR, T0};
    use proptest::prelude::*;

    #[test]
    fn top_k_means() {
        let c = cfg(0.1, 3, HOUR);
        let s = run(&c, &[(T0, 5.0), (T0, 1.0)]);
        // Fewer than k: mean of all.
        assert_eq!(s.snapshot().top_k_max_mean, 3.0);
        assert_eq!(s.snapshot().top_k_min_mean, 3.0);
        let vals = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 8.0];
        let ev: Vec<_> = vals.iter().map(|&v| (T0, v)).collect();
        let snap = run(&c, &ev).snapshot();
        assert!(close(snap.top_k_max_mean, (9.0 + 8.0 + 8.0) / 3.0));
        assert!(close(snap.top_k_min_mean, (1.0 + 2.0 + 3.0) / 3.0));
    }

    #[test]
    fn top_k_zero_is_nan_not_panic() {
        let c = cfg(0.1, 0, HOUR);
        let snap = run(&c, &[(T0, 1.0), (T0, 2.0)]).snapshot();
        assert!(snap.top_k_max_mean.is_nan() && snap.top_k_min_mean.is_nan());
        assert_eq!(snap.count, 2);
    }

    /// The two heaps as `std::collections::BinaryHeap` keeps them, fed the
    /// same way the first version of `TopK` fed them.
    fn std_heaps(k: usize, values: &[f64]) -> (Vec<f64>, Vec<f64>) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        #[derive(Clone, Copy, PartialEq)]
        struct Total(f64);
        impl Eq for Total {}
        impl PartialOrd for Total {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for Total {
            fn cmp(&self, other: &Self) -> Ordering {
                self.0.total_cmp(&other.0)
            }
        }
        let mut largest: BinaryHeap<Reverse<Total>> = BinaryHeap::with_capacity(k);
        let mut smallest: BinaryHeap<Total> = BinaryHeap::with_capacity(k);
        for &v in values {
            if largest.len() < k {
                largest.push(Reverse(Total(v)));
            } else if let Some(mut top) = largest.peek_mut() {
                if v > top.0 .0 {
                    *top = Reverse(Total(v));
                }
            }
            if smallest.len() < k {
                smallest.push(Total(v));
            } else if let Some(mut top) = smallest.peek_mut() {
                if v < top.0 {
                    *top = Total(v);
                }
            }
        }
        (
            largest.into_vec().into_iter().map(|r| r.0 .0).collect(),
            smallest.into_vec().into_iter().map(|t| t.0).collect(),
        )
    }

    proptest! {
        #[test]
        fn top_k_slots_match_std_binary_heap(
            k in 1usize..12,
            values in proptest::collection::vec(prop_oneof![-3.0f64..3.0, Just(0.0), Just(-0.0), Just(1.0)], 0..200),
        ) {
            let c = cfg(0.1, k, HOUR);
            let s = run(&c, &values.iter().map(|&v| (T0, v)).collect::<Vec<_>>());
            let (largest, smallest) = s.top.heaps(s.count());
            let (std_largest, std_smallest) = std_heaps(k, &values);
            let bits = |x: &[f64]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(largest), bits(&std_largest));
            prop_assert_eq!(bits(smallest), bits(&std_smallest));
        }
    }
}
