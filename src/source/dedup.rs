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
//! Ids are kept as 64-bit hashes (a false match needs a collision among the window's
//! ids: odds about 1 in 10^9 per window).

use crate::spool::record::{self, Decoded};
use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::io;
use std::path::Path;

/// How many recent `messageId`s are remembered.
pub const WINDOW: usize = 100_000;

/// The prefix of ids the ingest assigns to events that arrive without one.
pub const RELAY_ID_PREFIX: &str = "relay-";

/// The last `cap` ids seen, oldest first out.
pub struct RecentIds {
    cap: usize,
    set: HashSet<u64>,
    order: VecDeque<u64>,
    hasher: foldhash::quality::RandomState,
}

impl RecentIds {
    pub fn new(cap: usize) -> Self {
        RecentIds {
            cap,
            set: HashSet::with_capacity(cap.min(1 << 16)),
            order: VecDeque::with_capacity(cap.min(1 << 16)),
            hasher: Default::default(),
        }
    }

    /// The key of a client-given id; `None` for ids the relay made up (never duplicates).
    pub fn key(&self, id: &str) -> Option<u64> {
        (self.cap > 0 && !id.starts_with(RELAY_ID_PREFIX) && !id.is_empty())
            .then(|| self.hasher.hash_one(id))
    }

    pub fn contains(&self, key: u64) -> bool {
        self.set.contains(&key)
    }

    /// Remember `key`; false when it was already there.
    pub fn insert(&mut self, key: u64) -> bool {
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    /// Forget `key` (its append failed: the client's retry must be accepted).
    pub fn remove(&mut self, key: u64) {
        if self.set.remove(&key)
            && let Some(i) = self.order.iter().rposition(|k| *k == key)
        {
            self.order.remove(i);
        }
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
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
        let mut newest_first: Vec<u64> = Vec::new();
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
                    && let Some(k) = out.key(&id)
                {
                    ids.push(k);
                }
            }
            for k in ids.into_iter().rev() {
                newest_first.push(k);
                if newest_first.len() >= cap {
                    break 'files;
                }
            }
        }
        for k in newest_first.into_iter().rev() {
            out.insert(k);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_forgets_the_oldest_and_ignores_relay_ids() {
        let mut r = RecentIds::new(2);
        assert!(r.key("relay-123").is_none());
        assert!(r.key("").is_none());
        let (a, b, c) = (
            r.key("a").unwrap(),
            r.key("b").unwrap(),
            r.key("c").unwrap(),
        );
        assert!(r.insert(a));
        assert!(!r.insert(a));
        assert!(r.insert(b));
        assert!(r.insert(c));
        assert!(!r.contains(a) && r.contains(b) && r.contains(c));
        r.remove(c);
        assert!(!r.contains(c));
        assert_eq!(r.len(), 1);
        // A window of 0 remembers nothing and drops nothing.
        assert!(RecentIds::new(0).key("a").is_none());
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
        let r = RecentIds::from_spool(dir.path(), 4).unwrap();
        let has = |id: &str| r.contains(r.key(id).unwrap());
        assert!(has("new-5") && has("new-7") && has("old-4") && has("old-3"));
        assert!(!has("old-2"), "only the newest 4");
        assert_eq!(r.len(), 4);
        assert!(
            RecentIds::from_spool(&dir.path().join("none"), 4)
                .unwrap()
                .is_empty()
        );
    }
}
