//! Interned identifiers: device ids and channel names.
//!
//! Readings are high volume and device ids repeat, so each distinct string is
//! stored once per process and records carry a small copyable handle. The
//! handle's [`Ord`] and [`Hash`] are those of the process-local index, which is
//! all an operator's state needs. Anything that crosses a process boundary
//! (timely's serialisation, files, Kafka) goes through serde, which writes the
//! string itself, so handles never leak from one process to another.
//!
//! Routing between workers must agree across processes, so a [`DeviceId`] also
//! carries [`DeviceId::route`], a stable hash of the string (FNV-1a), which
//! is the same in every process and every run.

use std::fmt;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Names per [`Segment`] of a [`Table`].
const SEGMENT: usize = 4096;

/// Names back to back, at most [`SEGMENT`] of them.
#[derive(Default)]
struct Segment {
    bytes: String,
    /// The end of each name in `bytes`.
    ends: Vec<u32>,
}

impl Segment {
    fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(&self.bytes[start..end])
    }
}

/// A string table: each distinct string gets a dense index.
///
/// The names are stored back to back in segments of [`SEGMENT`] names and
/// found through an open-addressing table of their indices, so a name costs
/// its bytes and about 12 bytes more (a million device ids: about 22 MB,
/// where a map of `Arc<str>` took about 100 MB). A full segment never
/// changes again and is shared, not copied, by every thread's [`NameCache`].
#[derive(Default)]
struct Table {
    /// The full segments: names `SEGMENT × i ..`.
    sealed: Vec<Arc<Segment>>,
    /// The segment being filled, after them.
    open: Segment,
    /// Linear probing by [`stable_hash`]: `index + 1` of the name that
    /// hashed to the slot, 0 for an empty slot. At most half full, and its
    /// length a power of two (or zero).
    slots: Vec<u32>,
}

impl Table {
    fn len(&self) -> usize {
        self.sealed.len() * SEGMENT + self.open.ends.len()
    }

    fn name(&self, idx: usize) -> &str {
        let (seg, i) = (idx / SEGMENT, idx % SEGMENT);
        let segment = self.sealed.get(seg).map_or(&self.open, |s| &**s);
        segment.get(i).expect("an interned index")
    }

    /// The slot holding `s`, or the empty slot where it would go (`Err`).
    /// The table must have a slot.
    fn find(&self, s: &str, hash: u64) -> Result<u32, usize> {
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            match self.slots[i] {
                0 => return Err(i),
                n if self.name(n as usize - 1) == s => return Ok(n - 1),
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn lookup(&self, s: &str, hash: u64) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        self.find(s, hash).ok()
    }

    fn insert(&mut self, s: &str, hash: u64) -> u32 {
        if let Some(i) = self.lookup(s, hash) {
            return i;
        }
        if 2 * (self.len() + 1) > self.slots.len() {
            self.grow();
        }
        let idx = u32::try_from(self.len()).expect("more than 2^32 interned strings");
        self.open.bytes.push_str(s);
        self.open.ends.push(u32::try_from(self.open.bytes.len()).expect("a segment's names exceed 4 GiB"));
        if let Err(slot) = self.find(s, hash) {
            self.slots[slot] = idx + 1;
        }
        if self.open.ends.len() == SEGMENT {
            let mut full = std::mem::take(&mut self.open);
            full.bytes.shrink_to_fit();
            self.sealed.push(Arc::new(full));
        }
        idx
    }

    /// Doubles the slots (at least 64) and puts every name back.
    fn grow(&mut self) {
        let len = (2 * self.slots.len()).max(64);
        self.slots = vec![0; len];
        let mask = len - 1;
        for idx in 0..self.len() {
            let mut i = stable_hash(self.name(idx).as_bytes()) as usize & mask;
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = idx as u32 + 1;
        }
    }
}

/// A thread's view of a table's names, brought up to date as new names
/// appear, so that looking a name up (for every field of every output line)
/// takes no lock and touches no cache line another worker writes. It shares
/// the table's full segments and copies only the open one's names, so a
/// thread costs a few kilobytes, not a copy of every name (with a million
/// devices, about 30 MB for each thread that writes device ids).
#[derive(Default)]
struct NameCache {
    sealed: Vec<Arc<Segment>>,
    /// A copy of the names of the table's open segment (the one after `sealed`).
    open: Segment,
}

impl NameCache {
    fn get(&self, idx: usize) -> Option<&str> {
        let (seg, i) = (idx / SEGMENT, idx % SEGMENT);
        match self.sealed.get(seg) {
            Some(s) => s.get(i),
            None if seg == self.sealed.len() => self.open.get(i),
            None => None,
        }
    }

    fn refresh(&mut self, table: &RwLock<Table>) {
        let t = table.read();
        if t.sealed.len() > self.sealed.len() {
            self.sealed.extend(t.sealed[self.sealed.len()..].iter().cloned());
            self.open.bytes.clear();
            self.open.ends.clear();
        }
        // The table's open segment only grows: this copy is a prefix of it.
        self.open.bytes.push_str(&t.open.bytes[self.open.bytes.len()..]);
        self.open.ends.extend_from_slice(&t.open.ends[self.open.ends.len()..]);
    }
}

/// Calls `f` with name `idx` of `table`, from this thread's cache.
fn with_cached<R>(
    cache: &'static std::thread::LocalKey<std::cell::RefCell<NameCache>>,
    table: &RwLock<Table>,
    idx: usize,
    f: impl FnOnce(&str) -> R,
) -> R {
    cache.with(|c| match c.try_borrow_mut() {
        Ok(mut c) => {
            if c.get(idx).is_none() {
                c.refresh(table);
            }
            f(c.get(idx).expect("interned names are never removed"))
        }
        // Re-entered from within `f`: use the shared table.
        Err(_) => f(table.read().name(idx)),
    })
}

thread_local! {
    static DEVICE_NAMES: std::cell::RefCell<NameCache> = Default::default();
    static CHANNEL_NAMES: std::cell::RefCell<NameCache> = Default::default();
}

fn intern_in(table: &RwLock<Table>, s: &str, hash: u64) -> u32 {
    if let Some(i) = table.read().lookup(s, hash) {
        return i;
    }
    table.write().insert(s, hash)
}

/// FNV-1a, 64 bit: a stable hash for routing. Not for hash tables facing
/// untrusted input; it only picks a worker.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Fold the high bits in: timely masks the low bits when the peer count is a power of two.
    h ^ (h >> 29) ^ (h >> 47)
}

fn devices() -> &'static RwLock<Table> {
    static DEVICES: OnceLock<RwLock<Table>> = OnceLock::new();
    DEVICES.get_or_init(Default::default)
}

/// An interned device id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId {
    idx: u32,
    route: u32,
}

impl DeviceId {
    /// Interns `name` and returns its handle.
    pub fn intern(name: &str) -> DeviceId {
        let hash = stable_hash(name.as_bytes());
        let idx = intern_in(devices(), name, hash);
        DeviceId { idx, route: hash as u32 }
    }

    /// The device id as a string (a new allocation: [`DeviceId::with_name`]
    /// lends it without one).
    pub fn name(&self) -> Arc<str> {
        self.with_name(|n: &str| Arc::from(n))
    }

    /// Calls `f` with the device id string, without cloning it.
    pub fn with_name<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        with_cached(&DEVICE_NAMES, devices(), self.idx as usize, f)
    }

    /// A hash of the device id string that is the same in every process:
    /// use it to route a device's records to a worker.
    pub fn route(&self) -> u64 {
        u64::from(self.route)
    }

    /// The process-local dense index (for per-worker state tables).
    pub fn index(&self) -> u32 {
        self.idx
    }

    /// Every device id interned so far, in index order (for a checkpoint:
    /// interning them in this order in a new process, before anything else
    /// after the reference data, gives every device the same index, so
    /// that orders that follow the index are the same as in the run that
    /// wrote it).
    pub fn interned() -> Vec<String> {
        let t = devices().read();
        (0..t.len()).map(|i| t.name(i).to_string()).collect()
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_name(|n| write!(f, "{n:?}"))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_name(|n| f.write_str(n))
    }
}

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.with_name(|n| s.serialize_str(n))
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(DeviceId::intern(&s))
    }
}

/// The five channels every air-quality sensor reports, in their canonical order.
pub const STANDARD_CHANNELS: [&str; 5] = ["pm25", "co2", "voc", "temp", "hum"];

fn channels() -> &'static RwLock<Table> {
    static CHANNELS: OnceLock<RwLock<Table>> = OnceLock::new();
    CHANNELS.get_or_init(|| {
        let mut t = Table::default();
        for c in STANDARD_CHANNELS {
            t.insert(c, stable_hash(c.as_bytes()));
        }
        RwLock::new(t)
    })
}

/// An interned channel name (`pm25`, `co2`, … or any other measurement).
///
/// The standard channels have fixed indices 0..5 in [`STANDARD_CHANNELS`] order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Channel(u16);

impl Channel {
    /// PM2.5, µg/m³.
    pub const PM25: Channel = Channel(0);
    /// CO₂, ppm.
    pub const CO2: Channel = Channel(1);
    /// Volatile organic compounds, ppb.
    pub const VOC: Channel = Channel(2);
    /// Temperature, °C.
    pub const TEMP: Channel = Channel(3);
    /// Relative humidity, %.
    pub const HUM: Channel = Channel(4);

    /// Interns `name` and returns its handle.
    pub fn intern(name: &str) -> Channel {
        // The standard channels have fixed handles: no lock for them.
        if let Some(i) = STANDARD_CHANNELS.iter().position(|c| *c == name) {
            return Channel(i as u16);
        }
        let idx = intern_in(channels(), name, stable_hash(name.as_bytes()));
        Channel(u16::try_from(idx).expect("more than 65536 distinct channel names"))
    }

    /// The channel name (a new allocation: [`Channel::with_name`] lends it
    /// without one).
    pub fn name(&self) -> Arc<str> {
        self.with_name(|n: &str| Arc::from(n))
    }

    /// Calls `f` with the channel name, without cloning it.
    pub fn with_name<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        with_cached(&CHANNEL_NAMES, channels(), self.0 as usize, f)
    }

    /// The process-local dense index.
    pub fn index(&self) -> u16 {
        self.0
    }

    /// Every channel name interned beyond the standard ones, in index
    /// order (see [`DeviceId::interned`]).
    pub fn interned() -> Vec<String> {
        let t = channels().read();
        (STANDARD_CHANNELS.len()..t.len()).map(|i| t.name(i).to_string()).collect()
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_name(|n| f.write_str(n))
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_name(|n| f.write_str(n))
    }
}

impl Serialize for Channel {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.with_name(|n| s.serialize_str(n))
    }
}

impl<'de> Deserialize<'de> for Channel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(Channel::intern(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_idempotent_and_round_trips() {
        let a = DeviceId::intern("dev-a");
        let b = DeviceId::intern("dev-a");
        assert_eq!(a, b);
        assert_eq!(&*a.name(), "dev-a");
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"dev-a\"");
        let back: DeviceId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn standard_channels_have_fixed_handles() {
        assert_eq!(Channel::intern("pm25"), Channel::PM25);
        assert_eq!(Channel::intern("hum"), Channel::HUM);
        assert_eq!(&*Channel::CO2.name(), "co2");
        assert_ne!(Channel::intern("ref_pm25"), Channel::PM25);
    }

    #[test]
    fn table_finds_every_name_across_growth() {
        let mut t = Table::default();
        let names: Vec<String> = (0..5_000).map(|i| format!("dev-{i:06}")).collect();
        for (i, n) in names.iter().enumerate() {
            assert_eq!(t.insert(n, stable_hash(n.as_bytes())), i as u32);
        }
        assert!(t.slots.len() >= 2 * names.len() && t.slots.len().is_power_of_two());
        for (i, n) in names.iter().enumerate() {
            assert_eq!(t.lookup(n, stable_hash(n.as_bytes())), Some(i as u32));
            assert_eq!(t.insert(n, stable_hash(n.as_bytes())), i as u32);
            assert_eq!(t.name(i), n);
        }
        assert_eq!(t.lookup("dev-x", stable_hash(b"dev-x")), None);
        // Colliding hashes still find their own names.
        let mut t = Table::default();
        assert_eq!((t.insert("a", 7), t.insert("b", 7), t.insert("", 7)), (0, 1, 2));
        assert_eq!(
            (t.lookup("a", 7), t.lookup("b", 7), t.lookup("", 7), t.lookup("c", 7)),
            (Some(0), Some(1), Some(2), None)
        );
    }

    #[test]
    fn caches_share_full_segments_and_follow_the_open_one() {
        let table = RwLock::new(Table::default());
        let names: Vec<String> = (0..3 * SEGMENT + 10).map(|i| format!("d{i}")).collect();
        let mut cache = NameCache::default();
        let mut at = 0;
        // Refresh at points inside, at and across segment boundaries.
        for upto in [5, SEGMENT - 1, SEGMENT, SEGMENT + 3, 3 * SEGMENT + 2, names.len()] {
            for n in &names[at..upto] {
                table.write().insert(n, stable_hash(n.as_bytes()));
            }
            at = upto;
            cache.refresh(&table);
            for (i, n) in names[..upto].iter().enumerate() {
                assert_eq!(cache.get(i), Some(n.as_str()), "name {i} after {upto}");
            }
            assert_eq!(cache.get(upto), None);
        }
        let t = table.read();
        assert_eq!(t.sealed.len(), 3);
        assert!(t.sealed.iter().zip(&cache.sealed).all(|(a, b)| Arc::ptr_eq(a, b)), "not shared");
        assert!(cache.open.ends.len() < SEGMENT);
        for (i, n) in names.iter().enumerate() {
            assert_eq!(t.name(i), n);
            assert_eq!(t.lookup(n, stable_hash(n.as_bytes())), Some(i as u32));
        }
    }

    #[test]
    fn route_is_a_stable_function_of_the_string() {
        // The route must not depend on interning order or process.
        assert_eq!(DeviceId::intern("x-1").route(), u64::from(stable_hash(b"x-1") as u32));
        assert_eq!(stable_hash(b""), stable_hash(b""));
        assert_ne!(stable_hash(b"a"), stable_hash(b"b"));
    }
}
