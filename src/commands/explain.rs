//! `sfmc-relay explain`: for each event, every decision the rules made and the calls.
//!
//! One block per event: the filters checked, the Contact Key, which mappings matched and
//! why, every key renamed, every value dropped (nested, null, collision) and why, the
//! primary key, and the SFMC calls produced (or the skip/reject reason).

use crate::event::{Line, parse_line_at};
use crate::rules::Program;
use crate::source::lines::LineReader;
use crate::transform::{Note, Outcome, Trace, transform};
use serde_json::Value;
use std::io::{Read, Write};

/// Explain every event of `input`; returns the number of events.
pub fn run<R: Read>(
    input: &mut LineReader<R>,
    out: &mut dyn Write,
    program: &Program,
) -> std::io::Result<u64> {
    let mut events = 0;
    while let Some(line) = input.next_line()? {
        let line_no = line.number;
        let parsed = match line.text() {
            Err(rejected) => Line::Invalid(rejected.reason),
            Ok(text) => parse_line_at(text, &line.origin()).0,
        };
        match parsed {
            Line::Blank => {}
            Line::Invalid(reason) => {
                writeln!(out, "== line {line_no}: not an event")?;
                writeln!(out, "result: rejected: {reason}\n")?;
            }
            Line::Events(evs) => {
                let n = evs.len();
                for (i, ev) in evs.iter().enumerate() {
                    events += 1;
                    let at = if n > 1 {
                        format!("line {line_no}, batch item {}", i + 1)
                    } else {
                        format!("line {line_no}")
                    };
                    explain_one(out, program, ev, &at)?;
                }
            }
        }
        if input.caught_up() {
            out.flush()?;
        }
    }
    out.flush()?;
    Ok(events)
}

fn describe_event(ev: &Value) -> String {
    let s = |k: &str| ev.get(k).and_then(Value::as_str);
    let mut d = s("type").unwrap_or("(no type)").to_string();
    if let Some(name) = s("event").or_else(|| s("name")) {
        d.push_str(&format!(" {name:?}"));
    }
    for k in ["userId", "anonymousId", "messageId"] {
        if let Some(v) = s(k) {
            d.push_str(&format!(", {k} {v:?}"));
        }
    }
    d
}

fn section(note: &Note) -> &'static str {
    match note {
        Note::Filter { .. } => "filter",
        Note::ContactKey { .. } | Note::NoContactKey { .. } => "contact key",
        Note::Mapping { .. } => "mapping",
        Note::Renamed { .. } => "renamed",
        Note::Dropped { .. } | Note::Collision { .. } => "DROPPED",
        Note::Context { .. } => "context",
        Note::Date { .. } => "date",
        Note::PrimaryKey { .. } => "primary key",
    }
}

/// Explain one event as a block of lines.
pub fn explain_one(
    out: &mut dyn Write,
    program: &Program,
    ev: &Value,
    at: &str,
) -> std::io::Result<()> {
    let mut notes = Vec::new();
    let outcome = transform(program, ev, &mut Trace::to(&mut notes));
    writeln!(out, "== {at}: {}", describe_event(ev))?;
    writeln!(out, "rules: {}", program.version)?;
    for n in &notes {
        let text = match n {
            // The section says it; keep the rest of the sentence.
            Note::Renamed { from, to } => format!("{from} → {to}"),
            Note::Dropped { key, why } => format!("{key}: {why}"),
            Note::PrimaryKey {
                data_extension,
                keys,
            } => format!("{data_extension}: {keys}"),
            other => {
                let t = other.to_string();
                let section = section(other);
                match t.get(..section.len()) {
                    Some(head) if head.eq_ignore_ascii_case(section) => {
                        t[section.len()..].trim_start().to_string()
                    }
                    _ => t,
                }
            }
        };
        writeln!(out, "  {:<12} {text}", format!("{}:", section(n)))?;
    }
    match &outcome {
        Outcome::Actions(actions) => {
            writeln!(
                out,
                "result: {} SFMC call{}",
                actions.len(),
                if actions.len() == 1 { "" } else { "s" }
            )?;
            for a in actions {
                let c = a.call();
                writeln!(out, "  {} {} {}", c.method, c.path, c.body)?;
            }
        }
        Outcome::Skipped(r) => writeln!(out, "result: skipped: {r}")?,
        Outcome::Rejected(r) => writeln!(out, "result: rejected: {r}")?,
    }
    writeln!(out)
}
