//! The dead-letter file: one NDJSON line per event that could not be delivered.
//!
//! Each line holds the original event (or the raw line when it was not JSON), the rule-set
//! version, the [`Outcome`], the reason, and for delivery failures the SFMC call that failed
//! with SFMC's status, errorcode and message and the attempt count. `sfmc-relay replay`
//! reads the `event` field back. Lines are flushed as they are written: a dead letter is
//! data.

use crate::source::{Origin, OriginFields};
use serde::Serialize;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How an event ended up in the dead-letter file (its record's `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A rule or the input rejected it: nothing was sent.
    Rejected,
    /// SFMC refused its content (a data failure, with SFMC's message).
    Failed,
    /// A Journey event SFMC may have processed (timeout, connection lost, 5xx): it was not
    /// sent again. Check before replaying it (`replay --uncertain`).
    Uncertain,
    /// Not delivered because the relay gave up waiting for SFMC (or stopped): SFMC did not
    /// accept it; `replay` sends it.
    Undelivered,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
            Outcome::Uncertain => "uncertain",
            Outcome::Undelivered => "undelivered",
        }
    }
}

/// What the reason of an uncertain record adds: how to check, and how to send it anyway.
pub const UNCERTAIN_ADVICE: &str = "SFMC may have processed this Journey event, so it was not \
sent again (a second send can enter the contact twice). Check first: for batch events \
`GET /interaction/v1/async/events/status?requestId=…&type=processed`, otherwise the \
contact's journey history in Journey Builder; `sfmc-relay replay --uncertain` sends it \
deliberately.";

/// Why an event failed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Failure {
    /// Written as the record's `outcome` (not inside the flattened failure).
    #[serde(skip)]
    pub outcome: Outcome,
    pub reason: String,
    /// The SFMC call that failed (`{"method","path","body"}`), for delivery failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errorcode: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// The event's Journey entries were sent (entered) although the event failed: `replay`
    /// sends the rest of it, not them (a journey entry is not idempotent).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub journey_sent: bool,
}

impl Failure {
    /// A rule (or the input) rejected the event: nothing was sent.
    pub fn rejected(reason: impl Into<String>) -> Self {
        Failure {
            outcome: Outcome::Rejected,
            reason: reason.into(),
            call: None,
            status: None,
            errorcode: None,
            attempts: None,
            journey_sent: false,
        }
    }

    /// SFMC refused the content of `call`.
    pub fn failed(
        reason: impl Into<String>,
        call: Value,
        status: Option<u16>,
        errorcode: Option<i64>,
        attempts: Option<u32>,
    ) -> Self {
        Failure {
            outcome: Outcome::Failed,
            reason: reason.into(),
            call: Some(call),
            status,
            errorcode,
            attempts,
            journey_sent: false,
        }
    }

    /// `call` (a Journey event) may have been processed; the reason gets
    /// [`UNCERTAIN_ADVICE`].
    pub fn uncertain(reason: impl Into<String>, call: Value, attempts: Option<u32>) -> Self {
        Failure {
            outcome: Outcome::Uncertain,
            reason: format!("{}. {UNCERTAIN_ADVICE}", reason.into()),
            call: Some(call),
            status: None,
            errorcode: None,
            attempts,
            journey_sent: false,
        }
    }

    /// The event was not delivered because the relay gave up waiting for SFMC or stopped.
    /// `call` is the SFMC call that was waiting, when there was one.
    pub fn undelivered(
        reason: impl Into<String>,
        call: Option<Value>,
        attempts: Option<u32>,
    ) -> Self {
        Failure {
            outcome: Outcome::Undelivered,
            reason: reason.into(),
            call,
            status: None,
            errorcode: None,
            attempts,
            journey_sent: false,
        }
    }
}

#[derive(Serialize)]
struct Record<'a> {
    time: String,
    rules_version: &'a str,
    /// Where the event came from: `line` (1-based), `spool_seq`, or Kafka's
    /// `topic`/`partition`/`offset`.
    #[serde(flatten)]
    origin: OriginFields<'a>,
    outcome: &'static str,
    #[serde(flatten)]
    failure: &'a Failure,
    event: &'a Value,
}

/// Called with each record after it was written to the file: the event and the record's
/// JSON (the file's line, without the newline). `consume --dead-letter-topic` produces it
/// to a Kafka topic.
pub type Tee = Box<dyn Fn(&Value, &[u8]) + Send + Sync>;

/// A held `undelivered` record: its input line, arrival, event and record line.
type Held = (u64, u64, Value, Vec<u8>);

/// Appends dead letters to a file, created on the first one.
///
/// With [`DeadLetters::undelivered_in_input_order`] (`run`, `replay`), records with
/// outcome `undelivered` are held back and written sorted by their input line when the
/// run ends ([`DeadLetters::flush_held`]): they are written as the sink's requests end,
/// lane by lane, and `replay` must send them in input order (an older row must not land
/// after a newer one of the same key). Held records are few: what was in flight or queued
/// when the run stopped reading.
pub struct DeadLetters {
    path: PathBuf,
    out: Mutex<Option<BufWriter<File>>>,
    written: std::sync::atomic::AtomicU64,
    undelivered: std::sync::atomic::AtomicU64,
    tee: Option<Tee>,
    /// `Some` while undelivered records are held: (line, arrival, record line).
    held: Mutex<Option<Vec<Held>>>,
}

impl DeadLetters {
    pub fn new(path: &Path) -> Self {
        DeadLetters {
            path: path.to_path_buf(),
            out: Mutex::new(None),
            written: Default::default(),
            undelivered: Default::default(),
            tee: None,
            held: Mutex::new(None),
        }
    }

    /// Hold `undelivered` records until [`DeadLetters::flush_held`] and write them in
    /// input order (see the type's docs).
    pub fn undelivered_in_input_order(self) -> Self {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
        self
    }

    /// Records written with outcome `undelivered` (held ones included).
    pub fn undelivered(&self) -> u64 {
        self.undelivered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Write the held `undelivered` records, sorted by input line (stable: records of one
    /// line keep their order); later ones are written at once. Idempotent.
    pub fn flush_held(&self) -> std::io::Result<()> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mut records) = held.take() else {
            return Ok(());
        };
        records.sort_by_key(|(line, arrival, _, _)| (*line, *arrival));
        for (_, _, event, line) in records {
            self.append(&event, &line)?;
        }
        Ok(())
    }

    /// Also hand each record to `tee` once it is in the file (in file order).
    pub fn with_tee(mut self, tee: Tee) -> Self {
        self.tee = Some(tee);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Append one record. An I/O error here is fatal for the caller: data would be lost.
    pub fn write(
        &self,
        origin: &Origin,
        rules_version: &str,
        event: &Value,
        failure: &Failure,
    ) -> std::io::Result<()> {
        let rec = Record {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            rules_version,
            origin: origin.fields(),
            outcome: failure.outcome.as_str(),
            failure,
            event,
        };
        let mut line = serde_json::to_vec(&rec)?;
        line.push(b'\n');
        if failure.outcome == Outcome::Undelivered {
            self.undelivered
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(records) = held.as_mut() {
                let key = match origin {
                    Origin::Line(n) => *n,
                    _ => 0,
                };
                let arrival = records.len() as u64;
                records.push((key, arrival, event.clone(), line));
                return Ok(());
            }
        }
        self.append(event, &line)
    }

    /// Append one record line (with its newline) and hand it to the tee.
    fn append(&self, event: &Value, line: &[u8]) -> std::io::Result<()> {
        let mut guard = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot open dead-letter file {}: {e}", self.path.display()),
                    )
                })?;
            *guard = Some(BufWriter::new(f));
        }
        let w = guard.as_mut().expect("opened above");
        w.write_all(line)?;
        w.flush()?;
        self.written
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(tee) = &self.tee {
            tee(event, &line[..line.len() - 1]);
        }
        Ok(())
    }
}

/// Why the last `n` records of the dead-letter file at `path` were written, with counts
/// (for a run's summary: its dead letters are the file's last lines). Reads at most the
/// file's last 4 MiB; records not in it are not counted.
pub fn last_reasons(
    path: &Path,
    n: u64,
) -> std::io::Result<std::collections::BTreeMap<String, u64>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = std::collections::BTreeMap::new();
    if n == 0 {
        return Ok(out);
    }
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(4 << 20);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // probably cut in the middle
    }
    for line in lines.iter().rev().take(n as usize) {
        let reason = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| "(unreadable dead-letter record)".into());
        *out.entry(reason).or_default() += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod last_reasons_tests {
    use super::*;

    #[test]
    fn held_undelivered_records_are_written_in_input_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dl.ndjson");
        let d = DeadLetters::new(&p).undelivered_in_input_order();
        let undelivered = Failure::undelivered("gave up", None, None);
        for line in [5, 2, 9] {
            let origin = crate::source::Origin::Line(line);
            d.write(&origin, "r1", &Value::Null, &undelivered).unwrap();
        }
        // Other outcomes are written at once.
        let origin = crate::source::Origin::Line(7);
        d.write(&origin, "r1", &Value::Null, &Failure::rejected("bad"))
            .unwrap();
        assert_eq!(d.undelivered(), 3);
        d.flush_held().unwrap();
        // Later ones go straight to the file; flushing again changes nothing.
        let origin = crate::source::Origin::Line(10);
        d.write(&origin, "r1", &Value::Null, &undelivered).unwrap();
        d.flush_held().unwrap();
        let lines: Vec<u64> = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["line"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(lines, [7, 2, 5, 9, 10]);
    }

    #[test]
    fn counts_the_reasons_of_the_last_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dl.ndjson");
        let d = DeadLetters::new(&p);
        for r in ["old", "a", "b", "a"] {
            d.write(
                &crate::source::Origin::Line(1),
                "r1",
                &Value::Null,
                &Failure::rejected(r),
            )
            .unwrap();
        }
        let got = last_reasons(&p, 3).unwrap();
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            [("a".to_string(), 2), ("b".to_string(), 1)]
        );
        assert!(last_reasons(&dir.path().join("none"), 3).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_carry_their_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.ndjson");
        let dl = DeadLetters::new(&path);
        let call = json!({"method": "POST", "path": "/interaction/v1/events", "body": {}});
        let ev = json!({"type": "track"});
        for f in [
            Failure::rejected("rule"),
            Failure::failed("bad email", call.clone(), Some(400), Some(10006), Some(1)),
            Failure::uncertain(
                "POST /interaction/v1/events: HTTP 503",
                call.clone(),
                Some(1),
            ),
            Failure::undelivered("the relay stopped", Some(call.clone()), Some(0)),
            Failure::undelivered("the relay stopped", None, None),
        ] {
            dl.write(&Origin::Line(1), "r1", &ev, &f).unwrap();
        }
        let lines: Vec<Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let outcomes: Vec<&str> = lines
            .iter()
            .map(|l| l["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(
            outcomes,
            [
                "rejected",
                "failed",
                "uncertain",
                "undelivered",
                "undelivered"
            ]
        );
        let uncertain = lines[2]["reason"].as_str().unwrap();
        assert!(uncertain.starts_with("POST /interaction/v1/events: HTTP 503. SFMC may have"));
        assert!(
            uncertain.contains("/interaction/v1/async/events/status"),
            "{uncertain}"
        );
        assert!(uncertain.contains("replay --uncertain"), "{uncertain}");
        assert_eq!(lines[1]["status"], 400);
        assert!(lines[4].get("call").is_none());
        assert_eq!(dl.written(), 5);
    }
}
