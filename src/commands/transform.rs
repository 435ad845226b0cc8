//! `sfmc-relay transform`: events in, the SFMC calls they cause out (NDJSON, unbatched).

use crate::action::Body;
use crate::event::{LineView, parse_view_at};
use crate::rules::Program;
use crate::source::lines::LineReader;
use crate::transform::{Outcome, Trace, transform_view};
use serde::Serialize;
use std::io::{Read, Write};
use std::sync::Arc;

#[derive(Serialize)]
struct CallLine<'a> {
    event: u64,
    method: &'a str,
    path: &'a str,
    body: Body<'a>,
}

#[derive(Serialize)]
struct OutcomeLine<'a> {
    event: u64,
    outcome: &'a str,
    reason: &'a str,
}

/// Counts for the closing summary.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub lines: u64,
    pub events: u64,
    pub calls: u64,
    pub skipped: u64,
    pub rejected: u64,
}

/// Write the output lines for one event (or one malformed line).
pub fn write_outcome(
    out: &mut (impl Write + ?Sized),
    line_no: u64,
    outcome: &Outcome,
    counts: &mut Counts,
) -> std::io::Result<()> {
    match outcome {
        Outcome::Actions(actions) => {
            for a in actions {
                serde_json::to_writer(
                    &mut *out,
                    &CallLine {
                        event: line_no,
                        method: a.method(),
                        path: &a.path(),
                        body: a.body(),
                    },
                )?;
                out.write_all(b"\n")?;
                counts.calls += 1;
            }
        }
        Outcome::Skipped(reason) => {
            write_reason(out, line_no, "skipped", reason)?;
            counts.skipped += 1;
        }
        Outcome::Rejected(reason) => {
            write_reason(out, line_no, "rejected", reason)?;
            counts.rejected += 1;
        }
    }
    Ok(())
}

fn write_reason(
    out: &mut (impl Write + ?Sized),
    event: u64,
    outcome: &str,
    reason: &str,
) -> std::io::Result<()> {
    serde_json::to_writer(
        &mut *out,
        &OutcomeLine {
            event,
            outcome,
            reason,
        },
    )?;
    out.write_all(b"\n")
}

/// Stream `input` through the rules into `out`.
///
/// `rules` is asked for the current program before each input line, so a hot reload takes
/// effect at the next line and a line (even a batch envelope) is processed by one version.
/// Output is flushed whenever no more input is buffered, so `tail -f | transform` shows
/// each result at once. `event` in the output is the 0-based line; messages say the
/// 1-based line.
pub fn run<R: Read>(
    input: &mut LineReader<R>,
    out: &mut dyn Write,
    rules: &mut dyn FnMut() -> Arc<Program>,
) -> std::io::Result<Counts> {
    let mut counts = Counts::default();
    while let Some(line) = input.next_line()? {
        counts.lines += 1;
        let program = rules();
        let index = line.number - 1;
        match line.text() {
            Err(rejected) => {
                let o = Outcome::Rejected(rejected.reason);
                write_outcome(out, index, &o, &mut counts)?;
            }
            Ok(text) => match parse_view_at(text, &line.origin()).0 {
                LineView::Blank => {}
                LineView::Invalid(reason) => {
                    write_outcome(out, index, &Outcome::Rejected(reason), &mut counts)?;
                }
                LineView::Events(events) => {
                    for ev in &events {
                        counts.events += 1;
                        let outcome = transform_view(&program, ev, &mut Trace::off());
                        write_outcome(out, index, &outcome, &mut counts)?;
                    }
                }
            },
        }
        if input.caught_up() {
            out.flush()?;
        }
    }
    out.flush()?;
    Ok(counts)
}
