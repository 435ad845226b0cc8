//! `sfmc-relay produce`: write NDJSON events to a Kafka topic, one event per message,
//! keyed by `userId` (else `anonymousId`) so one user's events share a partition and keep
//! their order. Batch envelopes are split into their events (each keyed on its own).

use crate::commands::run::RunError;
use crate::event::{Line, parse_line_at};
use crate::source::kafka::{LogContext, message_key};
use crate::source::lines::{LineReader, open_input};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

pub struct ProduceOptions {
    pub topic: String,
    /// Client settings as built by `source::kafka::client_config`.
    pub kafka: ClientConfig,
    /// NDJSON events; `None`: stdin.
    pub input: Option<PathBuf>,
}

/// Producer defaults (overridable by the settings file and the environment): idempotence
/// keeps one partition's messages in order across retries, and `murmur2_random` places
/// keys in the same partitions as the Java clients' default partitioner.
pub const DEFAULTS: &[(&str, &str)] = &[
    ("client.id", "sfmc-relay-produce"),
    ("enable.idempotence", "true"),
    ("partitioner", "murmur2_random"),
    ("linger.ms", "5"),
];

/// What `produce` did.
#[derive(Debug, Default, Clone)]
pub struct ProduceSummary {
    pub lines: u64,
    /// Messages written (acknowledged by the brokers).
    pub written: u64,
    /// Messages without a key (no userId nor anonymousId).
    pub unkeyed: u64,
    /// Lines that are not events (reported on stderr, not written).
    pub invalid: u64,
    /// Messages the brokers did not take.
    pub failed: u64,
    pub first_error: Option<String>,
}

impl ProduceSummary {
    pub fn render(&self, topic: &str) -> String {
        let mut s = format!(
            "{} messages written to {topic} from {} lines ({} without userId/anonymousId), {} invalid line(s) skipped, {} failed",
            self.written, self.lines, self.unkeyed, self.invalid, self.failed
        );
        if let Some(e) = &self.first_error {
            s.push_str(&format!(" (first error: {e})"));
        }
        s
    }
}

/// Most messages awaiting their acknowledgement at once.
const MAX_PENDING: usize = 10_000;

async fn settle(pending: &mut VecDeque<DeliveryFuture>, summary: &mut ProduceSummary) {
    let Some(f) = pending.pop_front() else { return };
    match f.await {
        Ok(Ok(_)) => summary.written += 1,
        Ok(Err((e, _))) => {
            summary.failed += 1;
            summary.first_error.get_or_insert_with(|| e.to_string());
        }
        Err(_) => {
            summary.failed += 1;
            summary
                .first_error
                .get_or_insert_with(|| "the producer stopped".to_string());
        }
    }
}

pub async fn produce(opts: ProduceOptions) -> Result<ProduceSummary, RunError> {
    let producer: FutureProducer<LogContext> = opts
        .kafka
        .create_with_context(LogContext)
        .map_err(|e| RunError::Config(format!("Kafka producer: {e}")))?;
    let input = open_input(opts.input.as_deref()).map_err(|e| RunError::Io(e.to_string()))?;
    let mut reader = LineReader::new(input);
    let mut summary = ProduceSummary::default();
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::new();
    loop {
        let line = reader
            .next_line()
            .map_err(|e| RunError::Io(format!("reading input: {e}")))?;
        let Some(line) = line else { break };
        summary.lines += 1;
        let parsed = match line.text() {
            Err(rejected) => Line::Invalid(rejected.reason),
            Ok(text) => parse_line_at(text, &line.origin()).0,
        };
        let events = match parsed {
            Line::Blank => continue,
            Line::Invalid(reason) => {
                eprintln!("sfmc-relay produce: skipped: {reason}");
                summary.invalid += 1;
                continue;
            }
            Line::Events(events) => events,
        };
        let text = std::str::from_utf8(line.bytes).unwrap_or_default();
        let single = events.len() == 1;
        for event in events {
            let key = message_key(&event);
            if key.is_none() {
                summary.unkeyed += 1;
            }
            // A single event goes as written; a batch's events are serialised one by one.
            let payload = if single {
                text.trim().to_string()
            } else {
                event.to_string()
            };
            loop {
                let mut record = FutureRecord::<str, str>::to(&opts.topic).payload(&payload);
                if let Some(k) = &key {
                    record = record.key(k.as_str());
                }
                match producer.send_result(record) {
                    Ok(f) => {
                        pending.push_back(f);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        if pending.is_empty() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        } else {
                            settle(&mut pending, &mut summary).await;
                        }
                    }
                    Err((e, _)) => {
                        return Err(RunError::Io(format!("producing to {}: {e}", opts.topic)));
                    }
                }
            }
            while pending.len() >= MAX_PENDING {
                settle(&mut pending, &mut summary).await;
            }
        }
    }
    while !pending.is_empty() {
        settle(&mut pending, &mut summary).await;
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(|e| RunError::Io(format!("flushing to {}: {e}", opts.topic)))?;
    Ok(summary)
}
