//! The durable spool between HTTP ingest and delivery.
//!
//! # Design (and why)
//!
//! An append-only log of *segment files* (`{first_seq:020}.seg`, rotated at
//! `segment_bytes`), each record framed as `len | crc32 | seq | payload` (see
//! [`record`]). One event is one record, so each event's delivery can be acknowledged on
//! its own. Alternatives considered: an embedded database (sled, redb, SQLite) would
//! give the same guarantees with far more code and write amplification than a queue
//! needs; one file per event costs an fsync of the directory per event. A log with group
//! commit is the classic answer (Kafka, Vector's disk buffer, write-ahead logs).
//!
//! * **Appending** ([`writer`]): one thread owns the active segment. HTTP handlers send
//!   their records to it and wait; the thread takes *every* request waiting, writes them
//!   with one `write`, calls `fdatasync` once, and then answers them all (group commit:
//!   concurrent requests share one fsync, so throughput grows with concurrency while each
//!   reply still means "on disk").
//! * **Reading** ([`reader`]): the delivery side tails the segment files up to the
//!   committed length (never past an fsync), so recovery and live delivery are the same
//!   code path and memory stays bounded however large the backlog is.
//! * **Acknowledging** ([`ack`]): when SFMC accepted an event (or it was dead-lettered),
//!   its seq is appended to the segment's `.ack` file (12-byte CRC'd records), with one
//!   `fdatasync` per group of acks. A sealed segment whose records are all acked is
//!   deleted with its ack file.
//! * **Recovery** ([`segment::recover`]): on start every segment is scanned; a torn last
//!   record (crash mid-`write`) fails its length/CRC check and the file is truncated
//!   there (that request was never answered, so the client retries it). Records without
//!   an ack are delivered again; recovered segments are sealed (new appends go to a new
//!   segment).
//! * **Bound**: the bytes of all live segments are capped by `max_bytes`; an append that
//!   would pass it fails with [`AppendError::Full`] (the server answers 503, the client
//!   retries later) instead of dropping anything.
//!
//! # Guarantees
//!
//! An event acknowledged to the HTTP client is on disk (fdatasync'd). It is delivered at
//! least once: until its ack record is synced, a crash makes the next start send it
//! again. Row upserts are idempotent, so that is harmless. Journey API events are not:
//! the remaining window for a duplicate is the time between SFMC accepting the call and
//! the ack record's fsync (the ack thread writes as soon as the completion arrives,
//! typically well under 10 ms), plus the usual HTTP ambiguity (a request SFMC processed
//! whose response was lost, which the client's retry policy re-sends anyway). A process
//! crash (SIGKILL, panic, OOM) loses nothing that was synced; a power loss loses nothing
//! either, as long as the disk honours fdatasync.

pub mod ack;
pub mod reader;
pub mod record;
pub mod segment;
pub mod writer;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::JoinHandle;

pub use reader::SpoolReader;

/// Spool settings.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Upper bound on the bytes of all live segment files; appends past it fail (503).
    pub max_bytes: u64,
    /// Segment files are rotated at about this size.
    pub segment_bytes: u64,
}

impl SpoolConfig {
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        SpoolConfig {
            dir: dir.into(),
            max_bytes,
            // Small enough that a fully delivered segment is freed soon, and that a few
            // segments fit in the bound; large enough that rotation is rare.
            segment_bytes: (max_bytes / 8).clamp(64 * 1024, 64 << 20),
        }
    }
}

/// Why an append failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error("the spool is full ({used} of {max} bytes): delivery is behind; retry later")]
    Full { used: u64, max: u64 },
    #[error("spool write failed: {0}")]
    Io(String),
    #[error("the spool is closed (shutting down)")]
    Closed,
}

/// A segment's bookkeeping.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Committed (fsync'd) length: readers never read past it.
    pub bytes: u64,
    pub records: u64,
    pub acked: u64,
    /// No more appends (rotated, or recovered from a previous run).
    pub sealed: bool,
    /// Seqs acked in a previous run (recovered segments only): the reader skips them.
    pub recovered_acks: HashSet<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub segments: BTreeMap<u64, Segment>,
    /// Bytes of all live segment files.
    pub live_bytes: u64,
    /// Records committed and not yet acked.
    pub pending: u64,
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    pub config: SpoolConfig,
    pub state: Mutex<State>,
    /// Signalled on every commit (and on stop) for the reader.
    pub cond: Condvar,
    pub stop_reading: AtomicBool,
    pub appended: AtomicU64,
    pub acked: AtomicU64,
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) enum AckMsg {
    Done(u64),
    /// A segment was sealed: delete it if it is already fully acked.
    Sealed,
    /// Write what was received so far and stop.
    Shutdown,
}

/// What `open` found.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// Events accepted by an earlier run and not yet delivered (delivered now).
    pub pending: u64,
    pub segments: usize,
    /// Recovery notes (torn tails truncated).
    pub notes: Vec<String>,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpoolStats {
    pub bytes: u64,
    pub max_bytes: u64,
    pub segments: usize,
    /// Events on disk not yet delivered or dead-lettered.
    pub pending: u64,
    pub appended: u64,
    pub acked: u64,
}

/// The spool: [`Spool::append`] from request handlers, one [`SpoolReader`] for delivery,
/// [`Acker::ack`] from delivery completions.
pub struct Spool {
    shared: Arc<Shared>,
    append_tx: Mutex<Option<mpsc::Sender<writer::AppendReq>>>,
    ack_tx: mpsc::Sender<AckMsg>,
    writer: Mutex<Option<JoinHandle<()>>>,
    acker: Mutex<Option<JoinHandle<()>>>,
    reader_taken: AtomicBool,
    _lock: File,
}

/// Marks events done; cheap to clone.
#[derive(Clone)]
pub struct Acker {
    tx: mpsc::Sender<AckMsg>,
}

impl Acker {
    /// `seq` was delivered or dead-lettered: it must not be delivered again.
    pub fn ack(&self, seq: u64) {
        // After shutdown the ack is lost and the event is delivered again on the next
        // start: at-least-once, never lost.
        let _ = self.tx.send(AckMsg::Done(seq));
    }
}

impl Spool {
    /// Open (or create) the spool in `config.dir`, recovering what an earlier run left.
    /// Only one process may use a spool directory at a time (an advisory lock).
    pub fn open(config: SpoolConfig) -> io::Result<(Spool, OpenReport)> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "spool {} is in use by another sfmc-relay process",
                        dir.display()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let mut report = OpenReport::default();
        let recovered = segment::recover(&dir, &mut report.notes)?;
        let mut state = State::default();
        let mut next_seq = 0u64;
        for r in recovered {
            if let Some(l) = r.last_seq {
                next_seq = next_seq.max(l + 1);
            }
            if r.acked.len() as u64 >= r.records {
                segment::remove(&dir, r.first)?;
                continue;
            }
            report.pending += r.records - r.acked.len() as u64;
            state.pending += r.records - r.acked.len() as u64;
            state.live_bytes += r.bytes;
            state.segments.insert(
                r.first,
                Segment {
                    bytes: r.bytes,
                    records: r.records,
                    acked: r.acked.len() as u64,
                    sealed: true,
                    recovered_acks: r.acked,
                },
            );
        }
        segment::sync_dir(&dir)?;
        report.segments = state.segments.len();
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            config,
            state: Mutex::new(state),
            cond: Condvar::new(),
            stop_reading: AtomicBool::new(false),
            appended: AtomicU64::new(0),
            acked: AtomicU64::new(0),
        });
        let (ack_tx, ack_rx) = mpsc::channel();
        let acker = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("spool-ack".into())
                .spawn(move || ack::run(shared, ack_rx))?
        };
        let (append_tx, append_rx) = mpsc::channel();
        let writer = {
            let shared = shared.clone();
            let ack_tx = ack_tx.clone();
            std::thread::Builder::new()
                .name("spool-writer".into())
                .spawn(move || writer::run(shared, append_rx, ack_tx, next_seq))?
        };
        Ok((
            Spool {
                shared,
                append_tx: Mutex::new(Some(append_tx)),
                ack_tx,
                writer: Mutex::new(Some(writer)),
                acker: Mutex::new(Some(acker)),
                reader_taken: AtomicBool::new(false),
                _lock: lock,
            },
            report,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Append `payloads` (one event each) and return once they are on disk.
    /// All or nothing: either every payload is durable, or none is accepted.
    pub async fn append(&self, payloads: Vec<Vec<u8>>) -> Result<(), AppendError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        {
            let g = self.append_tx.lock().unwrap_or_else(|e| e.into_inner());
            let Some(tx) = g.as_ref() else {
                return Err(AppendError::Closed);
            };
            tx.send(writer::AppendReq { payloads, reply })
                .map_err(|_| AppendError::Closed)?;
        }
        rx.await.unwrap_or(Err(AppendError::Closed))
    }

    /// The delivery side's reader (one per spool).
    pub fn reader(&self) -> SpoolReader {
        assert!(
            !self.reader_taken.swap(true, Ordering::SeqCst),
            "one reader per spool"
        );
        SpoolReader::new(self.shared.clone())
    }

    pub fn acker(&self) -> Acker {
        Acker {
            tx: self.ack_tx.clone(),
        }
    }

    pub fn stats(&self) -> SpoolStats {
        let s = self.shared.lock();
        SpoolStats {
            bytes: s.live_bytes,
            max_bytes: self.shared.config.max_bytes,
            segments: s.segments.len(),
            pending: s.pending,
            appended: self.shared.appended.load(Ordering::Relaxed),
            acked: self.shared.acked.load(Ordering::Relaxed),
        }
    }

    /// Stop accepting appends (waits for the writer to finish its last group).
    pub fn close_appends(&self) {
        let tx = self
            .append_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(tx);
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }

    /// Make the reader return `None` at the next record boundary (what it has not
    /// handed out stays in the spool for the next start).
    pub fn stop_reading(&self) {
        self.shared.stop_reading.store(true, Ordering::SeqCst);
        let _g = self.shared.lock();
        self.shared.cond.notify_all();
    }

    /// Close: stop appends, write the acks received so far, stop the threads.
    pub fn close(&self) {
        self.close_appends();
        self.stop_reading();
        let _ = self.ack_tx.send(AckMsg::Shutdown);
        if let Some(h) = self.acker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests;
