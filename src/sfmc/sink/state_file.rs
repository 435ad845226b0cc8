//! What the sink's state files (the contact state, the journey journal) share: NDJSON
//! records appended as they happen, rewritten compactly when opened.

use serde::Serialize;
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Create the directory `path` goes into.
pub(super) fn ensure_parent(path: &Path) -> std::io::Result<()> {
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
    let tmp = path.with_extension("tmp");
    let mut w = std::io::BufWriter::new(File::create(&tmp)?);
    for r in records {
        serde_json::to_writer(&mut w, &r)?;
        w.write_all(b"\n")?;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)
}
