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

use crate::pipeline::{Env, Pipeline, PipelineOptions, RuleSource, RunError, RunSummary};
use crate::source::Framing;
use crate::source::kafka::{ConsumeStats, DEAD_LETTER_FLUSH, DeadLetterTopic, Flow};
use crate::source::kafka_source::KafkaSource;
use rdkafka::ClientConfig;
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
    /// Where state kept across runs lives (Contact Keys known to exist); `None`: the
    /// dead-letter file's directory.
    pub state_dir: Option<PathBuf>,
    /// When to stop (then: no more reading, flush, commit, leave the group).
    pub shutdown: Shutdown,
    /// Counters, readable while it runs.
    pub stats: Arc<ConsumeStats>,
}

/// Default of `--max-in-flight` (events).
pub const DEFAULT_MAX_IN_FLIGHT: usize = crate::defaults::CONSUME_MAX_IN_FLIGHT;

/// Default of `--dedup-window` (message ids).
pub const DEFAULT_DEDUP_WINDOW: usize = crate::defaults::DEDUP_WINDOW;

pub use crate::source::kafka_source::FORCED;

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

/// Consume until `opts.shutdown` resolves, then flush what is in flight and commit it.
pub async fn consume(rules: RuleSource, opts: ConsumeOptions) -> Result<RunSummary, RunError> {
    let stats = opts.stats.clone();
    let dead_topic = match &opts.dead_letter_topic {
        Some(t) => Some(Arc::new(
            DeadLetterTopic::new(&opts.kafka, t, stats.clone()).map_err(RunError::Config)?,
        )),
        None => None,
    };
    let mut p = PipelineOptions::new(Framing::Ndjson, opts.dead_letter.clone(), opts.env.clone());
    p.durable = true;
    p.requests_per_second = opts.requests_per_second;
    p.dedup_window = opts.dedup_window;
    p.unit = "messages";
    p.several_relays = true;
    p.journal_scope = opts.kafka.get("group.id").map(str::to_string);
    // On stop, what was read is delivered for up to this long; the rest is not committed.
    p.drain_timeout = Some(Duration::from_secs(crate::defaults::DRAIN_TIMEOUT_SECS));
    p.state_dir = opts.state_dir.clone();
    if let Some(t) = &dead_topic {
        let t = t.clone();
        p.dead_letter_tee = Some(Box::new(move |event, record| t.send(event, record)));
    }
    let pipeline = Pipeline::start(rules, p).await?;
    let source = KafkaSource::subscribe(
        &opts.kafka,
        &opts.topic,
        opts.max_in_flight,
        opts.commit_interval,
        opts.flush_timeout,
        stats.clone(),
        dead_topic.clone(),
    )?;
    tracing::info!(
        "kafka: consuming {} as group {} (rules {})",
        opts.topic,
        opts.kafka.get("group.id").unwrap_or("?"),
        pipeline.program().version
    );
    // One signal stops both the reading and the pipeline. Both run inside this future
    // (not as spawned tasks), so dropping it drops the consumer: it leaves the group.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let mut shutdown = opts.shutdown;
    let signal = async move {
        tokio::select! {
            _ = &mut shutdown => {
                eprintln!("sfmc-relay: stopping: no more messages are read; flushing what is in flight");
                let _ = stop_tx.send(true);
            }
            _ = done_rx => {}
        }
    };
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let reading = source.read_into(pipeline.feeder(), wait(stop_rx.clone()));
    let outcomes = pipeline.outcomes();
    let delivering = async move {
        let r = pipeline.run(wait(stop_rx)).await;
        let _ = done_tx.send(());
        r
    };
    let ((), source, summary) = tokio::join!(signal, reading, delivering);
    let mut summary = summary?;
    let flow = Flow::new(source.flow().high);
    source.close();
    if let Some(t) = &dead_topic
        && !t.flush(DEAD_LETTER_FLUSH)
    {
        tracing::error!(
            "kafka: {} dead-letter record(s) not acknowledged by the dead-letter topic at shutdown (they are in the dead-letter file)",
            t.pending()
        );
    }
    summary.lines = stats.messages.load(Ordering::Relaxed);
    stats
        .duplicates_dropped
        .store(outcomes.duplicates(), Ordering::Relaxed);
    summary.notes.push(notes(
        &stats,
        &flow,
        opts.dedup_window,
        opts.dead_letter_topic.as_deref(),
    ));
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
