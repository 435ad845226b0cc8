//! The journey journal: what keeps a Journey entry from being sent twice when a durable
//! source (`serve`'s spool, `consume`'s Kafka offsets) delivers a record again after a
//! crash.
//!
//! A journey entry is not idempotent, and a durable source acknowledges a record only after
//! all its events ended; a kill between SFMC entering the contact and that acknowledgement
//! would make the source deliver the record again, and the contact would enter twice. So,
//! for records of a durable source (their origin, a spool sequence number or a Kafka
//! offset, names the same record after a restart), the journey lane writes each entry's
//! key to this file **before** sending it (`sending`, flushed to disk with `fsync`) and
//! again after SFMC's answer was handled (`ended`). When an entry comes again:
//! - `ended`: it was entered (or dead-lettered) before; it is not sent again (counted as
//!   delivered: its outcome was already handled);
//! - `sending` only: the relay stopped between sending and recording the answer, so SFMC
//!   may have entered it: an `uncertain` dead letter, never resent automatically;
//! - `unsent` after `sending`: the last attempt was answered without being processed (a
//!   429, a 401...; the relay stopped while it waited to retry): it is sent.
//!
//! One line per step, `["sending","<key>"]`, `["unsent","<key>"]` or `["ended","<key>"]`; a torn last line (a
//! crash mid-write) is ignored. The file keeps the last [`JOURNAL_KEYS`] keys and is
//! compacted when opened. It lives next to the contact state file (`--state-dir`, or the
//! spool directory), one per SFMC account, and never for the built-in simulator. Relays
//! that share a Kafka group on different machines each have their own journal: an entry
//! redelivered to another relay after a crash is not caught (documented in docs/kafka.md).

use super::state_file;
use crate::source::Origin;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Keys kept (the most recent ones).
pub const JOURNAL_KEYS: usize = 100_000;

/// How far an entry got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Its request was (about to be) sent; no answer recorded.
    Sending,
    /// SFMC's answer was handled (entered, or refused and dead-lettered).
    Ended,
    /// Its last attempt was answered without being processed (429, 401, ...): it was not
    /// sent, as if never recorded.
    Unsent,
}

impl Stage {
    fn parse(s: &str) -> Option<Stage> {
        match s {
            "sending" => Some(Stage::Sending),
            "ended" => Some(Stage::Ended),
            "unsent" => Some(Stage::Unsent),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Stage::Sending => "sending",
            Stage::Ended => "ended",
            Stage::Unsent => "unsent",
        }
    }
}

/// The key of a journey entry of a record that a durable source delivers again with the
/// same origin; `None` for other origins (file lines, ingest refusals).
pub fn key(origin: &Origin, definition: &str, contact_key: &str) -> Option<String> {
    let at = match origin {
        Origin::Spool(seq) => format!("spool:{seq}"),
        Origin::Kafka {
            topic,
            partition,
            offset,
        } => format!("kafka:{topic}/{partition}/{offset}"),
        Origin::Line(_) | Origin::Ingest { .. } => return None,
    };
    Some(format!("{at}|{definition}|{contact_key}"))
}

/// The keys kept (the most recent [`JOURNAL_KEYS`]) and how far each got.
#[derive(Default)]
struct Keys {
    stages: HashMap<String, Stage>,
    order: VecDeque<String>,
}

impl Keys {
    fn set(&mut self, key: &str, stage: Stage) {
        if self.stages.insert(key.to_string(), stage).is_none() {
            self.order.push_back(key.to_string());
            while self.order.len() > JOURNAL_KEYS {
                if let Some(old) = self.order.pop_front() {
                    self.stages.remove(&old);
                }
            }
        }
    }

    /// The file's compact form: one line per key, its last stage.
    fn records(&self) -> impl Iterator<Item = (&'static str, &String)> {
        self.order.iter().map(|k| (self.stages[k].as_str(), k))
    }
}

struct State {
    out: File,
    keys: Keys,
    /// Lines in the file (compacted when well over the keys kept).
    lines: usize,
}

/// Lines beyond twice the keys kept before the file is rewritten while running (a
/// long-running relay would otherwise grow it by two lines per journey entry).
const SLACK_LINES: usize = 10_000;

pub struct JourneyJournal {
    path: PathBuf,
    state: Mutex<State>,
}

impl JourneyJournal {
    /// Open (or create) the journal at `path` and load it.
    pub fn open(path: &Path) -> std::io::Result<JourneyJournal> {
        let mut keys = Keys::default();
        let read = state_file::read_records(path, |(stage, key): (String, String)| {
            if let Some(stage) = Stage::parse(&stage) {
                keys.set(&key, stage);
            }
        })?;
        let mut lines = read.lines;
        let mut torn = read.torn;
        if lines > 2 * keys.order.len().max(1) {
            state_file::rewrite(path, keys.records())?;
            (lines, torn) = (keys.order.len(), false);
        }
        let out = state_file::open_append(path, torn)?;
        Ok(JourneyJournal {
            path: path.to_path_buf(),
            state: Mutex::new(State { out, keys, lines }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How far the entry `key` got, if the journal knows it.
    pub fn stage(&self, key: &str) -> Option<Stage> {
        self.lock().keys.stages.get(key).copied()
    }

    /// Record `stage` for `keys`; with `sync`, on disk before this returns.
    pub fn record(&self, keys: &[&str], stage: Stage, sync: bool) -> std::io::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(keys.len() * 48);
        for k in keys {
            serde_json::to_writer(&mut buf, &(stage.as_str(), k))?;
            buf.push(b'\n');
        }
        let mut s = self.lock();
        s.out.write_all(&buf)?;
        if sync {
            s.out.sync_data()?;
        }
        for k in keys {
            s.keys.set(k, stage);
        }
        s.lines += keys.len();
        if s.lines > 2 * s.keys.order.len() + SLACK_LINES {
            state_file::rewrite(&self.path, s.keys.records())?;
            s.out = state_file::open_append(&self.path, false)?;
            s.lines = s.keys.order.len();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_survive_a_reopen_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.ndjson");
        let j = JourneyJournal::open(&p).unwrap();
        j.record(&["a", "b"], Stage::Sending, true).unwrap();
        j.record(&["a"], Stage::Ended, false).unwrap();
        assert_eq!(j.stage("a"), Some(Stage::Ended));
        assert_eq!(j.stage("c"), None);
        drop(j);
        // A crash in the middle of a line.
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"[\"ended\",\"b").unwrap();
        drop(f);
        let j = JourneyJournal::open(&p).unwrap();
        assert_eq!(j.stage("a"), Some(Stage::Ended));
        assert_eq!(j.stage("b"), Some(Stage::Sending));
        // What is written after the torn line is read back.
        j.record(&["c"], Stage::Sending, true).unwrap();
        drop(j);
        let j = JourneyJournal::open(&p).unwrap();
        assert_eq!(j.stage("c"), Some(Stage::Sending));
    }

    #[test]
    fn an_attempt_answered_unprocessed_is_unsent_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.ndjson");
        let j = JourneyJournal::open(&p).unwrap();
        j.record(&["a"], Stage::Sending, true).unwrap();
        j.record(&["a"], Stage::Unsent, false).unwrap();
        drop(j);
        let j = JourneyJournal::open(&p).unwrap();
        assert_eq!(j.stage("a"), Some(Stage::Unsent));
    }

    #[test]
    fn a_long_running_journal_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.ndjson");
        let j = JourneyJournal::open(&p).unwrap();
        for i in 0..(SLACK_LINES + 100) {
            let k = format!("k{}", i % 3);
            j.record(&[&k], Stage::Sending, false).unwrap();
        }
        j.record(&["k0"], Stage::Ended, false).unwrap();
        let lines = std::fs::read_to_string(&p).unwrap().lines().count();
        assert!(lines < SLACK_LINES, "{lines} lines");
        drop(j);
        let j = JourneyJournal::open(&p).unwrap();
        assert_eq!(j.stage("k0"), Some(Stage::Ended));
        assert_eq!(j.stage("k2"), Some(Stage::Sending));
    }

    #[test]
    fn keys_name_durable_records_only() {
        assert_eq!(
            key(&Origin::Spool(7), "signup", "u-1").as_deref(),
            Some("spool:7|signup|u-1")
        );
        let k = Origin::Kafka {
            topic: "t".into(),
            partition: 2,
            offset: 40,
        };
        assert_eq!(
            key(&k, "signup", "u-1").as_deref(),
            Some("kafka:t/2/40|signup|u-1")
        );
        assert_eq!(key(&Origin::Line(3), "signup", "u-1"), None);
    }
}
