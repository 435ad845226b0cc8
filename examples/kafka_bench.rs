//! Throughput of `consume` with one and with two relays in one consumer group, against
//! rdkafka's mock cluster, the SFMC simulator as the sink's target (loopback HTTP), the
//! example e-commerce rules and no rate limit. Everything runs in this one process.
//!
//! ```sh
//! cargo run --release --features kafka --example kafka_bench -- [EVENTS] [PARTITIONS]
//! ```
//!
//! The seeded corpus (`sfmc-relay corpus`, users = events / 50) is produced to the topic
//! first (untimed; the mock broker keeps at most 5 MB, ~5,000 such events, per partition); then, for 1 and 2 relays (a fresh group each), the time from the first
//! message read to the last event delivered. Results: BENCHMARKS.md.

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use sfmc_relay::commands::consume::{self, ConsumeOptions};
use sfmc_relay::commands::produce::{self, ProduceOptions};
use sfmc_relay::corpus::{self, CorpusConfig};
use sfmc_relay::rules;
use sfmc_relay::sim::{self, SimConfig};
use sfmc_relay::source::kafka::{ConsumeStats, client_config};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const TOPIC: &str = "bench";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args: Vec<String> = std::env::args().collect();
    let events: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let partitions: i32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(12);

    let mock = MockCluster::new(1)?;
    mock.create_topic(TOPIC, partitions, 1)?;
    let servers = mock.bootstrap_servers();

    let dir = tempfile::tempdir()?;
    let input = dir.path().join("corpus.ndjson");
    let cfg = CorpusConfig {
        events,
        users: (events / 50).max(1),
        seed: 1,
    };
    corpus::write(
        &cfg,
        &mut std::io::BufWriter::new(std::fs::File::create(&input)?),
    )?;
    let started = Instant::now();
    let produced = produce::produce(ProduceOptions {
        topic: TOPIC.to_string(),
        kafka: client_config(
            produce::DEFAULTS,
            None,
            &[],
            &[("bootstrap.servers", servers.clone())],
        )
        .map_err(anyhow::Error::msg)?,
        input: Some(input),
    })
    .await?;
    anyhow::ensure!(produced.written == events, "produce: {produced:?}");
    // The mock broker keeps at most 5 MB per partition and drops the oldest messages
    // beyond that: check that nothing was dropped (else use more partitions).
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .create()?;
    for p in 0..partitions {
        let (low, _) = probe.fetch_watermarks(TOPIC, p, Duration::from_secs(10))?;
        anyhow::ensure!(
            low == 0,
            "the mock cluster dropped {low} messages of partition {p} (5 MB per partition): use more partitions"
        );
    }
    println!(
        "produced {events} messages to {partitions} partitions in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let sim = sim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let program = Arc::new(
        rules::load(
            Some(&root.join("examples/ecommerce/rules")),
            &sfmc_relay::env::Env::empty(),
            1,
        )
        .map_err(|e| anyhow::anyhow!("rules: {e:?}"))?
        .program,
    );
    let env = sim.client_env();

    for relays in [1usize, 2] {
        sim.reset();
        let mut running = Vec::new();
        for r in 0..relays {
            let kafka = client_config(
                consume::DEFAULTS,
                None,
                &[],
                &[
                    ("bootstrap.servers", servers.clone()),
                    ("group.id", format!("bench-{relays}")),
                    ("client.id", format!("relay-{r}")),
                ],
            )
            .map_err(anyhow::Error::msg)?;
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let stats = Arc::new(ConsumeStats::default());
            let env = env.clone();
            let program = program.clone();
            let opts = ConsumeOptions {
                topic: TOPIC.to_string(),
                kafka,
                dead_letter: dir.path().join(format!("dead-{relays}-{r}.ndjson")),
                dead_letter_topic: None,
                requests_per_second: Some(0),
                commit_interval: Duration::from_secs(1),
                flush_timeout: Duration::from_secs(10),
                max_in_flight: consume::DEFAULT_MAX_IN_FLIGHT,
                dedup_window: consume::DEFAULT_DEDUP_WINDOW,
                env: env.into(),
                state_dir: None,
                shutdown: Box::pin(async move {
                    let _ = rx.await;
                }),
                stats: stats.clone(),
            };
            let task = tokio::spawn(consume::consume(Arc::new(move || program.clone()), opts));
            running.push((tx, task, stats));
        }
        let read = |running: &Vec<(_, _, Arc<ConsumeStats>)>| -> u64 {
            running
                .iter()
                .map(|(_, _, s)| s.messages.load(Ordering::Relaxed))
                .sum()
        };
        let idle = |running: &Vec<(_, _, Arc<ConsumeStats>)>| {
            running.iter().all(|(_, _, s)| s.in_flight() == 0)
        };
        while read(&running) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let t0 = Instant::now();
        let mut report = Instant::now();
        while read(&running) < events || !idle(&running) {
            tokio::time::sleep(Duration::from_millis(2)).await;
            if report.elapsed() > Duration::from_secs(5) {
                report = Instant::now();
                let in_flight: Vec<usize> = running.iter().map(|(_, _, s)| s.in_flight()).collect();
                eprintln!("... {} read, in flight {in_flight:?}", read(&running));
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let mut split = Vec::new();
        let mut ended = 0;
        for (tx, task, stats) in running {
            let _ = tx.send(());
            let s = task.await??;
            ended += s.delivered + s.skipped + s.dead_lettered;
            split.push(format!(
                "{} (paused {}×)",
                stats.messages.load(Ordering::Relaxed),
                stats.pauses.load(Ordering::Relaxed)
            ));
        }
        anyhow::ensure!(ended == events, "{ended} of {events} events ended");
        let stats = sim.stats();
        println!(
            "{relays} relay(s): {events} events in {secs:.2} s = {:.0} events/s; messages per relay: {}; \
SFMC calls {}",
            events as f64 / secs,
            split.join(", "),
            stats.calls.values().map(|e| e.total).sum::<u64>()
        );
    }
    sim.shutdown().await;
    Ok(())
}
