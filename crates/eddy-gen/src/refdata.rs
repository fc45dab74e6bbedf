//! Writers for the reference-data files (CSV) and `updates.jsonl`.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::Serialize;

use crate::plan::{owner_name, site_name, Change, DeviceMeta, Plan, MODELS};
use crate::GenError;

/// RFC 4180 quoting, only when needed.
fn csv_field(s: &str) -> Cow<'_, str> {
    if s.contains([',', '"', '\r', '\n']) {
        Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(s)
    }
}

fn write_file(path: &Path, body: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) -> Result<(), GenError> {
    let run = || -> std::io::Result<()> {
        let mut w = BufWriter::new(File::create(path)?);
        body(&mut w)?;
        w.flush()
    };
    run().map_err(GenError::io(path))
}

fn csv_row(w: &mut impl Write, fields: &[&str]) -> std::io::Result<()> {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        w.write_all(csv_field(f).as_bytes())?;
    }
    w.write_all(b"\n")
}

pub(crate) fn write_devices(plan: &Plan, path: &Path) -> Result<(), GenError> {
    write_file(path, |w| {
        csv_row(w, &["device_id", "model", "site", "owner"])?;
        for (i, m) in plan.meta.iter().enumerate() {
            csv_row(w, &[&plan.ids[i], MODELS[m.model], &site_name(m.site), &owner_name(m.owner)])?;
        }
        Ok(())
    })
}

pub(crate) fn write_calibration(plan: &Plan, path: &Path) -> Result<(), GenError> {
    write_file(path, |w| {
        csv_row(w, &["device_id", "channel", "gain", "offset", "valid_from"])?;
        for r in &plan.calibration {
            let valid_from = r.valid_from.map(|t| t.to_string()).unwrap_or_default();
            csv_row(w, &[&plan.ids[r.device], r.channel, &r.gain.to_string(), &r.offset.to_string(), &valid_from])?;
        }
        Ok(())
    })
}

pub(crate) fn write_thresholds(plan: &Plan, path: &Path) -> Result<(), GenError> {
    write_file(path, |w| {
        csv_row(w, &["rule_id", "device_id", "channel", "rise_above", "fall_below"])?;
        for r in &plan.rules {
            let dev = r.device.map_or("*", |d| plan.ids[d].as_str());
            csv_row(w, &[r.rule_id, dev, r.channel, &r.rise_above.to_string(), &r.fall_below.to_string()])?;
        }
        Ok(())
    })
}

pub(crate) fn write_truth(plan: &Plan, path: &Path) -> Result<(), GenError> {
    write_file(path, |w| {
        csv_row(w, &["device_id", "channel", "gain", "offset"])?;
        for (i, (gain, offset)) in plan.truth.iter().enumerate() {
            csv_row(w, &[&plan.ids[i], "pm25", &gain.to_string(), &offset.to_string()])?;
        }
        Ok(())
    })
}

pub(crate) fn write_drift(plan: &Plan, path: &Path) -> Result<(), GenError> {
    write_file(path, |w| {
        csv_row(w, &["device_id", "channel", "ppm_per_day"])?;
        for (i, &d) in plan.drift.iter().enumerate() {
            if d != 0.0 {
                csv_row(w, &[&plan.ids[i], "co2", &d.to_string()])?;
            }
        }
        Ok(())
    })
}

/// A number written as an integer when it is whole (`400` rather than `400.0`).
struct Num(f64);

impl Serialize for Num {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.fract() == 0.0 && self.0.abs() < 1e15 {
            s.serialize_i64(self.0 as i64)
        } else {
            s.serialize_f64(self.0)
        }
    }
}

#[derive(Serialize)]
struct DeviceRow<'a> {
    device_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    site: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
}

#[derive(Serialize)]
struct CalibrationRow<'a> {
    device_id: &'a str,
    channel: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    gain: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    valid_from: Option<i64>,
}

#[derive(Serialize)]
struct RuleRow<'a> {
    rule_id: &'static str,
    device_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rise_above: Option<Num>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fall_below: Option<Num>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Row<'a> {
    Device(DeviceRow<'a>),
    Calibration(CalibrationRow<'a>),
    Rule(RuleRow<'a>),
}

#[derive(Serialize)]
struct UpdateLine<'a> {
    ts: i64,
    table: &'static str,
    op: &'static str,
    row: Row<'a>,
}

fn op(upsert: bool) -> &'static str {
    if upsert {
        "upsert"
    } else {
        "delete"
    }
}

pub(crate) fn write_updates(plan: &Plan, path: &Path) -> Result<(), GenError> {
    write_file(path, |w| {
        for u in &plan.updates {
            let line = match &u.change {
                Change::Device { device, meta } => UpdateLine {
                    ts: u.ts,
                    table: "devices",
                    op: op(meta.is_some()),
                    row: Row::Device(DeviceRow {
                        device_id: &plan.ids[*device],
                        model: meta.map(|m: DeviceMeta| MODELS[m.model]),
                        site: meta.map(|m| site_name(m.site)),
                        owner: meta.map(|m| owner_name(m.owner)),
                    }),
                },
                Change::Calibration { device, channel, value, valid_from } => UpdateLine {
                    ts: u.ts,
                    table: "calibration",
                    op: op(value.is_some()),
                    row: Row::Calibration(CalibrationRow {
                        device_id: &plan.ids[*device],
                        channel,
                        gain: value.map(|v| v.0),
                        offset: value.map(|v| v.1),
                        valid_from: *valid_from,
                    }),
                },
                Change::Rule { rule_id, device, spec } => UpdateLine {
                    ts: u.ts,
                    table: "rules",
                    op: op(spec.is_some()),
                    row: Row::Rule(RuleRow {
                        rule_id,
                        device_id: device.map_or("*", |d| plan.ids[d].as_str()),
                        channel: spec.map(|s| s.0),
                        rise_above: spec.map(|s| Num(s.1)),
                        fall_below: spec.map(|s| Num(s.2)),
                    }),
                },
            };
            serde_json::to_writer(&mut *w, &line)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting() {
        assert_eq!(csv_field("site-07"), "site-07");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }
}
