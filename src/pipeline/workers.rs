//! The interpreter worker pool: records in, interpreted and prepared events out, in input
//! order. Parsing, interpreting and serialising rows is CPU work: it runs on these threads,
//! never on the async ones, spread over the cores; the order is restored before the sink
//! so per-key order holds.
//!
//! A source pushes a chunk of records through a [`Feeder`] (from a thread or a task); the
//! chunk is processed whole by the rule set current when it was pushed. The dispatcher
//! reads the results chunk by chunk in push order ([`Output::next`]). Both queues are
//! bounded: a slow sink stops the source (back-pressure).

use crate::event::{Line, LineView, parse_line_at, parse_view_at, preview, too_long_reason_at};
use crate::rules::Program;
use crate::sfmc::sink::{self, EventRef, Prepared};
use crate::source::metrics::type_index;
use crate::source::{Ack, Framing, Origin, Record};
use crate::transform::{Outcome, Trace, transform_view};
use crate::view::Val;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

use super::RuleSource;

/// What a worker made of one event.
pub(crate) enum Item {
    /// Calls to make (rows serialised, bodies ready).
    Send {
        ty: usize,
        event: EventRef,
        prepared: Prepared,
        /// The event's `messageId`, when it causes a Journey API event (for de-duplication).
        message_id: Option<Box<str>>,
    },
    /// The rules skip it (nothing to send), with why.
    Skipped { ty: usize, reason: String },
    /// Not an event, or the rules reject it: dead-lettered with why.
    Rejected {
        ty: usize,
        event: EventRef,
        reason: String,
    },
}

/// One record, processed: its events' items (none for a blank line).
pub(crate) struct Processed {
    pub origin: Origin,
    pub ack: Ack,
    pub version: Arc<str>,
    pub items: Vec<Item>,
}

struct Job {
    records: Vec<Record>,
    program: Arc<Program>,
    reply: oneshot::Sender<Vec<Processed>>,
}

type Order = oneshot::Receiver<Vec<Processed>>;

/// The pipeline stopped taking records (a signal, or the pipeline ended).
#[derive(Debug)]
pub struct Stopped(pub Vec<Record>);

/// Hands records to the pool; cheap to clone (one per source thread or task).
#[derive(Clone)]
pub struct Feeder {
    jobs: mpsc::Sender<Job>,
    order: mpsc::Sender<Order>,
    rules: RuleSource,
    stopped: Arc<AtomicBool>,
}

impl Feeder {
    /// True once the pipeline is stopping: read no more input.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn job(&self, records: Vec<Record>) -> (Order, Job) {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            records,
            program: (self.rules)(),
            reply,
        };
        (rx, job)
    }

    /// Push a chunk from a (non-async) thread; waits while the pool is full. Gives the
    /// records back when the pipeline stopped.
    pub fn push_blocking(&self, records: Vec<Record>) -> Result<(), Stopped> {
        if records.is_empty() {
            return Ok(());
        }
        let (rx, job) = self.job(records);
        if self.order.blocking_send(rx).is_err() {
            return Err(Stopped(job.records));
        }
        self.jobs
            .blocking_send(job)
            .map_err(|mpsc::error::SendError(job)| Stopped(job.records))
    }

    /// Push a chunk from a task; waits while the pool is full.
    pub async fn push(&self, records: Vec<Record>) -> Result<(), Stopped> {
        if records.is_empty() {
            return Ok(());
        }
        let (rx, job) = self.job(records);
        if self.order.send(rx).await.is_err() {
            return Err(Stopped(job.records));
        }
        self.jobs
            .send(job)
            .await
            .map_err(|mpsc::error::SendError(job)| Stopped(job.records))
    }
}

/// The pool's results, in push order.
pub(crate) struct Output {
    order: mpsc::Receiver<Order>,
    /// The chunk being waited for, kept here so that [`Output::next`] is cancel-safe.
    pending: Option<Order>,
    stopped: Arc<AtomicBool>,
}

impl Output {
    /// The next chunk's results; `None` once every feeder is gone (or after [`Output::stop`],
    /// once the chunks already pushed are out).
    ///
    /// Cancel-safe: the dispatcher calls it in a `select!` beside its progress tick and the
    /// stop notice, and a chunk whose results were still being computed when another
    /// branch won is waited for again by the next call (it was dropped, and its events lost
    /// without a trace, before).
    pub async fn next(&mut self) -> Option<Vec<Processed>> {
        loop {
            if self.pending.is_none() {
                self.pending = Some(self.order.recv().await?);
            }
            let rx = self.pending.as_mut().expect("set above");
            let done = rx.await;
            self.pending = None;
            match done {
                Ok(done) => return Some(done),
                // A worker cannot drop a job without replying (panics are caught per
                // record), so this is the pool shutting down.
                Err(_) => continue,
            }
        }
    }

    /// Stop taking chunks: feeders see [`Feeder::is_stopped`] and pushes fail from now on.
    pub fn stop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.order.close();
    }
}

/// Start `workers` threads interpreting records framed as `framing`.
pub(crate) fn start(
    workers: usize,
    framing: Framing,
    rules: RuleSource,
) -> std::io::Result<(Feeder, Output)> {
    let workers = workers.max(1);
    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(workers * 2);
    let (order_tx, order_rx) = mpsc::channel::<Order>(workers * 2);
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    for i in 0..workers {
        let jobs_rx = jobs_rx.clone();
        std::thread::Builder::new()
            .name(format!("sfmc-relay-transform-{i}"))
            .spawn(move || {
                loop {
                    let job = jobs_rx
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .blocking_recv();
                    let Some(job) = job else { return };
                    let Job {
                        records,
                        program,
                        reply,
                    } = job;
                    let _ = reply.send(process(&program, framing, records));
                }
            })?;
    }
    let stopped = Arc::new(AtomicBool::new(false));
    Ok((
        Feeder {
            jobs: jobs_tx,
            order: order_tx,
            rules,
            stopped: stopped.clone(),
        },
        Output {
            order: order_rx,
            pending: None,
            stopped,
        },
    ))
}

/// The number of worker threads: the cores, at most 8.
pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

fn process(program: &Program, framing: Framing, records: Vec<Record>) -> Vec<Processed> {
    let version: Arc<str> = Arc::from(program.version.as_str());
    records
        .into_iter()
        .map(|r| {
            let Record {
                origin,
                data,
                too_long,
                rejected: why,
                ack,
            } = r;
            let items = match why {
                Some(reason) => vec![rejected(
                    String::from_utf8_lossy(&data).into_owned(),
                    format!("{origin}: {reason}"),
                )],
                None => record_items(program, framing, &origin, data, too_long),
            };
            Processed {
                origin,
                ack,
                version: version.clone(),
                items,
            }
        })
        .collect()
}

fn rejected(raw: String, reason: String) -> Item {
    Item::Rejected {
        ty: type_index(None),
        event: EventRef::from(Value::String(raw)),
        reason,
    }
}

/// The interpreter's verdict on one event, before the event's text is attached.
enum Verdict {
    Send {
        prepared: Prepared,
        message_id: Option<Box<str>>,
    },
    Skipped(String),
    Rejected(String),
}

/// Interpret one event and prepare its calls. A panic (a bug) rejects the event instead of
/// taking the worker down with the chunk.
fn interpret(program: &Program, origin: &Origin, event: &Val) -> (usize, Verdict) {
    let ty = type_index(event.get("type").and_then(Val::as_str));
    let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        match transform_view(program, event, &mut Trace::off()) {
            Outcome::Actions(actions) => {
                let prepared = sink::prepare(actions);
                let message_id = if prepared.has_api_events() {
                    event.get("messageId").and_then(Val::as_str).map(Box::from)
                } else {
                    None
                };
                Verdict::Send {
                    prepared,
                    message_id,
                }
            }
            Outcome::Skipped(reason) => Verdict::Skipped(reason),
            Outcome::Rejected(reason) => Verdict::Rejected(reason),
        }
    }))
    .unwrap_or_else(|_| {
        tracing::error!("{origin}: internal error while interpreting (dead-lettered)");
        Verdict::Rejected(format!(
            "{origin}: internal error while interpreting this event (a bug: please report it)"
        ))
    });
    (ty, verdict)
}

impl Verdict {
    fn with_event(self, ty: usize, event: EventRef) -> Item {
        match self {
            Verdict::Send {
                prepared,
                message_id,
            } => Item::Send {
                ty,
                event,
                prepared,
                message_id,
            },
            Verdict::Skipped(reason) => Item::Skipped { ty, reason },
            Verdict::Rejected(reason) => Item::Rejected { ty, event, reason },
        }
    }
}

fn item(program: &Program, origin: &Origin, event: &Val, text: impl FnOnce() -> EventRef) -> Item {
    let (ty, verdict) = interpret(program, origin, event);
    verdict.with_event(ty, text())
}

fn record_items(
    program: &Program,
    framing: Framing,
    origin: &Origin,
    data: Vec<u8>,
    too_long: Option<u64>,
) -> Vec<Item> {
    if let Some(len) = too_long {
        return vec![rejected(preview(&data), too_long_reason_at(origin, len))];
    }
    let text = match String::from_utf8(data) {
        Ok(t) => t,
        Err(e) => {
            let reason = crate::event::not_utf8_reason(origin, e.utf8_error());
            return vec![rejected(
                String::from_utf8_lossy(e.as_bytes()).trim_end().to_string(),
                reason,
            )];
        }
    };
    match framing {
        Framing::DeadLetter { uncertain } => match dead_letter_events(&text, origin) {
            _ if !uncertain && is_uncertain_record(&text) => vec![Item::Skipped {
                ty: type_index(None),
                reason: UNCERTAIN_SKIPPED.to_string(),
            }],
            Line::Blank => vec![],
            Line::Invalid(reason) => vec![rejected(text.trim_end().to_string(), reason)],
            Line::Events(events) => {
                let journey_sent = record_head(&text).journey_sent;
                events
                    .into_iter()
                    .map(|ev| {
                        let (ty, verdict) = interpret(program, origin, &Val::from_value(&ev));
                        let item = verdict.with_event(ty, EventRef::from(ev));
                        if journey_sent {
                            without_journeys(item)
                        } else {
                            item
                        }
                    })
                    .collect()
            }
        },
        Framing::Event => {
            let parsed = serde_json::from_str::<Val>(&text);
            let (ty, verdict) = match &parsed {
                Ok(ev @ Val::Obj(_)) => interpret(program, origin, ev),
                Ok(other) => {
                    let reason = format!("{origin}: not a JSON object: {}", other.type_name());
                    (type_index(None), Verdict::Rejected(reason))
                }
                Err(e) => (
                    type_index(None),
                    Verdict::Rejected(format!("{origin}: invalid JSON: {e}")),
                ),
            };
            let is_json = parsed.is_ok();
            drop(parsed);
            let event = if is_json {
                EventRef::Json(text)
            } else {
                EventRef::from(Value::String(text.trim_end().to_string()))
            };
            vec![verdict.with_event(ty, event)]
        }
        Framing::Ndjson => {
            let (events, envelope) = parse_view_at(&text, origin);
            match events {
                LineView::Blank => vec![],
                LineView::Invalid(reason) => vec![rejected(text.trim_end().to_string(), reason)],
                // One event per record (the common case): the record's text stands for
                // the event in a dead letter (moved, not copied); the view borrows from it.
                LineView::Events(events) if events.len() == 1 && !envelope => {
                    let (ty, verdict) = interpret(program, origin, &events[0]);
                    drop(events);
                    vec![verdict.with_event(ty, EventRef::Json(text))]
                }
                LineView::Events(events) => events
                    .iter()
                    .map(|ev| item(program, origin, ev, || EventRef::Json(ev.to_string())))
                    .collect(),
            }
        }
    }
}

/// Why `replay` skips an `uncertain` record without `--uncertain`.
pub const UNCERTAIN_SKIPPED: &str = "uncertain journey entry (SFMC may have processed it): not replayed; check GET /interaction/v1/async/events/status, then `replay --uncertain` to send it deliberately";

/// Whether a dead-letter line is a record with outcome `uncertain`.
fn is_uncertain_record(text: &str) -> bool {
    record_head(text).outcome.is_some_and(|o| o == "uncertain")
}

/// A dead-letter record's `outcome` and `journey_sent`.
#[derive(serde::Deserialize, Default)]
struct RecordHead<'a> {
    #[serde(borrow)]
    outcome: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    journey_sent: bool,
}

fn record_head(text: &str) -> RecordHead<'_> {
    serde_json::from_str::<RecordHead>(text.trim()).unwrap_or_default()
}

/// Why a replayed event with nothing left to send is skipped.
pub const JOURNEY_ALREADY_SENT: &str =
    "its journey entry was already entered (the dead letter says journey_sent): not sent again";

/// A replayed event whose dead letter says its Journey entries were entered: everything
/// but them is sent.
fn without_journeys(item: Item) -> Item {
    match item {
        Item::Send {
            ty,
            event,
            mut prepared,
            message_id,
        } => {
            prepared.drop_sent_journeys();
            if prepared.is_empty() {
                Item::Skipped {
                    ty,
                    reason: JOURNEY_ALREADY_SENT.to_string(),
                }
            } else {
                Item::Send {
                    ty,
                    event,
                    prepared,
                    message_id,
                }
            }
        }
        other => other,
    }
}

/// The events of one line of a dead-letter file (`replay`): each record's `"event"`.
fn dead_letter_events(text: &str, at: &Origin) -> Line {
    match parse_line_at(text, at).0 {
        Line::Events(mut v) if v.len() == 1 => match v
            .pop()
            .and_then(|mut r| r.get_mut("event").map(Value::take))
        {
            Some(Value::String(raw)) => parse_line_at(&raw, at).0,
            Some(ev @ Value::Object(_)) => Line::Events(vec![ev]),
            _ => Line::Invalid(format!("{at}: not a dead-letter record (no \"event\")")),
        },
        Line::Events(_) => Line::Invalid(format!("{at}: not a dead-letter record")),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_chunk_still_being_processed_survives_a_cancelled_wait() {
        let (order_tx, order_rx) = mpsc::channel::<Order>(4);
        let mut output = Output {
            order: order_rx,
            pending: None,
            stopped: Arc::new(AtomicBool::new(false)),
        };
        let (reply, rx) = oneshot::channel();
        order_tx.send(rx).await.unwrap();
        // The dispatcher's select! picks another branch (progress tick, stop notice) while
        // the chunk is still being interpreted: this wait is dropped.
        let waited = tokio::time::timeout(Duration::from_millis(20), output.next()).await;
        assert!(waited.is_err());
        // The worker finishes the chunk afterwards: its results still arrive.
        let processed = Processed {
            origin: Origin::Line(7),
            ack: Ack::none(),
            version: Arc::from("r1"),
            items: Vec::new(),
        };
        assert!(
            reply.send(vec![processed]).is_ok(),
            "the chunk's receiver was dropped with the cancelled wait"
        );
        let got = tokio::time::timeout(Duration::from_secs(5), output.next())
            .await
            .expect("the chunk is delivered")
            .expect("not the end");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].origin, Origin::Line(7));
        drop(order_tx);
        assert!(output.next().await.is_none());
    }
}
