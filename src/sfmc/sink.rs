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
//! Every event carries a [`Ticket`] counting its outstanding actions; when the last one
//! finishes the event is counted delivered, or written once to the dead-letter file with
//! the first failure. Nothing is dropped silently.

use super::client::{SendError, SfmcClient};
use super::deadletter::{DeadLetters, Failure};
use crate::action::{Action, CONTACTS_PATH, EVENTS_PATH, RowRef, rowset_path};
use bytes::Bytes;
use indexmap::IndexMap;
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Sink tuning (from the rules' `delivery:` settings).
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub batch_rows: usize,
    pub batch_bytes: usize,
    pub linger: Duration,
    /// Parallel lanes per data extension (rows of one primary key always share a lane).
    pub lanes: usize,
    pub contact_cache: usize,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            batch_rows: 50,
            batch_bytes: 4 * 1024 * 1024,
            linger: Duration::from_millis(200),
            lanes: 4,
            contact_cache: 100_000,
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
}

struct Shared {
    client: SfmcClient,
    config: SinkConfig,
    dead: Arc<DeadLetters>,
    counters: Arc<Counters>,
    contacts: Mutex<ContactCache>,
    /// First dead-letter write error (fatal: reported at the end).
    io_error: Mutex<Option<String>>,
}

/// How an event ended, reported to a [`Completion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    DeadLettered,
}

/// Called once when an event's last action finished (after any dead letter was written).
/// The HTTP ingest uses it to mark spool progress only once SFMC accepted the event.
pub type Completion = Box<dyn FnOnce(Delivery) + Send + Sync>;

/// One input event in flight.
pub struct Ticket {
    completion: Mutex<Option<Completion>>,
    line: u64,
    version: Arc<str>,
    event: Arc<Value>,
    remaining: AtomicUsize,
    failure: Mutex<Option<Failure>>,
    shared: Arc<Shared>,
}

impl Ticket {
    fn done(self: &Arc<Self>, result: Result<(), Failure>) {
        if let Err(f) = result {
            let mut g = self.failure.lock().unwrap_or_else(|e| e.into_inner());
            if g.is_none() {
                *g = Some(f);
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let failure = self
                .failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let how = match failure {
                None => {
                    self.shared
                        .counters
                        .delivered
                        .fetch_add(1, Ordering::Relaxed);
                    Delivery::Delivered
                }
                Some(f) => {
                    self.shared
                        .dead_letter(self.line, &self.version, &self.event, &f);
                    Delivery::DeadLettered
                }
            };
            let completion = self
                .completion
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(c) = completion {
                c(how);
            }
        }
    }
}

impl Shared {
    fn dead_letter(&self, line: u64, version: &str, event: &Value, f: &Failure) {
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.dead.write(line, version, event, f) {
            tracing::error!("{e}");
            let mut g = self.io_error.lock().unwrap_or_else(|e| e.into_inner());
            g.get_or_insert_with(|| e.to_string());
        }
    }
}

/// Contact Keys already created (or being created), bounded, oldest forgotten first.
struct ContactCache {
    cap: usize,
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl ContactCache {
    /// True when `key` was not known (the caller must create it).
    fn claim(&mut self, key: &str) -> bool {
        if self.cap == 0 {
            return true;
        }
        if self.set.contains(key) {
            return false;
        }
        if self.set.len() >= self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(key.to_string());
        self.order.push_back(key.to_string());
        true
    }
    fn forget(&mut self, key: &str) {
        self.set.remove(key);
    }
}

struct RowMsg {
    keys: Map<String, Value>,
    values: Map<String, Value>,
    ticket: Arc<Ticket>,
}

/// A row in a pending batch: possibly several events' rows coalesced.
struct Row {
    keys: Map<String, Value>,
    values: Map<String, Value>,
    tickets: Vec<Arc<Ticket>>,
}

impl Row {
    fn json(&self) -> Value {
        json!({"keys": self.keys, "values": self.values})
    }
}

/// The primary-key identity of a row: key names (case-insensitive) and values.
fn pk_identity(keys: &Map<String, Value>) -> String {
    let mut parts: Vec<(String, String)> = keys
        .iter()
        .map(|(k, v)| (k.to_lowercase(), v.to_string()))
        .collect();
    parts.sort();
    let mut s = String::new();
    for (k, v) in parts {
        s.push_str(&k);
        s.push('\u{1f}');
        s.push_str(&v);
        s.push('\u{1e}');
    }
    s
}

/// Handle to a running sink.
pub struct Sink {
    shared: Arc<Shared>,
    lanes: std::collections::HashMap<(String, usize), mpsc::Sender<RowMsg>>,
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
        Sink {
            shared: Arc::new(Shared {
                client,
                config,
                dead,
                counters,
                contacts: Mutex::new(ContactCache {
                    cap,
                    set: HashSet::new(),
                    order: VecDeque::new(),
                }),
                io_error: Mutex::new(None),
            }),
            lanes: Default::default(),
            tasks: JoinSet::new(),
            permits,
        }
    }

    pub fn client(&self) -> &SfmcClient {
        &self.shared.client
    }

    /// Dead-letter an event that was rejected before delivery (rules, bad input).
    pub fn reject(&self, line: u64, version: &str, event: &Value, reason: &str) {
        self.shared
            .dead_letter(line, version, event, &Failure::rejected(reason));
    }

    /// Deliver one event's actions. Waits (back-pressure) when too much is in flight.
    pub async fn submit(
        &mut self,
        line: u64,
        version: Arc<str>,
        event: Arc<Value>,
        actions: Vec<Action>,
    ) {
        self.submit_with(line, version, event, actions, None).await
    }

    /// [`Sink::submit`], calling `completion` once the event is delivered or dead-lettered.
    pub async fn submit_with(
        &mut self,
        line: u64,
        version: Arc<str>,
        event: Arc<Value>,
        actions: Vec<Action>,
        completion: Option<Completion>,
    ) {
        while self.tasks.try_join_next().is_some() {}
        let ticket = Arc::new(Ticket {
            completion: Mutex::new(completion),
            line,
            version,
            event,
            remaining: AtomicUsize::new(actions.len()),
            failure: Mutex::new(None),
            shared: self.shared.clone(),
        });
        if actions.is_empty() {
            // Nothing to send: delivered trivially (the interpreter never does this).
            ticket.remaining.store(1, Ordering::Release);
            ticket.done(Ok(()));
        }
        for action in actions {
            match action {
                Action::UpsertRow {
                    data_extension,
                    keys,
                    values,
                } => {
                    self.route_row(data_extension, keys, values, ticket.clone())
                        .await
                }
                Action::CreateContact { contact_key } => {
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
                    let body = json!({"contactKey": contact_key, "attributeSets": []});
                    let shared = self.shared.clone();
                    let t = ticket.clone();
                    self.spawn(async move {
                        let r = send_one(&shared, CONTACTS_PATH, body).await;
                        if r.is_err() {
                            shared
                                .contacts
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .forget(&contact_key);
                        }
                        t.done(r);
                    })
                    .await;
                }
                Action::ApiEvent {
                    contact_key,
                    definition_key,
                    data,
                } => {
                    let body = json!({"ContactKey": contact_key, "EventDefinitionKey": definition_key, "Data": data});
                    let shared = self.shared.clone();
                    let t = ticket.clone();
                    self.spawn(async move {
                        let r = send_one(&shared, EVENTS_PATH, body).await;
                        t.done(r);
                    })
                    .await;
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

    async fn route_row(
        &mut self,
        de: String,
        keys: Map<String, Value>,
        values: Map<String, Value>,
        ticket: Arc<Ticket>,
    ) {
        let lanes = self.shared.config.lanes.max(1);
        let lane = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            pk_identity(&keys).hash(&mut h);
            (h.finish() % lanes as u64) as usize
        };
        let id = (de.to_lowercase(), lane);
        if !self.lanes.contains_key(&id) {
            let (tx, rx) = mpsc::channel(self.shared.config.batch_rows.max(1) * 2);
            let shared = self.shared.clone();
            self.tasks.spawn(lane_loop(shared, de.clone(), rx));
            self.lanes.insert(id.clone(), tx);
        }
        let tx = &self.lanes[&id];
        let msg = RowMsg {
            keys,
            values,
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

fn failure_from(e: &SendError, call: Value) -> Failure {
    let (status, errorcode, attempts) = match e {
        SendError::Permanent {
            status,
            errorcode,
            attempts,
            ..
        } => (Some(*status), *errorcode, Some(*attempts)),
        SendError::Exhausted { attempts, .. } => (None, None, Some(*attempts)),
        SendError::Auth(_) => (Some(401), None, None),
    };
    Failure {
        reason: e.to_string(),
        call: Some(call),
        status,
        errorcode,
        attempts,
    }
}

async fn send_one(shared: &Shared, path: &str, body: Value) -> Result<(), Failure> {
    let bytes = Bytes::from(serde_json::to_vec(&body).expect("JSON values serialize"));
    match shared.client.send(Method::POST, path, bytes).await {
        Ok(_) => Ok(()),
        Err(e) => Err(failure_from(
            &e,
            json!({"method": "POST", "path": path, "body": body}),
        )),
    }
}

async fn lane_loop(shared: Arc<Shared>, de: String, mut rx: mpsc::Receiver<RowMsg>) {
    let path = rowset_path(&de);
    let cfg = shared.config.clone();
    let mut carry: Option<RowMsg> = None;
    loop {
        let first = match carry.take() {
            Some(m) => m,
            None => match rx.recv().await {
                Some(m) => m,
                None => break,
            },
        };
        let mut batch: IndexMap<String, Row> = IndexMap::new();
        let mut bytes = 2usize;
        let deadline = Instant::now() + cfg.linger;
        let mut next = Some(first);
        loop {
            if let Some(m) = next.take() {
                let size = row_size(&m.keys, &m.values);
                let id = pk_identity(&m.keys);
                if let Some(row) = batch.get_mut(&id) {
                    for (k, v) in m.keys {
                        row.keys.insert(k, v);
                    }
                    for (k, v) in m.values {
                        row.values.insert(k, v);
                    }
                    row.tickets.push(m.ticket);
                    bytes += size; // an over-estimate: safe for the byte limit
                    shared
                        .counters
                        .rows_coalesced
                        .fetch_add(1, Ordering::Relaxed);
                } else if !batch.is_empty()
                    && (batch.len() >= cfg.batch_rows || bytes + size + 1 > cfg.batch_bytes)
                {
                    carry = Some(m);
                    break;
                } else {
                    bytes += size + 1;
                    batch.insert(
                        id,
                        Row {
                            keys: m.keys,
                            values: m.values,
                            tickets: vec![m.ticket],
                        },
                    );
                }
            }
            if batch.len() >= cfg.batch_rows {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => next = Some(m),
                Ok(None) | Err(_) => break,
            }
        }
        send_rows(&shared, &path, batch.into_values().collect()).await;
    }
}

/// The serialised size of `{"keys":{..},"values":{..}}`, computed without serialising:
/// exact for strings (escapes counted at their longest, `\u00XX`), a safe upper bound
/// for numbers.
fn row_size(keys: &Map<String, Value>, values: &Map<String, Value>) -> usize {
    fn str_len(s: &str) -> usize {
        2 + s.len()
            + s.bytes()
                .filter(|b| *b < 0x20 || *b == b'"' || *b == b'\\')
                .count()
                * 5
    }
    fn value_len(v: &Value) -> usize {
        match v {
            Value::Null => 4,
            Value::Bool(_) => 5,
            Value::Number(_) => 24,
            Value::String(s) => str_len(s),
            Value::Array(a) => 2 + a.iter().map(|x| value_len(x) + 1).sum::<usize>(),
            Value::Object(m) => map_len(m),
        }
    }
    fn map_len(m: &Map<String, Value>) -> usize {
        2 + m
            .iter()
            .map(|(k, v)| str_len(k) + 2 + value_len(v))
            .sum::<usize>()
    }
    map_len(keys) + map_len(values) + 20
}

/// A rowset body, serialised from the rows without copying them.
fn rowset_body(rows: &[Row]) -> Vec<u8> {
    let refs: Vec<RowRef> = rows
        .iter()
        .map(|r| RowRef {
            keys: &r.keys,
            values: &r.values,
        })
        .collect();
    serde_json::to_vec(&refs).expect("JSON values serialize")
}

/// Send rows as one rowset; on a permanent 400, split and resend the halves until each
/// bad row is alone (SFMC saves rows before the first bad one, rejects every row after,
/// and does not say which was bad; upserts are idempotent, so resending is safe).
async fn send_rows(shared: &Shared, path: &str, rows: Vec<Row>) {
    let mut work: Vec<Vec<Row>> = vec![rows];
    while let Some(mut chunk) = work.pop() {
        if chunk.is_empty() {
            continue;
        }
        let bytes = Bytes::from(rowset_body(&chunk));
        match shared.client.send(Method::POST, path, bytes).await {
            Ok(_) => {
                for row in chunk {
                    for t in row.tickets {
                        t.done(Ok(()));
                    }
                }
            }
            Err(SendError::Permanent {
                status: 400,
                errorcode,
                ..
            }) if chunk.len() > 1 && errorcode != Some(10001) => {
                shared.counters.splits.fetch_add(1, Ordering::Relaxed);
                let second = chunk.split_off(chunk.len() / 2);
                work.push(second);
                work.push(chunk);
            }
            Err(e) => {
                for row in chunk {
                    let call = json!({"method": "POST", "path": path, "body": [row.json()]});
                    let f = failure_from(&e, call);
                    for t in row.tickets {
                        t.done(Err(f.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_size_is_never_below_the_serialised_size() {
        for (k, v) in [
            (
                json!({"Contact Key": "u-1"}),
                json!({"Email": "a@b.c", "N": 3, "B": true}),
            ),
            (
                json!({"K": "q\"uo\\te\n\u{1}"}),
                json!({"Ünïcødé": "日本語 🎉", "F": -1.5e300}),
            ),
            (json!({}), json!({})),
        ] {
            let (k, v) = (k.as_object().unwrap(), v.as_object().unwrap());
            let real = serde_json::to_vec(&json!({"keys": k, "values": v}))
                .unwrap()
                .len();
            let est = row_size(k, v);
            assert!(est >= real, "{est} < {real}");
            assert!(est <= real + 80, "{est} far above {real}");
        }
    }
}
