//! `consume` / `produce` against a real Kafka-compatible broker (no mocks).
//!
//! The broker binary comes from `SFMC_RELAY_KAFKA_BROKER_BIN` (tansu: `.ci/kafka-tests`
//! installs it); each test starts its own broker (in-memory storage) on a free port, an
//! in-process SFMC simulator, and real `sfmc-relay consume` processes.
//! Without the variable the tests are skipped (with the reason printed), except under CI.

use crate::support::kafka::{ConsumeProcess, dead_letter_file, log_of, wait_for_log};
use crate::support::workload::*;
use crate::support::*;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde_json::Value;
use sfmc_relay::sim::SimHandle;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Child;

const PARTITIONS: i32 = 3;

/// The broker binary, or `None` (test skipped) when it is not configured. `.ci/kafka-tests`
/// sets `SFMC_RELAY_KAFKA_REQUIRE_BROKER`, so there a missing broker fails instead of
/// skipping; plain `cargo test --features kafka` (and `.ci/run` without a cached broker)
/// skips these tests and says so.
fn broker_bin() -> Option<PathBuf> {
    match std::env::var_os("SFMC_RELAY_KAFKA_BROKER_BIN") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("SFMC_RELAY_KAFKA_REQUIRE_BROKER").is_some() => {
            panic!("SFMC_RELAY_KAFKA_REQUIRE_BROKER is set but SFMC_RELAY_KAFKA_BROKER_BIN is not")
        }
        None => {
            eprintln!(
                "skipped: SFMC_RELAY_KAFKA_BROKER_BIN is not set (a Kafka-compatible broker binary, \
e.g. tansu; .ci/kafka-tests installs it and runs these tests)"
            );
            None
        }
    }
}

struct Broker {
    child: std::process::Child,
    addr: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_broker(bin: &Path, dir: &Path) -> Broker {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join("broker.log")).unwrap();
    let child = std::process::Command::new(bin)
        .args([
            "broker",
            "--cluster-id",
            "sfmc-relay-test",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start the broker");
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "broker did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Broker { child, addr }
}

async fn create_topic(addr: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    for r in results {
        r.expect("topic created");
    }
}

/// `sfmc-relay consume` against `sim`, logging to `DIR/NAME.log`.
#[allow(clippy::too_many_arguments)]
fn consumer(
    broker: &Broker,
    topic: &str,
    group: &str,
    rules: &Path,
    sim: &SimHandle,
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> Child {
    ConsumeProcess {
        brokers: &broker.addr,
        topic,
        group,
        rules,
        dir,
        name,
        commit_interval_ms: 200,
        session_timeout_ms: 6000,
        heartbeat_interval_ms: 500,
        args: extra,
    }
    .spawn(sim)
}

/// A `consume` process in the tests' group "relays", once it has been assigned partitions.
async fn member(
    broker: &Broker,
    topic: &str,
    rules: &Path,
    sim: &SimHandle,
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> Child {
    let child = consumer(broker, topic, "relays", rules, sim, dir, name, extra);
    wait_for_log(dir, name, "partitions assigned", 1, Duration::from_secs(60)).await;
    child
}

/// `users` users' workload written to an NDJSON file and produced to `topic`.
async fn produce_workload(
    broker: &Broker,
    topic: &str,
    dir: &Path,
    users: usize,
    tag: &str,
) -> Vec<Value> {
    let events = workload(users, tag);
    let input = dir.join("events.ndjson");
    write_ndjson(&input, &events);
    produce(broker, topic, &input).await;
    events
}

async fn produce(broker: &Broker, topic: &str, input: &Path) {
    let out = output(relay(
        &[
            "produce",
            "--brokers",
            &broker.addr,
            "--topic",
            topic,
            "--input",
            path(input),
        ],
        NO_ENV,
    ))
    .await;
    let err = text(&out.stderr);
    assert!(out.status.success(), "produce failed: {err}");
    eprintln!("produce: {}", err.trim());
}

/// SIGTERM, then the process's exit and its log.
async fn stop(mut child: Child, dir: &Path, name: &str) -> String {
    signal(child.id().expect("running"), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("consume stopped in time")
        .unwrap();
    let log = log_of(dir, name);
    assert!(status.success(), "{name} exited with {status}: {log}");
    log
}

/// "N events read (M messages)" from a consumer's summary.
fn events_read(log: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains(" events read ("))
        .unwrap_or_else(|| panic!("no summary in log:\n{log}"));
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// Every message in the topic: (key, partition, userId of the payload).
fn read_topic(addr: &str, topic: &str) -> Vec<(Option<String>, i32, Value)> {
    crate::support::kafka::read_topic(addr, topic, PARTITIONS, Duration::from_secs(3))
        .into_iter()
        .map(|(key, partition, payload)| {
            let payload: Value = serde_json::from_slice(&payload).unwrap();
            (key, partition, payload["userId"].clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_consumers_in_one_group_deliver_every_event_once() {
    let Some(bin) = broker_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&bin, dir.path());
    let topic = "segment-events";
    create_topic(&broker.addr, topic).await;
    let sim = start_sim("").await;
    let rules = rules_dir(&Settings::default());

    let a = member(&broker, topic, rules.path(), &sim, dir.path(), "a", &[]).await;
    let b = member(&broker, topic, rules.path(), &sim, dir.path(), "b", &[]).await;

    let users = 60;
    let events = produce_workload(&broker, topic, dir.path(), users, "t1").await;

    // Keyed by userId: each user's messages in exactly one partition.
    let messages = read_topic(&broker.addr, topic);
    assert_eq!(messages.len(), events.len());
    let mut partitions_of: HashMap<String, HashSet<i32>> = HashMap::new();
    for (key, partition, user) in &messages {
        assert_eq!(key.as_deref(), user.as_str(), "key is the userId");
        partitions_of
            .entry(key.clone().unwrap())
            .or_default()
            .insert(*partition);
    }
    assert!(partitions_of.values().all(|p| p.len() == 1));
    let used: HashSet<i32> = partitions_of.values().flatten().copied().collect();
    assert!(used.len() > 1, "keys spread over partitions: {used:?}");

    wait_landed(&sim, users, "t1", Duration::from_secs(90)).await;
    // Let the last commits go out, then stop both (steady state: nothing read twice).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let log_a = stop(a, dir.path(), "a").await;
    let log_b = stop(b, dir.path(), "b").await;
    let (read_a, read_b) = (events_read(&log_a), events_read(&log_b));
    assert_eq!(
        read_a + read_b,
        events.len() as u64,
        "a:\n{log_a}\nb:\n{log_b}"
    );
    assert!(
        read_a > 0 && read_b > 0,
        "both consumers got partitions: {read_a} / {read_b}"
    );
    let dups: Vec<_> = api_events_per_user(&sim)
        .into_iter()
        .filter(|(_, n)| *n != 1)
        .collect();
    assert!(dups.is_empty(), "API events not exactly once: {dups:?}");
    assert!(dead_letters(&dead_letter_file(dir.path(), "a")).is_empty());
    assert!(dead_letters(&dead_letter_file(dir.path(), "b")).is_empty());

    // A restarted consumer of the same group starts from the committed offsets: nothing new.
    let c = member(&broker, topic, rules.path(), &sim, dir.path(), "c", &[]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log_c = stop(c, dir.path(), "c").await;
    assert_eq!(events_read(&log_c), 0, "{log_c}");
}

/// Ignored: tansu 0.6.0 does not hand a dead member's partitions over. After b's session
/// expires the survivor rejoins and is elected leader (JoinGroup says generation 1, the
/// same as before), its range assignor assigns itself all 3 partitions, but SyncGroup
/// answers with its previous assignment, so b's partitions stay unread. The relay side
/// (rebalance callbacks, commits) behaves; run with `-- --ignored` against a broker that
/// reassigns (Apache Kafka, Redpanda).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "tansu 0.6.0 keeps the stale assignment after a member's session expires"]
async fn a_killed_consumer_s_partitions_are_taken_over_without_loss() {
    let Some(bin) = broker_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&bin, dir.path());
    let topic = "segment-events";
    create_topic(&broker.addr, topic).await;
    let sim = start_sim("").await;
    let rules = rules_dir(&Settings::default());
    // Slow delivery, so the kill lands mid-stream.
    let slow = ["--requests-per-second", "40"];

    let a = member(&broker, topic, rules.path(), &sim, dir.path(), "a", &slow).await;
    let mut b = member(&broker, topic, rules.path(), &sim, dir.path(), "b", &slow).await;

    let users = 60;
    produce_workload(&broker, topic, dir.path(), users, "t2").await;

    // Kill b (no goodbye, no final commit) once delivery is under way.
    wait_until("delivery to start", Duration::from_secs(60), || {
        sim.api_events().len() >= 10
    })
    .await;
    signal(b.id().unwrap(), "KILL");
    let _ = b.wait().await;
    let before = missing(&sim, users, "t2").len();
    assert!(
        before > 0,
        "b was killed mid-stream (something still missing)"
    );

    // a takes b's partitions over after the session timeout and delivers what b had not
    // committed: everything lands, each user's identifies still in order.
    wait_landed(&sim, users, "t2", Duration::from_secs(120)).await;
    let log_a = log_of(dir.path(), "a");
    assert!(
        log_a.matches("partitions assigned").count() >= 3,
        "a was reassigned after b died:\n{log_a}"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop(a, dir.path(), "a").await;
    assert!(
        api_events_per_user(&sim).values().all(|n| *n >= 1),
        "every signup sent at least once"
    );
}
