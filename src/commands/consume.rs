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

use crate::action::Action;
use crate::commands::run::{self, RuleSource, RunError, RunSummary};
use crate::env::Env;
use crate::event::{Line, parse_line};
use crate::sfmc::deadletter::DeadLetters;
use crate::sfmc::sink::{Completion, Counters, Sink};
use crate::source::kafka::{
    ConsumeStats, ConsumerCtx, DEAD_LETTER_FLUSH, DeadLetterTopic, Flow, PartitionId, SeenIds,
    Tracker, dead_letters_flushed, offsets_list,
};
use crate::transform::{Outcome, Trace, transform};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use serde_json::Value;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Resolves when `consume` should stop: SIGINT/SIGTERM for the CLI, a channel in tests.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

pub struct ConsumeOptions {
    pub topic: String,
    /// Client settings (brokers, group, security) as built by `source::kafka::client_config`.
    pub kafka: ClientConfig,
    pub dead_letter: PathBuf,
    /// Also produce each dead-letter record to this topic.
    pub dead_letter_topic: Option<String>,
    /// Override the rules' `delivery.requests_per_second` (0 = unlimited).
    pub requests_per_second: Option<u32>,
    /// How often completed offsets are committed.
    pub commit_interval: Duration,
    /// How long a revocation waits for the revoked partitions' in-flight events.
    pub flush_timeout: Duration,
    /// Pause the assigned partitions at this many events in flight in the sink; resume at
    /// half of it.
    pub max_in_flight: usize,
    /// Drop a Journey Builder API event whose messageId was among the last this many
    /// (0: off).
    pub dedup_window: usize,
    pub env: Env,
    /// When to stop (then: no more reading, flush, commit, leave the group).
    pub shutdown: Shutdown,
    /// Counters, readable while it runs.
    pub stats: Arc<ConsumeStats>,
}

/// Default of `--max-in-flight` (events).
pub const DEFAULT_MAX_IN_FLIGHT: usize = crate::defaults::CONSUME_MAX_IN_FLIGHT;

/// Default of `--dedup-window` (message ids).
pub const DEFAULT_DEDUP_WINDOW: usize = crate::defaults::DEDUP_WINDOW;

/// Settings the relay's guarantees depend on (not overridable).
pub const FORCED: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
];

/// Defaults (overridable by the settings file and the environment). The prefetch bounds
/// keep memory bounded while partitions are paused (librdkafka's defaults allow 64 MB of
/// prefetched messages and 100,000 per partition).
pub const DEFAULTS: &[(&str, &str)] = &[
    ("auto.offset.reset", "earliest"),
    ("client.id", "sfmc-relay"),
    ("queued.max.messages.kbytes", "16384"),
    ("queued.min.messages", "10000"),
    ("fetch.max.bytes", "8388608"),
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

/// Commit the completed offsets. With a dead-letter topic, its records are flushed
/// first: an offset is committed only once the dead letters of the messages before it
/// were acknowledged (or failed after librdkafka's retries; the file has them either way).
fn commit(
    consumer: &StreamConsumer<ConsumerCtx>,
    tracker: &Tracker,
    dead_topic: Option<&DeadLetterTopic>,
    mode: CommitMode,
) {
    let commits = tracker.lock().take_commits(None);
    if commits.is_empty() {
        return;
    }
    if !dead_letters_flushed(dead_topic) {
        let mut g = tracker.lock();
        for (id, _) in &commits {
            g.commit_failed(id);
        }
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

/// Drop the API events of an event whose messageId was seen within the window (a
/// redelivery); rows and contacts stay (idempotent). Returns how many were dropped.
fn drop_duplicate_api_events(seen: &mut SeenIds, event: &Value, actions: &mut Vec<Action>) -> u64 {
    let is_api = |a: &Action| matches!(a, Action::ApiEvent { .. });
    if !actions.iter().any(is_api) {
        return 0;
    }
    let Some(id) = event.get("messageId").and_then(Value::as_str) else {
        return 0;
    };
    if seen.first_time(id) {
        return 0;
    }
    let before = actions.len();
    actions.retain(|a| !is_api(a));
    (before - actions.len()) as u64
}

/// What a dropped duplicate is counted as when nothing else is left of the event.
const DUPLICATE_REASON: &str = "duplicate messageId: API event already sent (--dedup-window)";

/// Consume until `opts.shutdown` resolves, then flush what is in flight and commit it.
pub async fn consume(rules: RuleSource, opts: ConsumeOptions) -> Result<RunSummary, RunError> {
    let program = rules();
    let target = run::target(&program, &opts.env, opts.requests_per_second).await?;
    let stats = opts.stats.clone();
    let dead_topic = match &opts.dead_letter_topic {
        Some(t) => Some(Arc::new(
            DeadLetterTopic::new(&opts.kafka, t, stats.clone()).map_err(RunError::Config)?,
        )),
        None => None,
    };
    let mut dead = DeadLetters::new(&opts.dead_letter);
    if let Some(t) = &dead_topic {
        let t = t.clone();
        dead = dead.with_tee(Box::new(move |event, record| t.send(event, record)));
    }
    let counters = Arc::new(Counters::default());
    let mut sink = Sink::new(
        target.client.clone(),
        run::sink_config(&program),
        Arc::new(dead),
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
            stats: stats.clone(),
            dead_topic: dead_topic.clone(),
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
    let flow = Flow::new(opts.max_in_flight);
    let mut seen = SeenIds::new(opts.dedup_window);
    let mut shutdown = opts.shutdown;
    let mut tick = tokio::time::interval(opts.commit_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        flow.update(&consumer, &stats);
        let paused = stats.paused.load(Ordering::Acquire);
        let msg = tokio::select! {
            biased;
            _ = &mut shutdown => {
                summary.interrupted = true;
                eprintln!("sfmc-relay: stopping: no more messages are read; flushing what is in flight");
                break;
            }
            _ = tick.tick() => {
                commit(&consumer, &tracker, dead_topic.as_deref(), CommitMode::Async);
                continue;
            }
            _ = stats.drained.notified(), if paused => continue,
            // Polled while paused too: rebalances and the group session are served here.
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
        stats.messages.fetch_add(1, Ordering::Relaxed);
        let version: Arc<str> = Arc::from(program.version.as_str());
        summary.lines += 1;
        summary.events += items.len() as u64;
        let mut items = items;
        for item in items.iter_mut() {
            if let Item::Event(event, Outcome::Actions(actions)) = item {
                let dropped = drop_duplicate_api_events(&mut seen, event, actions);
                stats
                    .duplicates_dropped
                    .fetch_add(dropped, Ordering::Relaxed);
            }
        }
        let pending = items
            .iter()
            .filter(|i| matches!(i, Item::Event(_, Outcome::Actions(a)) if !a.is_empty()))
            .count();
        let generation = tracker.lock().begin(&id, offset, pending);
        let line = offset.max(0) as u64;
        for item in items {
            match item {
                Item::Invalid(raw, reason) => sink.reject(line, &version, &raw, &reason),
                Item::Event(_, Outcome::Skipped(reason)) => {
                    summary.skipped += 1;
                    *summary.skip_reasons.entry(reason).or_insert(0) += 1;
                }
                Item::Event(_, Outcome::Actions(actions)) if actions.is_empty() => {
                    summary.skipped += 1;
                    *summary
                        .skip_reasons
                        .entry(DUPLICATE_REASON.to_string())
                        .or_insert(0) += 1;
                }
                Item::Event(event, Outcome::Rejected(reason)) => {
                    sink.reject(line, &version, &event, &reason)
                }
                Item::Event(event, Outcome::Actions(actions)) => {
                    let (t, id, s) = (tracker.clone(), id.clone(), stats.clone());
                    let low = flow.low;
                    let done: Completion = Box::new(move |_| {
                        t.complete(&id, generation, offset);
                        s.event_ended(low);
                    });
                    stats.event_started();
                    sink.submit_with(line, version.clone(), Arc::new(event), actions, Some(done))
                        .await;
                }
            }
        }
    }
    let finish = sink.finish().await;
    commit(&consumer, &tracker, dead_topic.as_deref(), CommitMode::Sync);
    // Leave the group now (not at the end of the process) so the others take over at once.
    consumer.unsubscribe();
    drop(consumer);
    if let Some(t) = &dead_topic
        && !t.flush(DEAD_LETTER_FLUSH)
    {
        tracing::error!(
            "kafka: {} dead-letter record(s) not acknowledged by the dead-letter topic at shutdown (they are in the dead-letter file)",
            t.pending()
        );
    }
    run::add_delivery_stats(&mut summary, &counters, &target.client);
    summary.notes.push(notes(
        &stats,
        &flow,
        opts.dedup_window,
        opts.dead_letter_topic.as_deref(),
    ));
    if let Some(sim) = target.sim {
        summary.simulator_report = Some(sim.summary_text());
        sim.shutdown().await;
    }
    finish.map_err(|e| RunError::Io(format!("dead-letter file: {e}")))?;
    Ok(summary)
}

/// The summary line of the Kafka side.
fn notes(
    stats: &ConsumeStats,
    flow: &Flow,
    dedup_window: usize,
    dead_topic: Option<&str>,
) -> String {
    let mut s = format!(
        "kafka: paused {} time(s) (--max-in-flight {}, peak {} events in flight, {} partition(s) paused on assignment); \
{} duplicate API event(s) dropped (--dedup-window {})",
        stats.pauses.load(Ordering::Relaxed),
        flow.high,
        stats.peak_in_flight.load(Ordering::Relaxed),
        stats.paused_on_assign.load(Ordering::Relaxed),
        stats.duplicates_dropped.load(Ordering::Relaxed),
        dedup_window
    );
    if let Some(topic) = dead_topic {
        s.push_str(&format!(
            "; dead-letter topic {topic}: {} record(s) acknowledged, {} failed",
            stats.dead_letters_produced.load(Ordering::Relaxed),
            stats.dead_letters_failed.load(Ordering::Relaxed)
        ));
    }
    s
}
