//! The delivery side's reader: tails the segment files up to their committed length.

use super::Shared;
use super::record::{self, Decoded};
use super::segment::seg_path;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Spooled events `(seq, payload)` handed out by one read.
pub type Records = Vec<(u64, Vec<u8>)>;

/// Reads records in order, waiting for new ones; skips records acked by an earlier run.
pub struct SpoolReader {
    shared: Arc<Shared>,
    /// The segment being read and the offset of the next record in it.
    seg: u64,
    offset: u64,
    file: Option<File>,
}

/// Read at most this much per call (records are far smaller).
const CHUNK: u64 = 4 << 20;

impl SpoolReader {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        SpoolReader {
            shared,
            seg: 0,
            offset: 0,
            file: None,
        }
    }

    /// The next records `(seq, payload)`, blocking until some are committed.
    /// `None` once [`super::Spool::stop_reading`] was called.
    pub fn next_batch(&mut self) -> std::io::Result<Option<Records>> {
        loop {
            if self.shared.stop_reading.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let end = {
                let s = self.shared.lock();
                match s.segments.range(self.seg..).next() {
                    None => {
                        let _ = self.shared.cond.wait_timeout(s, Duration::from_millis(250));
                        continue;
                    }
                    Some((&first, seg)) => {
                        if first != self.seg {
                            self.seg = first;
                            self.offset = 0;
                            self.file = None;
                        }
                        if self.offset < seg.bytes {
                            seg.bytes
                        } else if seg.sealed {
                            self.seg = first + 1;
                            self.offset = 0;
                            self.file = None;
                            continue;
                        } else {
                            let _ = self.shared.cond.wait_timeout(s, Duration::from_millis(250));
                            continue;
                        }
                    }
                }
            };
            if self.file.is_none() {
                self.file = Some(File::open(seg_path(&self.shared.dir, self.seg))?);
            }
            let f = self.file.as_ref().expect("opened above");
            let mut want = (end - self.offset).min(CHUNK);
            let mut buf = vec![0u8; want as usize];
            f.read_exact_at(&mut buf, self.offset)?;
            let mut out = Vec::new();
            let mut pos = 0usize;
            loop {
                match record::decode(&buf[pos..]) {
                    Decoded::Record { seq, payload, len } => {
                        out.push((seq, payload.to_vec()));
                        pos += len;
                    }
                    Decoded::Incomplete if pos > 0 || want == end - self.offset => break,
                    Decoded::Incomplete => {
                        // A record larger than CHUNK: read the whole committed range.
                        let mut big = vec![0u8; (end - self.offset) as usize];
                        f.read_exact_at(&mut big, self.offset)?;
                        want = big.len() as u64;
                        buf = big;
                    }
                    Decoded::Corrupt => {
                        // Committed bytes never change; this is disk corruption.
                        tracing::error!(
                            "spool: corrupt record in segment {} at byte {}: skipping the rest of it",
                            self.seg,
                            self.offset + pos as u64
                        );
                        pos = (end - self.offset) as usize;
                        break;
                    }
                }
            }
            if pos == 0 && !buf.is_empty() {
                // Incomplete at the committed end cannot happen; avoid spinning.
                return Err(std::io::Error::other(format!(
                    "spool: segment {} ends inside a record at byte {}",
                    self.seg, self.offset
                )));
            }
            self.offset += pos as u64;
            let s = self.shared.lock();
            if let Some(seg) = s.segments.get(&self.seg)
                && !seg.recovered_acks.is_empty()
            {
                out.retain(|(seq, _)| !seg.recovered_acks.contains(seq));
            }
            drop(s);
            if !out.is_empty() {
                return Ok(Some(out));
            }
        }
    }
}
