//! Preparing an event's calls for the sink: each row's JSON text with its members'
//! offsets (so rows of one primary key coalesce by splicing text), its primary-key
//! identity and lane hash, API-event bodies. Pure CPU work, done on the worker threads.

use crate::action::{Action, Fields};
use serde_json::Value;
use std::hash::{Hash, Hasher};

/// One event's actions made ready for the sink: rows serialised and their primary keys
/// identified, call bodies serialised. [`prepare`] is pure CPU work, so `run` does it on
/// its worker threads and the async side only routes bytes.
#[derive(Debug, Default)]
pub struct Prepared {
    pub(super) actions: Vec<PreparedAction>,
    /// Its Journey entries were entered earlier and dropped ([`Prepared::drop_sent_journeys`]):
    /// a dead letter of it says so again.
    pub(super) journey_sent: bool,
}

impl Prepared {
    /// Whether it holds a Journey Builder API event (not idempotent).
    pub fn has_api_events(&self) -> bool {
        self.actions
            .iter()
            .any(|a| matches!(a, PreparedAction::Journey { .. }))
    }

    /// Drop its Journey Builder API events (a duplicate `messageId`); returns how many.
    pub fn drop_api_events(&mut self) -> usize {
        let before = self.actions.len();
        self.actions
            .retain(|a| !matches!(a, PreparedAction::Journey { .. }));
        before - self.actions.len()
    }

    /// Drop its Journey entries because they were entered before (a replayed dead letter
    /// with `journey_sent`); a new dead letter of the event keeps saying so.
    pub fn drop_sent_journeys(&mut self) {
        self.drop_api_events();
        self.journey_sent = true;
    }

    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

#[derive(Debug)]
pub(super) enum PreparedAction {
    Row(PreparedRow),
    Contact(String),
    /// A Journey Builder API event: batched per event definition by the journey lane.
    Journey {
        definition: String,
        contact_key: String,
        data: Fields,
    },
}

#[derive(Debug)]
pub(super) struct PreparedRow {
    pub(super) data_extension: String,
    /// The data extension, lower-cased (its lanes are shared by any spelling).
    pub(super) lane_key: String,
    /// Primary-key identity (key names lower-cased and sorted, with their values).
    pub(super) pk: Box<str>,
    /// Hash of (data extension, primary key): picks the lane.
    pub(super) hash: u64,
    /// `{"keys":{..},"values":{..}}`
    pub(super) json: RowText,
}

/// Serialise `actions` for [`super::Sink::submit`] (pure CPU work: done on the worker threads).
pub fn prepare(actions: Vec<Action>) -> Prepared {
    let actions = actions
        .into_iter()
        .map(|a| match a {
            Action::UpsertRow {
                data_extension,
                keys,
                values,
            } => {
                let pk = pk_identity(&keys);
                let mut h = std::collections::hash_map::DefaultHasher::new();
                pk.hash(&mut h);
                let json = RowText::new(&keys, &values);
                PreparedAction::Row(PreparedRow {
                    lane_key: data_extension.to_lowercase(),
                    data_extension,
                    pk: pk.into_boxed_str(),
                    hash: h.finish(),
                    json,
                })
            }
            Action::CreateContact { contact_key } => PreparedAction::Contact(contact_key),
            Action::ApiEvent {
                contact_key,
                definition_key,
                data,
            } => PreparedAction::Journey {
                definition: definition_key,
                contact_key,
                data,
            },
        })
        .collect();
    Prepared {
        actions,
        journey_sent: false,
    }
}

/// A row's JSON text, `{"keys":{..},"values":{..}}`, with where each member is: rows of
/// one primary key coalesce by splicing members, without parsing either row.
#[derive(Debug, Clone, Default)]
pub(super) struct RowText {
    pub(super) json: Vec<u8>,
    keys: Vec<Member>,
    values: Vec<Member>,
}

/// One member's place in [`RowText::json`]: its name as JSON text (quotes included) is
/// `[start, colon)`, its value `(colon, end)`.
#[derive(Debug, Clone, Copy)]
struct Member {
    start: u32,
    colon: u32,
    end: u32,
}

impl RowText {
    /// Serialise a row (the same bytes `serde_json` writes for [`RowRef`]).
    fn new(keys: &Fields, values: &Fields) -> RowText {
        // Sized once: growing the buffer member by member was most of the cost.
        let estimate = |f: &Fields| {
            f.iter()
                .map(|(k, v)| k.len() + v.as_str().map_or(24, str::len) + 6)
                .sum::<usize>()
        };
        let mut t = RowText {
            json: Vec::with_capacity(estimate(keys) + estimate(values) + 24),
            ..RowText::default()
        };
        t.json.extend_from_slice(b"{\"keys\":");
        t.keys = write_members(&mut t.json, keys.iter().map(|(k, v)| (k.as_str(), v)));
        t.json.extend_from_slice(b",\"values\":");
        t.values = write_members(&mut t.json, values.iter().map(|(k, v)| (k.as_str(), v)));
        t.json.push(b'}');
        t
    }

    pub(super) fn len(&self) -> usize {
        self.json.len()
    }

    fn name(&self, m: Member) -> &[u8] {
        &self.json[m.start as usize..m.colon as usize]
    }

    fn value(&self, m: Member) -> &[u8] {
        &self.json[m.colon as usize + 1..m.end as usize]
    }
}

fn write_members<'a>(
    out: &mut Vec<u8>,
    members: impl Iterator<Item = (&'a str, &'a Value)>,
) -> Vec<Member> {
    let mut spans = Vec::with_capacity(members.size_hint().0);
    out.push(b'{');
    for (i, (k, v)) in members.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let start = out.len() as u32;
        write_json_str(out, k);
        let colon = out.len() as u32;
        out.push(b':');
        match v {
            Value::String(s) => write_json_str(out, s),
            v => serde_json::to_writer(&mut *out, v).expect("JSON values serialize"),
        }
        spans.push(Member {
            start,
            colon,
            end: out.len() as u32,
        });
    }
    out.push(b'}');
    spans
}

/// A JSON string, as serde_json writes it. Most column names and values need no escapes:
/// those are found eight bytes at a time and copied; the rest are left to serde_json.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec");
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether `b` has a byte JSON escapes: `"`, `\` or a control character below 0x20.
fn needs_escape(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A lane of `x` is zero: the classic "has a zero byte" test (no false negatives; a
    // false positive only sends the string the careful way).
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH != 0;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("eight bytes"));
        // Bytes below 0x20: (w & 0xE0 per lane) == 0.
        if has_zero(w & (0xE0 * ONES))
            || has_zero(w ^ (u64::from(b'"') * ONES))
            || has_zero(w ^ (u64::from(b'\\') * ONES))
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&c| c < 0x20 || c == b'"' || c == b'\\')
}

/// `later` coalesced into `earlier`: keys are unioned, later values win, columns keep the
/// earlier row's order with new ones after. Names compare as JSON text, which serde_json
/// writes one way for one name.
pub(super) fn merge_rows(earlier: &RowText, later: &RowText) -> RowText {
    let mut t = RowText {
        json: Vec::with_capacity(earlier.len() + later.len()),
        ..RowText::default()
    };
    t.json.extend_from_slice(b"{\"keys\":");
    t.keys = merge_members(&mut t.json, earlier, &earlier.keys, later, &later.keys);
    t.json.extend_from_slice(b",\"values\":");
    t.values = merge_members(&mut t.json, earlier, &earlier.values, later, &later.values);
    t.json.push(b'}');
    t
}

fn merge_members(
    out: &mut Vec<u8>,
    a: &RowText,
    am: &[Member],
    b: &RowText,
    bm: &[Member],
) -> Vec<Member> {
    // Rows of one key usually have the same columns in the same order: look at the same
    // position first.
    let find = |i: usize, name: &[u8]| -> Option<usize> {
        if bm.get(i).is_some_and(|m| b.name(*m) == name) {
            return Some(i);
        }
        bm.iter().position(|m| b.name(*m) == name)
    };
    let mut used = vec![false; bm.len()];
    let mut spans = Vec::with_capacity(am.len().max(bm.len()));
    let mut push = |out: &mut Vec<u8>, name: &[u8], value: &[u8]| {
        if !spans.is_empty() {
            out.push(b',');
        }
        let start = out.len() as u32;
        out.extend_from_slice(name);
        let colon = out.len() as u32;
        out.push(b':');
        out.extend_from_slice(value);
        spans.push(Member {
            start,
            colon,
            end: out.len() as u32,
        });
    };
    out.push(b'{');
    for (i, m) in am.iter().enumerate() {
        let name = a.name(*m);
        match find(i, name) {
            Some(j) => {
                used[j] = true;
                push(out, name, b.value(bm[j]));
            }
            None => push(out, name, a.value(*m)),
        }
    }
    for (j, m) in bm.iter().enumerate() {
        if !used[j] {
            push(out, b.name(*m), b.value(*m));
        }
    }
    out.push(b'}');
    spans
}

/// The primary-key identity of a row: key names (case-insensitive) and values.
fn pk_identity(keys: &Fields) -> String {
    use std::fmt::Write as _;
    let mut parts: Vec<(String, &Value)> =
        keys.iter().map(|(k, v)| (k.to_lowercase(), v)).collect();
    parts.sort_by(|a, b| a.0.cmp(&b.0));
    let mut s = String::new();
    for (k, v) in parts {
        s.push_str(&k);
        s.push('\u{1f}');
        // JSON text: strings quoted and escaped, so no value can forge a separator.
        let _ = write!(s, "{v}");
        s.push('\u{1e}');
    }
    s
}

/// A row's prepared text (for other modules' tests).
#[cfg(test)]
pub(super) fn row_text_of(a: Action) -> RowText {
    match prepare(vec![a]).actions.pop() {
        Some(PreparedAction::Row(r)) => r.json,
        other => panic!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, json};

    fn row(keys: Value, values: Value) -> Action {
        Action::UpsertRow {
            data_extension: "De".into(),
            keys: keys.as_object().unwrap().clone().into_iter().collect(),
            values: values.as_object().unwrap().clone().into_iter().collect(),
        }
    }

    fn prepared_row(a: Action) -> PreparedRow {
        match prepare(vec![a]).actions.pop() {
            Some(PreparedAction::Row(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prepared_rows_serialise_the_row_and_identify_the_key_case_insensitively() {
        let a = prepared_row(row(
            json!({"Contact Key": "u-1"}),
            json!({"Email": "a@b.c"}),
        ));
        let b = prepared_row(row(json!({"contact key": "u-1"}), json!({"N": 2})));
        let c = prepared_row(row(json!({"Contact Key": 1}), json!({})));
        let d = prepared_row(row(json!({"Contact Key": "1"}), json!({})));
        assert_eq!(
            serde_json::from_slice::<Value>(&a.json.json).unwrap(),
            json!({"keys": {"Contact Key": "u-1"}, "values": {"Email": "a@b.c"}})
        );
        assert_eq!((a.pk.clone(), a.hash), (b.pk, b.hash));
        assert_eq!(a.lane_key, "de");
        assert_ne!(c.pk, d.pk, "a number and a string key are different rows");
    }

    #[test]
    fn merged_rows_union_keys_and_later_values_win() {
        let a = prepared_row(row(json!({"K": "1"}), json!({"A": 1, "B": 1})));
        let b = prepared_row(row(json!({"K": "1"}), json!({"B": 2, "C": 2})));
        let m = merge_rows(&a.json, &b.json);
        assert_eq!(
            serde_json::from_slice::<Value>(&m.json).unwrap(),
            json!({"keys": {"K": "1"}, "values": {"A": 1, "B": 2, "C": 2}})
        );
    }

    #[test]
    fn row_text_is_what_serde_json_writes_and_merges_repeatedly() {
        let rows = [
            (
                json!({"K": "1"}),
                json!({"A": 1, "B": {"x": [1, "y"]}, "é\"": "q"}),
            ),
            (json!({"K": "1"}), json!({"B": null, "C": "c", "A": 2})),
            (json!({"K": "1", "L": 2}), json!({"D": true, "é\"": "r"})),
            (json!({"L": 3}), json!({})),
        ];
        let mut merged: Option<RowText> = None;
        let mut want_keys = Map::new();
        let mut want_values = Map::new();
        for (k, v) in rows {
            let a = row(k.clone(), v.clone());
            let p = prepared_row(a);
            let Action::UpsertRow { keys, values, .. } = row(k, v) else {
                unreachable!()
            };
            assert_eq!(
                p.json.json,
                serde_json::to_vec(&crate::action::RowRef {
                    keys: &keys,
                    values: &values
                })
                .unwrap()
            );
            want_keys.extend(keys);
            want_values.extend(values);
            merged = Some(match merged {
                None => p.json,
                Some(m) => merge_rows(&m, &p.json),
            });
            let m = merged.as_ref().unwrap();
            let got: Value = serde_json::from_slice(&m.json).unwrap();
            assert_eq!(got, json!({"keys": want_keys, "values": want_values}));
            // Byte for byte what serde_json writes for the merged maps (same order).
            assert_eq!(
                m.json,
                serde_json::to_vec(&json!({"keys": want_keys, "values": want_values})).unwrap()
            );
        }
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "plain text, longer than eight bytes".into(),
            "é☕ unicode is not escaped \u{7f}/".into(),
        ];
        for pos in 0..20 {
            for c in ['"', '\\', '\n', '\u{0}', '\u{1f}', '\t', ' ', '\u{7f}', 'é'] {
                let mut s: String = "abcdefghijklmnopqrst".into();
                s.insert(pos, c);
                cases.push(s);
            }
        }
        for s in cases {
            let mut out = Vec::new();
            write_json_str(&mut out, &s);
            assert_eq!(out, serde_json::to_vec(&s).unwrap(), "{s:?}");
            let careful = s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\');
            assert_eq!(needs_escape(s.as_bytes()), careful, "{s:?}");
        }
    }

    #[test]
    fn merging_keeps_escaped_names_and_nested_values_intact() {
        let a = prepared_row(row(
            json!({"K\"ey": "1"}),
            json!({"A\\b": [1, {"x": "y"}], "Z": 1}),
        ));
        let b = prepared_row(row(json!({"K\"ey": "1"}), json!({"Z": "two\n", "N": null})));
        let m = merge_rows(&a.json, &b.json);
        let v: Value = serde_json::from_slice(&m.json).unwrap();
        assert_eq!(
            v,
            json!({"keys": {"K\"ey": "1"}, "values": {"A\\b": [1, {"x": "y"}], "Z": "two\n", "N": null}})
        );
        // Column order: the earlier row's, then new columns.
        let cols: Vec<&String> = v["values"].as_object().unwrap().keys().collect();
        assert_eq!(cols, ["A\\b", "Z", "N"]);
    }
}
