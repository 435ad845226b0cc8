//! Likely mistakes in a rule set that compiles (`sfmc-relay check` prints them as warnings).
//!
//! - a mapping that can never match, because a skip or reject filter always drops the
//!   event names (or the event type) it maps;
//! - a primary key column no event can fill: not `Contact Key`, not a context column, and
//!   no property key becomes that column under the casing style and overrides;
//! - two casing overrides that send different keys to the same column (an event with both
//!   keys keeps only the later one);
//! - an API event mapping without `data:`: it sends every property in `Data`, and SFMC
//!   refuses a field the event's data extension does not have.
//!
//! Every warning names `file:line:col`. These are heuristics: a warning does not make the
//! rule set invalid.

use super::compile::diagnostic;
use super::condition::Condition;
use super::program::{EventKind, Filter, Mapping, PrimaryKey, Program};
use super::schema::RuleFile;
use super::{Diagnostic, Severity, SourceFile};
use heck::{ToLowerCamelCase, ToSnakeCase, ToTitleCase, ToUpperCamelCase};
use serde_json::{Map, Value};

/// Lint a compiled rule set against the files it was compiled from.
pub fn lint(files: &[SourceFile], program: &Program) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for m in &program.mappings {
        unreachable_mapping(files, program, m, &mut out);
        unfillable_key(files, program, m, &mut out);
        every_property_in_data(files, m, &mut out);
    }
    colliding_overrides(files, &mut out);
    out
}

/// A warning at an `origin` string (`file:line:col`, as stored in the program).
fn warn_at(files: &[SourceFile], origin: &str, message: String) -> Diagnostic {
    let mut parts = origin.rsplitn(3, ':');
    let col = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let line = parts.next().and_then(|l| l.parse().ok()).unwrap_or(0);
    let file = parts.next().unwrap_or(origin);
    match files.iter().find(|f| f.name == file) {
        Some(src) => diagnostic(src, Severity::Warning, line, col, message),
        None => Diagnostic {
            severity: Severity::Warning,
            file: file.to_string(),
            line,
            column: col,
            message,
            source_line: None,
        },
    }
}

/// The condition's value on every event of `kind` named `name`, when the condition only
/// looks at the type and the name (`None`: it depends on something else).
fn decided(c: &Condition, probe: &Value, kind: EventKind) -> Option<bool> {
    match c {
        Condition::Test { path, .. } => {
            let p = path.source().trim();
            let p = p.strip_prefix("$.").unwrap_or(p);
            (p == "type" || Some(p) == kind.name_field()).then(|| {
                let view = crate::view::Val::from_value(probe);
                c.eval(&crate::view::Doc::with_value(&view, probe))
            })
        }
        Condition::Not(c) => decided(c, probe, kind).map(|b| !b),
        Condition::All(cs) => {
            let vals: Vec<_> = cs.iter().map(|c| decided(c, probe, kind)).collect();
            if vals.contains(&Some(false)) {
                Some(false)
            } else if vals.iter().all(|v| *v == Some(true)) {
                Some(true)
            } else {
                None
            }
        }
        Condition::Any(cs) => {
            let vals: Vec<_> = cs.iter().map(|c| decided(c, probe, kind)).collect();
            if vals.contains(&Some(true)) {
                Some(true)
            } else if vals.iter().all(|v| *v == Some(false)) {
                Some(false)
            } else {
                None
            }
        }
    }
}

fn blocking_filter<'p>(
    p: &'p Program,
    kind: EventKind,
    name: Option<&str>,
) -> Option<(&'static str, &'p Filter)> {
    let mut probe = Map::new();
    probe.insert("type".into(), Value::String(kind.name().into()));
    if let (Some(field), Some(n)) = (kind.name_field(), name) {
        probe.insert(field.into(), Value::String(n.into()));
    }
    let probe = Value::Object(probe);
    [("skip", &p.skip), ("reject", &p.reject)]
        .into_iter()
        .flat_map(|(list, fs)| fs.iter().map(move |f| (list, f)))
        .find(|(_, f)| decided(&f.condition, &probe, kind) == Some(true))
}

fn unreachable_mapping(files: &[SourceFile], p: &Program, m: &Mapping, out: &mut Vec<Diagnostic>) {
    let names: Vec<Option<&str>> = if m.events.is_empty() {
        vec![None]
    } else {
        m.events.iter().map(|e| Some(e.as_str())).collect()
    };
    for name in names {
        if let Some((list, f)) = blocking_filter(p, m.kind, name) {
            let what = match name {
                Some(n) => format!("{} event {n:?}", m.kind.name()),
                None => format!("{} events", m.kind.name()),
            };
            out.push(warn_at(
                files,
                &m.origin,
                format!(
                    "this mapping can never match {what}: the {list} filter at {} ({}) drops every such event first",
                    f.origin,
                    f.condition.describe()
                ),
            ));
        }
    }
}

/// Keys that casing might turn into `col` (the styles' fixed points and inverses).
fn candidates(col: &str) -> Vec<String> {
    let mut v = vec![
        col.to_string(),
        col.to_lowercase(),
        col.to_snake_case(),
        col.to_lower_camel_case(),
        col.to_upper_camel_case(),
        col.to_title_case(),
        col.replace(' ', ""),
        col.replace(' ', "_"),
    ];
    v.sort();
    v.dedup();
    v
}

fn unfillable_key(files: &[SourceFile], p: &Program, m: &Mapping, out: &mut Vec<Diagnostic>) {
    let (Some(de), PrimaryKey::Columns(cols)) = (&m.data_extension, &m.primary_key) else {
        return;
    };
    for col in cols {
        if col.eq_ignore_ascii_case("Contact Key") {
            continue;
        }
        if m.include_context
            && p.context_columns
                .iter()
                .any(|c| c.column.eq_ignore_ascii_case(col))
        {
            continue;
        }
        let fillable = candidates(col)
            .iter()
            .any(|k| p.casing.apply(k).eq_ignore_ascii_case(col));
        if !fillable {
            let styled = p.casing.apply(col);
            out.push(warn_at(
                files,
                &m.origin,
                format!(
                    "primary key {col:?} of data extension {de:?} looks unfillable: it is not \
                     \"Contact Key\" or a context column, and casing style {} turns keys into columns \
                     like {styled:?}, never {col:?}; every event would be rejected (expected the \
                     column name as casing produces it, or a casing override)",
                    format!("{:?}", p.casing.style()).to_lowercase()
                ),
            ));
        }
    }
}

fn every_property_in_data(files: &[SourceFile], m: &Mapping, out: &mut Vec<Diagnostic>) {
    let (Some(def), None) = (&m.api_event, &m.data) else {
        return;
    };
    out.push(warn_at(
        files,
        &m.origin,
        format!(
            "API event {def:?} sends every {} in Data: SFMC refuses a field the event's data extension \
             does not have, so one unexpected property fails the entry; list what goes in \
             with `data: [plan, referrer]` (rename with `{{ key: Field Name }}`)",
            if m.kind.data_field() == "traits" { "trait" } else { "property" }
        ),
    ));
}

fn colliding_overrides(files: &[SourceFile], out: &mut Vec<Diagnostic>) {
    for src in files {
        let Ok(Some(file)) = serde_saphyr::from_str::<Option<RuleFile>>(&src.text) else {
            continue;
        };
        let Some(ov) = file
            .casing
            .as_ref()
            .and_then(|c| c.value.overrides.as_ref())
        else {
            continue;
        };
        let mut seen: Vec<(&str, &str, String)> = Vec::new();
        for (k, v) in &ov.value {
            let col = v.value.trim();
            if let Some((first, _, at)) = seen
                .iter()
                .find(|(key, c, _)| c.eq_ignore_ascii_case(col) && *key != k.value.as_str())
            {
                out.push(diagnostic(
                    src,
                    Severity::Warning,
                    k.referenced.line(),
                    k.referenced.column(),
                    format!(
                        "overrides {first:?} (at {at}) and {:?} both go to column {col:?}: an event with both keys keeps only the later one",
                        k.value
                    ),
                ));
            } else {
                seen.push((
                    k.value.as_str(),
                    col,
                    format!(
                        "{}:{}:{}",
                        src.name,
                        k.referenced.line(),
                        k.referenced.column()
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lint_text(text: &str) -> Vec<String> {
        let files = [SourceFile {
            name: "r.yaml".into(),
            text: text.into(),
        }];
        let p = super::super::compile_sources(&files, &crate::env::Env::empty(), 1)
            .unwrap()
            .program;
        lint(&files, &p).into_iter().map(|d| d.headline()).collect()
    }

    #[test]
    fn filters_that_always_drop_a_mapping() {
        let base = "track:\n  - event: A\n    data_extension: a\n  - type: page\n    data_extension: p\n    uuid_primary_key: true\n";
        for (filter, hits) in [
            ("{ path: event, not_equals: B }", vec!["r.yaml:2:5"]),
            ("{ path: $.event, matches: \"^A$\" }", vec!["r.yaml:2:5"]),
            ("{ path: type, equals: page }", vec!["r.yaml:4:5"]),
            (
                "{ any: [{ path: event, equals: A }, { path: userId, exists: false }] }",
                vec!["r.yaml:2:5"],
            ),
            (
                "{ all: [{ path: event, equals: A }, { path: userId, exists: false }] }",
                vec![],
            ),
            ("{ not: { path: event, not_in: [A] } }", vec!["r.yaml:2:5"]),
            ("{ path: event, equals: B }", vec![]),
        ] {
            let w = lint_text(&format!("{base}reject:\n  - when: {filter}\n"));
            let at: Vec<&str> = w.iter().map(|h| &h[..10]).collect();
            assert_eq!(at, hits, "{filter}: {w:?}");
        }
    }

    #[test]
    fn api_events_without_a_data_list() {
        let w = lint_text(
            "track:\n  - event: A\n    api_event: a\n  - event: B\n    api_event: b\n    data: [plan]\n  - event: C\n    data_extension: c\n",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("r.yaml:2:5: warning: API event \"a\" sends every property in Data"),
            "{w:?}"
        );
    }

    #[test]
    fn primary_keys_the_casing_can_fill() {
        let rules = |style: &str, pk: &str| {
            format!(
                "casing: {{ style: {style} }}\ntrack:\n  - event: A\n    data_extension: a\n    primary_key: {pk}\n"
            )
        };
        assert!(lint_text(&rules("title", "Order Id, Contact Key")).is_empty());
        assert!(
            lint_text(&rules("title", "App Name")).is_empty(),
            "a context column"
        );
        assert_eq!(lint_text(&rules("title", "order_id")).len(), 1);
        assert!(lint_text(&rules("snake", "order_id")).is_empty());
        assert_eq!(lint_text(&rules("snake", "Order Id")).len(), 1);
        assert!(lint_text(&rules("none", "whatever")).is_empty());
    }
}
