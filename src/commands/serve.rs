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

use crate::pipeline::{
    Env, Pipeline, PipelineOptions, RuleSource, RunError, RunSummary, wait_for_signal,
};
use crate::source::Framing;
use crate::source::http::{self, Ingest};
use crate::source::metrics::Metrics;
use crate::spool::{Spool, SpoolConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

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
    pub env: Env,
    /// Counter the hot-reload hook increments on a failed reload (shown in /metrics).
    pub reload_failures: Arc<AtomicU64>,
    /// Browser origins allowed to call the ingest API (`--cors-origins`; default any).
    pub cors_origins: crate::source::cors::CorsOrigins,
}

/// Serve until SIGTERM/SIGINT. The summary covers the events this process handled.
pub async fn serve(rules: RuleSource, opts: ServeOptions) -> Result<RunSummary, RunError> {
    if opts.write_keys.is_empty() {
        return Err(RunError::Config(
            "no write keys: set SFMC_RELAY_WRITE_KEYS (comma-separated) to the keys clients send as the HTTP Basic username".into(),
        ));
    }
    let mut p = PipelineOptions::new(Framing::Event, opts.dead_letter.clone(), opts.env.clone());
    p.durable = true;
    p.requests_per_second = opts.requests_per_second;
    p.drain_timeout = Some(opts.drain_timeout);
    p.unit = "events";
    // The contact cache's state lives with the spool.
    p.state_dir = Some(opts.spool.dir.clone());
    let pipeline = Pipeline::start(rules.clone(), p).await?;
    let program = pipeline.program().clone();
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
    let metrics = Arc::new(Metrics {
        reload_failures: opts.reload_failures.clone(),
        outcomes: pipeline.outcomes(),
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
        client: pipeline.client().clone(),
        rules: rules.clone(),
        cors: opts.cors_origins.clone(),
        dead_letters: pipeline.dead_letters(),
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

    let reader = {
        let (r, acker, feeder) = (spool.reader(), spool.acker(), pipeline.feeder());
        std::thread::Builder::new()
            .name("sfmc-relay-spool-reader".into())
            .spawn(move || crate::source::spool::read_into(r, acker, feeder))
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

    let mut summary = pipeline
        .run(async move {
            let _ = stopped_rx.wait_for(|s| *s).await;
        })
        .await?;
    summary.interrupted = true;
    let read_result = reader
        .join()
        .map_err(|_| RunError::Io("the spool reader thread panicked".into()))?;
    let served = stopper.await;
    let spool2 = spool.clone();
    let _ = tokio::task::spawn_blocking(move || spool2.close()).await;
    let left = spool.stats().pending;
    summary.lines = summary.events;
    eprintln!(
        "sfmc-relay: {} events received this run; {left} left in the spool {}",
        metrics.received.total(),
        opts.spool.dir.display()
    );
    read_result.map_err(|e| RunError::Io(format!("reading the spool: {e}")))?;
    match served {
        Ok(Ok(Ok(()))) => Ok(summary),
        Ok(Ok(Err(e))) => Err(RunError::Io(format!("HTTP server: {e}"))),
        _ => Err(RunError::Io("the HTTP server task failed".into())),
    }
}
