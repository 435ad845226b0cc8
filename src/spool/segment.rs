//! Segment and ack file naming, and crash recovery of a spool directory.
//!
//! Segment `N` is `{N:020}.seg` (N = the sequence number of its first record) with its
//! acks in `{N:020}.ack`. Recovery reads every segment, truncates a torn or corrupt tail
//! at the last valid record, reads the ack file's valid prefix, and reports what is
//! left to deliver.

use super::record::{self, Decoded};
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

pub fn seg_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

pub fn ack_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.ack"))
}

fn parse_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?;
    (stem.len() == 20).then(|| stem.parse().ok()).flatten()
}

/// A segment found on disk.
#[derive(Debug)]
pub struct Recovered {
    pub first: u64,
    /// Length of the valid prefix (the file was truncated to it).
    pub bytes: u64,
    pub records: u64,
    pub last_seq: Option<u64>,
    /// Seqs of this segment that an ack record marks done.
    pub acked: HashSet<u64>,
}

/// fsync a directory, so that file creations and deletions in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Scan `dir`: every segment (sorted by first seq), after truncating torn tails.
/// Ack files whose segment is gone are deleted. Problems are described in `notes`.
pub fn recover(dir: &Path, notes: &mut Vec<String>) -> io::Result<Vec<Recovered>> {
    let mut segs = Vec::new();
    let mut acks = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = parse_name(name, ".seg") {
            segs.push(n);
        } else if let Some(n) = parse_name(name, ".ack") {
            acks.push(n);
        }
    }
    segs.sort_unstable();
    for a in acks {
        if segs.binary_search(&a).is_err() {
            fs::remove_file(ack_path(dir, a))?;
        }
    }
    let mut out = Vec::new();
    for first in segs {
        let path = seg_path(dir, first);
        let data = fs::read(&path)?;
        let mut off = 0usize;
        let mut seqs = HashSet::new();
        let mut last_seq = None;
        loop {
            match record::decode(&data[off..]) {
                Decoded::Record { seq, len, .. } => {
                    seqs.insert(seq);
                    last_seq = Some(seq);
                    off += len;
                }
                Decoded::Incomplete if off == data.len() => break,
                bad => {
                    notes.push(format!(
                        "spool: {}: {} record at byte {off}: truncating {} bytes (a write torn by a crash)",
                        path.display(),
                        if bad == Decoded::Corrupt { "corrupt" } else { "incomplete" },
                        data.len() - off
                    ));
                    let f = OpenOptions::new().write(true).open(&path)?;
                    f.set_len(off as u64)?;
                    f.sync_all()?;
                    break;
                }
            }
        }
        let acked: HashSet<u64> = match fs::read(ack_path(dir, first)) {
            Ok(buf) => record::decode_acks(&buf)
                .into_iter()
                .filter(|s| seqs.contains(s))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => return Err(e),
        };
        out.push(Recovered {
            first,
            bytes: off as u64,
            records: seqs.len() as u64,
            last_seq,
            acked,
        });
    }
    Ok(out)
}

/// Delete a segment and its ack file.
pub fn remove(dir: &Path, first: u64) -> io::Result<()> {
    for p in [seg_path(dir, first), ack_path(dir, first)] {
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
