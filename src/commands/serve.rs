//! `sfmc-relay serve`: HTTP ingest (Segment's tracking API) -> durable spool -> SFMC.
//!
//! Request handlers ([`crate::source::http`]) write accepted events to the [`Spool`] and
//! reply once they are fsync'd. A reader thread tails the spool, runs the rules current
//! at each event (the [`RuleSource`] hook: a fixed program today, hot-reloaded rules
//! later) and hands the actions to the same [`Sink`] `run` uses; each event's completion
//! (delivered or dead-lettered) acks it in the spool, so a restart delivers exactly what
//! was accepted and not yet done.
//!
//! SIGTERM/SIGINT: stop accepting (in-flight requests finish), stop reading the spool,
//! let the sink finish what it holds (up to `drain_timeout`), write the acks, exit 0.
//! Whatever was not handed to the sink stays in the spool for the next start.

use super::run::{
    EnvSource, RuleSource, RunError, RunSummary, Work, sink_config, target, wait_for_signal, work,
};
use crate::sfmc::deadletter::DeadLetters;
use crate::sfmc::sink::{Counters, Delivery, EventRef, Sink};
use crate::source::http::{self, Ingest};
use crate::source::metrics::{Metrics, type_index};
use crate::spool::{Spool, SpoolConfig};
use crate::view::Val;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub spool: SpoolConfig,
    pub dead_letter: PathBuf,
    /// Override the rules' `delivery.requests_per_second` (0 = unlimited).
    pub requests_per_second: Option<u32>,
    /// Accepted write keys (HTTP Basic username); must not be empty.
    pub write_keys: Vec<String>,
    /// How long a shutdown waits for in-flight deliveries.
    pub drain_timeout: Duration,
    pub env: EnvSource,
    /// Counter the hot-reload hook increments on a failed reload (shown in /metrics).
    pub reload_failures: Arc<AtomicU64>,
    /// Browser origins allowed to call the ingest API (`--cors-origins`; default any).
    pub cors_origins: crate::source::cors::CorsOrigins,
}

/// One spooled event, transformed.
struct Item {
    seq: u64,
    version: Arc<str>,
    ty: usize,
    /// The spooled JSON text (parsed again only for a dead letter).
    event: EventRef,
    outcome: Result<Work, String>,
}

fn reader_thread(
    mut reader: crate::spool::SpoolReader,
    rules: RuleSource,
    tx: mpsc::Sender<Item>,
) -> std::io::Result<()> {
    while let Some(batch) = reader.next_batch()? {
        let program = rules();
        let version: Arc<str> = Arc::from(program.version.as_str());
        for (seq, payload) in batch {
            let item = match serde_json::from_slice::<Val>(&payload) {
                Ok(ev) => Item {
                    seq,
                    version: version.clone(),
                    ty: type_index(ev.get("type").and_then(Val::as_str)),
                    outcome: Ok(work(&program, &ev)),
                    event: EventRef::Json(
                        String::from_utf8(payload)
                            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into()),
                    ),
                },
                // Cannot happen (the handler wrote valid JSON); never lose it silently.
                Err(e) => Item {
                    seq,
                    version: version.clone(),
                    ty: type_index(None),
                    event: EventRef::from(Value::String(String::from_utf8_lossy(&payload).into())),
                    outcome: Err(format!("spooled event is not JSON: {e}")),
                },
            };
            if tx.blocking_send(item).is_err() {
                // Stopping: the event stays in the spool (not acked) for the next start.
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Serve until SIGTERM/SIGINT. The summary covers the events this process handled.
pub async fn serve(rules: RuleSource, opts: ServeOptions) -> Result<RunSummary, RunError> {
    if opts.write_keys.is_empty() {
        return Err(RunError::Config(
            "no write keys: set SFMC_RELAY_WRITE_KEYS (comma-separated) to the keys clients send as the HTTP Basic username".into(),
        ));
    }
    let program = rules();
    let target = target(&program, &opts.env, opts.requests_per_second).await?;
    // Before the spool deletes what was delivered: the ids a client may still retry.
    let recent_ids =
        crate::source::dedup::RecentIds::from_spool(&opts.spool.dir, crate::source::dedup::WINDOW)
            .map_err(|e| {
                RunError::Io(format!(
                    "cannot read the spool {}: {e}",
                    opts.spool.dir.display()
                ))
            })?;
    let (spool, report) = Spool::open(opts.spool.clone()).map_err(|e| {
        RunError::Io(format!(
            "cannot open the spool {}: {e}",
            opts.spool.dir.display()
        ))
    })?;
    let spool = Arc::new(spool);
    for n in &report.notes {
        eprintln!("sfmc-relay: {n}");
    }
    if report.pending > 0 {
        eprintln!(
            "sfmc-relay: spool {}: {} events accepted earlier and not yet delivered: delivering them now",
            opts.spool.dir.display(),
            report.pending
        );
    }
    let dead = Arc::new(DeadLetters::new(&opts.dead_letter));
    let counters = Arc::new(Counters::default());
    let mut sink = Sink::new(
        target.client.clone(),
        sink_config(&program),
        dead.clone(),
        counters.clone(),
    );
    let metrics = Arc::new(Metrics {
        reload_failures: opts.reload_failures.clone(),
        ..Default::default()
    });
    let state = Arc::new(Ingest {
        spool: spool.clone(),
        write_keys: opts
            .write_keys
            .iter()
            .map(|k| k.as_bytes().to_vec())
            .collect(),
        metrics: metrics.clone(),
        client: target.client.clone(),
        rules: rules.clone(),
        cors: opts.cors_origins.clone(),
        dead_letters: dead.clone(),
        recent_ids: std::sync::Mutex::new(recent_ids),
    });
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| RunError::Io(format!("cannot listen on {}: {e}", opts.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| RunError::Io(e.to_string()))?;
    eprintln!(
        "sfmc-relay: listening on http://{addr} (Segment tracking API: /v1/batch, /v1/track, ...; {} write keys; spool {}, max {} bytes; rules {})",
        opts.write_keys.len(),
        opts.spool.dir.display(),
        opts.spool.max_bytes,
        program.version
    );

    let (tx, mut rx) = mpsc::channel::<Item>(1024);
    let reader = {
        let (r, rules) = (spool.reader(), rules.clone());
        std::thread::Builder::new()
            .name("sfmc-relay-spool-reader".into())
            .spawn(move || reader_thread(r, rules, tx))
            .map_err(|e| RunError::Io(e.to_string()))?
    };

    // Shutdown sequence: signal -> the server stops accepting and finishes in-flight
    // requests -> no more appends -> the reader stops -> the loop below ends.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let app = http::router(state);
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await
        }
    });
    // Set once the server has stopped and the spool takes no more appends: the loop
    // below then hands nothing new to the sink (the rest stays in the spool).
    let (stopped_tx, mut stopped_rx) = tokio::sync::watch::channel(false);
    let stopper = tokio::spawn({
        let spool = spool.clone();
        async move {
            wait_for_signal().await;
            eprintln!(
                "sfmc-relay: stopping: no new requests; finishing deliveries in flight (what is not sent stays in the spool)"
            );
            let _ = stop_tx.send(());
            let served = server.await;
            let spool2 = spool.clone();
            let _ = tokio::task::spawn_blocking(move || spool2.close_appends()).await;
            spool.stop_reading();
            let _ = stopped_tx.send(true);
            served
        }
    });

    let mut summary = RunSummary {
        rules_version: program.version.clone(),
        dead_letter_path: opts.dead_letter.clone(),
        interrupted: true,
        ..Default::default()
    };
    let acker = spool.acker();
    loop {
        let item = tokio::select! {
            biased;
            _ = stopped_rx.wait_for(|s| *s) => break,
            item = rx.recv() => item,
        };
        let Some(item) = item else { break };
        summary.events += 1;
        let Item {
            seq,
            version,
            ty,
            event,
            outcome,
        } = item;
        match outcome {
            Ok(Work::Skipped(_)) => {
                summary.skipped += 1;
                metrics.skipped.add(ty, 1);
                acker.ack(seq);
            }
            Ok(Work::Rejected(reason)) | Err(reason) => {
                // Written (and flushed) to the dead-letter file before the ack.
                sink.reject(seq, &version, &event.to_value(), &reason);
                metrics.dead_lettered.add(ty, 1);
                acker.ack(seq);
            }
            Ok(Work::Send(prepared)) => {
                let (acker, metrics) = (acker.clone(), metrics.clone());
                let done = Box::new(move |how: Delivery| {
                    match how {
                        Delivery::Delivered => metrics.delivered.add(ty, 1),
                        Delivery::DeadLettered => metrics.dead_lettered.add(ty, 1),
                    }
                    acker.ack(seq);
                });
                sink.submit_prepared(seq, version, event, prepared, Some(done))
                    .await;
            }
        }
    }
    // Events still in the channel were not handed to the sink: not acked, so the next
    // start delivers them.
    drop(rx);
    let read_result = reader
        .join()
        .map_err(|_| RunError::Io("the spool reader thread panicked".into()))?;
    let finish = match tokio::time::timeout(opts.drain_timeout, sink.finish()).await {
        Ok(r) => r,
        Err(_) => {
            eprintln!(
                "sfmc-relay: deliveries still in flight after {:?}: they stay in the spool and are sent on the next start",
                opts.drain_timeout
            );
            Ok(())
        }
    };
    drop(acker);
    let served = stopper.await;
    let spool2 = spool.clone();
    let _ = tokio::task::spawn_blocking(move || spool2.close()).await;
    let left = spool.stats().pending;
    summary.lines = summary.events;
    summary.delivered = counters.delivered.load(Ordering::Relaxed);
    summary.dead_lettered = counters.dead_lettered.load(Ordering::Relaxed);
    summary.contacts_cached = counters.contacts_cached.load(Ordering::Relaxed);
    summary.rows_coalesced = counters.rows_coalesced.load(Ordering::Relaxed);
    summary.splits = counters.splits.load(Ordering::Relaxed);
    summary.client = target.client.stats();
    if let Some(sim) = target.sim {
        summary.simulator_report = Some(sim.summary_text());
        sim.shutdown().await;
    }
    eprintln!(
        "sfmc-relay: {} events received this run; {left} left in the spool {}",
        metrics.received.total(),
        opts.spool.dir.display()
    );
    finish.map_err(|e| RunError::Io(format!("dead-letter file: {e}")))?;
    read_result.map_err(|e| RunError::Io(format!("reading the spool: {e}")))?;
    match served {
        Ok(Ok(Ok(()))) => Ok(summary),
        Ok(Ok(Err(e))) => Err(RunError::Io(format!("HTTP server: {e}"))),
        _ => Err(RunError::Io("the HTTP server task failed".into())),
    }
}
