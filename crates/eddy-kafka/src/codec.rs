//! The envelope of eddy's records on Kafka.
//!
//! Values are JSON (documented per topic in `docs/kafka.md`). Two headers
//! carry the dataflow's notion of time between jobs:
//!
//! * `eddy.t` on every data record of an eddy-written topic: the record's
//!   dataflow time (epoch ms, decimal). The consuming job stamps the record
//!   with this time, so a chain of jobs computes what one process computes.
//! * `eddy.wm` on a **marker**, a record without key or value: the producing
//!   job promises that every record it writes with a time below this value
//!   is already in this partition, before the marker. The value `end` closes
//!   the partition for good (end of stream). A job writes a marker to every
//!   partition of each of its output topics whenever its committed frontier
//!   advances (at most every `marker_every`); `eddy publish` writes `end`
//!   markers into `P.raw` after the dataset.
//!
//! A consumer's watermark for a partition is the largest marker it has seen
//! there, and a job's input frontier is the least of its partitions'
//! watermarks.

use rdkafka::message::{Header, Headers, OwnedHeaders};

/// Header carrying a record's dataflow time.
pub const TIME: &str = "eddy.t";
/// Header marking a watermark record.
pub const WATERMARK: &str = "eddy.wm";
/// The `eddy.wm` value that ends a partition.
pub const END: &str = "end";

/// What one consumed record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Envelope {
    /// A data record, with its dataflow time if it carries one.
    Data(Option<u64>),
    /// A watermark marker (`u64::MAX` for `end`).
    Marker(u64),
}

/// Reads the envelope headers of a record. An unreadable `eddy.t` or
/// `eddy.wm` value is reported as `Err` with the reason.
pub fn envelope<H: Headers>(headers: Option<&H>) -> Result<Envelope, String> {
    let Some(h) = headers else { return Ok(Envelope::Data(None)) };
    let mut time = None;
    for hd in h.iter() {
        let value = hd.value.unwrap_or_default();
        match hd.key {
            WATERMARK => return parse_mark(value).map(Envelope::Marker),
            TIME => time = Some(parse_u64(value).ok_or_else(|| format!("bad {TIME} header {:?}", lossy(value)))?),
            _ => {}
        }
    }
    Ok(Envelope::Data(time))
}

fn parse_mark(v: &[u8]) -> Result<u64, String> {
    if v == END.as_bytes() {
        return Ok(u64::MAX);
    }
    parse_u64(v).ok_or_else(|| format!("bad {WATERMARK} header {:?}", lossy(v)))
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

fn lossy(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// Headers of a data record at dataflow time `t`.
pub fn data_headers(t: u64) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(1).insert(Header { key: TIME, value: Some(t.to_string().as_bytes()) })
}

/// Headers of a marker for watermark `wm` (`u64::MAX`: end of stream).
pub fn marker_headers(wm: u64) -> OwnedHeaders {
    let v = if wm == u64::MAX { END.to_string() } else { wm.to_string() };
    OwnedHeaders::new_with_capacity(1).insert(Header { key: WATERMARK, value: Some(v.as_bytes()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        assert_eq!(envelope(Some(&data_headers(42))), Ok(Envelope::Data(Some(42))));
        assert_eq!(envelope(Some(&marker_headers(7))), Ok(Envelope::Marker(7)));
        assert_eq!(envelope(Some(&marker_headers(u64::MAX))), Ok(Envelope::Marker(u64::MAX)));
        assert_eq!(envelope::<OwnedHeaders>(None), Ok(Envelope::Data(None)));
        let bad = OwnedHeaders::new().insert(Header { key: TIME, value: Some("x") });
        assert!(envelope(Some(&bad)).unwrap_err().contains("eddy.t"));
    }
}
