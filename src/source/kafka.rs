//! Kafka plumbing for `consume` and `produce` (cargo feature `kafka`): client settings,
//! message keys, and the per-partition offset tracker behind at-least-once commits.
//!
//! Offsets: a message's offset may be committed once every event in it was delivered or
//! dead-lettered, and every earlier message of its partition too. [`Progress`] keeps, per
//! partition, the messages whose events are still in flight; what may be committed is the
//! lowest such offset (Kafka commits "the next offset to read"), or one past the highest
//! offset seen when nothing is in flight. Completions arrive from the sink's tasks, in any
//! order; a partition that is revoked is forgotten, and completions of its abandoned
//! messages are ignored (its new owner reads them again from the last commit).

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Environment variables `SFMC_RELAY_KAFKA_<PROPERTY>` set librdkafka properties.
pub const ENV_PREFIX: &str = "SFMC_RELAY_KAFKA_";

/// The environment variable naming a settings file (`--kafka-config`); not a property.
pub const ENV_CONFIG_FILE: &str = "SFMC_RELAY_KAFKA_CONFIG_FILE";

/// The librdkafka property an environment variable sets (the part after [`ENV_PREFIX`]):
/// lower-cased, `_` becomes `.`, and `__` becomes a literal `_`
/// (`SECURITY_PROTOCOL` → `security.protocol`, `SSL_CA_LOCATION` → `ssl.ca.location`).
pub fn property_name(suffix: &str) -> String {
    suffix
        .to_ascii_lowercase()
        .split("__")
        .map(|part| part.replace('_', "."))
        .collect::<Vec<_>>()
        .join("_")
}

/// The properties set by `SFMC_RELAY_KAFKA_*` variables, sorted by name.
pub fn properties_from_env(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let mut props: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k != ENV_CONFIG_FILE)
        .filter_map(|(k, v)| {
            let suffix = k.strip_prefix(ENV_PREFIX)?;
            (!suffix.is_empty()).then(|| (property_name(suffix), v))
        })
        .collect();
    props.sort();
    props
}

/// A settings file: `property=value` lines (librdkafka / Java client `.properties` style);
/// blank lines and lines starting with `#` or `!` are ignored.
pub fn parse_properties(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut props = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!(
                "line {}: expected property=value (values are not shown)",
                n + 1
            ));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("line {}: empty property name", n + 1));
        }
        props.push((k.to_string(), v.trim().to_string()));
    }
    Ok(props)
}

/// Client settings, later sources winning: the relay's defaults, the settings file, the
/// environment, then `forced` (command-line flags and what the relay's guarantees need).
pub fn client_config(
    defaults: &[(&str, &str)],
    file: Option<&Path>,
    env: &[(String, String)],
    forced: &[(&str, String)],
) -> Result<ClientConfig, String> {
    let mut config = ClientConfig::new();
    for (k, v) in defaults {
        config.set(*k, *v);
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for (k, v) in parse_properties(&text).map_err(|e| format!("{}: {e}", path.display()))? {
            config.set(k, v);
        }
    }
    for (k, v) in env {
        config.set(k, v);
    }
    for (k, v) in forced {
        config.set(*k, v);
    }
    if config.get("bootstrap.servers").is_none_or(str::is_empty) {
        return Err(format!(
            "no Kafka brokers: pass --brokers HOST:PORT[,...] (or set {ENV_PREFIX}BOOTSTRAP_SERVERS)"
        ));
    }
    // librdkafka's `debug` property (e.g. SFMC_RELAY_KAFKA_DEBUG=cgrp) needs debug logging.
    config.set_log_level(if config.get("debug").is_some() {
        RDKafkaLogLevel::Debug
    } else {
        RDKafkaLogLevel::Warning
    });
    Ok(config)
}

/// The message key of an event: its `userId`, else its `anonymousId` (strings or numbers,
/// non-empty), so one user's events share a partition and keep their order.
pub fn message_key(event: &Value) -> Option<String> {
    ["userId", "anonymousId"]
        .iter()
        .find_map(|k| match event.get(*k) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        })
}

/// A topic partition.
pub type PartitionId = (String, i32);

#[derive(Debug)]
struct Partition {
    generation: u64,
    /// Offsets of messages with events still in flight -> how many.
    inflight: BTreeMap<i64, usize>,
    /// One past the highest offset seen.
    next: i64,
    /// The last offset committed (or being committed).
    committed: Option<i64>,
}

impl Partition {
    fn committable(&self) -> i64 {
        self.inflight.keys().next().copied().unwrap_or(self.next)
    }
}

/// Per-partition delivery progress (see the module docs).
#[derive(Debug, Default)]
pub struct Progress {
    parts: HashMap<PartitionId, Partition>,
    generations: u64,
}

impl Progress {
    /// A message at `offset` was read with `pending` events handed to the sink (0: nothing
    /// outstanding). Returns the generation to pass to [`Progress::complete`].
    pub fn begin(&mut self, id: &PartitionId, offset: i64, pending: usize) -> u64 {
        let generations = &mut self.generations;
        let p = self.parts.entry(id.clone()).or_insert_with(|| {
            *generations += 1;
            Partition {
                generation: *generations,
                inflight: BTreeMap::new(),
                next: offset,
                committed: None,
            }
        });
        p.next = p.next.max(offset + 1);
        if pending > 0 {
            *p.inflight.entry(offset).or_insert(0) += pending;
        }
        p.generation
    }

    /// One event of the message at `offset` ended. False when the partition was revoked
    /// since (`generation` is stale): the completion is ignored.
    pub fn complete(&mut self, id: &PartitionId, generation: u64, offset: i64) -> bool {
        let Some(p) = self.parts.get_mut(id) else {
            return false;
        };
        if p.generation != generation {
            return false;
        }
        if let Some(n) = p.inflight.get_mut(&offset) {
            *n -= 1;
            if *n == 0 {
                p.inflight.remove(&offset);
            }
        }
        true
    }

    /// Messages with events in flight in these partitions.
    pub fn in_flight(&self, ids: &[PartitionId]) -> usize {
        ids.iter()
            .filter_map(|id| self.parts.get(id))
            .map(|p| p.inflight.len())
            .sum()
    }

    /// Offsets to commit (next offset to read), for partitions in `only` (all when `None`)
    /// that progressed since their last commit; each is marked committed.
    pub fn take_commits(&mut self, only: Option<&[PartitionId]>) -> Vec<(PartitionId, i64)> {
        let mut out = Vec::new();
        for (id, p) in self.parts.iter_mut() {
            if only.is_some_and(|o| !o.contains(id)) {
                continue;
            }
            let c = p.committable();
            if p.committed.is_none_or(|done| c > done) {
                p.committed = Some(c);
                out.push((id.clone(), c));
            }
        }
        out.sort();
        out
    }

    /// A commit failed: commit these partitions again next time.
    pub fn commit_failed(&mut self, id: &PartitionId) {
        if let Some(p) = self.parts.get_mut(id) {
            p.committed = None;
        }
    }

    /// The partition was revoked: forget it (late completions are ignored).
    pub fn forget(&mut self, id: &PartitionId) -> usize {
        self.parts.remove(id).map_or(0, |p| p.inflight.len())
    }
}

/// [`Progress`] shared with the sink's completion callbacks and the rebalance callback.
#[derive(Debug, Default)]
pub struct Tracker {
    progress: Mutex<Progress>,
    changed: Condvar,
}

impl Tracker {
    pub fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One event of a message ended (called from the sink's completion).
    pub fn complete(&self, id: &PartitionId, generation: u64, offset: i64) {
        self.lock().complete(id, generation, offset);
        self.changed.notify_all();
    }

    /// Wait until nothing is in flight in `ids`, at most `timeout`; returns what still is.
    pub fn wait_idle(&self, ids: &[PartitionId], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            let n = g.in_flight(ids);
            let now = Instant::now();
            if n == 0 || now >= deadline {
                return n;
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The offsets as a list for `commit`.
pub fn offsets_list(commits: &[(PartitionId, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in commits {
        // Cannot fail for a fresh list and a real offset.
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    tpl
}

fn partitions(tpl: &TopicPartitionList) -> Vec<PartitionId> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

fn describe(ids: &[PartitionId]) -> String {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in ids {
        by_topic.entry(t).or_default().push(*p);
    }
    by_topic
        .into_iter()
        .map(|(t, mut ps)| {
            ps.sort();
            let ps: Vec<String> = ps.iter().map(i32::to_string).collect();
            format!("{t}[{}]", ps.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn forward_log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{fac}: {message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac}: {message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", "{fac}: {message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac}: {message}"),
    }
}

/// Client context for `produce`: librdkafka's log lines go to `tracing`.
pub struct LogContext;

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", "{error}: {reason}");
    }
}

/// Counters and flow-control state of one `consume`, shared by its loop, the sink's
/// completions and the rebalance callback (tests and the benchmark read them while it
/// runs).
#[derive(Debug, Default)]
pub struct ConsumeStats {
    /// Messages read and handed to the pipeline.
    pub messages: AtomicU64,
    /// Events handed to the sink and not yet delivered or dead-lettered.
    pub in_flight: AtomicUsize,
    /// The most `in_flight` reached.
    pub peak_in_flight: AtomicUsize,
    /// Whether the assigned partitions are paused now (back-pressure).
    pub paused: AtomicBool,
    /// How often the partitions were paused.
    pub pauses: AtomicU64,
    /// Partitions assigned while paused (and paused at once).
    pub paused_on_assign: AtomicU64,
    /// Partitions assigned now, and assignments so far.
    pub assigned: AtomicUsize,
    pub assignments: AtomicU64,
    /// Journey Builder API events dropped as duplicates (messageId seen in the window).
    pub duplicates_dropped: AtomicU64,
    /// Dead-letter records acknowledged by / failed to reach `--dead-letter-topic`.
    pub dead_letters_produced: AtomicU64,
    pub dead_letters_failed: AtomicU64,
    /// Woken when `in_flight` falls to the resume mark.
    pub drained: Notify,
}

impl ConsumeStats {
    /// An event was handed to the sink.
    pub fn event_started(&self) {
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak_in_flight.fetch_max(n, Ordering::Relaxed);
    }

    /// An event ended; wakes the consume loop when `low` is reached.
    pub fn event_ended(&self, low: usize) {
        let before = self.in_flight.fetch_sub(1, Ordering::AcqRel);
        if before == low + 1 {
            self.drained.notify_one();
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    fn set_paused(&self, consumer: &impl Consumer<ConsumerCtx>, paused: bool) -> bool {
        let tpl = match consumer.assignment() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("kafka: reading the assignment: {e}");
                return false;
            }
        };
        self.paused.store(paused, Ordering::Release);
        let r = if paused {
            consumer.pause(&tpl)
        } else {
            consumer.resume(&tpl)
        };
        if let Err(e) = r {
            tracing::warn!(
                "kafka: {} partitions: {e}",
                if paused { "pausing" } else { "resuming" }
            );
        }
        true
    }
}

/// Back-pressure: pause every assigned partition when `high` events are in flight in the
/// sink, resume when no more than `low` are (the rebalance callback pauses partitions
/// assigned in between).
pub struct Flow {
    pub high: usize,
    pub low: usize,
}

impl Flow {
    /// `max` events in flight (at least 1); resume at half of it.
    pub fn new(max: usize) -> Self {
        let high = max.max(1);
        Flow {
            high,
            low: high / 2,
        }
    }

    /// Pause or resume as the in-flight count says. Called by the consume loop.
    pub fn update(&self, consumer: &impl Consumer<ConsumerCtx>, stats: &ConsumeStats) {
        let n = stats.in_flight();
        let paused = stats.paused.load(Ordering::Acquire);
        if !paused && n >= self.high {
            if stats.set_paused(consumer, true) {
                let times = stats.pauses.fetch_add(1, Ordering::Relaxed) + 1;
                let msg = format!(
                    "kafka: partitions paused: {n} events in flight (--max-in-flight {}); resuming at {}",
                    self.high, self.low
                );
                // The first pause says so; later ones (SFMC slow for a while) only in debug.
                if times == 1 {
                    tracing::info!("{msg}");
                } else {
                    tracing::debug!("{msg}");
                }
            }
        } else if paused && n <= self.low && stats.set_paused(consumer, false) {
            tracing::debug!("kafka: partitions resumed: {n} events in flight");
        }
    }
}

pub use crate::pipeline::dedup::SeenIds;

/// Consumer context for `consume`: logs assignments (pausing new partitions while the
/// relay is paused), and on revocation waits (at most `flush_timeout`) for the revoked
/// partitions' in-flight events, commits what they completed, and forgets them.
pub struct ConsumerCtx {
    pub tracker: Arc<Tracker>,
    pub flush_timeout: Duration,
    pub stats: Arc<ConsumeStats>,
    /// `--dead-letter-topic`: flushed before the revoked partitions' offsets are committed.
    pub dead_topic: Option<Arc<DeadLetterTopic>>,
}

impl ClientContext for ConsumerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", "{error}: {reason}");
    }
}

/// Run blocking `f` on a runtime worker (the rebalance callback inside `recv`, a commit):
/// lets the runtime move its other tasks (the sink's lanes, which complete events) to
/// another thread meanwhile.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// How long a commit waits for the dead-letter topic's acknowledgements.
pub const DEAD_LETTER_FLUSH: Duration = Duration::from_secs(10);

/// Wait for the dead-letter topic (if any) to acknowledge every record produced so far;
/// false when some are still pending after [`DEAD_LETTER_FLUSH`] (do not commit).
pub fn dead_letters_flushed(topic: Option<&DeadLetterTopic>) -> bool {
    match topic {
        Some(t) if t.pending() > 0 => {
            let ok = blocking(|| t.flush(DEAD_LETTER_FLUSH));
            if !ok {
                tracing::warn!(
                    "kafka: the dead-letter topic did not acknowledge its records within \
{DEAD_LETTER_FLUSH:?}: offsets not committed yet"
                );
            }
            ok
        }
        _ => true,
    }
}

impl ConsumerCtx {
    fn revoke(&self, consumer: &BaseConsumer<Self>, ids: &[PartitionId]) {
        let left = blocking(|| self.tracker.wait_idle(ids, self.flush_timeout));
        let commits = self.tracker.lock().take_commits(Some(ids));
        if !commits.is_empty()
            && dead_letters_flushed(self.dead_topic.as_deref())
            && let Err(e) = consumer.commit(&offsets_list(&commits), CommitMode::Sync)
        {
            tracing::warn!(
                "kafka: committing revoked partitions {}: {e}",
                describe(ids)
            );
        }
        let mut g = self.tracker.lock();
        for id in ids {
            g.forget(id);
        }
        drop(g);
        let _ = self
            .stats
            .assigned
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(ids.len()))
            });
        if left > 0 {
            tracing::warn!(
                "kafka: partitions {} revoked with {left} message(s) still in flight after {:?}: \
their offsets are not committed, so the new owner delivers them again",
                describe(ids),
                self.flush_timeout
            );
        } else {
            tracing::info!("kafka: partitions revoked: {}", describe(ids));
        }
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let ids = partitions(tpl);
        self.stats.assigned.fetch_add(ids.len(), Ordering::AcqRel);
        self.stats.assignments.fetch_add(1, Ordering::Relaxed);
        // librdkafka keeps a partition's pause across revoke and re-assignment, and new
        // partitions start unpaused: set each assigned partition to the relay's state
        // (a partition paused before a rebalance and assigned again after the relay
        // resumed would otherwise never be read again).
        let paused = self.stats.paused.load(Ordering::Acquire) && !ids.is_empty();
        if paused {
            match consumer.pause(tpl) {
                Ok(()) => {
                    self.stats
                        .paused_on_assign
                        .fetch_add(ids.len() as u64, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!("kafka: pausing newly assigned partitions: {e}"),
            }
        } else if let Err(e) = consumer.resume(tpl) {
            tracing::warn!("kafka: resuming newly assigned partitions: {e}");
        }
        tracing::info!(
            "kafka: partitions assigned: {}{}",
            describe(&ids),
            if paused {
                " (paused: back-pressure)"
            } else {
                ""
            }
        );
    }
}

impl ConsumerContext for ConsumerCtx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => self.revoke(consumer, &partitions(tpl)),
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!("kafka: rebalance error: {e}"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.assign(consumer, tpl);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!("kafka: offset commit failed (retried): {e}");
            let mut g = self.tracker.lock();
            for id in partitions(offsets) {
                g.commit_failed(&id);
            }
        }
    }
}

/// Settings of a consumer that a producer made from the same settings must not get
/// (librdkafka warns about each).
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "group.protocol",
    "auto.offset.reset",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.commit.interval.ms",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "isolation.level",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.wait.max.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "check.crcs",
    "enable.partition.eof",
];

/// Producer settings from a consumer's (brokers, security, client id), for the
/// dead-letter topic: consumer-only properties dropped, idempotence on.
pub fn producer_config(consumer: &ClientConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (k, v) in consumer.config_map() {
        if !CONSUMER_ONLY.contains(&k) {
            config.set(k, v);
        }
    }
    config.set("enable.idempotence", "true");
    config.set_log_level(consumer.log_level);
    config
}

/// Producer context of the dead-letter topic: counts acknowledged and failed records.
pub struct DeadLetterCtx {
    stats: Arc<ConsumeStats>,
}

impl ClientContext for DeadLetterCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", "{error}: {reason}");
    }
}

impl ProducerContext for DeadLetterCtx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.stats
                    .dead_letters_produced
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.stats
                    .dead_letters_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "kafka: a dead-letter record did not reach the dead-letter topic: {e} \
(it is in the dead-letter file)"
                );
            }
        }
    }
}

/// `--dead-letter-topic`: each dead-letter record (the file's JSON line) is also produced
/// to a topic, keyed like the event. Produced asynchronously; [`DeadLetterTopic::flush`]
/// waits for the acknowledgements (the consume loop calls it before committing offsets).
pub struct DeadLetterTopic {
    topic: String,
    producer: ThreadedProducer<DeadLetterCtx>,
}

impl DeadLetterTopic {
    pub fn new(
        consumer: &ClientConfig,
        topic: &str,
        stats: Arc<ConsumeStats>,
    ) -> Result<Self, String> {
        let producer = producer_config(consumer)
            .create_with_context(DeadLetterCtx { stats })
            .map_err(|e| format!("Kafka producer for the dead-letter topic: {e}"))?;
        Ok(DeadLetterTopic {
            topic: topic.to_string(),
            producer,
        })
    }

    /// Queue one record (waits while librdkafka's queue is full, at most ~10 s; then the
    /// record is counted failed: it is in the file).
    pub fn send(&self, event: &Value, record: &[u8]) {
        let key = message_key(event);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut rec = BaseRecord::<str, [u8]>::to(&self.topic).payload(record);
            if let Some(k) = &key {
                rec = rec.key(k.as_str());
            }
            match self.producer.send(rec) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if Instant::now() < deadline =>
                {
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => {
                    self.producer
                        .context()
                        .stats
                        .dead_letters_failed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        "kafka: cannot produce a dead-letter record to {}: {e} (it is in the dead-letter file)",
                        self.topic
                    );
                    return;
                }
            }
        }
    }

    /// Records not yet acknowledged (or failed).
    pub fn pending(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Wait until every queued record was acknowledged or failed, at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.pending() == 0 || self.producer.flush(timeout).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(n: i32) -> PartitionId {
        ("t".to_string(), n)
    }

    #[test]
    fn property_names_from_env() {
        assert_eq!(property_name("SECURITY_PROTOCOL"), "security.protocol");
        assert_eq!(property_name("SASL_MECHANISMS"), "sasl.mechanisms");
        assert_eq!(property_name("SSL_CA_LOCATION"), "ssl.ca.location");
        assert_eq!(property_name("SSL__ENGINE__ID"), "ssl_engine_id");
        let env = properties_from_env(vec![
            ("SFMC_RELAY_KAFKA_SASL_USERNAME".into(), "u".into()),
            ("SFMC_RELAY_KAFKA_CONFIG_FILE".into(), "x".into()),
            ("SFMC_RELAY_KAFKA_".into(), "x".into()),
            ("OTHER".into(), "x".into()),
        ]);
        assert_eq!(env, vec![("sasl.username".to_string(), "u".to_string())]);
    }

    #[test]
    fn settings_file_and_precedence() {
        let props =
            parse_properties("# c\n\nsecurity.protocol = SASL_SSL\n!x\nsasl.password=a=b\n")
                .unwrap();
        assert_eq!(props[1], ("sasl.password".into(), "a=b".into()));
        assert!(parse_properties("nonsense").is_err());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k.properties");
        std::fs::write(&f, "client.id=file\nbootstrap.servers=file:9092\n").unwrap();
        let c = client_config(
            &[("client.id", "default")],
            Some(&f),
            &[("client.id".into(), "env".into())],
            &[("group.id", "g".into())],
        )
        .unwrap();
        assert_eq!(c.get("client.id"), Some("env"));
        assert_eq!(c.get("bootstrap.servers"), Some("file:9092"));
        assert_eq!(c.get("group.id"), Some("g"));
        assert!(client_config(&[], None, &[], &[]).is_err());
    }

    #[test]
    fn keys_are_user_then_anonymous_id() {
        assert_eq!(
            message_key(&json!({"userId": "u1", "anonymousId": "a"})).as_deref(),
            Some("u1")
        );
        assert_eq!(
            message_key(&json!({"userId": "", "anonymousId": "a"})).as_deref(),
            Some("a")
        );
        assert_eq!(message_key(&json!({"userId": 42})).as_deref(), Some("42"));
        assert_eq!(message_key(&json!({"type": "track"})), None);
    }

    #[test]
    fn commits_only_the_contiguous_completed_prefix() {
        let mut pr = Progress::default();
        let g = pr.begin(&p(0), 10, 2);
        pr.begin(&p(0), 11, 1);
        pr.begin(&p(0), 12, 0); // skipped: nothing outstanding
        assert_eq!(pr.take_commits(None), vec![(p(0), 10)]);
        assert!(pr.complete(&p(0), g, 11));
        assert_eq!(pr.take_commits(None), vec![]); // 10 still in flight
        pr.complete(&p(0), g, 10);
        assert_eq!(pr.take_commits(None), vec![]); // one of 10's two events left
        pr.complete(&p(0), g, 10);
        assert_eq!(pr.take_commits(None), vec![(p(0), 13)]);
        assert_eq!(pr.take_commits(None), vec![]);
    }

    #[test]
    fn revoked_partitions_ignore_late_completions() {
        let mut pr = Progress::default();
        let g1 = pr.begin(&p(1), 0, 1);
        assert_eq!(pr.in_flight(&[p(1)]), 1);
        assert_eq!(pr.forget(&p(1)), 1);
        assert!(!pr.complete(&p(1), g1, 0));
        let g2 = pr.begin(&p(1), 0, 1);
        assert_ne!(g1, g2);
        assert!(!pr.complete(&p(1), g1, 0));
        assert_eq!(pr.in_flight(&[p(1)]), 1);
        assert!(pr.complete(&p(1), g2, 0));
        assert_eq!(pr.take_commits(Some(&[p(1)])), vec![(p(1), 1)]);
        pr.commit_failed(&p(1));
        assert_eq!(pr.take_commits(None), vec![(p(1), 1)]);
    }

    #[test]
    fn seen_ids_forget_the_oldest_beyond_the_window() {
        let mut seen = SeenIds::new(2);
        assert!(seen.first_time("a"));
        assert!(!seen.first_time("a"));
        assert!(seen.first_time("b"));
        assert!(seen.first_time("c")); // "a" leaves the window
        assert!(seen.first_time("a"));
        assert!(!seen.first_time("c"));
        let mut off = SeenIds::new(0);
        assert!(off.first_time("a") && off.first_time("a"));
    }

    #[test]
    fn flow_resumes_at_half() {
        assert_eq!((Flow::new(10).high, Flow::new(10).low), (10, 5));
        assert_eq!((Flow::new(0).high, Flow::new(0).low), (1, 0));
        let stats = ConsumeStats::default();
        stats.event_started();
        stats.event_started();
        stats.event_ended(1);
        assert_eq!(stats.in_flight(), 1);
        assert_eq!(stats.peak_in_flight.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn dead_letter_producer_drops_consumer_settings() {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", "k:9092")
            .set("group.id", "g")
            .set("sasl.username", "u")
            .set("queued.max.messages.kbytes", "1");
        let p = producer_config(&c);
        assert_eq!(p.get("bootstrap.servers"), Some("k:9092"));
        assert_eq!(p.get("sasl.username"), Some("u"));
        assert_eq!(p.get("group.id"), None);
        assert_eq!(p.get("queued.max.messages.kbytes"), None);
        assert_eq!(p.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn wait_idle_returns_when_completed() {
        let t = Arc::new(Tracker::default());
        let g = t.lock().begin(&p(2), 5, 1);
        let t2 = t.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            t2.complete(&p(2), g, 5);
        });
        assert_eq!(t.wait_idle(&[p(2)], Duration::from_secs(5)), 0);
        h.join().unwrap();
        assert_eq!(t.wait_idle(&[p(2)], Duration::from_millis(1)), 0);
    }
}
