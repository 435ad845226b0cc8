//! The one delivery pipeline behind `run`, `replay`, `serve` and `consume`.
//!
//! ```text
//!  source (src/source/)            pipeline (here)                         sink (src/sfmc/sink/)
//!  ───────────────────             ───────────────────────────────         ─────────────────────
//!  lines of stdin/files ─┐         workers.rs: N threads parse +           lanes: batch, coalesce
//!  spool records ────────┼─Record─► interpret + prepare, chunk by chunk ─► contacts, API events
//!  Kafka messages ───────┘ + Ack   (one rule version per chunk)            bad-row isolation
//!        ▲                         │ results in push order                 │ ticket per event
//!        │ back-pressure           ▼                                       ▼
//!        └──── bounded queues ──── dispatcher (async): outcome handler ◄── completion
//!                                  delivered / skipped+reason / dead letter
//!                                  → Ack completed once per record
//! ```
//!
//! A source turns its input into [`Record`](crate::source::Record)s, each with an
//! [`Ack`](crate::source::Ack), and pushes them through a [`Feeder`]. The pool interprets
//! them off the async threads; the dispatcher hands each event to the sink and, once every
//! event of a record has its final outcome, completes the record's ack exactly once (a
//! no-op for files, the spool's ack for `serve`, the offset tracker for `consume`). Queues
//! are bounded, so a slow or paused sink stops the source from reading.
//!
//! Stopping ([`Pipeline::run`]'s `stop`): sources see [`Feeder::is_stopped`] and read no
//! more. For a durable source (spool, Kafka) what was already read is still delivered
//! (within `drain_timeout`; what is left stays unacknowledged in the source); for files
//! and stdin, events read but not yet handed to the sink are dead-lettered ("the relay
//! stopped"), so the stop is prompt and `replay` sends them later. What the sink holds is
//! drained.

pub mod dedup;
mod outcome;
mod progress;
mod signal;
pub mod summary;
pub mod target;
pub(crate) mod workers;

pub use outcome::{Outcomes, SKIP_REASONS_KEPT, SkipReasons};
pub use signal::wait_for_signal;
pub use summary::RunSummary;
pub use target::{Target, sink_config, target};
pub use workers::{Feeder, Stopped};

use crate::event::{Line, parse_line_at};
use crate::rules::Program;
use crate::sfmc::BreakerState;
use crate::sfmc::SfmcClient;
use crate::sfmc::deadletter::{DeadLetters, Failure, Tee};
use crate::sfmc::sink::{Completion, Counters, Delivery, Sink, Submission};
use crate::source::{Ack, Framing, Record};
use dedup::SeenIds;
use serde_json::Value;
use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use workers::{Item, Output, Processed};

/// Where the current rule set comes from (a fixed program, or hot-reloaded rules).
pub type RuleSource = Arc<dyn Fn() -> Arc<Program> + Send + Sync>;

/// Environment lookup (the process environment, or a map in tests).
pub use crate::env::Env;

/// A delivery command that could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
}

/// The reason an event read from a file but not sent before a signal is dead-lettered.
pub const STOPPED_REASON: &str =
    "the relay stopped (signal) before this event was sent; replay this file to send it";

/// What a dropped duplicate is counted as when nothing else is left of the event.
pub const DUPLICATE_REASON: &str = "duplicate messageId: API event already sent (--dedup-window)";

/// How a pipeline is set up (the source's wiring fills it).
pub struct PipelineOptions {
    /// How the source's records hold events.
    pub framing: Framing,
    /// The source keeps what was not acknowledged (spool, Kafka): on stop, events not
    /// handed to the sink stay there instead of being dead-lettered.
    pub durable: bool,
    pub dead_letter: PathBuf,
    /// Also hand each dead-letter record to this (`consume --dead-letter-topic`).
    pub dead_letter_tee: Option<Tee>,
    /// Override the rules' `delivery.requests_per_second` (0 = unlimited).
    pub requests_per_second: Option<u32>,
    /// Progress line on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Environment lookup for credentials and endpoints.
    pub env: Env,
    /// Drop a Journey API event whose `messageId` was among the last N (0: off).
    pub dedup_window: usize,
    /// How long the end waits for the sink to drain (`None`: as long as it takes).
    pub drain_timeout: Option<Duration>,
    /// Interpreter threads (`None`: the cores, at most 8).
    pub workers: Option<usize>,
    /// What an input unit is called in the summary (`lines`, `messages`, `events`).
    pub unit: &'static str,
    /// Where state kept across runs lives (the contact cache); `None`: the dead-letter
    /// file's directory.
    pub state_dir: Option<PathBuf>,
    /// Several relays share the credentials (`consume`): the legacy v1 warning says they
    /// will invalidate each other's tokens.
    pub several_relays: bool,
    /// What else names the durable source's records besides their origin (`consume`: the
    /// consumer group), for the journey journal's file name.
    pub journal_scope: Option<String>,
}

impl PipelineOptions {
    /// Defaults: no progress, no dedup, drain fully, `lines`.
    pub fn new(framing: Framing, dead_letter: PathBuf, env: Env) -> Self {
        PipelineOptions {
            framing,
            durable: false,
            dead_letter,
            dead_letter_tee: None,
            requests_per_second: None,
            progress: false,
            env,
            dedup_window: 0,
            drain_timeout: None,
            workers: None,
            unit: "lines",
            state_dir: None,
            several_relays: false,
            journal_scope: None,
        }
    }
}

/// A running pipeline (see the module docs).
pub struct Pipeline {
    program: Arc<Program>,
    target: Target,
    sink: Sink,
    counters: Arc<Counters>,
    outcomes: Arc<Outcomes>,
    feeder: Feeder,
    output: Output,
    unsent: Unsent,
    opts: PipelineOptions,
}

impl Pipeline {
    /// Build the SFMC target (the built-in simulator without credentials), the sink and
    /// the interpreter pool for the rules current now.
    pub async fn start(rules: RuleSource, mut opts: PipelineOptions) -> Result<Self, RunError> {
        let program = rules();
        let target = target(&program, &opts.env, opts.requests_per_second).await?;
        if target.sim.is_none()
            && let Some(w) = target.client.legacy_v1_warning(opts.several_relays)
        {
            tracing::warn!("{w}");
        }
        // A file source gives up after `delivery.give_up_after` of SFMC unavailability:
        // what is not delivered is dead-lettered as undelivered (in `replay`able form).
        // Durable sources never give up: their input waits in the spool or in Kafka.
        if !opts.durable {
            target
                .client
                .set_give_up_after(program.settings.delivery.give_up_after);
        }
        let mut dead = DeadLetters::new(&opts.dead_letter);
        if !opts.durable {
            // `replay` must send what was not delivered in input order.
            dead = dead.undelivered_in_input_order();
        }
        if let Some(tee) = opts.dead_letter_tee.take() {
            dead = dead.with_tee(tee);
        }
        let dead = Arc::new(dead);
        let counters = Arc::new(Counters::default());
        let mut config = sink_config(&program);
        // The asynchronous rows API is for rows queued behind a request rate; unlimited,
        // rowsets keep up with lower latency.
        let rate = opts
            .requests_per_second
            .or(program.settings.delivery.requests_per_second)
            .unwrap_or(0);
        if rate == 0 {
            config.async_threshold = 0;
        } else if config.async_threshold > 0 {
            // Rate-limited, the rate and not parallel lanes bounds rowsets; one lane per
            // data extension lets a backlog gather into few large async requests.
            config.lanes = 1;
        }
        if let Some(tenant) = &target.tenant {
            let dir = opts.state_dir.clone().unwrap_or_else(|| {
                opts.dead_letter
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_default()
            });
            config.contact_state = Some(dir.join(format!("sfmc-relay.contacts.{tenant}.ndjson")));
            // A durable source delivers a record again after a crash: its journey entries
            // must not enter the contact twice.
            // One per account and, for Kafka, per consumer group (another group reading
            // the topic is another pipeline).
            if opts.durable {
                let name = match &opts.journal_scope {
                    Some(scope) => format!(
                        "sfmc-relay.journeys.{tenant}.{}.ndjson",
                        target::stable_name(std::slice::from_ref(scope))
                    ),
                    None => format!("sfmc-relay.journeys.{tenant}.ndjson"),
                };
                config.journey_journal = Some(dir.join(name));
            }
        }
        let sink = Sink::new(
            target.client.clone(),
            config,
            dead.clone(),
            counters.clone(),
        );
        let workers = opts.workers.unwrap_or_else(workers::default_workers);
        let (feeder, output) = workers::start(workers, opts.framing, rules.clone())
            .map_err(|e| RunError::Io(format!("cannot start the interpreter threads: {e}")))?;
        let unsent = Unsent {
            dead,
            rules,
            events: Arc::new(AtomicU64::new(0)),
        };
        Ok(Pipeline {
            program,
            target,
            sink,
            counters,
            outcomes: Arc::new(Outcomes::default()),
            feeder,
            output,
            unsent,
            opts,
        })
    }

    /// The rules the pipeline started with.
    pub fn program(&self) -> &Arc<Program> {
        &self.program
    }

    pub fn client(&self) -> &SfmcClient {
        &self.target.client
    }

    /// Outcome counters, live (for `/metrics`).
    pub fn outcomes(&self) -> Arc<Outcomes> {
        self.outcomes.clone()
    }

    /// A handle for a source to push records (one per source thread or task).
    pub fn feeder(&self) -> Feeder {
        self.feeder.clone()
    }

    /// The dead-letter file, for a source that refuses an event before the pipeline sees
    /// it (`serve`'s per-event limits).
    pub fn dead_letters(&self) -> Arc<DeadLetters> {
        self.unsent.dead.clone()
    }

    /// For a non-durable source: dead-letters records it read but could not push.
    pub fn unsent(&self) -> Unsent {
        self.unsent.clone()
    }

    /// Deliver until every feeder is gone (the input ended) or `stop` resolves, then drain
    /// the sink. `lines` of the summary is left for the source to fill in.
    pub async fn run(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<RunSummary, RunError> {
        let Pipeline {
            program,
            target,
            mut sink,
            counters,
            outcomes,
            feeder,
            mut output,
            unsent,
            opts,
        } = self;
        // Only the sources' feeders keep the pool's input open now.
        drop(feeder);
        let stop_flag = Arc::new(AtomicBool::new(false));
        let woken = Arc::new(tokio::sync::Notify::new());
        let gave_up: Arc<Mutex<Option<String>>> = Arc::default();
        let stopper = tokio::spawn({
            let (flag, woken, gave_up) = (stop_flag.clone(), woken.clone(), gave_up.clone());
            let (client, durable) = (target.client.clone(), opts.durable);
            async move {
                // A file source stops reading when the client gives up (after
                // `delivery.give_up_after` of unavailability); durable sources never set
                // it, so for them only the signal counts.
                let given_up = tokio::select! {
                    () = stop => None,
                    why = client.until_given_up(), if !durable => Some(why),
                };
                let why = match given_up {
                    Some(why) => {
                        eprintln!(
                            "sfmc-relay: giving up: {why}; no more input is read, and events not delivered are written to the dead-letter file as undelivered"
                        );
                        Some(why)
                    }
                    // A file source stopped during an outage: what waits for SFMC is
                    // dead-lettered as undelivered at once (`replay` sends it).
                    None if !durable && client.give_up_if_unavailable() => {
                        eprintln!(
                            "sfmc-relay: SFMC is unavailable: events not delivered are written to the dead-letter file as undelivered"
                        );
                        Some(format!(
                            "stopped by signal while SFMC was unavailable ({})",
                            client.health().reason.unwrap_or_default()
                        ))
                    }
                    None => None,
                };
                *gave_up.lock().unwrap_or_else(|e| e.into_inner()) = why;
                flag.store(true, Ordering::SeqCst);
                woken.notify_one();
            }
        });
        let mut d = Dispatcher {
            sink: &mut sink,
            outcomes: &outcomes,
            seen: SeenIds::new(opts.dedup_window),
            events: 0,
            stopping: false,
            durable: opts.durable,
        };
        let progress = opts.progress && std::io::stderr().is_terminal();
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut interrupted = false;
        // Set at the stop: what a durable source already read is delivered until then.
        let mut deadline: Option<tokio::time::Instant> = None;
        let drain = opts.drain_timeout;
        let stop_at = |deadline: &mut Option<tokio::time::Instant>| {
            if let Some(mut t) = drain {
                // Stopped during an outage, a durable source need not wait out its drain
                // time (a supervisor's grace period would end in a SIGKILL): nothing would
                // be delivered, and what was not is still in the source. A second lets a
                // request on the wire (a probe) end.
                if opts.durable && target.client.health().state != BreakerState::Closed {
                    t = t.min(Duration::from_secs(1));
                    eprintln!(
                        "sfmc-relay: SFMC is unavailable: stopping without waiting for it; what was not delivered stays in the source and is delivered after the restart"
                    );
                }
                *deadline = Some(tokio::time::Instant::now() + t);
            }
        };
        loop {
            if !d.stopping && stop_flag.load(Ordering::SeqCst) {
                d.stopping = true;
                interrupted = true;
                stop_at(&mut deadline);
                output.stop();
                if !opts.durable {
                    // (Durable sources say how they stop themselves.)
                    eprintln!(
                        "sfmc-relay: stopping: no more input is read; flushing what is in flight"
                    );
                }
            }
            let chunk = tokio::select! {
                biased;
                _ = woken.notified(), if !d.stopping => continue,
                chunk = output.next() => chunk,
                _ = tick.tick(), if progress => {
                    progress::draw(started, d.events, &outcomes, &counters, &target.client);
                    continue;
                }
            };
            let Some(chunk) = chunk else { break };
            for p in chunk {
                if !d.stopping && stop_flag.load(Ordering::SeqCst) {
                    // Noticed between events: a backlog does not delay the stop.
                    d.stopping = true;
                    interrupted = true;
                    stop_at(&mut deadline);
                    output.stop();
                }
                match deadline {
                    // Past the drain deadline (durable sources only), or cut short by it: a
                    // record not fully handed to the sink is never acknowledged, so its
                    // source delivers it again.
                    Some(dl) if d.durable => {
                        if tokio::time::Instant::now() < dl {
                            let _ = tokio::time::timeout_at(dl, d.dispatch(p)).await;
                        }
                    }
                    // Back-pressure can hold a dispatch for as long as SFMC is down: a
                    // durable source's stop must not wait for it. A record cut short is
                    // never acknowledged, so its source delivers it again.
                    _ if d.durable && !d.stopping => {
                        let cut = tokio::select! {
                            biased;
                            () = d.dispatch(p) => false,
                            () = noticed(&stop_flag, &woken) => true,
                        };
                        if cut {
                            d.stopping = true;
                            interrupted = true;
                            stop_at(&mut deadline);
                            output.stop();
                        }
                    }
                    _ => d.dispatch(p).await,
                }
            }
        }
        // A durable source's input ends only when it stops (it may notice the stop before
        // the pipeline does): its drain time starts now.
        if opts.durable && deadline.is_none() {
            stop_at(&mut deadline);
        }
        let events = d.events;
        stopper.abort();
        let finish = match drain {
            None => sink.finish().await,
            Some(t) => match tokio::time::timeout_at(
                deadline.unwrap_or_else(|| tokio::time::Instant::now() + t),
                sink.finish(),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => {
                    eprintln!(
                        "sfmc-relay: deliveries still in flight at the end of the drain time (at most {t:?}): they stay in the source (unacknowledged) and are delivered again"
                    );
                    Ok(())
                }
            },
        };
        if progress {
            progress::clear();
        }
        let late = unsent.events.load(Ordering::Relaxed);
        let mut summary = RunSummary {
            lines: 0,
            events: events + late,
            delivered: counters.delivered.load(Ordering::Relaxed),
            skipped: outcomes.skipped.total(),
            dead_lettered: counters.dead_lettered.load(Ordering::Relaxed) + late,
            contacts_cached: counters.contacts_cached.load(Ordering::Relaxed),
            rows_coalesced: counters.rows_coalesced.load(Ordering::Relaxed),
            splits: counters.splits.load(Ordering::Relaxed),
            client: target.client.stats(),
            rules_version: program.version.clone(),
            dead_letter_path: opts.dead_letter.clone(),
            interrupted,
            skip_reasons: outcomes.skip_reasons(),
            simulator_report: None,
            notes: Vec::new(),
            unit: opts.unit,
            ..RunSummary::default()
        };
        if let Some(sim) = target.sim {
            summary.simulator_report = Some(sim.summary_text());
            sim.shutdown().await;
        }
        finish.map_err(|e| RunError::Io(format!("dead-letter file: {e}")))?;
        unsent
            .flush()
            .map_err(|e| RunError::Io(format!("dead-letter file: {e}")))?;
        summary.gave_up = gave_up.lock().unwrap_or_else(|e| e.into_inner()).take();
        summary.undelivered = unsent.dead.undelivered();
        summary.unsent = late;
        Ok(summary)
    }
}

/// Resolves once `flag` is set (the stopper sets it, then notifies `woken`).
async fn noticed(flag: &AtomicBool, woken: &tokio::sync::Notify) {
    loop {
        let notified = woken.notified();
        if flag.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }
}

/// The outcome handler: every event of a processed record to the sink, the skip count or
/// the dead-letter file; the record's ack once all of them are final.
struct Dispatcher<'a> {
    sink: &'a mut Sink,
    outcomes: &'a Arc<Outcomes>,
    seen: SeenIds,
    events: u64,
    stopping: bool,
    durable: bool,
}

impl Dispatcher<'_> {
    async fn dispatch(&mut self, p: Processed) {
        let Processed {
            origin,
            ack,
            version,
            items,
        } = p;
        if items.is_empty() {
            ack.complete();
            return;
        }
        let group = Group::new(ack, items.len());
        for item in items {
            self.events += 1;
            match item {
                Item::Skipped { ty, reason } => {
                    self.outcomes.skip(ty, &reason);
                    Group::one_done(&group);
                }
                Item::Rejected { ty, event, reason } => {
                    self.sink
                        .reject(&origin, &version, &event.to_value(), &reason);
                    self.outcomes.dead_lettered.add(ty, 1);
                    Group::one_done(&group);
                }
                Item::Send {
                    ty,
                    event,
                    mut prepared,
                    message_id,
                } => {
                    if self.stopping && !self.durable {
                        self.sink.dead_letter(
                            &origin,
                            &version,
                            &event.to_value(),
                            &Failure::undelivered(STOPPED_REASON, None, None),
                        );
                        self.outcomes.dead_lettered.add(ty, 1);
                        Group::one_done(&group);
                        continue;
                    }
                    if let Some(id) = message_id
                        && !self.seen.first_time(&id)
                    {
                        let n = prepared.drop_api_events();
                        self.outcomes
                            .duplicates_dropped
                            .fetch_add(n as u64, Ordering::Relaxed);
                        if prepared.is_empty() {
                            self.outcomes.skip(ty, DUPLICATE_REASON);
                            Group::one_done(&group);
                            continue;
                        }
                    }
                    let outcomes = self.outcomes.clone();
                    let group = group.clone();
                    let completion: Completion = Box::new(move |how| {
                        match how {
                            Delivery::Delivered => outcomes.delivered.add(ty, 1),
                            Delivery::DeadLettered => outcomes.dead_lettered.add(ty, 1),
                        }
                        Group::one_done(&group);
                    });
                    self.sink
                        .submit(Submission {
                            origin: origin.clone(),
                            version: version.clone(),
                            event,
                            prepared,
                            completion: Some(completion),
                        })
                        .await;
                }
            }
        }
    }
}

/// A record's events still to end; the record's ack runs when the last one does. `None`
/// for a record with nothing to acknowledge (no allocation).
type Group = Option<Arc<GroupInner>>;

struct GroupInner {
    remaining: AtomicUsize,
    ack: Mutex<Option<Ack>>,
}

trait GroupExt {
    fn new(ack: Ack, events: usize) -> Self;
    fn one_done(this: &Self);
}

impl GroupExt for Group {
    fn new(ack: Ack, events: usize) -> Self {
        if ack.is_none() {
            return None;
        }
        Some(Arc::new(GroupInner {
            remaining: AtomicUsize::new(events),
            ack: Mutex::new(Some(ack)),
        }))
    }

    fn one_done(this: &Self) {
        if let Some(g) = this
            && g.remaining.fetch_sub(1, Ordering::AcqRel) == 1
        {
            let ack = g.ack.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(ack) = ack {
                ack.complete();
            }
        }
    }
}

/// Dead-letters what a non-durable source read but could not hand to the pipeline
/// because it was stopping (each event with [`STOPPED_REASON`]).
#[derive(Clone)]
pub struct Unsent {
    dead: Arc<DeadLetters>,
    rules: RuleSource,
    events: Arc<AtomicU64>,
}

impl Unsent {
    /// Events written so far.
    pub fn count(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Write the held `undelivered` dead letters in input order (see
    /// [`DeadLetters::flush_held`]); later ones are written at once.
    pub fn flush(&self) -> std::io::Result<()> {
        self.dead.flush_held()
    }

    /// Bring `summary` up to date with what was written after it was made (a source that
    /// wrote its last records late) and flush.
    pub fn complete(&self, summary: &mut RunSummary) -> std::io::Result<()> {
        let now = self.count();
        let late = now.saturating_sub(summary.unsent);
        summary.unsent = now;
        summary.events += late;
        summary.dead_lettered += late;
        self.flush()?;
        summary.undelivered = self.dead.undelivered();
        Ok(())
    }

    pub fn write(&self, records: Vec<Record>) -> std::io::Result<()> {
        let version = (self.rules)().version.clone();
        let failure = Failure::undelivered(STOPPED_REASON, None, None);
        for r in records {
            let text = String::from_utf8_lossy(&r.data);
            let events: Vec<Value> = match (r.too_long, parse_line_at(&text, &r.origin).0) {
                (None, Line::Events(events)) if r.rejected.is_none() => events,
                (_, Line::Blank) => continue,
                _ => vec![Value::String(text.trim_end().to_string())],
            };
            for ev in events {
                self.dead.write(&r.origin, &version, &ev, &failure)?;
                self.events.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}
