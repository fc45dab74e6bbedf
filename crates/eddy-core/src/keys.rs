//! Key groups: where keyed records and keyed state live.
//!
//! Keyed state (statistics, open windows, alerts, sensor-health, a user
//! job's per-device state) is split into a fixed number of **key groups**
//! by the key's stable hash ([`DeviceId::route`] for a device). Key groups,
//! not keys, are placed on workers: worker `i` of `p` owns a contiguous
//! range of them ([`Placement::groups_of`]). Every exchange by key in eddy
//! sends a record to the worker that owns its key group, so a key's records
//! and its state always meet on one worker.
//!
//! The number of key groups is fixed when a job first starts (default
//! [`KeyGroups::DEFAULT`]) and recorded in its checkpoints. A restart at
//! another worker count moves whole key groups: a restoring worker reads
//! only the saved parts of the workers whose ranges overlap its own. The
//! number of workers can grow up to the number of key groups.
//!
//! The key group of a hash `h` is `fmix32(h mod 2^32) * n / 2^32`, where
//! `fmix32` is MurmurHash3's 32-bit finalizer (FNV-1a's high bits are poorly
//! mixed for similar ids, and the group takes the high bits, so that groups
//! stay balanced for any `n`); worker `i` of `p` owns the groups `g` with
//! `g * p / n == i`.
//!
//! The runner of a job [`install`]s its key groups on each worker thread
//! before building the dataflow; [`Placement::current`] reads them (the
//! default when none is installed).

use std::cell::Cell;
use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::ids::DeviceId;

/// The number of key groups of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct KeyGroups(u32);

impl KeyGroups {
    /// The default: 256.
    pub const DEFAULT: KeyGroups = KeyGroups(256);
    /// The largest number allowed: 32,768 (as Flink's maximum parallelism).
    pub const MAX: u32 = 1 << 15;

    /// `n` key groups, between 1 and [`KeyGroups::MAX`].
    pub fn new(n: u32) -> Result<KeyGroups, KeyGroupsError> {
        if n == 0 || n > Self::MAX {
            return Err(KeyGroupsError::OutOfRange(n));
        }
        Ok(KeyGroups(n))
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The key group of a key's stable hash.
    pub fn of_hash(self, hash: u64) -> u32 {
        ((u64::from(fmix32(hash as u32)) * u64::from(self.0)) >> 32) as u32
    }

    /// The key group of `device`.
    pub fn of(self, device: DeviceId) -> u32 {
        self.of_hash(device.route())
    }

    /// Checks that `peers` workers can each own at least one key group.
    pub fn check_workers(self, peers: usize) -> Result<(), KeyGroupsError> {
        if peers as u64 > u64::from(self.0) {
            return Err(KeyGroupsError::TooManyWorkers { workers: peers, groups: self.0 });
        }
        Ok(())
    }
}

impl Default for KeyGroups {
    fn default() -> Self {
        KeyGroups::DEFAULT
    }
}

impl fmt::Display for KeyGroups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl TryFrom<u32> for KeyGroups {
    type Error = KeyGroupsError;
    fn try_from(n: u32) -> Result<Self, Self::Error> {
        KeyGroups::new(n)
    }
}

impl From<KeyGroups> for u32 {
    fn from(k: KeyGroups) -> u32 {
        k.0
    }
}

impl std::str::FromStr for KeyGroups {
    type Err = KeyGroupsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n = s.trim().parse::<u32>().map_err(|_| KeyGroupsError::NotANumber(s.to_string()))?;
        KeyGroups::new(n)
    }
}

/// A bad number of key groups, or too many workers for them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyGroupsError {
    /// Zero, or more than [`KeyGroups::MAX`].
    #[error("{0} key groups: the number must be between 1 and 32768")]
    OutOfRange(u32),
    /// Not a whole number.
    #[error("key groups {0:?}: not a whole number")]
    NotANumber(String),
    /// More workers than key groups: some would own none.
    #[error("{workers} workers but {groups} key groups: each worker needs a key group of its own (run fewer workers, or start the job afresh with more key groups)")]
    TooManyWorkers {
        /// Workers of the run (`-w` times `-n`).
        workers: usize,
        /// Key groups of the job.
        groups: u32,
    },
}

/// Where keys go in a run of `peers` workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The job's key groups.
    pub groups: KeyGroups,
    /// The number of workers.
    pub peers: usize,
}

impl Placement {
    /// The placement over `peers` workers of the key groups installed on
    /// this thread (the default when none are).
    pub fn current(peers: usize) -> Placement {
        Placement { groups: installed(), peers: peers.max(1) }
    }

    /// The worker that owns key group `group`.
    pub fn worker_of_group(&self, group: u32) -> usize {
        (u64::from(group) * self.peers as u64 / u64::from(self.groups.0)) as usize
    }

    /// The worker that owns the key with stable hash `hash`. As an exchange
    /// function's value it sends the record to that worker (timely takes it
    /// modulo the number of workers).
    pub fn worker_of_hash(&self, hash: u64) -> u64 {
        self.worker_of_group(self.groups.of_hash(hash)) as u64
    }

    /// The worker that owns `device`.
    pub fn worker(&self, device: DeviceId) -> u64 {
        self.worker_of_hash(device.route())
    }

    /// The key groups worker `index` owns: a contiguous range.
    pub fn groups_of(&self, index: usize) -> Range<u32> {
        let n = u64::from(self.groups.0);
        let p = self.peers as u64;
        let first = |i: u64| (i * n).div_ceil(p) as u32;
        first(index as u64)..first(index as u64 + 1)
    }

    /// True when worker `index` of this placement owns a key group that
    /// worker `other` of `other_peers` (same key groups) owned.
    pub fn overlaps(&self, index: usize, other: usize, other_peers: usize) -> bool {
        let mine = self.groups_of(index);
        let theirs = Placement { groups: self.groups, peers: other_peers.max(1) }.groups_of(other);
        mine.start < theirs.end && theirs.start < mine.end
    }
}

/// MurmurHash3's 32-bit finalizer: every input bit affects every output bit.
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

thread_local! {
    static INSTALLED: Cell<KeyGroups> = const { Cell::new(KeyGroups::DEFAULT) };
}

/// Sets this thread's key groups: a job's runner calls it on each worker
/// thread before it builds the dataflow.
pub fn install(groups: KeyGroups) {
    INSTALLED.with(|k| k.set(groups));
}

/// This thread's key groups ([`KeyGroups::DEFAULT`] unless [`install`]ed).
pub fn installed() -> KeyGroups {
    INSTALLED.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_has_one_owner_and_ranges_partition_the_groups() {
        for n in [1u32, 2, 3, 7, 256, 1000] {
            let groups = KeyGroups::new(n).unwrap();
            for peers in 1..=n.min(9) as usize {
                let place = Placement { groups, peers };
                let mut covered = 0;
                for i in 0..peers {
                    let r = place.groups_of(i);
                    assert!(!r.is_empty(), "worker {i} of {peers} owns no group of {n}");
                    for g in r.clone() {
                        assert_eq!(place.worker_of_group(g), i, "group {g} of {n}, {peers} workers");
                    }
                    assert_eq!(r.start, covered);
                    covered = r.end;
                }
                assert_eq!(covered, n);
            }
        }
    }

    #[test]
    fn devices_spread_over_groups_and_workers() {
        let place = Placement { groups: KeyGroups::DEFAULT, peers: 3 };
        let mut per_worker = [0u32; 3];
        let mut groups = std::collections::BTreeSet::new();
        for i in 0..3000 {
            let d = DeviceId::intern(&format!("keys-test-{i}"));
            per_worker[place.worker(d) as usize] += 1;
            groups.insert(place.groups.of(d));
        }
        assert!(per_worker.iter().all(|c| (800..1200).contains(c)), "{per_worker:?}");
        assert_eq!(groups.len(), 256, "every group gets devices");
        // The formula of the docs, pinned: a change would move saved state.
        assert_eq!(fmix32(0), 0);
        assert_eq!(fmix32(1), 0x514e_28b7);
        assert_eq!(KeyGroups::DEFAULT.of_hash(1), 0x51);
    }

    #[test]
    fn overlaps_follow_the_ranges() {
        let groups = KeyGroups::new(256).unwrap();
        let two = Placement { groups, peers: 2 };
        // At -w 4, each worker's groups lie within one worker's of -w 2.
        let four = Placement { groups, peers: 4 };
        let read: Vec<Vec<usize>> = (0..4).map(|i| (0..2).filter(|o| four.overlaps(i, *o, 2)).collect()).collect();
        assert_eq!(read, [vec![0], vec![0], vec![1], vec![1]]);
        // At -w 3 the middle worker straddles both.
        let three = Placement { groups, peers: 3 };
        assert!(three.overlaps(1, 0, 2) && three.overlaps(1, 1, 2));
        assert!(!three.overlaps(0, 1, 2));
        assert!(two.overlaps(0, 0, 1) && two.overlaps(1, 0, 1));
    }

    #[test]
    fn bad_numbers_say_why() {
        assert_eq!(KeyGroups::new(0), Err(KeyGroupsError::OutOfRange(0)));
        assert!("40000".parse::<KeyGroups>().is_err());
        assert!("x".parse::<KeyGroups>().unwrap_err().to_string().contains("not a whole number"));
        let e = KeyGroups::new(4).unwrap().check_workers(6).unwrap_err().to_string();
        assert!(e.contains("6 workers but 4 key groups"), "{e}");
        assert_eq!(serde_json::from_str::<KeyGroups>("128").unwrap().get(), 128);
        assert!(serde_json::from_str::<KeyGroups>("0").is_err());
    }
}
