//! NDJSON from stdin or a file (`run`, `replay`): a reader thread cuts the input into
//! chunks of lines and pushes them into the pipeline. Lines need no acknowledgement; what
//! was read but could not be pushed because the relay is stopping is dead-lettered.

use super::lines::LineReader;
use super::{Ack, Origin, Record};
use crate::pipeline::{Feeder, Stopped, Unsent};
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Lines per chunk (a partial chunk goes as soon as the input pauses).
pub const CHUNK_LINES: usize = 256;

/// What the reader thread shares with the command that waits for it.
#[derive(Debug, Default)]
pub struct ReaderState {
    /// Lines read so far.
    pub lines_read: AtomicU64,
    /// The reader waits for input holding no record (everything read was pushed or
    /// dead-lettered): after a stop, the command need not wait for it to finish (stdin
    /// may never end).
    pub idle: AtomicBool,
}

/// Read `input` to its end (or until the pipeline stops), pushing chunks of lines.
pub fn read_into(
    input: Box<dyn Read + Send>,
    feeder: Feeder,
    unsent: Unsent,
    state: Arc<ReaderState>,
) -> std::io::Result<()> {
    let mut reader = LineReader::new(input);
    let mut chunk: Vec<Record> = Vec::with_capacity(CHUNK_LINES);
    let push = |chunk: Vec<Record>| -> std::io::Result<bool> {
        match feeder.push_blocking(chunk) {
            Ok(()) => Ok(true),
            Err(Stopped(records)) => unsent.write(records).map(|()| false),
        }
    };
    loop {
        if feeder.is_stopped() {
            push(std::mem::take(&mut chunk))?;
            return Ok(());
        }
        state.idle.store(chunk.is_empty(), Ordering::SeqCst);
        let next = reader.next_line();
        state.idle.store(false, Ordering::SeqCst);
        let line = match next {
            Ok(l) => l,
            Err(e) => {
                push(std::mem::take(&mut chunk))?;
                return Err(e);
            }
        };
        let Some(line) = line else { break };
        state.lines_read.fetch_add(1, Ordering::Relaxed);
        chunk.push(Record {
            origin: Origin::Line(line.number),
            data: line.bytes.to_vec(),
            too_long: line.too_long,
            rejected: None,
            ack: Ack::none(),
        });
        if (chunk.len() >= CHUNK_LINES || reader.caught_up())
            && !push(std::mem::replace(
                &mut chunk,
                Vec::with_capacity(CHUNK_LINES),
            ))?
        {
            return Ok(());
        }
    }
    push(chunk)?;
    Ok(())
}
