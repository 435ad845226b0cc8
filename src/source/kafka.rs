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
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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

/// Consumer context for `consume`: logs assignments, and on revocation waits (at most
/// `flush_timeout`) for the revoked partitions' in-flight events, commits what they
/// completed, and forgets them.
pub struct ConsumerCtx {
    pub tracker: Arc<Tracker>,
    pub flush_timeout: Duration,
}

impl ClientContext for ConsumerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", "{error}: {reason}");
    }
}

impl ConsumerCtx {
    fn revoke(&self, consumer: &BaseConsumer<Self>, ids: &[PartitionId]) {
        let wait = || self.tracker.wait_idle(ids, self.flush_timeout);
        // Called on a runtime worker (inside `recv`): let the runtime move its other
        // tasks (the sink's lanes, which complete these events) to another thread.
        let left = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        };
        let commits = self.tracker.lock().take_commits(Some(ids));
        if !commits.is_empty()
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
}

impl ConsumerContext for ConsumerCtx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => self.revoke(consumer, &partitions(tpl)),
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!("kafka: rebalance error: {e}"),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!("kafka: partitions assigned: {}", describe(&partitions(tpl)));
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
