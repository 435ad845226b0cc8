//! The ack thread: persists "event N is done" records (one fdatasync per group of acks)
//! and deletes sealed segments once every record in them is done.

use super::record;
use super::segment::{self, ack_path};
use super::{AckMsg, Shared};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

pub(crate) fn run(shared: Arc<Shared>, rx: mpsc::Receiver<AckMsg>) {
    let mut files: HashMap<u64, File> = HashMap::new();
    let mut stop = false;
    while !stop {
        let Ok(first) = rx.recv() else { break };
        let mut msgs = vec![first];
        while msgs.len() < 65536 {
            match rx.try_recv() {
                Ok(m) => msgs.push(m),
                Err(_) => break,
            }
        }
        // Group this batch's acks by segment.
        let mut by_seg: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
        {
            let s = shared.lock();
            for m in &msgs {
                match m {
                    AckMsg::Done(seq) => {
                        if let Some((&first, _)) = s.segments.range(..=*seq).next_back() {
                            record::encode_ack(*seq, by_seg.entry(first).or_default());
                            *counts.entry(first).or_default() += 1;
                        }
                    }
                    AckMsg::Sealed => {}
                    AckMsg::Shutdown => stop = true,
                }
            }
        }
        for (first, buf) in &by_seg {
            let result = (|| -> std::io::Result<()> {
                let f = match files.get_mut(first) {
                    Some(f) => f,
                    None => {
                        let f = OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(ack_path(&shared.dir, *first))?;
                        files.entry(*first).or_insert(f)
                    }
                };
                f.write_all(buf)?;
                f.sync_data()
            })();
            if let Err(e) = result {
                // The events stay un-acked on disk and are delivered again after a
                // restart (at-least-once); keep serving.
                tracing::error!("spool: cannot write acks for segment {first}: {e}");
            }
        }
        // Count, and collect the segments that are now fully done.
        let mut done = Vec::new();
        {
            let mut s = shared.lock();
            let mut acked = 0;
            for (first, n) in counts {
                if let Some(seg) = s.segments.get_mut(&first) {
                    seg.acked += n;
                    acked += n;
                }
            }
            s.pending = s.pending.saturating_sub(acked);
            shared.acked.fetch_add(acked, Ordering::Relaxed);
            let ready: Vec<u64> = s
                .segments
                .iter()
                .filter(|(_, seg)| seg.sealed && seg.acked >= seg.records)
                .map(|(k, _)| *k)
                .collect();
            for first in ready {
                if let Some(seg) = s.segments.remove(&first) {
                    s.live_bytes = s.live_bytes.saturating_sub(seg.bytes);
                    done.push(first);
                }
            }
        }
        for first in done {
            files.remove(&first);
            if let Err(e) = segment::remove(&shared.dir, first) {
                tracing::error!("spool: cannot delete delivered segment {first}: {e}");
            }
        }
    }
}
