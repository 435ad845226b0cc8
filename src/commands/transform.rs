//! `sfmc-relay transform`: events in, the SFMC calls they cause out (NDJSON, unbatched).

use crate::action::{Body, CallPath};
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
    path: CallPath<'a>,
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
                        path: a.call_path(),
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
    // Output lines are serialised into this buffer and handed to `out` in blocks: serde_json
    // writes every token separately, and through `&mut dyn Write` each of those was a call
    // into `BufWriter::write_all` (12% of the whole command's instructions, callgrind).
    let mut buf: Vec<u8> = Vec::with_capacity(OUT_BLOCK + OUT_BLOCK / 4);
    loop {
        let line = match input.next_line() {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                // What was produced before the read failed still goes out.
                out.write_all(&buf)?;
                out.flush()?;
                return Err(e);
            }
        };
        counts.lines += 1;
        let program = rules();
        let index = line.number - 1;
        match line.text() {
            Err(rejected) => {
                let o = Outcome::Rejected(rejected.reason);
                write_outcome(&mut buf, index, &o, &mut counts)?;
            }
            Ok(text) => match parse_view_at(text, &line.origin()).0 {
                LineView::Blank => {}
                LineView::Invalid(reason) => {
                    write_outcome(&mut buf, index, &Outcome::Rejected(reason), &mut counts)?;
                }
                LineView::Events(events) => {
                    for ev in &events {
                        counts.events += 1;
                        let outcome = transform_view(&program, ev, &mut Trace::off());
                        write_outcome(&mut buf, index, &outcome, &mut counts)?;
                        if buf.len() >= OUT_BLOCK {
                            out.write_all(&buf)?;
                            buf.clear();
                        }
                    }
                }
            },
        }
        if input.caught_up() {
            out.write_all(&buf)?;
            buf.clear();
            out.flush()?;
        } else if buf.len() >= OUT_BLOCK {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)?;
    out.flush()?;
    Ok(counts)
}

/// How much output [`run`] gathers before handing it to its writer.
const OUT_BLOCK: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    /// Gives `data`, then fails.
    struct FailsAfter<'a>(&'a [u8]);

    impl Read for FailsAfter<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(std::io::Error::other("disk gone"));
            }
            let n = buf.len().min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn program() -> Arc<Program> {
        Arc::new(
            crate::rules::load(None, &crate::env::Env::empty(), 1)
                .expect("embedded rules")
                .program,
        )
    }

    #[test]
    fn output_before_a_read_error_is_written() {
        let p = program();
        // The read fails inside the third line, while the first two are still buffered.
        let input = b"{\"type\":\"identify\",\"userId\":\"u1\"}\nnot json\n{\"type\":";
        let mut out = Vec::new();
        let err = run(
            &mut LineReader::new(FailsAfter(input)),
            &mut out,
            &mut || p.clone(),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "disk gone");
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() >= 2, "{text}");
        assert!(lines.iter().all(|l| l.starts_with("{\"event\":")), "{text}");
        assert!(lines.last().unwrap().contains("\"rejected\""), "{text}");
    }

    #[test]
    fn large_outputs_come_out_whole_and_in_order() {
        let p = program();
        let mut input = String::new();
        for i in 0..2000 {
            input.push_str(&format!(
                "{{\"type\":\"identify\",\"userId\":\"user-{i}\",\"traits\":{{\"email\":\"u{i}@example.com\"}}}}\n"
            ));
        }
        let mut out = Vec::new();
        let counts = run(
            &mut LineReader::new(input.as_bytes()),
            &mut out,
            &mut || p.clone(),
        )
        .unwrap();
        assert!(out.len() > 2 * OUT_BLOCK, "{}", out.len());
        let text = String::from_utf8(out).unwrap();
        let mut last = 0;
        let mut calls = 0;
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let event = v["event"].as_u64().unwrap();
            assert!(event >= last);
            last = event;
            calls += u64::from(v.get("method").is_some());
        }
        assert_eq!(last, 1999);
        assert_eq!(calls, counts.calls);
    }
}
