//! The group-commit writer: one thread appends every waiting request, fsyncs once, then
//! answers them all.

use super::record;
use super::segment::{self, seg_path};
use super::{AckMsg, AppendError, Segment, Shared};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use tokio::sync::oneshot;

pub(crate) struct AppendReq {
    pub payloads: Vec<Vec<u8>>,
    pub reply: oneshot::Sender<Result<(), AppendError>>,
}

/// At most this many bytes are written per group (later requests wait for the next).
const GROUP_BYTES: u64 = 8 << 20;

struct Active {
    first: u64,
    file: File,
    /// Bytes written and committed.
    bytes: u64,
}

struct Writer {
    shared: Arc<Shared>,
    ack_tx: mpsc::Sender<AckMsg>,
    next_seq: u64,
    active: Option<Active>,
    buf: Vec<u8>,
    /// Records in `buf`.
    buf_records: u64,
}

pub(crate) fn run(
    shared: Arc<Shared>,
    rx: mpsc::Receiver<AppendReq>,
    ack_tx: mpsc::Sender<AckMsg>,
    next_seq: u64,
) {
    let mut w = Writer {
        shared,
        ack_tx,
        next_seq,
        active: None,
        buf: Vec::with_capacity(1 << 20),
        buf_records: 0,
    };
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        let mut group_bytes = size(&group[0]);
        while group_bytes < GROUP_BYTES {
            match rx.try_recv() {
                Ok(r) => {
                    group_bytes += size(&r);
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        w.group(group);
    }
    // Seal the last segment so it can be deleted once delivered.
    if let Some(a) = w.active.take() {
        w.seal(a.first);
    }
}

fn size(r: &AppendReq) -> u64 {
    r.payloads.iter().map(|p| record::framed_len(p.len())).sum()
}

impl Writer {
    fn group(&mut self, group: Vec<AppendReq>) {
        let max = self.shared.config.max_bytes;
        let mut used = self.shared.lock().live_bytes;
        let mut accepted = Vec::with_capacity(group.len());
        let mut error: Option<io::Error> = None;
        for req in group {
            let n = size(&req);
            if used + n > max {
                let _ = req.reply.send(Err(AppendError::Full { used, max }));
                continue;
            }
            if error.is_none()
                && let Err(e) = self.add(&req.payloads, n)
            {
                error = Some(e);
            }
            used += n;
            accepted.push(req.reply);
        }
        if error.is_none()
            && let Err(e) = self.commit()
        {
            error = Some(e);
        }
        let result = match error {
            None => Ok(()),
            Some(e) => {
                tracing::error!("spool write failed: {e}");
                self.recover_from_error();
                Err(AppendError::Io(e.to_string()))
            }
        };
        for reply in accepted {
            let _ = reply.send(result.clone());
        }
    }

    /// Frame `payloads` into the buffer, rotating the segment first when it would grow
    /// past `segment_bytes`.
    fn add(&mut self, payloads: &[Vec<u8>], n: u64) -> io::Result<()> {
        let seg_bytes = self.shared.config.segment_bytes;
        let full = match &self.active {
            Some(a) => {
                a.bytes + self.buf.len() as u64 > 0
                    && a.bytes + self.buf.len() as u64 + n > seg_bytes
            }
            None => false,
        };
        if full {
            self.commit()?;
            let a = self.active.take().expect("checked above");
            self.seal(a.first);
        }
        if self.active.is_none() {
            self.open_segment()?;
        }
        for p in payloads {
            record::encode(self.next_seq, p, &mut self.buf);
            self.next_seq += 1;
            self.buf_records += 1;
        }
        Ok(())
    }

    fn open_segment(&mut self) -> io::Result<()> {
        let first = self.next_seq;
        let path = seg_path(&self.shared.dir, first);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        segment::sync_dir(&self.shared.dir)?;
        self.shared.lock().segments.insert(
            first,
            Segment {
                bytes: 0,
                records: 0,
                acked: 0,
                sealed: false,
                recovered_acks: Default::default(),
            },
        );
        self.active = Some(Active {
            first,
            file,
            bytes: 0,
        });
        Ok(())
    }

    /// Write and fsync the buffer, then publish the new committed length to readers.
    fn commit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let a = self.active.as_mut().expect("records imply a segment");
        a.file.write_all(&self.buf)?;
        a.file.sync_data()?;
        let n = self.buf.len() as u64;
        a.bytes += n;
        let records = self.buf_records;
        self.buf.clear();
        self.buf_records = 0;
        let mut s = self.shared.lock();
        if let Some(seg) = s.segments.get_mut(&a.first) {
            seg.bytes = a.bytes;
            seg.records += records;
        }
        s.live_bytes += n;
        s.pending += records;
        drop(s);
        self.shared.appended.fetch_add(records, Ordering::Relaxed);
        self.shared.cond.notify_all();
        Ok(())
    }

    fn seal(&mut self, first: u64) {
        if let Some(seg) = self.shared.lock().segments.get_mut(&first) {
            seg.sealed = true;
        }
        self.shared.cond.notify_all();
        let _ = self.ack_tx.send(AckMsg::Sealed);
    }

    /// After a failed write: drop the uncommitted bytes, cut the file back to its
    /// committed length, and start a new segment on the next append.
    fn recover_from_error(&mut self) {
        self.buf.clear();
        self.buf_records = 0;
        if let Some(a) = self.active.take() {
            let _ = a.file.set_len(a.bytes);
            if a.bytes == 0 {
                // Nothing committed: forget the (empty) segment.
                let mut s = self.shared.lock();
                s.segments.remove(&a.first);
                drop(s);
                let _ = segment::remove(&self.shared.dir, a.first);
            } else {
                self.seal(a.first);
            }
        }
    }
}
