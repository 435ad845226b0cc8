//! `sfmc-relay run` and `replay`: stream events through the rules into SFMC.
//!
//! A reader thread reads NDJSON lines and runs the interpreter with the rule set current
//! at that line; the async side hands each event's actions to the [`Sink`] and counts
//! outcomes. Rejected events and failed deliveries go to the dead-letter file.

use crate::event::{Line, parse_line};
use crate::rules::Program;
use crate::sfmc::deadletter::DeadLetters;
use crate::sfmc::sink::{Counters, Sink, SinkConfig};
use crate::sfmc::{ClientConfig, ClientStats, Credentials, Endpoints, RetryPolicy, SfmcClient};
use crate::sim::{self, SimHandle};
use crate::transform::{Outcome, Trace, transform};
use serde_json::Value;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Where the current rule set comes from (a fixed program, or hot-reloaded rules).
pub type RuleSource = Arc<dyn Fn() -> Arc<Program> + Send + Sync>;

/// Environment lookup (the process environment, or a map in tests).
pub type EnvSource = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How the input lines are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// NDJSON events or `{"batch":[...]}` envelopes.
    Events,
    /// A dead-letter file: each line's `event` is sent again.
    DeadLetters,
}

pub struct RunOptions {
    pub input: Option<PathBuf>,
    pub input_kind: InputKind,
    pub dead_letter: PathBuf,
    /// Override the rules' `delivery.requests_per_second` (0 = unlimited).
    pub requests_per_second: Option<u32>,
    /// Progress line on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Environment lookup for credentials and endpoints.
    pub env: EnvSource,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub lines: u64,
    pub events: u64,
    pub delivered: u64,
    pub skipped: u64,
    pub dead_lettered: u64,
    pub contacts_cached: u64,
    pub rows_coalesced: u64,
    pub splits: u64,
    pub client: ClientStats,
    pub rules_version: String,
    pub dead_letter_path: PathBuf,
    pub interrupted: bool,
    /// The simulator's "what landed" report, when the built-in simulator was used.
    pub simulator_report: Option<String>,
}

impl RunSummary {
    pub fn calls(&self) -> u64 {
        self.client
            .requests_per_endpoint
            .iter()
            .filter(|(k, _)| k.as_str() != "token")
            .map(|(_, v)| v)
            .sum()
    }

    pub fn render(&self) -> String {
        let per: Vec<String> = self
            .client
            .requests_per_endpoint
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let mut s = format!(
            "{} events read ({} lines): {} delivered, {} skipped, {} dead-lettered{}\n",
            self.events,
            self.lines,
            self.delivered,
            self.skipped,
            self.dead_lettered,
            if self.dead_lettered > 0 {
                format!(" -> {}", self.dead_letter_path.display())
            } else {
                String::new()
            }
        );
        s.push_str(&format!(
            "SFMC calls: {} ({}), retries {}, token requests {}; rows coalesced {}, contact creations saved {}, batch splits {}\n",
            self.calls(),
            if per.is_empty() { "none".to_string() } else { per.join(", ") },
            self.client.retries,
            self.client.token_requests,
            self.rows_coalesced,
            self.contacts_cached,
            self.splits
        ));
        s.push_str(&format!("rules {}", self.rules_version));
        if self.interrupted {
            s.push_str("; stopped by signal (in-flight events were flushed)");
        }
        s
    }
}

/// A run that could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
}

enum Item {
    Event {
        line: u64,
        version: Arc<str>,
        event: Arc<Value>,
        outcome: Outcome,
    },
    Invalid {
        line: u64,
        version: Arc<str>,
        raw: String,
        reason: String,
    },
}

/// Where calls go: SFMC, or the built-in simulator when there are no credentials.
pub struct Target {
    pub client: SfmcClient,
    /// The built-in simulator, when one was started (shut it down at the end).
    pub sim: Option<SimHandle>,
}

/// The SFMC client for `program`'s delivery settings and the environment's credentials
/// (the built-in simulator without credentials). Only `env` and `requests_per_second`
/// of `opts` are used.
pub async fn target(program: &Program, opts: &RunOptions) -> Result<Target, RunError> {
    let env = |k: &str| (opts.env)(k).filter(|v| !v.is_empty());
    let d = &program.settings.delivery;
    let rps = opts
        .requests_per_second
        .or(Some(d.requests_per_second.unwrap_or(0)))
        .and_then(NonZeroU32::new);
    let config = ClientConfig {
        requests_per_second: rps,
        max_in_flight: d.max_in_flight,
        request_timeout: d.request_timeout,
        retry: RetryPolicy {
            max_attempts: d.retry_attempts,
            max_elapsed: d.retry_within,
            base_delay: d.retry_base_delay,
            max_delay: d.retry_max_delay,
        },
    };
    let has_id = env("SFMC_CLIENT_ID").is_some();
    let has_secret = env("SFMC_CLIENT_SECRET").is_some();
    if has_id != has_secret {
        return Err(RunError::Config(format!(
            "{} is set but {} is not: set both (or neither, to use the built-in SFMC simulator)",
            if has_id {
                "SFMC_CLIENT_ID"
            } else {
                "SFMC_CLIENT_SECRET"
            },
            if has_id {
                "SFMC_CLIENT_SECRET"
            } else {
                "SFMC_CLIENT_ID"
            },
        )));
    }
    if !has_id {
        let handle = sim::start(sim::SimConfig::default(), ([127, 0, 0, 1], 0).into())
            .await
            .map_err(|e| RunError::Io(format!("cannot start the built-in SFMC simulator: {e}")))?;
        eprintln!(
            "sfmc-relay: no SFMC credentials (SFMC_CLIENT_ID, SFMC_CLIENT_SECRET) in the environment: \
delivering to the built-in SFMC simulator at {} (nothing leaves this machine)",
            handle.base_url()
        );
        let endpoints = Endpoints::resolve(None, Some(handle.base_url()), Some(handle.base_url()))
            .map_err(|e| RunError::Config(e.to_string()))?;
        let creds = Credentials {
            client_id: "sfmc-relay-simulator".into(),
            client_secret: "simulator".into(),
            account_id: None,
        };
        let client = SfmcClient::new(endpoints, creds, config)
            .map_err(|e| RunError::Config(e.to_string()))?;
        return Ok(Target {
            client,
            sim: Some(handle),
        });
    }
    let subdomain = env("SFMC_SUBDOMAIN").or_else(|| program.settings.subdomain.clone());
    let endpoints = Endpoints::resolve(
        subdomain.as_deref(),
        env("SFMC_AUTH_URL").as_deref(),
        env("SFMC_REST_URL").as_deref(),
    )
    .map_err(|e| RunError::Config(e.to_string()))?;
    let creds = Credentials {
        client_id: env("SFMC_CLIENT_ID").unwrap_or_default(),
        client_secret: env("SFMC_CLIENT_SECRET").unwrap_or_default().into(),
        account_id: env("SFMC_ACCOUNT_ID").or_else(|| program.settings.account_id.clone()),
    };
    let client =
        SfmcClient::new(endpoints, creds, config).map_err(|e| RunError::Config(e.to_string()))?;
    Ok(Target { client, sim: None })
}

fn open(input: &Option<PathBuf>) -> Result<Box<dyn Read + Send>, RunError> {
    Ok(match input {
        Some(p) => Box::new(
            std::fs::File::open(p)
                .map_err(|e| RunError::Io(format!("cannot open {}: {e}", p.display())))?,
        ),
        None => Box::new(std::io::stdin()),
    })
}

/// The events on one input line.
fn line_events(text: &str, line: u64, kind: InputKind) -> Line {
    match kind {
        InputKind::Events => parse_line(text, line),
        InputKind::DeadLetters => match parse_line(text, line) {
            Line::Events(mut v) if v.len() == 1 => match v
                .pop()
                .and_then(|mut r| r.get_mut("event").map(Value::take))
            {
                Some(Value::String(raw)) => parse_line(&raw, line),
                Some(ev @ Value::Object(_)) => Line::Events(vec![ev]),
                _ => Line::Invalid(format!(
                    "line {}: not a dead-letter record (no \"event\")",
                    line + 1
                )),
            },
            Line::Events(_) => {
                Line::Invalid(format!("line {}: not a dead-letter record", line + 1))
            }
            other => other,
        },
    }
}

fn reader_thread(
    input: Box<dyn Read + Send>,
    kind: InputKind,
    rules: RuleSource,
    tx: mpsc::Sender<Item>,
    lines_read: Arc<AtomicU64>,
    dead: Arc<DeadLetters>,
    dead_count: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(256 * 1024, input);
    let mut buf = Vec::new();
    let mut line: u64 = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        lines_read.fetch_add(1, Ordering::Relaxed);
        let program = rules();
        let version: Arc<str> = Arc::from(program.version.as_str());
        let items: Vec<Item> = match std::str::from_utf8(&buf) {
            Err(e) => vec![Item::Invalid {
                line,
                version: version.clone(),
                raw: String::from_utf8_lossy(&buf).into_owned(),
                reason: format!("line {}: not UTF-8 text: {e}", line + 1),
            }],
            Ok(text) => match line_events(text, line, kind) {
                Line::Blank => vec![],
                Line::Invalid(reason) => vec![Item::Invalid {
                    line,
                    version: version.clone(),
                    raw: text.trim_end().to_string(),
                    reason,
                }],
                Line::Events(events) => events
                    .into_iter()
                    .map(|ev| {
                        let outcome = transform(&program, &ev, &mut Trace::off());
                        Item::Event {
                            line,
                            version: version.clone(),
                            event: Arc::new(ev),
                            outcome,
                        }
                    })
                    .collect(),
            },
        };
        let mut stopped = false;
        for item in items {
            if let Err(mpsc::error::SendError(item)) = tx.blocking_send(item) {
                // The relay is stopping: this event was read but will not be sent.
                stopped = true;
                let (line, version, event) = match item {
                    Item::Event {
                        line,
                        version,
                        event,
                        ..
                    } => (line, version, (*event).clone()),
                    Item::Invalid {
                        line, version, raw, ..
                    } => (line, version, Value::String(raw)),
                };
                dead.write(line, &version, &event, &crate::sfmc::deadletter::Failure::rejected(
                    "the relay stopped (signal) before this event was sent; replay this file to send it",
                ))?;
                dead_count.fetch_add(1, Ordering::Relaxed);
            }
        }
        if stopped {
            // No more input is read once the relay stops.
            return Ok(());
        }
        line += 1;
    }
}

/// The sink settings of `program`'s `delivery:` section.
pub fn sink_config(program: &Program) -> SinkConfig {
    let d = &program.settings.delivery;
    SinkConfig {
        batch_rows: d.batch_rows,
        batch_bytes: d.batch_bytes,
        linger: d.linger,
        lanes: d.max_in_flight.max(1),
        contact_cache: d.contact_cache,
    }
}

/// Copy the sink's counters and the client's statistics into `summary`.
pub fn add_delivery_stats(summary: &mut RunSummary, counters: &Counters, client: &SfmcClient) {
    summary.delivered = counters.delivered.load(Ordering::Relaxed);
    summary.dead_lettered += counters.dead_lettered.load(Ordering::Relaxed);
    summary.contacts_cached = counters.contacts_cached.load(Ordering::Relaxed);
    summary.rows_coalesced = counters.rows_coalesced.load(Ordering::Relaxed);
    summary.splits = counters.splits.load(Ordering::Relaxed);
    summary.client = client.stats();
}

/// Run the relay until the input ends or a signal arrives.
pub async fn run(rules: RuleSource, opts: RunOptions) -> Result<RunSummary, RunError> {
    let program = rules();
    let target = target(&program, &opts).await?;
    let sink_config = sink_config(&program);
    let dead = Arc::new(DeadLetters::new(&opts.dead_letter));
    let counters = Arc::new(Counters::default());
    let mut sink = Sink::new(
        target.client.clone(),
        sink_config,
        dead.clone(),
        counters.clone(),
    );

    let input = open(&opts.input)?;
    let (tx, mut rx) = mpsc::channel::<Item>(4096);
    let lines = Arc::new(AtomicU64::new(0));
    let late_dead = Arc::new(AtomicU64::new(0));
    let reader = {
        let (rules, lines, dead, late_dead) = (
            rules.clone(),
            lines.clone(),
            dead.clone(),
            late_dead.clone(),
        );
        let kind = opts.input_kind;
        std::thread::Builder::new()
            .name("sfmc-relay-reader".into())
            .spawn(move || reader_thread(input, kind, rules, tx, lines, dead, late_dead))
            .map_err(|e| RunError::Io(e.to_string()))?
    };

    let stop = Arc::new(AtomicBool::new(false));
    tokio::spawn({
        let stop = stop.clone();
        async move {
            wait_for_signal().await;
            stop.store(true, Ordering::SeqCst);
        }
    });

    let mut summary = RunSummary {
        rules_version: program.version.clone(),
        dead_letter_path: opts.dead_letter.clone(),
        ..Default::default()
    };
    let progress = opts.progress && std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_draw = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        // Checked before every item too: with a backlog `recv` is always ready and the
        // tick branch below would never run, so a signal would not stop the input.
        if stop.load(Ordering::SeqCst) && !rx.is_closed() {
            summary.interrupted = true;
            eprintln!("sfmc-relay: stopping: no more input is read; flushing what is in flight");
            rx.close();
        }
        let item = tokio::select! {
            biased;
            item = rx.recv() => item,
            _ = tick.tick() => {
                if progress && last_draw.elapsed() >= Duration::from_millis(500) {
                    last_draw = Instant::now();
                    draw_progress(started, &summary, &counters);
                }
                continue;
            }
        };
        let Some(item) = item else { break };
        summary.events += 1;
        match item {
            Item::Invalid {
                line,
                version,
                raw,
                reason,
            } => {
                sink.reject(line, &version, &Value::String(raw), &reason);
            }
            Item::Event {
                line,
                version,
                event,
                outcome,
            } => match outcome {
                Outcome::Skipped(_) => summary.skipped += 1,
                Outcome::Rejected(reason) => sink.reject(line, &version, &event, &reason),
                Outcome::Actions(actions) => sink.submit(line, version, event, actions).await,
            },
        }
    }
    // After a signal the reader may be blocked reading stdin: leave it (the process ends),
    // unless it already stopped (then its last dead letters are counted below).
    let read_result = if summary.interrupted && !reader.is_finished() {
        Ok(())
    } else {
        reader
            .join()
            .map_err(|_| RunError::Io("the input reader thread panicked".into()))?
    };
    let finish = sink.finish().await;
    if progress {
        eprint!("\r\x1b[2K");
    }
    summary.lines = lines.load(Ordering::Relaxed);
    let late = late_dead.load(Ordering::Relaxed);
    summary.events += late;
    summary.dead_lettered = late;
    add_delivery_stats(&mut summary, &counters, &target.client);
    if let Some(sim) = target.sim {
        summary.simulator_report = Some(sim.summary_text());
        sim.shutdown().await;
    }
    finish.map_err(|e| RunError::Io(format!("dead-letter file: {e}")))?;
    read_result.map_err(|e| RunError::Io(format!("reading input: {e}")))?;
    Ok(summary)
}

fn draw_progress(started: Instant, s: &RunSummary, c: &Counters) {
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r\x1b[2K{} events ({:.0}/s), {} delivered, {} skipped, {} dead letters",
        s.events,
        s.events as f64 / secs,
        c.delivered.load(Ordering::Relaxed),
        s.skipped,
        c.dead_lettered.load(Ordering::Relaxed)
    );
    let _ = err.flush();
}

/// Wait for SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
