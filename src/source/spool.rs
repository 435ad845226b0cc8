//! `serve`'s spool as a source: a reader thread tails the spool and pushes its records
//! into the pipeline; each record's ack marks it done in the spool, so a restart delivers
//! exactly what was accepted and not yet delivered or dead-lettered.

use super::file::CHUNK_LINES;
use super::{Ack, Origin, Record};
use crate::pipeline::Feeder;
use crate::spool::{Acker, SpoolReader};

/// Tail the spool until it stops reading or the pipeline stops. What is not pushed stays
/// in the spool (not acknowledged) for the next start.
pub fn read_into(mut reader: SpoolReader, acker: Acker, feeder: Feeder) -> std::io::Result<()> {
    while let Some(batch) = reader.next_batch()? {
        let mut batch = batch.into_iter().peekable();
        while batch.peek().is_some() {
            if feeder.is_stopped() {
                return Ok(());
            }
            let records: Vec<Record> = batch
                .by_ref()
                .take(CHUNK_LINES)
                .map(|(seq, payload)| {
                    let acker = acker.clone();
                    Record {
                        origin: Origin::Spool(seq),
                        data: payload,
                        too_long: None,
                        rejected: None,
                        ack: Ack::new(move || acker.ack(seq)),
                    }
                })
                .collect();
            if feeder.push_blocking(records).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}
