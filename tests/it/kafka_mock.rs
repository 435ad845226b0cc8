//! `consume` in-process against rdkafka's mock cluster (librdkafka's in-process Kafka
//! broker: the real protocol on loopback TCP, consumer groups and offset commits), with
//! the SFMC simulator over loopback HTTP as the sink's target. Runs in `.ci/run`
//! (`cargo test --features kafka`); no broker binary needed.
//!
//! Each test has its own mock cluster, topic, simulator and relays. The mock's group
//! coordinator waits 3 s before the first assignment (its `group.initial.rebalance.delay`);
//! sessions time out after 3 s here.

use crate::support::kafka::{ConsumeProcess, dead_letter_file, log_of, wait_for_log};
use crate::support::workload::*;
use crate::support::*;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use serde_json::{Value, json};
use sfmc_relay::commands::consume::{self, ConsumeOptions};
use sfmc_relay::commands::produce::{self, ProduceOptions};
use sfmc_relay::commands::run::{RunError, RunSummary};
use sfmc_relay::rules::Program;
use sfmc_relay::sim::{self, Faults, SimConfig, SimHandle};
use sfmc_relay::source::kafka::{ConsumeStats, client_config};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TOPIC: &str = "segment-events";
const PARTITIONS: i32 = 3;

struct Mock {
    cluster: MockCluster<'static, DefaultProducerContext>,
    servers: String,
}

fn mock() -> Mock {
    // The relays' and librdkafka's log lines go to the failing test's output.
    log_to_test_output();
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster
        .create_topic(TOPIC, PARTITIONS, 1)
        .expect("create topic");
    let servers = cluster.bootstrap_servers();
    Mock { cluster, servers }
}

/// A permissive simulator with these faults.
async fn sim_with(faults: Faults) -> SimHandle {
    start_sim_with(SimConfig {
        faults,
        ..SimConfig::default()
    })
    .await
}

/// How a test relay differs from the default.
struct Opts {
    max_in_flight: usize,
    dedup_window: usize,
    dead_letter_topic: Option<String>,
    flush_timeout: Duration,
    requests_per_second: Option<u32>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            max_in_flight: consume::DEFAULT_MAX_IN_FLIGHT,
            dedup_window: consume::DEFAULT_DEDUP_WINDOW,
            dead_letter_topic: None,
            flush_timeout: Duration::from_secs(5),
            requests_per_second: None,
        }
    }
}

/// One in-process `consume`.
struct Relay {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<RunSummary, RunError>>,
    stats: Arc<ConsumeStats>,
    dead: PathBuf,
}

impl Relay {
    fn assigned(&self) -> usize {
        self.stats.assigned.load(Ordering::Acquire)
    }

    /// Stop as SIGTERM does (flush, commit, leave) and return the summary.
    async fn stop(mut self) -> RunSummary {
        let _ = self.stop.take().expect("running").send(());
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("consume stopped in time")
            .expect("consume task")
            .expect("consume ok")
    }
}

fn start_relay(
    mock: &Mock,
    group: &str,
    program: &Arc<Program>,
    sim: &SimHandle,
    dir: &Path,
    name: &str,
    o: Opts,
) -> Relay {
    let forced = [
        ("bootstrap.servers", mock.servers.clone()),
        ("group.id", group.to_string()),
        ("session.timeout.ms", "3000".to_string()),
        ("heartbeat.interval.ms", "200".to_string()),
        ("client.id", name.to_string()),
    ];
    let kafka = client_config(consume::DEFAULTS, None, &[], &forced).expect("client config");
    let env = sim_env(sim, &[]);
    let (tx, rx) = oneshot::channel::<()>();
    let stats = Arc::new(ConsumeStats::default());
    let dead = dead_letter_file(dir, name);
    let opts = ConsumeOptions {
        topic: TOPIC.to_string(),
        kafka,
        dead_letter: dead.clone(),
        dead_letter_topic: o.dead_letter_topic,
        requests_per_second: o.requests_per_second,
        commit_interval: Duration::from_millis(100),
        flush_timeout: o.flush_timeout,
        max_in_flight: o.max_in_flight,
        dedup_window: o.dedup_window,
        env: env.into(),
        state_dir: None,
        shutdown: Box::pin(async move {
            let _ = rx.await;
        }),
        stats: stats.clone(),
    };
    let program = program.clone();
    let task = tokio::spawn(consume::consume(Arc::new(move || program.clone()), opts));
    Relay {
        stop: Some(tx),
        task,
        stats,
        dead,
    }
}

/// `consume` as a process in group `g` with short commit and session intervals.
fn consume_process<'a>(
    mock: &'a Mock,
    rules: &'a Path,
    dir: &'a Path,
    name: &'a str,
    args: &'a [&'a str],
) -> ConsumeProcess<'a> {
    ConsumeProcess {
        brokers: &mock.servers,
        topic: TOPIC,
        group: "g",
        rules,
        dir,
        name,
        commit_interval_ms: 100,
        session_timeout_ms: 3000,
        heartbeat_interval_ms: 200,
        args,
    }
}

/// Wait until the relays share all partitions, each holding some.
async fn wait_balanced(relays: &[&Relay]) {
    wait_until(
        "every relay has partitions",
        Duration::from_secs(30),
        || {
            relays.iter().all(|r| r.assigned() > 0)
                && relays.iter().map(|r| r.assigned()).sum::<usize>() == PARTITIONS as usize
        },
    )
    .await;
}

/// `sfmc-relay produce` (in-process): keyed by userId.
async fn produce_events(mock: &Mock, dir: &Path, events: &[Value]) {
    let input = dir.join(format!("input-{}.ndjson", fastrand::u64(..)));
    write_ndjson(&input, events);
    let kafka = client_config(
        produce::DEFAULTS,
        None,
        &[],
        &[("bootstrap.servers", mock.servers.clone())],
    )
    .unwrap();
    let summary = produce::produce(ProduceOptions {
        topic: TOPIC.to_string(),
        kafka,
        input: Some(input),
    })
    .await
    .expect("produce");
    assert_eq!(summary.written, events.len() as u64, "{summary:?}");
}

/// A raw message (any bytes), for messages `produce` would not write.
async fn produce_raw(mock: &Mock, key: Option<&str>, payload: &[u8]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &mock.servers)
        .create()
        .unwrap();
    let mut record = FutureRecord::<str, [u8]>::to(TOPIC).payload(payload);
    if let Some(k) = key {
        record = record.key(k);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .expect("raw message produced");
}

/// Every message of `topic`: (key, payload).
fn read_topic(mock: &Mock, topic: &str, partitions: i32) -> Vec<(Option<String>, Vec<u8>)> {
    crate::support::kafka::read_topic(&mock.servers, topic, partitions, Duration::from_secs(2))
        .into_iter()
        .map(|(key, _, payload)| (key, payload))
        .collect()
}

fn duplicated_api_events(sim: &SimHandle) -> Vec<(String, usize)> {
    api_events_per_user(sim)
        .into_iter()
        .filter(|(_, n)| *n != 1)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_split_the_partitions_and_deliver_everything_once() {
    let mock = mock();
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim("").await;
    let rules = rules_dir(&Settings::default());
    let program = load(rules.path());

    let a = start_relay(&mock, "g", &program, &sim, dir.path(), "a", Opts::default());
    wait_until("a assigned", Duration::from_secs(30), || a.assigned() > 0).await;
    let b = start_relay(&mock, "g", &program, &sim, dir.path(), "b", Opts::default());
    wait_balanced(&[&a, &b]).await;

    let users = 60;
    let events = workload(users, "t1");
    produce_events(&mock, dir.path(), &events).await;
    wait_landed(&sim, users, "t1", Duration::from_secs(60)).await;

    assert_eq!(
        duplicated_api_events(&sim),
        vec![],
        "API events exactly once"
    );
    assert_eq!(sim.api_events().len(), users);
    assert_eq!(order_violations(&sim), Vec::<String>::new());
    let (read_a, read_b) = (
        a.stats.messages.load(Ordering::Relaxed),
        b.stats.messages.load(Ordering::Relaxed),
    );
    assert_eq!(
        read_a + read_b,
        events.len() as u64,
        "each message read once"
    );
    assert!(
        read_a > 0 && read_b > 0,
        "both relays got partitions: {read_a} / {read_b}"
    );

    // Stop a; b takes its partitions over from a's final commit. The mock cluster refuses
    // commits while the group rebalances (Apache Kafka accepts them from the current
    // generation), so b may read again what it completed since its last commit
    // (at-least-once; rows idempotent). Let b's commits settle before stopping it.
    let sa = a.stop().await;
    wait_until("b owns every partition", Duration::from_secs(30), || {
        b.assigned() == PARTITIONS as usize
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sb = b.stop().await;
    assert_eq!(sa.delivered, sa.events, "{}", sa.render());
    assert_eq!(sb.delivered, sb.events, "{}", sb.render());
    assert!(sa.events + sb.events >= events.len() as u64);
    assert!(dead_letters(&dead_letter_file(dir.path(), "a")).is_empty());
    assert!(dead_letters(&dead_letter_file(dir.path(), "b")).is_empty());

    // The group committed everything: a new member of it reads nothing.
    let c = start_relay(&mock, "g", &program, &sim, dir.path(), "c", Opts::default());
    wait_until("c assigned", Duration::from_secs(30), || c.assigned() > 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.stop().await.events, 0, "offsets were committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_relay_s_partitions_are_taken_over_without_loss() {
    let mock = mock();
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim("").await;
    let rules = rules_dir(&Settings::default());
    // One journey entry per call (at 40 calls/s), so b is dropped with work left.
    let settings = rules.path().join("settings.yaml");
    let text = std::fs::read_to_string(&settings).unwrap();
    std::fs::write(
        &settings,
        text.replace("delivery:\n", "delivery:\n  journey_batch: 1\n"),
    )
    .unwrap();
    let program = load(rules.path());
    // Slow delivery, so b is dropped mid-stream.
    let slow = || Opts {
        requests_per_second: Some(40),
        flush_timeout: Duration::from_millis(200),
        ..Opts::default()
    };

    let a = start_relay(&mock, "g", &program, &sim, dir.path(), "a", slow());
    wait_until("a assigned", Duration::from_secs(30), || a.assigned() > 0).await;
    let b = start_relay(&mock, "g", &program, &sim, dir.path(), "b", slow());
    wait_balanced(&[&a, &b]).await;
    let a_partitions_before = a.assigned();

    let users = 60;
    let events = workload(users, "t2");
    produce_events(&mock, dir.path(), &events).await;
    wait_until("delivery started", Duration::from_secs(30), || {
        b.stats.messages.load(Ordering::Relaxed) > 0 && sim.api_events().len() >= 10
    })
    .await;

    // Drop b: its task is aborted (no final flush, no final commit; what it had in flight
    // is abandoned), its consumer leaves the group.
    b.task.abort();
    let _ = b.task.await;
    assert!(
        !missing(&sim, users, "t2").is_empty(),
        "b was dropped mid-stream"
    );

    // a takes all partitions over and delivers what b had not committed.
    wait_until("a owns every partition", Duration::from_secs(30), || {
        a.assigned() == PARTITIONS as usize
    })
    .await;
    assert!(a_partitions_before < PARTITIONS as usize);
    wait_landed(&sim, users, "t2", Duration::from_secs(90)).await;
    let sa = a.stop().await;
    assert!(sa.events > 0);
    let per_user = api_events_per_user(&sim);
    assert_eq!(per_user.len(), users, "every signup sent at least once");
    assert!(final_seq_wrong(&sim, users, "t2", 3).is_empty());
    assert!(dead_letters(&dead_letter_file(dir.path(), "a")).is_empty());
}

/// A real crash: `sfmc-relay consume` processes against the mock cluster, one killed with
/// SIGKILL mid-stream (no LeaveGroup, no commit): the coordinator expires its session and
/// hands its partitions to the other, which delivers everything the dead one had not
/// committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_relay_process_s_partitions_are_taken_over_without_loss() {
    let mock = mock();
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim("").await;
    let rules = rules_dir(&Settings::default());
    // One journey entry per call (at 40 calls/s), so b is killed with work left.
    let settings = rules.path().join("settings.yaml");
    let text = std::fs::read_to_string(&settings).unwrap();
    std::fs::write(
        &settings,
        text.replace("delivery:\n", "delivery:\n  journey_batch: 1\n"),
    )
    .unwrap();
    let spawn = |name: &str| {
        consume_process(
            &mock,
            rules.path(),
            dir.path(),
            name,
            &["--requests-per-second", "40"],
        )
        .spawn(&sim)
    };
    let log = |name: &str| log_of(dir.path(), name);
    let assigned = "partitions assigned";
    let mut a = spawn("a");
    wait_for_log(dir.path(), "a", assigned, 1, Duration::from_secs(30)).await;
    let mut b = spawn("b");
    wait_for_log(dir.path(), "b", assigned, 1, Duration::from_secs(30)).await;
    wait_for_log(dir.path(), "a", assigned, 2, Duration::from_secs(30)).await;

    let users = 60;
    produce_events(&mock, dir.path(), &workload(users, "t8")).await;
    wait_until("delivery started", Duration::from_secs(30), || {
        sim.api_events().len() >= 10
    })
    .await;
    b.start_kill().unwrap();
    let _ = b.wait().await;
    assert!(
        !missing(&sim, users, "t8").is_empty(),
        "b was killed mid-stream"
    );
    let assigned_before = log("a").matches("partitions assigned").count();

    wait_landed(&sim, users, "t8", Duration::from_secs(90)).await;
    assert!(
        log("a").matches("partitions assigned").count() > assigned_before,
        "a was reassigned after b's session expired:\n{}",
        log("a")
    );
    assert_eq!(api_events_per_user(&sim).len(), users, "every signup sent");
    assert!(final_seq_wrong(&sim, users, "t8", 3).is_empty());
    signal(a.id().expect("running"), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), a.wait())
        .await
        .expect("a stopped in time")
        .unwrap();
    assert!(status.success(), "{}", log("a"));
    assert!(dead_letters(&dead_letter_file(dir.path(), "a")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_user_s_updates_land_in_order() {
    let mock = mock();
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim("").await;
    // Small batches and no linger: many rowset calls per user, so reordering would show.
    let rules = rules_dir(&Settings {
        batch_rows: 3,
        linger: "1ms",
        ..Settings::default()
    });
    let program = load(rules.path());

    let a = start_relay(&mock, "g", &program, &sim, dir.path(), "a", Opts::default());
    wait_until("a assigned", Duration::from_secs(30), || a.assigned() > 0).await;
    let b = start_relay(&mock, "g", &program, &sim, dir.path(), "b", Opts::default());
    wait_balanced(&[&a, &b]).await;

    let (users, n) = (12, 40);
    produce_events(&mock, dir.path(), &sequences(users, n, "t3")).await;
    wait_until(
        "every user's last update landed",
        Duration::from_secs(60),
        || final_seq_wrong(&sim, users, "t3", n as i64).is_empty(),
    )
    .await;
    let (sa, sb) = (a.stop().await, b.stop().await);
    assert_eq!(sa.events + sb.events, users as u64 * n);
    assert!(sa.events > 0 && sb.events > 0);
    let violations = order_violations(&sim);
    assert!(violations.is_empty(), "out of order: {violations:?}");
    assert!(
        sim.log().len() > users * 3,
        "several upserts per user reached the simulator: {}",
        sim.log().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_sfmc_pauses_the_partitions_and_bounds_what_is_in_flight() {
    let mock = mock();
    let dir = tempfile::tempdir().unwrap();
    // Every SFMC call takes 300 ms; two at a time.
    let slow = Faults {
        rate_slow: 1.0,
        slow_ms: 300,
        ..Faults::default()
    };
    let sim = sim_with(slow).await;
    let rules = rules_dir(&Settings {
        max_in_flight: 2,
        batch_rows: 10,
        linger: "5ms",
        ..Settings::default()
    });
    let program = load(rules.path());
    let max = 30;
    let opts = || Opts {
        max_in_flight: max,
        flush_timeout: Duration::from_millis(100),
        ..Opts::default()
    };

    let a = start_relay(&mock, "g", &program, &sim, dir.path(), "a", opts());
    wait_until("a assigned", Duration::from_secs(30), || a.assigned() > 0).await;
    let users = 150;
    let events: Vec<Value> = (0..users)
        .map(|u| order(&format!("t4-user-{u}"), &format!("t4-order-{u}"), 1.0))
        .collect();
    produce_events(&mock, dir.path(), &events).await;
    wait_until("a paused", Duration::from_secs(30), || {
        a.stats.paused.load(Ordering::Acquire)
    })
    .await;

    // A second relay joins while a is paused: the partitions a gets in the rebalance
    // must start paused too.
    let b = start_relay(&mock, "g", &program, &sim, dir.path(), "b", opts());
    wait_balanced(&[&a, &b]).await;

    let landed = || sim.rows("orders").len();
    wait_until("every order landed", Duration::from_secs(120), || {
        landed() == users
    })
    .await;
    let (a_stats, b_stats) = (a.stats.clone(), b.stats.clone());
    let (a_dead, b_dead) = (a.dead.clone(), b.dead.clone());
    let (sa, sb) = (a.stop().await, b.stop().await);
    let peak = a_stats.peak_in_flight.load(Ordering::Relaxed);
    assert!(
        a_stats.pauses.load(Ordering::Relaxed) >= 1,
        "{}",
        sa.render()
    );
    assert!(
        peak <= max,
        "at most --max-in-flight events in flight: peak {peak} > {max}"
    );
    assert!(b_stats.peak_in_flight.load(Ordering::Relaxed) <= max);
    assert!(
        sa.render().contains("kafka: paused "),
        "the summary says so: {}",
        sa.render()
    );
    // b's joining revoked a's partitions with events still in flight (100 ms flush):
    // those are delivered again by their new owner (at-least-once), never lost.
    assert!(
        sa.delivered + sb.delivered >= users as u64,
        "everything delivered"
    );
    assert_eq!(sa.dead_lettered + sb.dead_lettered, 0);
    assert!(dead_letters(&a_dead).is_empty() && dead_letters(&b_dead).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_assigned_while_paused_start_paused() {
    let mock = mock();
    let dir = tempfile::tempdir().unwrap();
    // SFMC stalls for 6 s per call: a stays paused through the rebalance below.
    let stall = Faults {
        rate_slow: 1.0,
        slow_ms: 6000,
        ..Faults::default()
    };
    let sim = sim_with(stall).await;
    let rules = rules_dir(&Settings {
        max_in_flight: 2,
        ..Settings::default()
    });
    let program = load(rules.path());
    let opts = || Opts {
        max_in_flight: 5,
        flush_timeout: Duration::from_millis(100),
        ..Opts::default()
    };
    let a = start_relay(&mock, "g", &program, &sim, dir.path(), "a", opts());
    wait_until("a assigned", Duration::from_secs(30), || a.assigned() > 0).await;
    let events: Vec<Value> = (0..40)
        .map(|u| order(&format!("t5-user-{u}"), &format!("t5-order-{u}"), 1.0))
        .collect();
    produce_events(&mock, dir.path(), &events).await;
    wait_until("a paused", Duration::from_secs(30), || {
        a.stats.paused.load(Ordering::Acquire)
    })
    .await;
    let assignments = a.stats.assignments.load(Ordering::Relaxed);
    let b = start_relay(&mock, "g", &program, &sim, dir.path(), "b", opts());
    wait_until("a reassigned", Duration::from_secs(30), || {
        a.stats.assignments.load(Ordering::Relaxed) > assignments
    })
    .await;
    assert!(
        a.stats.paused_on_assign.load(Ordering::Relaxed) > 0,
        "a paused its new assignment"
    );
    sim.set_faults(Faults::default());
    wait_until("every order landed", Duration::from_secs(120), || {
        sim.rows("orders").len() == events.len()
    })
    .await;
    let a_stats = a.stats.clone();
    let (sa, sb) = (a.stop().await, b.stop().await);
    assert!(sa.delivered + sb.delivered >= events.len() as u64);
    assert!(a_stats.peak_in_flight.load(Ordering::Relaxed) <= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_also_go_to_the_dead_letter_topic() {
    let mock = mock();
    mock.cluster.create_topic("dead", 1, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim("").await;
    let rules = rules_dir(&Settings::default());
    std::fs::write(
        rules.path().join("reject.yaml"),
        "reject:\n  - when: { path: properties.bad, equals: true }\n    reason: bad order\n",
    )
    .unwrap();
    let program = load(rules.path());
    let a = start_relay(
        &mock,
        "g",
        &program,
        &sim,
        dir.path(),
        "a",
        Opts {
            dead_letter_topic: Some("dead".to_string()),
            ..Opts::default()
        },
    );
    wait_until("a assigned", Duration::from_secs(30), || a.assigned() > 0).await;

    let mut bad = order("t6-bad", "t6-order-bad", 1.0);
    bad["properties"]["bad"] = json!(true);
    let good = order("t6-good", "t6-order-good", 1.0);
    produce_events(&mock, dir.path(), &[bad, good]).await;
    produce_raw(&mock, Some("t6-raw"), b"{not json").await;
    wait_until("all three read", Duration::from_secs(30), || {
        a.stats.messages.load(Ordering::Relaxed) == 3
    })
    .await;
    wait_until("the good order landed", Duration::from_secs(30), || {
        sim.rows("orders").len() == 1
    })
    .await;
    let dead = a.dead.clone();
    let summary = a.stop().await;
    assert_eq!(summary.dead_lettered, 2, "{}", summary.render());
    assert!(
        summary
            .render()
            .contains("dead-letter topic dead: 2 record(s) acknowledged, 0 failed"),
        "{}",
        summary.render()
    );

    // The topic holds the file's records, byte for byte, keyed like the event.
    let file: Vec<String> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(file.len(), 2);
    let mut topic = read_topic(&mock, "dead", 1);
    topic.sort();
    let mut expected: Vec<(Option<String>, Vec<u8>)> = file
        .iter()
        .map(|line| {
            let rec: Value = serde_json::from_str(line).unwrap();
            let key = rec["event"]["userId"].as_str().map(str::to_string);
            (key, line.as_bytes().to_vec())
        })
        .collect();
    expected.sort();
    assert_eq!(topic, expected);
    assert!(expected.iter().any(|(k, _)| k.as_deref() == Some("t6-bad")));
    assert!(
        expected.iter().any(|(k, _)| k.is_none()),
        "the unparsable message has no event to key by"
    );
}

/// The same messages twice (as a redelivery after a rebalance would): with the window,
/// one API event per messageId; without it (`--dedup-window 0`), two.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_api_events_are_dropped_within_the_window() {
    let mock = mock();
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim("").await;
    let rules = rules_dir(&Settings::default());
    let program = load(rules.path());
    let users = 5;
    let once: Vec<Value> = workload(users, "t7");
    let twice: Vec<Value> = once.iter().chain(once.iter()).cloned().collect();
    produce_events(&mock, dir.path(), &twice).await;

    let a = start_relay(
        &mock,
        "dedup",
        &program,
        &sim,
        dir.path(),
        "a",
        Opts::default(),
    );
    wait_until("all read", Duration::from_secs(30), || {
        a.stats.messages.load(Ordering::Relaxed) == twice.len() as u64
    })
    .await;
    let a_stats = a.stats.clone();
    let sa = a.stop().await;
    assert_eq!(duplicated_api_events(&sim), vec![]);
    assert_eq!(sim.api_events().len(), users);
    assert_eq!(
        a_stats.duplicates_dropped.load(Ordering::Relaxed),
        users as u64
    );
    assert!(
        sa.render()
            .contains(&format!("{users} duplicate API event(s) dropped")),
        "{}",
        sa.render()
    );
    // Rows are idempotent and still sent; the duplicate signups (API event only) are
    // counted as skipped.
    assert_eq!(sa.skipped, users as u64);
    assert_eq!(sa.delivered, (twice.len() - users) as u64);
    assert!(missing(&sim, users, "t7").is_empty());

    // Without the window (another group reads the topic again): every copy is sent.
    sim.reset();
    let b = start_relay(
        &mock,
        "no-dedup",
        &program,
        &sim,
        dir.path(),
        "b",
        Opts {
            dedup_window: 0,
            ..Opts::default()
        },
    );
    wait_until("all read", Duration::from_secs(30), || {
        b.stats.messages.load(Ordering::Relaxed) == twice.len() as u64
    })
    .await;
    let sb = b.stop().await;
    assert_eq!(sb.delivered, twice.len() as u64);
    assert_eq!(sim.api_events().len(), 2 * users);
}

/// `produce` reads through the one line reader: a line over 1 MiB is refused with its
/// 1-based line number and the lines around it are written (regression: `produce` had no
/// limit and held the whole line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_refuses_lines_over_the_limit_and_goes_on() {
    let mock = mock();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.ndjson");
    let mut text = signup("u-1", "pro").to_string();
    text.push('\n');
    text.push_str(&"x".repeat(sfmc_relay::event::MAX_LINE_BYTES + 1));
    text.push('\n');
    text.push_str(&signup("u-2", "pro").to_string());
    text.push('\n');
    std::fs::write(&input, text).unwrap();
    let kafka = client_config(
        produce::DEFAULTS,
        None,
        &[],
        &[("bootstrap.servers", mock.servers.clone())],
    )
    .unwrap();
    let summary = produce::produce(ProduceOptions {
        topic: TOPIC.to_string(),
        kafka,
        input: Some(input),
    })
    .await
    .expect("produce");
    assert_eq!(
        (summary.lines, summary.written, summary.invalid),
        (3, 2, 1),
        "{summary:?}"
    );
}

/// `consume` counts skip reasons in the pipeline's bounded table (regression: one map
/// entry per distinct reason text, without bound), and every skipped event is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consume_skip_reasons_are_bounded() {
    let mock = mock();
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_with(Faults::default()).await;
    let rules = rules_dir(&Settings::default());
    let program = load(rules.path());
    let a = start_relay(&mock, "g", &program, &sim, dir.path(), "a", Opts::default());
    wait_until("a assigned", Duration::from_secs(30), || a.assigned() > 0).await;
    let n = 300;
    let events: Vec<Value> = (0..n)
        .map(|i| json!({"type": "track", "userId": format!("u-{i}"), "event": format!("Unmapped {i}")}))
        .collect();
    produce_events(&mock, dir.path(), &events).await;
    wait_until("all read", Duration::from_secs(30), || {
        a.stats.messages.load(Ordering::Relaxed) == n as u64
    })
    .await;
    let s = a.stop().await;
    assert_eq!(s.skipped, n as u64, "{}", s.render());
    assert_eq!(s.skip_reasons.total(), n as u64);
    assert!(s.skip_reasons.top().len() <= sfmc_relay::pipeline::SKIP_REASONS_KEPT);
    assert!(s.skip_reasons.other() > 0);
    assert!(s.render().contains("other reason(s)"), "{}", s.render());
}

// `consume` as a process through an outage (issue 14). Fails if an outage turns events
// into dead letters, if a relay stopped during the outage commits offsets of events it
// had not delivered (its successor would then miss them), or if a short outage is not
// waited out by a running relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_pauses_consume_and_commits_nothing_undelivered() {
    let mock = mock();
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim("").await;
    // Few retries: if an outage were treated as a data error it would show quickly.
    let rules = rules_dir(&Settings {
        attempts: 3,
        ..Settings::default()
    });
    // A 50200 block pauses delivery for `blocked_pause` (2 min by default).
    add_retry_setting(rules.path(), "blocked_pause: 1s");
    let spawn = |name: &str| {
        consume_process(
            &mock,
            rules.path(),
            dir.path(),
            name,
            &["--rebalance-flush-ms", "200"],
        )
        .spawn(&sim)
    };
    let refused = || sim.stats().faults_injected.values().sum::<u64>();
    // SFMC blocks every REST call (429 errorcode 50200: proven not processed, so journey
    // entries wait too) until the test clears it.
    sim.add_outage(sim::Outage::new(sim::OutageKind::RestBlocked))
        .unwrap();
    let mut a = spawn("a");
    wait_for_log(
        dir.path(),
        "a",
        "partitions assigned",
        1,
        Duration::from_secs(30),
    )
    .await;
    let users = 30;
    produce_events(&mock, dir.path(), &workload(users, "t10")).await;
    wait_until("SFMC refused requests", Duration::from_secs(30), || {
        refused() >= 10
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sim.api_events().is_empty() && sim.rows("orders").is_empty());
    signal(a.id().expect("running"), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), a.wait())
        .await
        .unwrap_or_else(|_| panic!("a did not stop in time: {}", log_of(dir.path(), "a")))
        .unwrap();
    let log_a = log_of(dir.path(), "a");
    assert!(status.success(), "{log_a}");
    assert_eq!(
        dead_letters(&dead_letter_file(dir.path(), "a")),
        Vec::<Value>::new(),
        "{log_a}"
    );

    // SFMC is back: a new member of the group starts from a's commits and finds every
    // event (nothing was committed past an undelivered one), each journey entry once.
    sim.clear_outages();
    let mut b = spawn("b");
    wait_landed(&sim, users, "t10", Duration::from_secs(90)).await;
    assert_eq!(duplicated_api_events(&sim), vec![]);

    // A running relay waits out a 3 s storm of 503s and then delivers. (No journey
    // entries here: one answered 503 may have been processed, so it is dead-lettered as
    // `uncertain`, as `outage::a_lost_journey_answer_is_uncertain_and_never_resent` shows.)
    let before = refused();
    sim.add_outage(sim::Outage {
        seconds: Some(3.0),
        ..sim::Outage::new(sim::OutageKind::ServerErrors)
    })
    .unwrap();
    let rows: Vec<Value> = workload(users, "t11")
        .into_iter()
        .filter(|e| e["event"] != "Signed Up")
        .collect();
    produce_events(&mock, dir.path(), &rows).await;
    wait_until("every t11 order", Duration::from_secs(90), || {
        let orders = sim.rows("orders");
        (0..users).all(|u| {
            let user = format!("t11-user-{u}");
            (0..2).all(|o| {
                find_row(
                    &orders,
                    &key(&[
                        ("Order Id", &format!("{user}-order-{o}")),
                        ("Contact Key", &user),
                    ]),
                )
                .is_some()
            })
        })
    })
    .await;
    assert!(refused() > before, "the second outage refused nothing");
    assert_eq!(duplicated_api_events(&sim), vec![]);
    signal(b.id().expect("running"), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), b.wait())
        .await
        .expect("b stopped in time")
        .unwrap();
    let log_b = log_of(dir.path(), "b");
    assert!(status.success(), "{log_b}");
    assert_eq!(
        dead_letters(&dead_letter_file(dir.path(), "b")),
        Vec::<Value>::new(),
        "{log_b}"
    );
}
