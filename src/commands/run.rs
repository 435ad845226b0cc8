//! `sfmc-relay run` and `replay`: stream events through the rules into SFMC.
//!
//! A reader thread cuts the input into chunks of lines, each tagged with the rule set
//! current when it was cut; a pool of worker threads parses and interprets chunks in
//! parallel; a sequencer restores input order; the async side hands each event's actions to
//! the [`Sink`] and counts outcomes. Rejected events and failed deliveries go to the
//! dead-letter file.

use crate::event::{
    Line, LineView, MAX_LINE_BYTES, ReadLine, parse_line, parse_line_view, preview,
    read_line_limited, too_long_reason,
};
use crate::rules::Program;
use crate::sfmc::deadletter::DeadLetters;
use crate::sfmc::sink::{self as sinks, Counters, EventRef, Prepared, Sink, SinkConfig};
use crate::sfmc::{ClientConfig, ClientStats, Credentials, Endpoints, RetryPolicy, SfmcClient};
use crate::sim::{self, SimHandle};
use crate::transform::{Outcome, Trace, transform_view};
use crate::view::Val;
use serde_json::Value;
use std::io::{BufReader, IsTerminal, Read, Write};
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
    /// Why events were skipped, with counts (the most common are shown in the summary).
    pub skip_reasons: std::collections::BTreeMap<String, u64>,
    /// The simulator's "what landed" report, when the built-in simulator was used.
    pub simulator_report: Option<String>,
    /// Source-specific summary lines (e.g. `consume`'s pauses and dropped duplicates).
    pub notes: Vec<String>,
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
        if !self.skip_reasons.is_empty() {
            // Every reason (up to 10), one a line: what a newcomer needs to see.
            const SHOWN: usize = 10;
            let mut top: Vec<(&String, &u64)> = self.skip_reasons.iter().collect();
            top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let shown: Vec<String> = top
                .iter()
                .take(SHOWN)
                .map(|(r, n)| format!("{n} × {r}"))
                .collect();
            let more = top.len().saturating_sub(SHOWN);
            s.push_str(&format!(
                "skipped: {}{}\n",
                shown.join("\n         "),
                if more > 0 {
                    format!("\n         and {more} other reason(s)")
                } else {
                    String::new()
                }
            ));
        }
        for note in &self.notes {
            s.push_str(note);
            s.push('\n');
        }
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

/// What a worker made of one event.
pub(crate) enum Work {
    Send(Prepared),
    Skipped(String),
    Rejected(String),
}

enum Item {
    Event {
        line: u64,
        version: Arc<str>,
        event: EventRef,
        work: Work,
    },
    Invalid {
        line: u64,
        version: Arc<str>,
        raw: String,
        reason: String,
    },
}

/// Where events are delivered: SFMC, or the built-in simulator without credentials.
pub struct Target {
    pub client: SfmcClient,
    /// The built-in simulator, when no credentials were set.
    pub sim: Option<SimHandle>,
}

/// The SFMC client for `program`'s delivery settings and the environment's credentials;
/// without credentials, starts the built-in simulator (and says so on stderr).
/// Shared by `run`, `replay` and `serve`.
pub async fn target(
    program: &Program,
    env: &EnvSource,
    requests_per_second: Option<u32>,
) -> Result<Target, RunError> {
    let env = |k: &str| env(k).filter(|v| !v.is_empty());
    let d = &program.settings.delivery;
    let rps = requests_per_second
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

/// The sink settings from the rules' `delivery:` section.
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

fn open(input: &Option<PathBuf>) -> Result<Box<dyn Read + Send>, RunError> {
    Ok(match input {
        Some(p) => Box::new(
            std::fs::File::open(p)
                .map_err(|e| RunError::Io(format!("cannot open {}: {e}", p.display())))?,
        ),
        None => Box::new(std::io::stdin()),
    })
}

/// The events of one line of a dead-letter file (`replay`): each record's `"event"`, kept
/// as the input line's text or as the parsed event.
fn dead_letter_events(text: &str, line: u64) -> Line {
    match parse_line(text, line) {
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
        Line::Events(_) => Line::Invalid(format!("line {}: not a dead-letter record", line + 1)),
        other => other,
    }
}

/// A line that is not an event (or events): dead-lettered with its text and the reason.
fn invalid_line(line: u64, version: &Arc<str>, text: &str, reason: String) -> Item {
    Item::Invalid {
        line,
        version: version.clone(),
        raw: text.trim_end().to_string(),
        reason,
    }
}

/// Lines handed to a transform worker, with the rule set they are processed by.
struct Job {
    /// (line number, bytes, `Some(full length)` when the line was over the limit and only
    /// its start was kept)
    lines: Vec<(u64, Vec<u8>, Option<u64>)>,
    program: Arc<Program>,
    reply: std::sync::mpsc::SyncSender<Vec<Item>>,
}

/// Interpret one event and prepare its calls (on a worker thread, not the async side).
pub(crate) fn work(program: &Program, event: &Val) -> Work {
    match transform_view(program, event, &mut Trace::off()) {
        Outcome::Actions(actions) => Work::Send(sinks::prepare(actions)),
        Outcome::Skipped(reason) => Work::Skipped(reason),
        Outcome::Rejected(reason) => Work::Rejected(reason),
    }
}

/// Parse and interpret one chunk of lines (runs on a worker thread).
fn process_chunk(job: Job, kind: InputKind) -> Vec<Item> {
    let program = &job.program;
    let version: Arc<str> = Arc::from(program.version.as_str());
    let mut items = Vec::with_capacity(job.lines.len());
    for (line, buf, too_long) in job.lines {
        if let Some(len) = too_long {
            // Longer than MAX_LINE_BYTES: dead-lettered with its start only.
            items.push(Item::Invalid {
                line,
                version: version.clone(),
                raw: preview(&buf),
                reason: too_long_reason(line, len),
            });
            continue;
        }
        let text = match String::from_utf8(buf) {
            Ok(text) => text,
            Err(e) => {
                let reason = format!("line {}: not UTF-8 text: {}", line + 1, e.utf8_error());
                items.push(Item::Invalid {
                    line,
                    version: version.clone(),
                    raw: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                    reason,
                });
                continue;
            }
        };
        if kind == InputKind::DeadLetters {
            match dead_letter_events(&text, line) {
                Line::Blank => {}
                Line::Invalid(reason) => items.push(invalid_line(line, &version, &text, reason)),
                Line::Events(events) => {
                    for ev in events {
                        items.push(Item::Event {
                            line,
                            version: version.clone(),
                            work: work(program, &Val::from_value(&ev)),
                            event: EventRef::from(ev),
                        });
                    }
                }
            }
            continue;
        }
        let (events, envelope) = parse_line_view(&text, line);
        match events {
            LineView::Blank => {}
            LineView::Invalid(reason) => items.push(invalid_line(line, &version, &text, reason)),
            LineView::Events(events) if events.len() == 1 && !envelope => {
                // One event per line (the common case): the line's text stands for the
                // event in a dead letter; the view borrows from it.
                let done = work(program, &events[0]);
                drop(events);
                items.push(Item::Event {
                    line,
                    version: version.clone(),
                    work: done,
                    event: EventRef::Json(text),
                });
            }
            LineView::Events(events) => {
                for ev in &events {
                    items.push(Item::Event {
                        line,
                        version: version.clone(),
                        work: work(program, ev),
                        event: EventRef::Json(ev.to_string()),
                    });
                }
            }
        }
    }
    items
}

/// Lines per chunk handed to a worker (a partial chunk goes as soon as the input pauses).
const CHUNK_LINES: usize = 256;

/// Read lines, interpret them on worker threads, and hand the results to the async side
/// in input order.
///
/// The reader cuts the input into chunks (each processed entirely by the rule set current
/// when it was cut); workers parse and interpret chunks in parallel; a sequencer thread
/// forwards each chunk's results in the order the chunks were read, so per-key order is
/// kept. When the relay stops (the channel is closed), items not yet accepted are written
/// to the dead-letter file and no more input is read.
fn reader_thread(
    input: Box<dyn Read + Send>,
    kind: InputKind,
    rules: RuleSource,
    tx: mpsc::Sender<Item>,
    lines_read: Arc<AtomicU64>,
    dead: Arc<DeadLetters>,
    dead_count: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<Job>(workers * 2);
    let job_rx = Arc::new(std::sync::Mutex::new(job_rx));
    for i in 0..workers {
        let job_rx = job_rx.clone();
        std::thread::Builder::new()
            .name(format!("sfmc-relay-transform-{i}"))
            .spawn(move || {
                loop {
                    let job = match job_rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    let reply = job.reply.clone();
                    let _ = reply.send(process_chunk(job, kind));
                }
            })?;
    }
    let stopped = Arc::new(AtomicBool::new(false));
    let (order_tx, order_rx) =
        std::sync::mpsc::sync_channel::<std::sync::mpsc::Receiver<Vec<Item>>>(workers * 2);
    let sequencer = {
        let stopped = stopped.clone();
        std::thread::Builder::new()
            .name("sfmc-relay-sequencer".into())
            .spawn(move || -> std::io::Result<()> {
                for reply in order_rx {
                    let Ok(items) = reply.recv() else { continue };
                    for item in items {
                        if let Err(mpsc::error::SendError(item)) = tx.blocking_send(item) {
                            // The relay is stopping: this event was read but will not be sent.
                            stopped.store(true, Ordering::SeqCst);
                            let (line, version, event) = match item {
                                Item::Event {
                                    line,
                                    version,
                                    event,
                                    ..
                                } => (line, version, event.to_value()),
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
                }
                Ok(())
            })?
    };

    let mut reader = BufReader::with_capacity(256 * 1024, input);
    let mut line: u64 = 0;
    let mut chunk: Vec<(u64, Vec<u8>, Option<u64>)> = Vec::with_capacity(CHUNK_LINES);
    let mut result = Ok(());
    // Lines are read into one reused buffer and copied out at their exact size (a fresh
    // buffer per line grew by doubling: several reallocations per event).
    let mut line_buf = Vec::with_capacity(64 * 1024);
    loop {
        let read = match read_line_limited(&mut reader, &mut line_buf, MAX_LINE_BYTES) {
            Ok(r) => r,
            Err(e) => {
                result = Err(e);
                ReadLine::Eof
            }
        };
        let eof = read == ReadLine::Eof;
        if !eof {
            lines_read.fetch_add(1, Ordering::Relaxed);
            let too_long = match read {
                ReadLine::TooLong { len } => Some(len),
                _ => None,
            };
            chunk.push((line, line_buf.as_slice().to_vec(), too_long));
            line += 1;
        }
        if !chunk.is_empty() && (eof || chunk.len() >= CHUNK_LINES || reader.buffer().is_empty()) {
            let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(1);
            let job = Job {
                lines: std::mem::take(&mut chunk),
                program: rules(),
                reply: reply_tx,
            };
            if order_tx.send(reply_rx).is_err() || job_tx.send(job).is_err() {
                break;
            }
        }
        if eof || stopped.load(Ordering::SeqCst) {
            break;
        }
    }
    drop(job_tx);
    drop(order_tx);
    let seq = sequencer
        .join()
        .map_err(|_| std::io::Error::other("the sequencer thread panicked"))?;
    result.and(seq)
}

/// Copy the sink's and the client's counters into `summary` (dead letters are added to
/// those already counted).
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
    let target = target(&program, &opts.env, opts.requests_per_second).await?;
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
    let (tx, mut rx) = mpsc::channel::<Item>(256);
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
                work,
            } => match work {
                Work::Skipped(reason) => {
                    summary.skipped += 1;
                    if summary.skip_reasons.len() < 1000
                        || summary.skip_reasons.contains_key(&reason)
                    {
                        *summary.skip_reasons.entry(reason).or_default() += 1;
                    }
                }
                Work::Rejected(reason) => sink.reject(line, &version, &event.to_value(), &reason),
                Work::Send(prepared) => {
                    sink.submit_prepared(line, version, event, prepared, None)
                        .await
                }
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

/// Resolves on SIGINT or SIGTERM.
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
