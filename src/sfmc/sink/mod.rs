//! The delivery sink: batching, coalescing, contact de-duplication, bad-row isolation.
//!
//! Shape (after Vector's sinks): the dispatcher receives each event's actions and routes
//! them; rows go to a *lane* task per (data extension, hash(primary key) % lanes). A lane
//! owns its pending batch, coalesces rows with the same primary key (later values win,
//! keys unioned), flushes on `batch_rows`, `batch_bytes` or `linger`, and sends one batch
//! at a time, so rows for the same data extension and primary key keep their order across
//! batches while different lanes and data extensions send in parallel. The client below
//! (`client.rs`) does rate limiting, the in-flight bound, auth and retries.
//!
//! Modules, along the sink's seams: [`prepare`] (row text and coalescing by member
//! offsets), `lanes` (lanes and batching), `isolate` (bad-row isolation), `contacts` (the
//! contact cache), `ticket` (tickets and finalisation), `send` (one call, and a failed call
//! as a dead letter). [`Sink::submit`] is the one entry point.
//!
//! The CPU work is done before the sink: [`prepare()`] turns an event's actions into bytes
//! (each row's JSON, its primary-key identity and lane hash; API-event bodies), so `run`
//! and `serve` call it on their worker threads and the lanes only batch bytes.
//!
//! Every event carries a [`Ticket`] counting its outstanding actions; when the last one
//! finishes the event is counted delivered, or written once to the dead-letter file with
//! the first failure. Nothing is dropped silently.

mod async_rows;
mod contacts;
mod isolate;
mod journal;
mod journeys;
mod lanes;
mod prepare;
mod send;
mod state_file;
mod ticket;

pub use journal::{JourneyJournal, Stage as JournalStage};

pub use prepare::{Prepared, prepare};
pub use ticket::{Completion, Delivery, EventRef, Ticket};

use super::client::SfmcClient;
use super::deadletter::{DeadLetters, Failure};
use crate::action::{Action, CONTACTS_PATH};
use crate::source::Origin;
use bytes::Bytes;
use contacts::{ContactCache, ContactMsg, ContactState};
use lanes::RowMsg;
use prepare::{PreparedAction, PreparedRow};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

/// Sink tuning (from the rules' `delivery:` settings).
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub batch_rows: usize,
    pub batch_bytes: usize,
    pub linger: Duration,
    /// Parallel lanes per data extension (rows of one primary key always share a lane).
    pub lanes: usize,
    pub contact_cache: usize,
    /// Contact Keys per `/contacts/v1/establish` call; 1 = one `/contacts/v1/contacts` call
    /// per key.
    pub contact_batch: usize,
    /// Rows waiting in a lane that switch it to the asynchronous rows API (0: never).
    pub async_threshold: usize,
    /// Rows per asynchronous request (at most 32,000).
    pub async_batch_rows: usize,
    /// Journey entries per `/interaction/v1/async/events` call (at most 100).
    pub journey_batch: usize,
    /// The request timeout: a rowset answered slower than a quarter of it shrinks the
    /// lane's batches (down to 10 rows).
    pub request_timeout: Duration,
    /// Where Contact Keys known to exist are kept across restarts (none: memory only).
    pub contact_state: Option<std::path::PathBuf>,
    /// The journey journal of a durable source (see [`JourneyJournal`]; none: off).
    pub journey_journal: Option<std::path::PathBuf>,
}

impl Default for SinkConfig {
    /// The defaults of [`crate::defaults`] (lanes: one per request in flight).
    fn default() -> Self {
        use crate::defaults as d;
        SinkConfig {
            batch_rows: d::BATCH_ROWS,
            batch_bytes: d::BATCH_BYTES,
            linger: d::LINGER,
            lanes: d::MAX_IN_FLIGHT,
            contact_cache: d::CONTACT_CACHE,
            contact_batch: d::CONTACT_BATCH,
            journey_batch: d::JOURNEY_BATCH,
            async_threshold: d::ASYNC_THRESHOLD,
            async_batch_rows: d::ASYNC_BATCH_ROWS,
            request_timeout: d::REQUEST_TIMEOUT,
            contact_state: None,
            journey_journal: None,
        }
    }
}

/// Outcome counters.
#[derive(Debug, Default)]
pub struct Counters {
    pub delivered: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Rowset calls split to isolate bad rows.
    pub splits: AtomicU64,
    /// Contact creations skipped because the key was already created.
    pub contacts_cached: AtomicU64,
    /// Rows merged into an earlier row of the same batch.
    pub rows_coalesced: AtomicU64,
    /// Asynchronous rows requests submitted.
    pub async_requests: AtomicU64,
    /// Times a lane made its rowsets smaller after a slow answer.
    pub batch_shrinks: AtomicU64,
}

struct Shared {
    client: SfmcClient,
    config: SinkConfig,
    dead: Arc<DeadLetters>,
    counters: Arc<Counters>,
    contacts: Mutex<ContactCache>,
    contact_state: Option<ContactState>,
    journal: Option<JourneyJournal>,
    /// First dead-letter write error (fatal: reported at the end).
    io_error: Mutex<Option<String>>,
}

impl Shared {
    /// A key whose creation failed: create it again next time.
    fn forget_contact(&self, key: &str) {
        self.contacts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget(key);
    }

    fn dead_letter(&self, origin: &Origin, version: &str, event: &Value, f: &Failure) {
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.dead.write(origin, version, event, f) {
            tracing::error!("{e}");
            let mut g = self.io_error.lock().unwrap_or_else(|e| e.into_inner());
            g.get_or_insert_with(|| e.to_string());
        }
    }
}

/// One event for [`Sink::submit`].
pub struct Submission {
    /// Where the event came from (named in its dead letter).
    pub origin: Origin,
    /// The rule-set version that interpreted it.
    pub version: Arc<str>,
    /// The event itself, for a dead letter.
    pub event: EventRef,
    pub prepared: Prepared,
    /// Called once the event is delivered or dead-lettered.
    pub completion: Option<Completion>,
}

/// Handle to a running sink.
pub struct Sink {
    shared: Arc<Shared>,
    lanes: std::collections::HashMap<(String, usize), mpsc::Sender<RowMsg>>,
    /// The contact lane, started with the first new Contact Key (batched contacts only).
    contact_lane: Option<mpsc::Sender<ContactMsg>>,
    /// One lane per event definition key.
    journey_lanes: std::collections::HashMap<String, mpsc::Sender<journeys::JourneyMsg>>,
    tasks: JoinSet<()>,
    permits: Arc<Semaphore>,
}

impl Sink {
    pub fn new(
        client: SfmcClient,
        config: SinkConfig,
        dead: Arc<DeadLetters>,
        counters: Arc<Counters>,
    ) -> Self {
        let cap = config.contact_cache;
        let permits = Arc::new(Semaphore::new(256));
        let mut cache = ContactCache::new(cap);
        let contact_state = config.contact_state.as_deref().and_then(
            |path| match ContactState::open(path, &mut cache) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(
                        "contact state file {}: {e}: Contact Keys are remembered in memory only",
                        path.display()
                    );
                    None
                }
            },
        );
        let journal = config.journey_journal.as_deref().and_then(|path| {
            match JourneyJournal::open(path) {
                Ok(j) => Some(j),
                Err(e) => {
                    tracing::error!(
                        "journey journal {}: {e}: a journey entry sent just before a crash can be sent again after the restart",
                        path.display()
                    );
                    None
                }
            }
        });
        Sink {
            shared: Arc::new(Shared {
                client,
                config,
                dead,
                counters,
                contacts: Mutex::new(cache),
                contact_state,
                journal,
                io_error: Mutex::new(None),
            }),
            lanes: Default::default(),
            contact_lane: None,
            journey_lanes: Default::default(),
            tasks: JoinSet::new(),
            permits,
        }
    }

    pub fn client(&self) -> &SfmcClient {
        &self.shared.client
    }

    /// Dead-letter an event with `failure` before it was handed over (e.g. undelivered: the
    /// relay stopped).
    pub fn dead_letter(&self, origin: &Origin, version: &str, event: &Value, failure: &Failure) {
        self.shared.dead_letter(origin, version, event, failure);
    }

    /// Dead-letter an event that was rejected before delivery (rules, bad input).
    pub fn reject(&self, origin: &Origin, version: &str, event: &Value, reason: &str) {
        self.shared
            .dead_letter(origin, version, event, &Failure::rejected(reason));
    }

    /// Deliver one event's prepared calls: the one way into the sink. Waits
    /// (back-pressure) while too much is in flight. The event ends exactly once, delivered
    /// or dead-lettered, and then `completion` runs.
    pub async fn submit(&mut self, s: Submission) {
        let Submission {
            origin,
            version,
            event,
            prepared,
            completion,
        } = s;
        while self.tasks.try_join_next().is_some() {}
        let actions = prepared.actions;
        let ticket = Arc::new(Ticket {
            completion: Mutex::new(completion),
            origin,
            version,
            event,
            remaining: AtomicUsize::new(actions.len()),
            failure: Mutex::new(None),
            shared: self.shared.clone(),
            journey_sent: prepared.journey_sent.into(),
        });
        if actions.is_empty() {
            // Nothing to send: delivered trivially (the interpreter never does this).
            ticket.remaining.store(1, Ordering::Release);
            ticket.done(Ok(()));
        }
        for action in actions {
            match action {
                PreparedAction::Row(row) => self.route_row(row, ticket.clone()).await,
                PreparedAction::Contact(contact_key) => {
                    let fresh = self
                        .shared
                        .contacts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .claim(&contact_key);
                    if !fresh {
                        self.shared
                            .counters
                            .contacts_cached
                            .fetch_add(1, Ordering::Relaxed);
                        ticket.done(Ok(()));
                        continue;
                    }
                    if self.shared.config.contact_batch > 1 {
                        self.route_contact(contact_key, ticket.clone()).await;
                        continue;
                    }
                    let shared = self.shared.clone();
                    let t = ticket.clone();
                    self.spawn(async move {
                        let body = Bytes::from(
                            serde_json::to_vec(
                                &Action::CreateContact {
                                    contact_key: contact_key.clone(),
                                }
                                .body(),
                            )
                            .expect("JSON values serialize"),
                        );
                        let r = send::send_one(&shared, CONTACTS_PATH, body).await;
                        match &r {
                            Ok(()) => {
                                if let Some(state) = &shared.contact_state {
                                    state.record(std::slice::from_ref(&contact_key));
                                }
                            }
                            Err(_) => shared.forget_contact(&contact_key),
                        }
                        t.done(r);
                    })
                    .await;
                }
                PreparedAction::Journey {
                    definition,
                    contact_key,
                    data,
                } => {
                    self.route_journey(definition, contact_key, data, ticket.clone())
                        .await
                }
            }
        }
    }

    async fn spawn(&mut self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        self.tasks.spawn(async move {
            fut.await;
            drop(permit);
        });
    }

    async fn route_contact(&mut self, key: String, ticket: Arc<Ticket>) {
        let tx = match &self.contact_lane {
            Some(tx) => tx,
            None => {
                // Deep enough that new keys queue while establish calls wait for the rate,
                // instead of holding up the rows behind them.
                let (tx, rx) = mpsc::channel((self.shared.config.contact_batch * 10).max(2));
                self.tasks
                    .spawn(contacts::contact_lane(self.shared.clone(), rx));
                self.contact_lane.insert(tx)
            }
        };
        if let Err(mpsc::error::SendError(m)) = tx.send(ContactMsg { key, ticket }).await {
            m.ticket
                .done(Err(Failure::rejected("internal: contact lane stopped")));
        }
    }

    async fn route_journey(
        &mut self,
        definition: String,
        contact_key: String,
        data: crate::action::Fields,
        ticket: Arc<Ticket>,
    ) {
        let tx = match self.journey_lanes.get(&definition) {
            Some(tx) => tx,
            None => {
                let (tx, rx) = mpsc::channel(self.shared.config.journey_batch.max(1) * 2);
                self.tasks.spawn(journeys::journey_lane(
                    self.shared.clone(),
                    definition.clone(),
                    rx,
                ));
                self.journey_lanes.entry(definition).or_insert(tx)
            }
        };
        let msg = journeys::JourneyMsg {
            contact_key,
            data,
            ticket,
        };
        if let Err(mpsc::error::SendError(m)) = tx.send(msg).await {
            m.ticket
                .done(Err(Failure::rejected("internal: journey lane stopped")));
        }
    }

    async fn route_row(&mut self, row: PreparedRow, ticket: Arc<Ticket>) {
        let lanes = self.shared.config.lanes.max(1);
        let lane = (row.hash % lanes as u64) as usize;
        let id = (row.lane_key, lane);
        let tx = match self.lanes.get(&id) {
            Some(tx) => tx,
            None => {
                // With the async API on (a limited rate), deep enough that a backlog shows
                // and fills large async requests (at most 2,000 rows waiting per lane);
                // otherwise two batches.
                let c = &self.shared.config;
                let depth = if c.async_threshold > 0 {
                    (c.async_threshold * 2).max(c.async_batch_rows.min(2_000))
                } else {
                    0
                }
                .max(c.batch_rows * 2)
                .max(1);
                let (tx, rx) = mpsc::channel(depth);
                let shared = self.shared.clone();
                self.tasks
                    .spawn(lanes::lane_loop(shared, row.data_extension.clone(), rx));
                self.lanes.entry(id).or_insert(tx)
            }
        };
        let msg = RowMsg {
            pk: row.pk,
            json: row.json,
            ticket,
        };
        if let Err(mpsc::error::SendError(msg)) = tx.send(msg).await {
            msg.ticket
                .done(Err(Failure::rejected("internal: delivery lane stopped")));
        }
    }

    /// Flush everything and wait until every submitted event is delivered or dead-lettered.
    /// Returns the first dead-letter write error, if any (data could not be saved).
    pub async fn finish(mut self) -> Result<(), String> {
        self.lanes.clear();
        self.contact_lane = None;
        self.journey_lanes.clear();
        while self.tasks.join_next().await.is_some() {}
        match self
            .shared
            .io_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
