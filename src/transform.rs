//! The interpreter: one event + a compiled [`Program`] -> SFMC actions or an outcome.
//!
//! Pure: no I/O, no clock, no randomness. `explain` passes a trace to see every decision.

use crate::action::{Action, Fields};
use crate::rules::dates;
use crate::rules::program::{DataField, EventKind, Mapping, Nested, Nulls, PrimaryKey, Program};
use crate::view::{Doc, Obj, Val};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt::Write as _;

/// What happened to one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The calls to make (at least one).
    Actions(Vec<Action>),
    /// A rule chose not to send it (counted, not an error).
    Skipped(String),
    /// It cannot be sent as it is (dead-lettered with the reason).
    Rejected(String),
}

/// One decision, recorded for `explain`.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    Filter {
        list: &'static str,
        origin: String,
        condition: String,
        matched: bool,
    },
    ContactKey {
        source: String,
        value: String,
        removed: usize,
    },
    NoContactKey {
        tried: String,
    },
    Mapping {
        origin: String,
        matched: bool,
        why: String,
    },
    Renamed {
        from: String,
        to: String,
    },
    Dropped {
        key: String,
        why: String,
    },
    Collision {
        column: String,
        earlier: String,
        later: String,
    },
    Context {
        path: String,
        column: String,
        outcome: String,
    },
    Date {
        column: String,
        from: String,
        to: String,
    },
    PrimaryKey {
        data_extension: String,
        keys: String,
    },
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Note::Filter {
                list,
                origin,
                condition,
                matched,
            } => write!(
                f,
                "{list} filter ({origin}) {}: {condition}",
                if *matched { "MATCHED" } else { "not matched" }
            ),
            Note::ContactKey {
                source,
                value,
                removed,
            } => {
                write!(f, "Contact Key {value:?} from {source}")?;
                if *removed > 0 {
                    write!(f, " ({removed} character(s) removed)")?;
                }
                Ok(())
            }
            Note::NoContactKey { tried } => write!(f, "no Contact Key: tried {tried}"),
            Note::Mapping {
                origin,
                matched,
                why,
            } => write!(
                f,
                "mapping ({origin}) {}: {why}",
                if *matched { "matched" } else { "not matched" }
            ),
            Note::Renamed { from, to } => write!(f, "renamed {from} → {to}"),
            Note::Dropped { key, why } => write!(f, "dropped {key}: {why}"),
            Note::Collision {
                column,
                earlier,
                later,
            } => write!(
                f,
                "collision on column {column:?}: dropped the value of {earlier}, {later} overrides it (the later key wins)"
            ),
            Note::Context {
                path,
                column,
                outcome,
            } => write!(f, "context {path} → {column}: {outcome}"),
            Note::Date { column, from, to } => {
                write!(f, "date column {column:?}: {from} → {to}")
            }
            Note::PrimaryKey {
                data_extension,
                keys,
            } => write!(f, "primary key for {data_extension}: {keys}"),
        }
    }
}

/// Where notes go: nowhere (the fast path) or a list (explain).
pub struct Trace<'a> {
    notes: Option<&'a mut Vec<Note>>,
    /// Where the current event's notes start in `notes`.
    start: usize,
}

impl<'a> Trace<'a> {
    pub fn off() -> Self {
        Trace {
            notes: None,
            start: 0,
        }
    }
    pub fn to(notes: &'a mut Vec<Note>) -> Self {
        let start = notes.len();
        Trace {
            notes: Some(notes),
            start,
        }
    }
    #[inline]
    fn note(&mut self, f: impl FnOnce() -> Note) {
        if let Some(n) = self.notes.as_mut() {
            n.push(f());
        }
    }
    fn on(&self) -> bool {
        self.notes.is_some()
    }
    /// The key that last wrote `column` in this event (from the notes so far): a key
    /// renamed to it, the winner of an earlier collision on it, or else the column itself
    /// (a key that needed no renaming).
    fn last_writer(&self, column: &str) -> String {
        let notes = self
            .notes
            .as_deref()
            .map_or(&[][..], |n| &n[self.start.min(n.len())..]);
        notes
            .iter()
            .rev()
            .find_map(|n| match n {
                Note::Renamed { from, to } if to == column => Some(from.clone()),
                Note::Collision {
                    column: c, later, ..
                } if c == column => Some(later.clone()),
                _ => None,
            })
            .unwrap_or_else(|| column.to_string())
    }
}

/// Run the program on one event.
pub fn transform(program: &Program, event: &Value, trace: &mut Trace) -> Outcome {
    let view = Val::from_value(event);
    run(program, &Doc::with_value(&view, event), trace)
}

/// Run the program on one event read into a borrowed view (the fast path: see
/// [`crate::view`]).
pub fn transform_view(program: &Program, event: &Val, trace: &mut Trace) -> Outcome {
    run(program, &Doc::new(event), trace)
}

fn run(program: &Program, doc: &Doc, trace: &mut Trace) -> Outcome {
    if let Some(n) = trace.notes.as_deref() {
        trace.start = n.len();
    }
    let result = plan(program, doc, trace).and_then(|pl| build(program, pl, doc, trace));
    match result {
        Ok(actions) => Outcome::Actions(actions),
        Err(o) => o,
    }
}

/// What the first phase decided, before the event's data is converted.
struct Plan<'p> {
    kind: EventKind,
    mappings: Vec<&'p Mapping>,
    contact_key: Option<String>,
    message_id: Option<String>,
}

fn rejected(msg: impl Into<String>) -> Outcome {
    Outcome::Rejected(msg.into())
}

/// Phase one: type, filters, mappings and the Contact Key (reads the event only).
fn plan<'p>(p: &'p Program, event: &Doc, tr: &mut Trace) -> Result<Plan<'p>, Outcome> {
    let Some(obj) = event.root().as_obj() else {
        return Err(rejected("event is not a JSON object"));
    };
    let kind = match obj.get("type") {
        Some(Val::Str(t)) => EventKind::parse(t).ok_or_else(|| {
            rejected(format!(
                "unknown event type {t:?} (expected one of {})",
                EventKind::NAMES
            ))
        })?,
        Some(other) => {
            return Err(rejected(format!(
                "\"type\" must be a string, found {other}"
            )));
        }
        None => return Err(rejected("event has no \"type\"")),
    };

    for (list, filters) in [("skip", &p.skip), ("reject", &p.reject)] {
        for f in filters {
            let matched = f.condition.eval(event);
            tr.note(|| Note::Filter {
                list,
                origin: f.origin.clone(),
                condition: f.condition.describe(),
                matched,
            });
            if matched {
                return Err(if list == "skip" {
                    Outcome::Skipped(f.reason.clone())
                } else {
                    Outcome::Rejected(f.reason.clone())
                });
            }
        }
    }

    let name = match kind.name_field() {
        Some(field) => match obj.get(field) {
            Some(Val::Str(s)) => Some(s.as_ref()),
            None | Some(Val::Null) if kind == EventKind::Track => {
                return Err(rejected("track event has no \"event\" name"));
            }
            None | Some(Val::Null) => None,
            Some(other) => {
                return Err(rejected(format!(
                    "\"{field}\" must be a string, found {other}"
                )));
            }
        },
        None => None,
    };

    let mappings: Vec<&Mapping> = p
        .mappings
        .iter()
        .filter(|m| mapping_matches(m, kind, name, event, tr))
        .collect();

    let identify_builtin = kind == EventKind::Identify
        && (p.identify.create_contacts || p.identify.data_extension.is_some());
    if mappings.is_empty() && !identify_builtin {
        return Err(Outcome::Skipped(match (kind, name) {
            (EventKind::Track, Some(n)) => format!("no mapping for track event {n:?}"),
            (EventKind::Identify, _) => {
                "identify: contact creation is off and no identify data extension is set"
                    .to_string()
            }
            (k, Some(n)) => format!("no mapping for {} event {n:?}", k.name()),
            (k, None) => format!("{} events are not mapped", k.name()),
        }));
    }

    let contact_key = contact_key(p, event, tr)?;
    let message_id = match obj.get("messageId") {
        Some(Val::Str(id)) if !id.trim().is_empty() => Some(id.to_string()),
        _ => None,
    };
    Ok(Plan {
        kind,
        mappings,
        contact_key,
        message_id,
    })
}

/// Phase two: convert the data (traits or properties) and build the actions.
fn build(p: &Program, plan: Plan, event: &Doc, tr: &mut Trace) -> Result<Vec<Action>, Outcome> {
    let Plan {
        kind,
        mappings,
        contact_key,
        message_id,
    } = plan;
    let require_ck = |what: &str| -> Result<String, Outcome> {
        contact_key.clone().ok_or_else(|| {
            rejected(format!(
                "{what} needs a Contact Key, but none of {} has a value{}",
                sources(p),
                if kind == EventKind::Identify
                    && p.identify
                        .contact_key
                        .iter()
                        .any(|k| k.source() == "userId")
                {
                    " (identify needs a userId or an email trait)"
                } else {
                    ""
                }
            ))
        })
    };

    let data = match event.root().get(kind.data_field()) {
        None | Some(Val::Null) => None,
        Some(Val::Obj(m)) => Some(m),
        Some(other) => {
            return Err(rejected(format!(
                "\"{}\" must be an object, found {}",
                kind.data_field(),
                other.type_name()
            )));
        }
    };
    let mut converted = Fields::with_capacity_and_hasher(
        data.as_ref().map_or(0, |d| d.len()) + p.context_columns.len(),
        Default::default(),
    );
    if let Some(d) = data {
        convert(p, d, "", &mut converted, tr)?;
    }

    // Who consumes the converted data: move it into the last consumer instead of
    // cloning (usually there is exactly one).
    let identify_de = kind == EventKind::Identify && p.identify.data_extension.is_some();
    let ctx_uses = usize::from(identify_de && p.identify.include_context)
        + mappings
            .iter()
            .filter(|m| m.data_extension.is_some() && m.include_context)
            .count();
    let mut uses = usize::from(identify_de)
        + mappings
            .iter()
            .map(|m| usize::from(m.data_extension.is_some()) + usize::from(m.api_event.is_some()))
            .sum::<usize>();
    let mut context = if ctx_uses > 0 {
        context_values(p, event, &converted, tr)?
    } else {
        Vec::new()
    };
    let mut ctx_left = ctx_uses;
    let mut next_values = |with_context: bool| -> Fields {
        uses -= 1;
        let mut v = if uses == 0 {
            std::mem::take(&mut converted)
        } else {
            converted.clone()
        };
        if with_context {
            ctx_left -= 1;
            if ctx_left == 0 {
                v.extend(std::mem::take(&mut context));
            } else {
                v.extend(context.iter().map(|(k, x)| (k.clone(), x.clone())));
            }
        }
        v
    };

    let mut actions = Vec::new();
    if kind == EventKind::Identify {
        let ck = require_ck("identify")?;
        if p.identify.create_contacts {
            actions.push(Action::CreateContact {
                contact_key: ck.clone(),
            });
        }
        if let Some(de) = &p.identify.data_extension {
            let mut keys = Fields::default();
            keys.insert("Contact Key".to_string(), Value::String(ck.clone()));
            tr.note(|| Note::PrimaryKey {
                data_extension: de.clone(),
                keys: format!("Contact Key = {ck:?}"),
            });
            let mut values = next_values(p.identify.include_context);
            keys_in_empty_values(&keys, &mut values);
            actions.push(Action::UpsertRow {
                data_extension: de.clone(),
                keys,
                values,
            });
        }
    }
    for m in mappings {
        if let Some(de) = &m.data_extension {
            let mut values = next_values(m.include_context);
            let mut keys = Fields::default();
            match &m.primary_key {
                PrimaryKey::Uuid => match &message_id {
                    Some(id) => {
                        keys.insert("Uuid".to_string(), Value::String(id.clone()));
                    }
                    None => {
                        return Err(rejected(format!(
                            "data extension {de:?} uses the UUID primary key, but the event has no messageId"
                        )));
                    }
                },
                PrimaryKey::Columns(cols) => {
                    for col in cols {
                        if col.eq_ignore_ascii_case("Contact Key") {
                            let ck = require_ck(&format!(
                                "primary key \"Contact Key\" of data extension {de:?}"
                            ))?;
                            keys.insert(col.clone(), Value::String(ck));
                            continue;
                        }
                        let found = values
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(col))
                            .map(|(_, v)| v);
                        match found {
                            Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_)))
                                if v.as_str().is_none_or(|s| !s.is_empty()) =>
                            {
                                keys.insert(col.clone(), v.clone());
                            }
                            _ => {
                                return Err(rejected(format!(
                                    "primary key {col:?} of data extension {de:?} has no value: no {} property becomes the column {col:?}",
                                    kind.name()
                                )));
                            }
                        }
                    }
                }
            }
            keys_in_empty_values(&keys, &mut values);
            tr.note(|| Note::PrimaryKey {
                data_extension: de.clone(),
                keys: keys
                    .iter()
                    .map(|(k, v)| format!("{k} = {v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
            actions.push(Action::UpsertRow {
                data_extension: de.clone(),
                keys,
                values,
            });
        }
        if let Some(def) = &m.api_event {
            let ck = require_ck(&format!("API event {def:?}"))?;
            let all = next_values(false);
            let data = match &m.data {
                None => all,
                Some(list) => allow_listed(all, list, def, tr),
            };
            actions.push(Action::ApiEvent {
                contact_key: ck,
                definition_key: def.clone(),
                data,
            });
        }
    }
    Ok(actions)
}

/// SFMC refuses a row whose `values` hold no column of the data extension ("At least one
/// existing field is required in the values property"; keys do not count), and in a
/// rowset such a row also fails every row after it. A row with nothing to set (no traits
/// or properties, no context columns) repeats its primary-key columns in `values`: they
/// are columns of the data extension, so the row still upserts its key.
fn keys_in_empty_values(keys: &Fields, values: &mut Fields) {
    if values.is_empty() {
        values.extend(keys.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// An API event's `Data`: only the listed columns, in list order, renamed; a column the
/// event does not have is left out. SFMC refuses `Data` fields the event's data
/// extension does not have.
fn allow_listed(mut all: Fields, list: &[DataField], def: &str, tr: &mut Trace) -> Fields {
    let mut data = Fields::with_capacity_and_hasher(list.len(), Default::default());
    for f in list {
        let index = all
            .get_index_of(&f.column)
            .or_else(|| all.keys().position(|k| k.eq_ignore_ascii_case(&f.column)));
        if let Some((column, v)) = index.and_then(|i| all.shift_remove_index(i)) {
            if tr.on() && column != f.field {
                tr.note(|| Note::Renamed {
                    from: column.clone(),
                    to: f.field.clone(),
                });
            }
            data.insert(f.field.clone(), v);
        }
    }
    if tr.on() {
        for column in all.keys() {
            tr.note(|| Note::Dropped {
                key: column.clone(),
                why: format!("not in the `data` list of API event {def:?}"),
            });
        }
    }
    data
}

fn mapping_matches(
    m: &Mapping,
    kind: EventKind,
    name: Option<&str>,
    event: &Doc,
    tr: &mut Trace,
) -> bool {
    if m.kind != kind {
        return false;
    }
    if !m.events.is_empty() && !name.is_some_and(|n| m.events.iter().any(|e| e == n)) {
        tr.note(|| Note::Mapping {
            origin: m.origin.clone(),
            matched: false,
            why: format!(
                "event name {} is not {}",
                name.map_or("(none)".to_string(), |n| format!("{n:?}")),
                m.events.join(" / ")
            ),
        });
        return false;
    }
    if let Some(w) = &m.when
        && !w.eval(event)
    {
        tr.note(|| Note::Mapping {
            origin: m.origin.clone(),
            matched: false,
            why: format!("condition false: {}", w.describe()),
        });
        return false;
    }
    tr.note(|| Note::Mapping {
        origin: m.origin.clone(),
        matched: true,
        why: match (name, &m.when) {
            (Some(n), None) => format!("{} event {n:?}", kind.name()),
            (Some(n), Some(w)) => format!("{} event {n:?} and {}", kind.name(), w.describe()),
            (None, _) => format!("every {} event", kind.name()),
        },
    });
    true
}

fn sources(p: &Program) -> String {
    p.identify
        .contact_key
        .iter()
        .map(|k| k.source())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Contact Key: the first source with a non-empty value, scrubbed.
fn contact_key(p: &Program, event: &Doc, tr: &mut Trace) -> Result<Option<String>, Outcome> {
    for src in &p.identify.contact_key {
        let found = src.get(event);
        let raw: Cow<str> = match found.as_deref() {
            Some(Val::Str(s)) => Cow::Borrowed(s),
            Some(Val::Num(n)) => Cow::Owned(n.to_string()),
            _ => continue,
        };
        let before = raw.chars().count();
        let key: String = raw
            .chars()
            .filter(|c| !p.identify.scrub.contains(c))
            .collect::<String>()
            .trim()
            .to_string();
        if key.is_empty() {
            continue;
        }
        let len = key.chars().count();
        if len > p.identify.max_contact_key_length {
            return Err(rejected(format!(
                "Contact Key from {} is {len} characters long; SFMC allows at most {}",
                src.source(),
                p.identify.max_contact_key_length
            )));
        }
        tr.note(|| Note::ContactKey {
            source: src.source().to_string(),
            value: key.clone(),
            removed: before - len,
        });
        return Ok(Some(key));
    }
    tr.note(|| Note::NoContactKey { tried: sources(p) });
    Ok(None)
}

/// Convert one object (traits or properties) into columns.
fn convert(
    p: &Program,
    data: &Obj,
    prefix: &str,
    out: &mut Fields,
    tr: &mut Trace,
) -> Result<(), Outcome> {
    for (k, v) in data.iter() {
        convert_member(p, k, v, prefix, out, tr)?;
    }
    Ok(())
}

/// One member of an object (or element of an array, `k` being its index).
fn convert_member(
    p: &Program,
    k: &str,
    v: &Val,
    prefix: &str,
    out: &mut Fields,
    tr: &mut Trace,
) -> Result<(), Outcome> {
    let key: Cow<str> = if prefix.is_empty() {
        k.into()
    } else {
        format!("{prefix}.{k}").into()
    };
    match v {
        Val::Null => match p.nulls {
            Nulls::Drop => tr.note(|| Note::Dropped {
                key: key.to_string(),
                why: "null value".into(),
            }),
            Nulls::Empty => put(p, &key, Value::String(String::new()), out, tr)?,
        },
        Val::Obj(m) => match p.nested {
            Nested::Drop => tr.note(|| Note::Dropped {
                key: key.to_string(),
                why: "nested object (nested: drop)".into(),
            }),
            Nested::Flatten => convert(p, m, &key, out, tr)?,
        },
        Val::Arr(a) => match p.nested {
            Nested::Drop => tr.note(|| Note::Dropped {
                key: key.to_string(),
                why: "array (nested: drop)".into(),
            }),
            Nested::Flatten => {
                for (i, v) in a.iter().enumerate() {
                    convert_member(p, &i.to_string(), v, &key, out, tr)?;
                }
            }
        },
        scalar => put(p, &key, scalar.to_value(), out, tr)?,
    }
    Ok(())
}

fn is_date_column(p: &Program, column: &str) -> bool {
    p.dates.iter().any(|d| d.eq_ignore_ascii_case(column))
}

fn date_value(p: &Program, column: &str, v: Value, tr: &mut Trace) -> Result<Value, Outcome> {
    if !is_date_column(p, column) || (v.as_str() == Some("")) {
        return Ok(v);
    }
    match dates::normalize(&v) {
        Ok(s) => {
            tr.note(|| Note::Date {
                column: column.to_string(),
                from: v.to_string(),
                to: s.clone(),
            });
            Ok(Value::String(s))
        }
        Err(e) => Err(rejected(format!("date column {column:?}: {e}"))),
    }
}

fn put(p: &Program, key: &str, v: Value, out: &mut Fields, tr: &mut Trace) -> Result<(), Outcome> {
    let column = p.casing.apply(key);
    // Named before this key's own notes, so the earlier key is found.
    let earlier = (tr.on() && out.contains_key(column.as_ref())).then(|| tr.last_writer(&column));
    if tr.on() && column != key {
        tr.note(|| Note::Renamed {
            from: key.to_string(),
            to: column.to_string(),
        });
    }
    let v = date_value(p, &column, v, tr)?;
    if let Some(earlier) = earlier {
        tr.note(|| Note::Collision {
            column: column.to_string(),
            earlier,
            later: key.to_string(),
        });
    }
    out.insert(column.into_owned(), v);
    Ok(())
}

/// The context columns for this event (those not already set by the data), in table
/// order. A list, not a map: it is only ever added to a row's values, and hashing each
/// column twice was a tenth of the interpreter's cost.
fn context_values(
    p: &Program,
    event: &Doc,
    data: &Fields,
    tr: &mut Trace,
) -> Result<Vec<(String, Value)>, Outcome> {
    let mut out = Vec::with_capacity(p.context_columns.len());
    let mut found = Vec::with_capacity(p.context_columns.len());
    p.context_paths.get_all(event, &mut found);
    for (cc, v) in p.context_columns.iter().zip(found) {
        let Some(v) = v else {
            continue;
        };
        let outcome = match &*v {
            Val::Null => Some("dropped: null value"),
            Val::Obj(_) | Val::Arr(_) => Some("dropped: not a single value"),
            _ if data.keys().any(|k| k.eq_ignore_ascii_case(&cc.column)) => {
                Some("not used: a trait or property sets this column")
            }
            _ => None,
        };
        if let Some(o) = outcome {
            tr.note(|| Note::Context {
                path: cc.path.source().to_string(),
                column: cc.column.clone(),
                outcome: o.to_string(),
            });
            continue;
        }
        let v = date_value(p, &cc.column, v.to_value(), tr)?;
        tr.note(|| {
            let mut s = String::new();
            let _ = write!(s, "set to {v}");
            Note::Context {
                path: cc.path.source().to_string(),
                column: cc.column.clone(),
                outcome: s,
            }
        });
        out.push((cc.column.clone(), v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{self, SourceFile};
    use serde_json::json;

    #[test]
    fn collisions_name_the_earlier_key() {
        let files = [SourceFile {
            name: "r.yaml".into(),
            text: "track:\n  - event: E\n    data_extension: d\n".into(),
        }];
        let p = rules::compile_sources(&files, &crate::env::Env::empty(), 1)
            .unwrap()
            .program;
        let ev = json!({"type":"track","event":"E","userId":"u",
            "properties":{"Order Id":1,"orderId":2,"order_id":3}});
        let mut notes = vec![Note::Renamed {
            from: "stale".into(),
            to: "Order Id".into(),
        }];
        transform(&p, &ev, &mut Trace::to(&mut notes));
        let pairs: Vec<(String, String)> = notes
            .iter()
            .filter_map(|n| match n {
                Note::Collision { earlier, later, .. } => Some((earlier.clone(), later.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            pairs,
            [
                ("Order Id".to_string(), "orderId".to_string()),
                ("orderId".to_string(), "order_id".to_string())
            ]
        );
        // The fast path records nothing.
        assert!(matches!(
            transform(&p, &ev, &mut Trace::off()),
            Outcome::Actions(_)
        ));
    }
}
