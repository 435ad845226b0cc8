//! `sfmc-relay consume`: read Segment events from a Kafka topic as a member of a consumer
//! group and deliver them through the same sink as `run` (see `docs/kafka.md`).
//!
//! One message holds one event or a `{"batch":[...]}` envelope. Messages are handled in
//! the order they arrive, so one partition's events (one user's, when keyed by `produce`)
//! reach the sink in order, and the sink keeps per-key order from there. Offsets are
//! committed only up to the messages whose events all ended (delivered or dead-lettered):
//! at-least-once. On revocation the revoked partitions' in-flight events get
//! `flush_timeout` to finish; what is left is not committed and is read again by the new
//! owner.

use crate::commands::run::{self, EnvSource, RuleSource, RunError, RunSummary};
use crate::event::{Line, parse_line};
use crate::sfmc::deadletter::DeadLetters;
use crate::sfmc::sink::{Completion, Counters, Sink};
use crate::source::kafka::{ConsumerCtx, PartitionId, Tracker, offsets_list};
use crate::transform::{Outcome, Trace, transform};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub struct ConsumeOptions {
    pub topic: String,
    /// Client settings (brokers, group, security) as built by `source::kafka::client_config`.
    pub kafka: ClientConfig,
    pub dead_letter: PathBuf,
    /// Override the rules' `delivery.requests_per_second` (0 = unlimited).
    pub requests_per_second: Option<u32>,
    /// How often completed offsets are committed.
    pub commit_interval: Duration,
    /// How long a revocation waits for the revoked partitions' in-flight events.
    pub flush_timeout: Duration,
    pub env: EnvSource,
}

/// Settings the relay's guarantees depend on (not overridable).
pub const FORCED: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
];

/// Defaults (overridable by the settings file and the environment).
pub const DEFAULTS: &[(&str, &str)] = &[
    ("auto.offset.reset", "earliest"),
    ("client.id", "sfmc-relay"),
];

enum Item {
    Event(Value, Outcome),
    Invalid(Value, String),
}

/// What one message holds, transformed with `program`.
fn items(program: &crate::rules::Program, payload: Option<&[u8]>, at: &str) -> Vec<Item> {
    let Some(bytes) = payload else {
        return vec![Item::Invalid(
            Value::Null,
            format!("{at}: empty message (no payload)"),
        )];
    };
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            return vec![Item::Invalid(
                Value::String(String::from_utf8_lossy(bytes).into_owned()),
                format!("{at}: not UTF-8 text: {e}"),
            )];
        }
    };
    match parse_line(text, 0) {
        Line::Blank => vec![],
        Line::Invalid(reason) => {
            // parse_line says "line 1: ..."; say where in Kafka instead.
            let reason = reason.strip_prefix("line 1: ").unwrap_or(&reason);
            vec![Item::Invalid(
                Value::String(text.trim_end().to_string()),
                format!("{at}: {reason}"),
            )]
        }
        Line::Events(events) => events
            .into_iter()
            .map(|ev| {
                let outcome = transform(program, &ev, &mut Trace::off());
                Item::Event(ev, outcome)
            })
            .collect(),
    }
}

fn commit(consumer: &StreamConsumer<ConsumerCtx>, tracker: &Tracker, mode: CommitMode) {
    let commits = tracker.lock().take_commits(None);
    if commits.is_empty() {
        return;
    }
    tracing::debug!("kafka: committing {commits:?}");
    if let Err(e) = consumer.commit(&offsets_list(&commits), mode) {
        tracing::warn!("kafka: offset commit failed (retried): {e}");
        let mut g = tracker.lock();
        for (id, _) in &commits {
            g.commit_failed(id);
        }
    }
}

/// Consume until SIGINT/SIGTERM, then flush what is in flight and commit it.
pub async fn consume(rules: RuleSource, opts: ConsumeOptions) -> Result<RunSummary, RunError> {
    let program = rules();
    let target = run::target(&program, &opts.env, opts.requests_per_second).await?;
    let dead = Arc::new(DeadLetters::new(&opts.dead_letter));
    let counters = Arc::new(Counters::default());
    let mut sink = Sink::new(
        target.client.clone(),
        run::sink_config(&program),
        dead,
        counters.clone(),
    );

    let tracker = Arc::new(Tracker::default());
    let mut config = opts.kafka.clone();
    for (k, v) in FORCED {
        config.set(*k, *v);
    }
    let consumer: StreamConsumer<ConsumerCtx> = config
        .create_with_context(ConsumerCtx {
            tracker: tracker.clone(),
            flush_timeout: opts.flush_timeout,
        })
        .map_err(|e| RunError::Config(format!("Kafka consumer: {e}")))?;
    consumer
        .subscribe(&[opts.topic.as_str()])
        .map_err(|e| RunError::Config(format!("subscribing to {}: {e}", opts.topic)))?;
    tracing::info!(
        "kafka: consuming {} as group {} (rules {})",
        opts.topic,
        config.get("group.id").unwrap_or("?"),
        program.version
    );

    let mut summary = RunSummary {
        rules_version: program.version.clone(),
        dead_letter_path: opts.dead_letter.clone(),
        ..Default::default()
    };
    let signal = run::wait_for_signal();
    tokio::pin!(signal);
    let mut tick = tokio::time::interval(opts.commit_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            biased;
            _ = &mut signal => {
                summary.interrupted = true;
                eprintln!("sfmc-relay: stopping: no more messages are read; flushing what is in flight");
                break;
            }
            _ = tick.tick() => {
                commit(&consumer, &tracker, CommitMode::Async);
                continue;
            }
            msg = consumer.recv() => msg,
        };
        let (id, offset, program, items) = match msg {
            Err(e) => {
                tracing::warn!("kafka: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Ok(m) => {
                let id: PartitionId = (m.topic().to_string(), m.partition());
                let at = format!("{}[{}]@{}", id.0, id.1, m.offset());
                let program = rules();
                let items = items(&program, m.payload(), &at);
                (id, m.offset(), program, items)
            }
        };
        let version: Arc<str> = Arc::from(program.version.as_str());
        summary.lines += 1;
        summary.events += items.len() as u64;
        let pending = items
            .iter()
            .filter(|i| matches!(i, Item::Event(_, Outcome::Actions(_))))
            .count();
        let generation = tracker.lock().begin(&id, offset, pending);
        let line = offset.max(0) as u64;
        for item in items {
            match item {
                Item::Invalid(raw, reason) => sink.reject(line, &version, &raw, &reason),
                Item::Event(_, Outcome::Skipped(_)) => summary.skipped += 1,
                Item::Event(event, Outcome::Rejected(reason)) => {
                    sink.reject(line, &version, &event, &reason)
                }
                Item::Event(event, Outcome::Actions(actions)) => {
                    let (t, id) = (tracker.clone(), id.clone());
                    let done: Completion = Box::new(move |_| t.complete(&id, generation, offset));
                    sink.submit_with(line, version.clone(), Arc::new(event), actions, Some(done))
                        .await;
                }
            }
        }
    }
    let finish = sink.finish().await;
    commit(&consumer, &tracker, CommitMode::Sync);
    // Leave the group now (not at the end of the process) so the others take over at once.
    consumer.unsubscribe();
    drop(consumer);
    run::add_delivery_stats(&mut summary, &counters, &target.client);
    if let Some(sim) = target.sim {
        summary.simulator_report = Some(sim.summary_text());
        sim.shutdown().await;
    }
    finish.map_err(|e| RunError::Io(format!("dead-letter file: {e}")))?;
    Ok(summary)
}
