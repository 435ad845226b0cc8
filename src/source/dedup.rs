//! Dropping events the ingest has already accepted, by `messageId`, as Segment's API does.
//!
//! Segment's libraries retry a request whose answer they did not get, with the same
//! `messageId`s. When `serve` is killed after a request's events were fsync'd to the spool
//! but before the reply left, the retry would spool them a second time: harmless for rows
//! (upserts), but a second Journey Builder entry. So the ingest remembers the last
//! [`WINDOW`] client `messageId`s it spooled, and on start it re-reads them from the spool
//! segments still on disk (before the spool deletes delivered ones): a retry that arrives
//! after a crash and restart is recognised, answered 200 and not spooled again (counted as
//! `sfmc_relay_events_duplicate_total`). Ids the relay made up itself (`relay-...`, for
//! events that came without one) are never looked up: they are unique by construction.
//!
//! The window is the pipeline's [`SeenIds`] (64-bit hashes; a false match needs a
//! collision among the window's ids: odds about 1 in 10^9 per window).

use crate::pipeline::dedup::SeenIds;
use crate::spool::record::{self, Decoded};
use std::io;
use std::path::Path;

/// How many recent `messageId`s are remembered.
pub const WINDOW: usize = 100_000;

/// The prefix of ids the ingest assigns to events that arrive without one.
pub const RELAY_ID_PREFIX: &str = "relay-";

/// The last client `messageId`s spooled ([`SeenIds`], without the relay's own ids).
pub struct RecentIds(SeenIds);

impl RecentIds {
    pub fn new(cap: usize) -> Self {
        RecentIds(SeenIds::new(cap))
    }

    /// Whether `id` was given by a client (the relay's own ids are never duplicates).
    pub fn is_client_id(id: &str) -> bool {
        !id.is_empty() && !id.starts_with(RELAY_ID_PREFIX)
    }

    /// True when `id` is new (a client id is remembered now); false for a duplicate.
    pub fn remember(&mut self, id: &str) -> bool {
        !Self::is_client_id(id) || self.0.first_time(id)
    }

    /// Forget `id` (its append failed: the client's retry must be accepted).
    pub fn forget(&mut self, id: &str) {
        self.0.forget(id)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ids of the newest records in the spool directory `dir` (up to `cap`), read
    /// before [`crate::spool::Spool::open`] deletes delivered segments. A missing
    /// directory is an empty window; unreadable records are skipped (recovery reports
    /// them).
    pub fn from_spool(dir: &Path, cap: usize) -> io::Result<Self> {
        let mut out = RecentIds::new(cap);
        let mut segs: Vec<std::path::PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        // Names are zero-padded first seqs: newest last.
        segs.sort();
        let mut newest_first: Vec<String> = Vec::new();
        'files: for path in segs.iter().rev() {
            let data = std::fs::read(path)?;
            let mut ids = Vec::new();
            let mut off = 0;
            while let Decoded::Record { payload, len, .. } = record::decode(&data[off..]) {
                off += len;
                #[derive(serde::Deserialize)]
                struct Id {
                    #[serde(rename = "messageId")]
                    message_id: Option<String>,
                }
                if let Ok(Id {
                    message_id: Some(id),
                }) = serde_json::from_slice::<Id>(payload)
                    && Self::is_client_id(&id)
                {
                    ids.push(id);
                }
            }
            for id in ids.into_iter().rev() {
                newest_first.push(id);
                if newest_first.len() >= cap {
                    break 'files;
                }
            }
        }
        for id in newest_first.iter().rev() {
            out.remember(id);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_client_ids_only() {
        let mut r = RecentIds::new(2);
        assert!(r.remember("relay-123") && r.remember("relay-123"));
        assert!(r.remember("a"));
        assert!(!r.remember("a"));
        assert!(r.remember("b") && r.remember("c"));
        assert!(r.remember("a"), "the oldest is forgotten");
        r.forget("a");
        assert!(r.remember("a"));
        assert_eq!(r.len(), 2);
        // A window of 0 remembers nothing and drops nothing.
        let mut none = RecentIds::new(0);
        assert!(none.remember("a") && none.remember("a"));
    }

    #[test]
    fn reads_the_newest_ids_from_spool_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = Vec::new();
        let mut new = Vec::new();
        for i in 0..5u64 {
            record::encode(
                i,
                format!(r#"{{"messageId":"old-{i}"}}"#).as_bytes(),
                &mut old,
            );
        }
        for i in 5..8u64 {
            let p = if i == 6 {
                r#"{"messageId":"relay-x"}"#.to_string()
            } else {
                format!(r#"{{"type":"track","messageId":"new-{i}"}}"#)
            };
            record::encode(i, p.as_bytes(), &mut new);
        }
        new.extend_from_slice(b"torn");
        std::fs::write(dir.path().join(format!("{:020}.seg", 0)), &old).unwrap();
        std::fs::write(dir.path().join(format!("{:020}.seg", 5)), &new).unwrap();
        let mut r = RecentIds::from_spool(dir.path(), 4).unwrap();
        assert_eq!(r.len(), 4);
        for seen in ["new-5", "new-7", "old-4", "old-3"] {
            assert!(!r.remember(seen), "{seen} should be remembered");
        }
        assert!(r.remember("old-2"), "only the newest 4");
        assert!(
            RecentIds::from_spool(&dir.path().join("none"), 4)
                .unwrap()
                .is_empty()
        );
    }
}
