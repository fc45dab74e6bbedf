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

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A string table: each distinct string gets a dense index.
#[derive(Default)]
struct Table {
    index: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

impl Table {
    fn lookup(&self, s: &str) -> Option<u32> {
        self.index.get(s).copied()
    }

    fn insert(&mut self, s: &str) -> u32 {
        if let Some(i) = self.index.get(s) {
            return *i;
        }
        let idx = u32::try_from(self.names.len()).expect("more than 2^32 interned strings");
        let name: Arc<str> = Arc::from(s);
        self.names.push(Arc::clone(&name));
        self.index.insert(name, idx);
        idx
    }
}

/// A thread's copy of a table's names, appended to as new names appear, so
/// that looking a name up (for every field of every output line) takes no
/// lock and touches no cache line another worker writes.
#[derive(Default)]
struct NameCache {
    bytes: String,
    ends: Vec<usize>,
}

impl NameCache {
    fn get(&self, idx: usize) -> Option<&str> {
        let end = *self.ends.get(idx)?;
        let start = if idx == 0 { 0 } else { self.ends[idx - 1] };
        Some(&self.bytes[start..end])
    }

    fn refresh(&mut self, table: &RwLock<Table>) {
        let t = table.read();
        for n in &t.names[self.ends.len()..] {
            self.bytes.push_str(n);
            self.ends.push(self.bytes.len());
        }
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
        Err(_) => f(&table.read().names[idx]),
    })
}

thread_local! {
    static DEVICE_NAMES: std::cell::RefCell<NameCache> = Default::default();
    static CHANNEL_NAMES: std::cell::RefCell<NameCache> = Default::default();
}

fn intern_in(table: &RwLock<Table>, s: &str) -> u32 {
    if let Some(i) = table.read().lookup(s) {
        return i;
    }
    table.write().insert(s)
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
        let idx = intern_in(devices(), name);
        DeviceId { idx, route: stable_hash(name.as_bytes()) as u32 }
    }

    /// The device id as a string.
    pub fn name(&self) -> Arc<str> {
        Arc::clone(&devices().read().names[self.idx as usize])
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
            t.insert(c);
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
        let idx = intern_in(channels(), name);
        Channel(u16::try_from(idx).expect("more than 65536 distinct channel names"))
    }

    /// The channel name.
    pub fn name(&self) -> Arc<str> {
        Arc::clone(&channels().read().names[self.0 as usize])
    }

    /// Calls `f` with the channel name, without cloning it.
    pub fn with_name<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        with_cached(&CHANNEL_NAMES, channels(), self.0 as usize, f)
    }

    /// The process-local dense index.
    pub fn index(&self) -> u16 {
        self.0
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
    fn route_is_a_stable_function_of_the_string() {
        // The route must not depend on interning order or process.
        assert_eq!(DeviceId::intern("x-1").route(), u64::from(stable_hash(b"x-1") as u32));
        assert_eq!(stable_hash(b""), stable_hash(b""));
        assert_ne!(stable_hash(b"a"), stable_hash(b"b"));
    }
}
