//! Kafka helpers shared by `kafka` (a broker process) and `kafka_mock` (rdkafka's mock
//! cluster): reading a topic back, and `sfmc-relay consume` as a process.

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use sfmc_relay::sim::SimHandle;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Child;

use super::{relay, sim_env};

/// Every message of `topic` (partitions `0..partitions`, from the beginning, until none
/// came for `idle`): (key, partition, payload).
pub fn read_topic(
    servers: &str,
    topic: &str,
    partitions: i32,
    idle: Duration,
) -> Vec<(Option<String>, i32, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", "sfmc-relay-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < idle {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            last = Instant::now();
            let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
            out.push((key, m.partition(), m.payload().unwrap_or_default().to_vec()));
        }
    }
    out
}

/// `sfmc-relay consume` as a process against a simulator: `--no-watch --quiet`, its log
/// (stderr, `RUST_LOG=warn,sfmc_relay=info`) in `DIR/NAME.log`, dead letters in
/// [`dead_letter_file`]`(DIR, NAME)`, nothing else inherited from the test's environment.
pub struct ConsumeProcess<'a> {
    pub brokers: &'a str,
    pub topic: &'a str,
    pub group: &'a str,
    pub rules: &'a Path,
    pub dir: &'a Path,
    pub name: &'a str,
    pub commit_interval_ms: u32,
    /// librdkafka's `session.timeout.ms` and `heartbeat.interval.ms`.
    pub session_timeout_ms: u32,
    pub heartbeat_interval_ms: u32,
    /// More flags.
    pub args: &'a [&'a str],
}

impl ConsumeProcess<'_> {
    pub fn spawn(&self, sim: &SimHandle) -> Child {
        let log = std::fs::File::create(self.dir.join(format!("{}.log", self.name))).unwrap();
        let dead = dead_letter_file(self.dir, self.name);
        let (commit, session, heartbeat) = (
            self.commit_interval_ms.to_string(),
            self.session_timeout_ms.to_string(),
            self.heartbeat_interval_ms.to_string(),
        );
        let env = sim_env(
            sim,
            &[
                ("SFMC_RELAY_KAFKA_SESSION_TIMEOUT_MS", &session),
                ("SFMC_RELAY_KAFKA_HEARTBEAT_INTERVAL_MS", &heartbeat),
                ("RUST_LOG", "warn,sfmc_relay=info"),
            ],
        );
        let mut args = vec![
            "consume",
            "--rules",
            self.rules.to_str().unwrap(),
            "--brokers",
            self.brokers,
            "--topic",
            self.topic,
            "--group",
            self.group,
            "--commit-interval-ms",
            &commit,
            "--dead-letter",
            dead.to_str().unwrap(),
            "--quiet",
            "--no-watch",
        ];
        args.extend_from_slice(self.args);
        relay(&args, &env)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start consume")
    }
}

/// Where [`ConsumeProcess`] `NAME` writes its dead letters.
pub fn dead_letter_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.deadletter.ndjson"))
}

/// What [`ConsumeProcess`] `NAME` has logged so far.
pub fn log_of(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

/// Wait until [`ConsumeProcess`] `NAME` has logged `needle` at least `times` times.
pub async fn wait_for_log(dir: &Path, name: &str, needle: &str, times: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while log_of(dir, name).matches(needle).count() < times {
        assert!(
            Instant::now() < deadline,
            "{name} did not log {needle:?} {times} time(s) within {within:?}; its log:\n{}",
            log_of(dir, name)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
