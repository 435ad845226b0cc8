//! What the sink's state files (the contact state, the journey journal) share: NDJSON
//! records appended as they happen, read back on start (a torn last line after a crash is
//! skipped), rewritten compactly.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

/// What [`read_records`] found.
pub(super) struct Contents {
    /// Lines in the file.
    pub lines: usize,
    /// The last line has no newline (a crash mid-write).
    pub torn: bool,
}

/// Read the records at `path` (none when it does not exist), calling `each` with every
/// line that parses as `T`; other lines (a torn last line) are skipped.
pub(super) fn read_records<T: DeserializeOwned>(
    path: &Path,
    mut each: impl FnMut(T),
) -> std::io::Result<Contents> {
    let mut contents = Contents {
        lines: 0,
        torn: false,
    };
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(contents),
        Err(e) => return Err(e),
    };
    let mut r = BufReader::new(f);
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(contents);
        }
        contents.lines += 1;
        contents.torn = line.last() != Some(&b'\n');
        if let Ok(record) = serde_json::from_slice::<T>(&line) {
            each(record);
        }
    }
}

/// Open `path` for appending (creating it and its directory); after a torn last line the
/// next record starts on a line of its own.
pub(super) fn open_append(path: &Path, torn: bool) -> std::io::Result<File> {
    ensure_parent(path)?;
    let mut out = OpenOptions::new().create(true).append(true).open(path)?;
    if torn {
        out.write_all(b"\n")?;
    }
    Ok(out)
}

/// Create the directory `path` goes into.
fn ensure_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir),
        _ => Ok(()),
    }
}

/// Replace the file at `path` with `records`, one JSON line each (written to a temporary
/// file, synced, then renamed over it).
pub(super) fn rewrite<T: Serialize>(
    path: &Path,
    records: impl IntoIterator<Item = T>,
) -> std::io::Result<()> {
    ensure_parent(path)?;
    let tmp = path.with_extension("tmp");
    let mut w = std::io::BufWriter::new(File::create(&tmp)?);
    for r in records {
        serde_json::to_writer(&mut w, &r)?;
        w.write_all(b"\n")?;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)
}
