use super::*;
use std::time::Duration;

fn cfg(dir: &Path, max: u64, seg: u64) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes: max,
        segment_bytes: seg,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn wait_for(mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("condition not reached");
}

fn segs(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg")
        })
        .count()
}

#[test]
fn append_read_ack_recover_delete() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let (spool, rep) = Spool::open(cfg(dir.path(), 1 << 20, 200)).unwrap();
        assert_eq!(rep.pending, 0);
        for i in 0..10u8 {
            rt.block_on(spool.append(vec![vec![i; 50]])).unwrap();
        }
        let mut r = spool.reader();
        let mut got = Vec::new();
        while got.len() < 10 {
            got.extend(r.next_batch().unwrap().unwrap());
        }
        assert_eq!(
            got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        assert_eq!(got[3].1, vec![3u8; 50]);
        let a = spool.acker();
        for s in [0, 1, 2, 5] {
            a.ack(s);
        }
        wait_for(|| spool.stats().acked == 4);
        spool.close();
    }
    // Torn tail: half a record at the end of the last segment.
    let last = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    std::io::Write::write_all(&mut f, &[9, 0, 0, 0, 1, 2]).unwrap();
    drop(f);
    let (spool, rep) = Spool::open(cfg(dir.path(), 1 << 20, 200)).unwrap();
    assert_eq!(rep.pending, 6, "{rep:?}");
    assert_eq!(rep.notes.len(), 1, "{rep:?}");
    let mut r = spool.reader();
    let mut got = Vec::new();
    while got.len() < 6 {
        got.extend(r.next_batch().unwrap().unwrap());
    }
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![3, 4, 6, 7, 8, 9]);
    rt.block_on(spool.append(vec![b"new".to_vec()])).unwrap();
    let next = r.next_batch().unwrap().unwrap();
    assert_eq!(next[0].0, 10, "seqs continue after recovery");
    let a = spool.acker();
    for s in seqs.into_iter().chain([10]) {
        a.ack(s);
    }
    wait_for(|| spool.stats().pending == 0);
    spool.close();
    assert_eq!(segs(dir.path()), 0, "delivered segments are deleted");
}

#[test]
fn full_spool_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let (spool, _) = Spool::open(cfg(dir.path(), 1000, 400)).unwrap();
    rt.block_on(spool.append(vec![vec![0; 400]])).unwrap();
    rt.block_on(spool.append(vec![vec![0; 400]])).unwrap();
    let e = rt.block_on(spool.append(vec![vec![0; 400]])).unwrap_err();
    assert!(matches!(e, AppendError::Full { .. }), "{e}");
    let mut r = spool.reader();
    let got = r.next_batch().unwrap().unwrap();
    let a = spool.acker();
    for (s, _) in got {
        a.ack(s);
    }
    // The first segment is sealed (rotation) and fully acked: deleted, space is free.
    wait_for(|| spool.stats().bytes < 500);
    rt.block_on(spool.append(vec![vec![0; 400]])).unwrap();
}

#[test]
fn second_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_a, _) = Spool::open(cfg(dir.path(), 1000, 400)).unwrap();
    assert!(Spool::open(cfg(dir.path(), 1000, 400)).is_err());
}
