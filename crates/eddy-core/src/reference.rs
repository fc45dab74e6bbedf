//! Reference data: devices, calibration and rules.
//!
//! Reference data changes while jobs run (a recalibration, a new device, a
//! new threshold), so it is held in differential arrangements. This module is
//! the pure part: the row types that live in those arrangements, the parsing
//! of table rows (CSV files, `updates.jsonl`, reference topics), and
//! [`RefState`], which turns upserts and deletes into differential updates
//! (+1 for a new row, −1 for the row it replaces).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{Channel, DeviceId};
use crate::reading::{Context, ContextRow};
use crate::spec::check_rule;

/// An `f64` with a total order, so it can be part of a differential record.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Num(pub f64);

impl PartialEq for Num {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0).is_eq()
    }
}
impl Eq for Num {}
impl PartialOrd for Num {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Num {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}
impl Hash for Num {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}

/// `valid_from` of a calibration that is valid since forever.
pub const FOREVER: i64 = i64::MIN;

/// One version of a channel's calibration: `calibrated = gain × raw + offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Calibration {
    /// The channel it applies to.
    pub channel: Channel,
    /// Event time from which this version applies ([`FOREVER`] when always).
    pub valid_from: i64,
    /// Multiplier.
    pub gain: Num,
    /// Added after the gain.
    pub offset: Num,
}

impl Calibration {
    /// Applies the calibration to a raw value.
    pub fn apply(&self, raw: f64) -> f64 {
        self.gain.0 * raw + self.offset.0
    }
}

/// A value in the per-device reference arrangement (keyed by [`DeviceId`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DeviceRef {
    /// The device's context columns.
    Context(Context),
    /// One calibration version of one channel.
    Calibration(Calibration),
}

/// Which devices a rule applies to: the key of the rules arrangement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RuleScope {
    /// `device_id = "*"`: every device.
    All,
    /// One device.
    Device(DeviceId),
}

impl RuleScope {
    /// Parses a `device_id` column: `*` or a device id.
    pub fn parse(device_id: &str) -> RuleScope {
        if device_id == "*" {
            RuleScope::All
        } else {
            RuleScope::Device(DeviceId::intern(device_id))
        }
    }
}

/// A threshold rule with hysteresis (the value in the rules arrangement).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// The rule's id.
    pub rule_id: Arc<str>,
    /// The watched channel.
    pub channel: Channel,
    /// Start an event above this.
    pub rise_above: Num,
    /// End an event below this.
    pub fall_below: Num,
}

/// The reference tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// `devices.csv`: device context.
    Devices,
    /// `calibration.csv`: calibration versions.
    Calibration,
    /// `thresholds.csv`: user rules.
    Rules,
}

/// A change to a reference table.
#[derive(Clone, Debug, PartialEq)]
pub enum RefChange {
    /// Insert or replace a device's context.
    UpsertDevice(DeviceId, Context),
    /// Remove a device's context.
    DeleteDevice(DeviceId),
    /// Insert or replace the calibration version (device, channel, valid_from).
    UpsertCalibration(DeviceId, Calibration),
    /// Remove one version (`Some(valid_from)`) or every version (`None`) of a channel's calibration.
    DeleteCalibration(DeviceId, Channel, Option<i64>),
    /// Insert or replace the rule (rule_id, scope).
    UpsertRule(RuleScope, Rule),
    /// Remove the rule (rule_id, scope).
    DeleteRule(RuleScope, Arc<str>),
}

/// A reference change at an event time: `ts = 0` for the base tables.
#[derive(Clone, Debug, PartialEq)]
pub struct RefUpdate {
    /// When it applies (epoch ms): readings with `ts >= self.ts` see it.
    pub ts: i64,
    /// The change.
    pub change: RefChange,
}

impl RefUpdate {
    /// Parses an update object, `{"ts","table","op","row"}`: a line of
    /// `updates.jsonl`, or the value of a reference-topic record. The error
    /// names the field and the reason.
    pub fn from_json(v: &Value) -> Result<RefUpdate, String> {
        let obj = v.as_object().ok_or("expected a JSON object")?;
        let ts = match obj.get("ts") {
            Some(Value::Number(n)) => n
                .as_i64()
                .filter(|t| *t >= 0)
                .ok_or_else(|| format!("field `ts` must be a non-negative integer of epoch milliseconds, found {n}"))?,
            Some(other) => return Err(format!("field `ts` must be an integer of epoch milliseconds, found {other}")),
            None => return Err("field `ts` is missing".into()),
        };
        let table = match obj.get("table").and_then(Value::as_str) {
            Some("devices") => Table::Devices,
            Some("calibration") => Table::Calibration,
            Some("rules") => Table::Rules,
            Some(other) => {
                return Err(format!("field `table` must be \"devices\", \"calibration\" or \"rules\", found {other:?}"))
            }
            None => return Err("field `table` is missing or not a string".into()),
        };
        let delete = match obj.get("op").and_then(Value::as_str) {
            Some("upsert") => false,
            Some("delete") => true,
            Some(other) => return Err(format!("field `op` must be \"upsert\" or \"delete\", found {other:?}")),
            None => return Err("field `op` is missing or not a string".into()),
        };
        let row: Row = match obj.get("row") {
            Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            _ => return Err("field `row` must be an object".into()),
        };
        let change = RefChange::from_row(table, delete, &row, ts).map_err(|e| format!("row.{e}"))?;
        Ok(RefUpdate { ts, change })
    }

    /// The update as an object [`RefUpdate::from_json`] reads back, with its
    /// table and its primary key (a JSON array of the key fields). Every
    /// calibration row carries its `valid_from` explicitly.
    pub fn to_json(&self) -> (Table, String, Value) {
        use serde_json::json;
        let (table, op, key, row) = match &self.change {
            RefChange::UpsertDevice(d, ctx) => {
                let mut row = serde_json::Map::new();
                row.insert("device_id".into(), json!(d.name()));
                for (k, v) in ctx.iter() {
                    row.insert(k.clone(), json!(v));
                }
                (Table::Devices, "upsert", json!([d.name()]), Value::Object(row))
            }
            RefChange::DeleteDevice(d) => (Table::Devices, "delete", json!([d.name()]), json!({"device_id": d.name()})),
            RefChange::UpsertCalibration(d, c) => (
                Table::Calibration,
                "upsert",
                json!([d.name(), c.channel.name(), c.valid_from]),
                json!({"device_id": d.name(), "channel": c.channel.name(), "valid_from": c.valid_from,
                       "gain": c.gain.0, "offset": c.offset.0}),
            ),
            RefChange::DeleteCalibration(d, ch, vf) => {
                let mut row = json!({"device_id": d.name(), "channel": ch.name()});
                if let Some(vf) = vf {
                    row["valid_from"] = json!(vf);
                }
                (Table::Calibration, "delete", json!([d.name(), ch.name(), vf]), row)
            }
            RefChange::UpsertRule(scope, r) => {
                let dev = scope_name(scope);
                (
                    Table::Rules,
                    "upsert",
                    json!([&*r.rule_id, dev]),
                    json!({"rule_id": &*r.rule_id, "device_id": dev, "channel": r.channel.name(),
                           "rise_above": r.rise_above.0, "fall_below": r.fall_below.0}),
                )
            }
            RefChange::DeleteRule(scope, id) => {
                let dev = scope_name(scope);
                (Table::Rules, "delete", json!([&**id, dev]), json!({"rule_id": &**id, "device_id": dev}))
            }
        };
        (table, key.to_string(), json!({"ts": self.ts, "table": table, "op": op, "row": row}))
    }
}

fn scope_name(scope: &RuleScope) -> String {
    match scope {
        RuleScope::All => "*".to_string(),
        RuleScope::Device(d) => d.name().to_string(),
    }
}

/// A record of the reference collections, with the collection it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RefRecord {
    /// A record of the per-device collection.
    Device(DeviceId, DeviceRef),
    /// A record of the rules collection.
    Rule(RuleScope, Rule),
}

/// A bad field in a reference row.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct RowError {
    /// The field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn row_err(field: &str, message: impl Into<String>) -> RowError {
    RowError { field: field.to_string(), message: message.into() }
}

/// A table row: field names and JSON values. CSV cells arrive as strings;
/// numeric fields accept numbers or numeric strings.
pub type Row = Vec<(String, Value)>;

fn get<'a>(row: &'a Row, field: &str) -> Option<&'a Value> {
    row.iter().find(|(k, _)| k == field).map(|(_, v)| v)
}

fn req_str(row: &Row, field: &str) -> Result<String, RowError> {
    match get(row, field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(row_err(field, "is missing or empty")),
        Some(other) => Err(row_err(field, format!("must be a string, found {other}"))),
    }
}

fn req_num(row: &Row, field: &str) -> Result<f64, RowError> {
    match get(row, field) {
        Some(Value::Number(n)) => n.as_f64().ok_or_else(|| row_err(field, "is not a finite number")),
        Some(Value::String(s)) if !s.trim().is_empty() => match s.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(x),
            _ => Err(row_err(field, format!("must be a number, found {s:?}"))),
        },
        None | Some(Value::Null) | Some(Value::String(_)) => Err(row_err(field, "is missing or empty")),
        Some(other) => Err(row_err(field, format!("must be a number, found {other}"))),
    }
}

fn opt_ts(row: &Row, field: &str) -> Result<Option<i64>, RowError> {
    match get(row, field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| row_err(field, format!("must be an integer of epoch milliseconds, found {s:?}"))),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| row_err(field, format!("must be an integer of epoch milliseconds, found {n}"))),
        Some(other) => Err(row_err(field, format!("must be an integer of epoch milliseconds, found {other}"))),
    }
}

/// The context columns of a devices row (one is kept per device for the
/// whole run: see [`ContextRow`]).
fn context_of(row: &Row) -> Context {
    Arc::new(ContextRow::new(row.iter().filter(|(k, _)| k != "device_id").map(|(k, v)| {
        let s = match v {
            Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
            Value::Null => std::borrow::Cow::Borrowed(""),
            other => std::borrow::Cow::Owned(other.to_string()),
        };
        (k.as_str(), s)
    })))
}

impl RefChange {
    /// Parses a row of `table`. `delete` selects a delete (only key fields are
    /// read). `default_valid_from` is the `valid_from` of a calibration row that
    /// gives none: [`FOREVER`] for `calibration.csv`, the update's `ts` for an update.
    pub fn from_row(table: Table, delete: bool, row: &Row, default_valid_from: i64) -> Result<RefChange, RowError> {
        match table {
            Table::Devices => {
                let device = DeviceId::intern(&req_str(row, "device_id")?);
                Ok(if delete {
                    RefChange::DeleteDevice(device)
                } else {
                    RefChange::UpsertDevice(device, context_of(row))
                })
            }
            Table::Calibration => {
                let device = DeviceId::intern(&req_str(row, "device_id")?);
                let channel = Channel::intern(&req_str(row, "channel")?);
                let valid_from = opt_ts(row, "valid_from")?;
                if delete {
                    return Ok(RefChange::DeleteCalibration(device, channel, valid_from));
                }
                let gain = req_num(row, "gain")?;
                let offset = req_num(row, "offset")?;
                Ok(RefChange::UpsertCalibration(
                    device,
                    Calibration {
                        channel,
                        valid_from: valid_from.unwrap_or(default_valid_from),
                        gain: Num(gain),
                        offset: Num(offset),
                    },
                ))
            }
            Table::Rules => {
                let rule_id: Arc<str> = Arc::from(req_str(row, "rule_id")?);
                let scope = match get(row, "device_id") {
                    None | Some(Value::Null) => RuleScope::All,
                    Some(_) => RuleScope::parse(&req_str(row, "device_id")?),
                };
                if delete {
                    return Ok(RefChange::DeleteRule(scope, rule_id));
                }
                let channel = Channel::intern(&req_str(row, "channel")?);
                let rise_above = req_num(row, "rise_above")?;
                let fall_below = req_num(row, "fall_below")?;
                check_rule(rise_above, fall_below).map_err(|m| row_err("fall_below", m))?;
                Ok(RefChange::UpsertRule(
                    scope,
                    Rule { rule_id, channel, rise_above: Num(rise_above), fall_below: Num(fall_below) },
                ))
            }
        }
    }
}

/// The current reference tables, turning changes into differential updates.
///
/// A source that reads reference changes keeps one of these so that an
/// upsert can retract the row it replaces.
#[derive(Clone, Debug, Default)]
pub struct RefState {
    /// Each device's context, by [`DeviceId::index`]: 8 bytes a device
    /// (a `BTreeMap` took 27 per device at a million devices).
    devices: Vec<Option<Context>>,
    /// Each version's gain and offset, by (device, channel, valid_from): the
    /// rest of its [`Calibration`] is the key (16 bytes less per version,
    /// with most devices calibrated).
    calibration: BTreeMap<(DeviceId, Channel, i64), (Num, Num)>,
    rules: BTreeMap<(RuleScope, Arc<str>), Rule>,
}

impl RefState {
    /// Applies `change`, pushing the updates it makes to the collections.
    pub fn apply(&mut self, change: RefChange, out: &mut Vec<(RefRecord, isize)>) {
        match change {
            RefChange::UpsertDevice(d, ctx) => {
                let i = d.index() as usize;
                if self.devices.len() <= i {
                    self.devices.resize(i + 1, None);
                }
                if let Some(old) = self.devices[i].replace(ctx.clone()) {
                    out.push((RefRecord::Device(d, DeviceRef::Context(old)), -1));
                }
                out.push((RefRecord::Device(d, DeviceRef::Context(ctx)), 1));
            }
            RefChange::DeleteDevice(d) => {
                if let Some(old) = self.devices.get_mut(d.index() as usize).and_then(Option::take) {
                    out.push((RefRecord::Device(d, DeviceRef::Context(old)), -1));
                }
            }
            RefChange::UpsertCalibration(d, cal) => {
                let key = (d, cal.channel, cal.valid_from);
                if let Some(old) = self.calibration.insert(key, (cal.gain, cal.offset)) {
                    out.push((RefRecord::Device(d, DeviceRef::Calibration(calibration(key, old))), -1));
                }
                out.push((RefRecord::Device(d, DeviceRef::Calibration(cal)), 1));
            }
            RefChange::DeleteCalibration(d, c, vf) => {
                let keys: Vec<_> = match vf {
                    Some(v) => vec![(d, c, v)],
                    None => self.calibration.range((d, c, i64::MIN)..=(d, c, i64::MAX)).map(|(k, _)| *k).collect(),
                };
                for k in keys {
                    if let Some(old) = self.calibration.remove(&k) {
                        out.push((RefRecord::Device(d, DeviceRef::Calibration(calibration(k, old))), -1));
                    }
                }
            }
            RefChange::UpsertRule(scope, rule) => {
                if let Some(old) = self.rules.insert((scope, rule.rule_id.clone()), rule.clone()) {
                    out.push((RefRecord::Rule(scope, old), -1));
                }
                out.push((RefRecord::Rule(scope, rule), 1));
            }
            RefChange::DeleteRule(scope, id) => {
                if let Some(old) = self.rules.remove(&(scope, id)) {
                    out.push((RefRecord::Rule(scope, old), -1));
                }
            }
        }
    }
}

/// The calibration version kept in [`RefState`] under `key`.
fn calibration((_, channel, valid_from): (DeviceId, Channel, i64), (gain, offset): (Num, Num)) -> Calibration {
    Calibration { channel, valid_from, gain, offset }
}

/// Picks the calibration for `channel` at event time `ts` among the versions
/// present: the one with the largest `valid_from <= ts`.
pub fn calibration_as_of<'a>(
    versions: impl IntoIterator<Item = &'a Calibration>,
    channel: Channel,
    ts: i64,
) -> Option<&'a Calibration> {
    versions.into_iter().filter(|c| c.channel == channel && c.valid_from <= ts).max_by_key(|c| c.valid_from)
}

/// The rules in force for a device: device-specific rules replace a wildcard
/// rule with the same `rule_id`. Sorted by `rule_id`.
pub fn effective_rules(device_rules: &[Rule], wildcard_rules: &[Rule]) -> Vec<Rule> {
    let mut by_id: BTreeMap<Arc<str>, Rule> = BTreeMap::new();
    for r in wildcard_rules {
        by_id.insert(r.rule_id.clone(), r.clone());
    }
    for r in device_rules {
        by_id.insert(r.rule_id.clone(), r.clone());
    }
    by_id.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(fields: &[(&str, Value)]) -> Row {
        fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn upsert_retracts_the_replaced_row() {
        let mut s = RefState::default();
        let mut out = Vec::new();
        let d = DeviceId::intern("r-1");
        let cal = |g| Calibration { channel: Channel::PM25, valid_from: FOREVER, gain: Num(g), offset: Num(0.0) };
        s.apply(RefChange::UpsertCalibration(d, cal(1.0)), &mut out);
        s.apply(RefChange::UpsertCalibration(d, cal(2.0)), &mut out);
        s.apply(RefChange::DeleteCalibration(d, Channel::PM25, None), &mut out);
        let diffs: Vec<isize> = out.iter().map(|(_, r)| *r).collect();
        assert_eq!(diffs, vec![1, -1, 1, -1]);
        // Each retraction is exactly the version it replaces or deletes.
        let rec = |g| RefRecord::Device(d, DeviceRef::Calibration(cal(g)));
        let recs: Vec<RefRecord> = out.into_iter().map(|(r, _)| r).collect();
        assert_eq!(recs, vec![rec(1.0), rec(1.0), rec(2.0), rec(2.0)]);

        // A version with its own valid_from, deleted by it; another channel's stays.
        let mut out = Vec::new();
        let v = |ch, vf, g| Calibration { channel: ch, valid_from: vf, gain: Num(g), offset: Num(-1.5) };
        s.apply(RefChange::UpsertCalibration(d, v(Channel::CO2, 100, 3.0)), &mut out);
        s.apply(RefChange::UpsertCalibration(d, v(Channel::VOC, 100, 4.0)), &mut out);
        s.apply(RefChange::DeleteCalibration(d, Channel::CO2, Some(100)), &mut out);
        s.apply(RefChange::DeleteCalibration(d, Channel::CO2, Some(100)), &mut out);
        let rec = |c| RefRecord::Device(d, DeviceRef::Calibration(c));
        assert_eq!(
            out,
            vec![
                (rec(v(Channel::CO2, 100, 3.0)), 1),
                (rec(v(Channel::VOC, 100, 4.0)), 1),
                (rec(v(Channel::CO2, 100, 3.0)), -1)
            ]
        );
    }

    #[test]
    fn device_upserts_retract_the_context_they_replace() {
        let mut s = RefState::default();
        let mut out = Vec::new();
        let (d1, d2) = (DeviceId::intern("rs-dev-1"), DeviceId::intern("rs-dev-2"));
        let ctx = |site: &str| -> Context { Arc::new(ContextRow::new([("site", site)])) };
        // A delete of a device never seen, with an index past the table, does nothing.
        s.apply(RefChange::DeleteDevice(DeviceId::intern("rs-dev-unseen")), &mut out);
        s.apply(RefChange::UpsertDevice(d2, ctx("b")), &mut out);
        s.apply(RefChange::UpsertDevice(d1, ctx("a")), &mut out);
        s.apply(RefChange::UpsertDevice(d1, ctx("a2")), &mut out);
        s.apply(RefChange::DeleteDevice(d1), &mut out);
        s.apply(RefChange::DeleteDevice(d1), &mut out);
        let rec = |d, site| RefRecord::Device(d, DeviceRef::Context(ctx(site)));
        assert_eq!(
            out,
            vec![(rec(d2, "b"), 1), (rec(d1, "a"), 1), (rec(d1, "a"), -1), (rec(d1, "a2"), 1), (rec(d1, "a2"), -1),]
        );
    }

    #[test]
    fn rows_parse_with_field_errors() {
        let r =
            row(&[("device_id", "d".into()), ("channel", "pm25".into()), ("gain", "x".into()), ("offset", "1".into())]);
        let e = RefChange::from_row(Table::Calibration, false, &r, FOREVER).unwrap_err();
        assert_eq!(e.field, "gain");
        let r =
            row(&[("device_id", "d".into()), ("channel", "pm25".into()), ("gain", 1.5.into()), ("offset", "".into())]);
        assert_eq!(RefChange::from_row(Table::Calibration, false, &r, FOREVER).unwrap_err().field, "offset");
        let r = row(&[
            ("rule_id", "a".into()),
            ("channel", "pm25".into()),
            ("rise_above", 10.into()),
            ("fall_below", 20.into()),
        ]);
        assert_eq!(RefChange::from_row(Table::Rules, false, &r, 0).unwrap_err().field, "fall_below");
    }

    #[test]
    fn as_of_picks_the_latest_valid_version() {
        let v = |vf, g| Calibration { channel: Channel::PM25, valid_from: vf, gain: Num(g), offset: Num(0.0) };
        let versions = [v(FOREVER, 1.0), v(100, 2.0), v(200, 3.0)];
        assert_eq!(calibration_as_of(&versions, Channel::PM25, 50).unwrap().gain.0, 1.0);
        assert_eq!(calibration_as_of(&versions, Channel::PM25, 100).unwrap().gain.0, 2.0);
        assert_eq!(calibration_as_of(&versions, Channel::PM25, 250).unwrap().gain.0, 3.0);
        assert!(calibration_as_of(&versions, Channel::CO2, 250).is_none());
    }
}
