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
//! The CPU work is done before the sink: [`prepare`] turns an event's actions into bytes
//! (each row's JSON, its primary-key identity and lane hash; API-event bodies), so `run`
//! and `serve` call it on their worker threads and the lanes only batch bytes.
//!
//! Every event carries a [`Ticket`] counting its outstanding actions; when the last one
//! finishes the event is counted delivered, or written once to the dead-letter file with
//! the first failure. Nothing is dropped silently.

use super::client::{SendError, SfmcClient};
use super::deadletter::{DeadLetters, Failure};
use crate::action::{Action, CONTACTS_PATH, EVENTS_PATH, Fields, rowset_path};
use bytes::Bytes;
use indexmap::IndexMap;
use reqwest::Method;
use serde_json::{Value, json};
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
    event: EventRef,
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
                        .dead_letter(self.line, &self.version, &self.event.to_value(), &f);
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

/// The event a ticket stands for, kept to write it to the dead-letter file if its
/// delivery fails. `Json` keeps the input text (one allocation, freed by whichever thread
/// finishes the event) instead of the parsed tree; it is parsed again only for a dead letter.
#[derive(Debug, Clone)]
pub enum EventRef {
    Value(Arc<Value>),
    /// The JSON text of the event.
    Json(String),
}

impl EventRef {
    /// The event as JSON (text that does not parse is kept as a string).
    pub fn to_value(&self) -> Value {
        match self {
            EventRef::Value(v) => (**v).clone(),
            EventRef::Json(s) => {
                serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
            }
        }
    }
}

impl From<Arc<Value>> for EventRef {
    fn from(v: Arc<Value>) -> Self {
        EventRef::Value(v)
    }
}

impl From<Value> for EventRef {
    fn from(v: Value) -> Self {
        EventRef::Value(Arc::new(v))
    }
}

/// One event's actions made ready for the sink: rows serialised and their primary keys
/// identified, call bodies serialised. [`prepare`] is pure CPU work, so `run` does it on
/// its worker threads and the async side only routes bytes.
#[derive(Debug, Default)]
pub struct Prepared {
    actions: Vec<PreparedAction>,
}

#[derive(Debug)]
enum PreparedAction {
    Row(PreparedRow),
    Contact(String),
    Post { path: &'static str, body: Bytes },
}

#[derive(Debug)]
struct PreparedRow {
    data_extension: String,
    /// The data extension, lower-cased (its lanes are shared by any spelling).
    lane_key: String,
    /// Primary-key identity (key names lower-cased and sorted, with their values).
    pk: Box<str>,
    /// Hash of (data extension, primary key): picks the lane.
    hash: u64,
    /// `{"keys":{..},"values":{..}}`
    json: RowText,
}

/// Serialise `actions` for [`Sink::submit_prepared`].
pub fn prepare(actions: Vec<Action>) -> Prepared {
    let actions = actions
        .into_iter()
        .map(|a| match a {
            Action::UpsertRow {
                data_extension,
                keys,
                values,
            } => {
                let pk = pk_identity(&keys);
                let mut h = std::collections::hash_map::DefaultHasher::new();
                pk.hash(&mut h);
                let json = RowText::new(&keys, &values);
                PreparedAction::Row(PreparedRow {
                    lane_key: data_extension.to_lowercase(),
                    data_extension,
                    pk: pk.into_boxed_str(),
                    hash: h.finish(),
                    json,
                })
            }
            Action::CreateContact { contact_key } => PreparedAction::Contact(contact_key),
            a @ Action::ApiEvent { .. } => PreparedAction::Post {
                path: EVENTS_PATH,
                body: Bytes::from(serde_json::to_vec(&a.body()).expect("JSON values serialize")),
            },
        })
        .collect();
    Prepared { actions }
}

struct RowMsg {
    pk: Box<str>,
    json: RowText,
    ticket: Arc<Ticket>,
}

/// A row in a pending batch: possibly several events' rows coalesced.
struct Row {
    json: RowText,
    tickets: Vec<Arc<Ticket>>,
}

/// A row's JSON text, `{"keys":{..},"values":{..}}`, with where each member is: rows of
/// one primary key coalesce by splicing members, without parsing either row.
#[derive(Debug, Clone, Default)]
struct RowText {
    json: Vec<u8>,
    keys: Vec<Member>,
    values: Vec<Member>,
}

/// One member's place in [`RowText::json`]: its name as JSON text (quotes included) is
/// `[start, colon)`, its value `(colon, end)`.
#[derive(Debug, Clone, Copy)]
struct Member {
    start: u32,
    colon: u32,
    end: u32,
}

impl RowText {
    /// Serialise a row (the same bytes `serde_json` writes for [`RowRef`]).
    fn new(keys: &Fields, values: &Fields) -> RowText {
        // Sized once: growing the buffer member by member was most of the cost.
        let estimate = |f: &Fields| {
            f.iter()
                .map(|(k, v)| k.len() + v.as_str().map_or(24, str::len) + 6)
                .sum::<usize>()
        };
        let mut t = RowText {
            json: Vec::with_capacity(estimate(keys) + estimate(values) + 24),
            ..RowText::default()
        };
        t.json.extend_from_slice(b"{\"keys\":");
        t.keys = write_members(&mut t.json, keys.iter().map(|(k, v)| (k.as_str(), v)));
        t.json.extend_from_slice(b",\"values\":");
        t.values = write_members(&mut t.json, values.iter().map(|(k, v)| (k.as_str(), v)));
        t.json.push(b'}');
        t
    }

    fn len(&self) -> usize {
        self.json.len()
    }

    fn name(&self, m: Member) -> &[u8] {
        &self.json[m.start as usize..m.colon as usize]
    }

    fn value(&self, m: Member) -> &[u8] {
        &self.json[m.colon as usize + 1..m.end as usize]
    }
}

fn write_members<'a>(
    out: &mut Vec<u8>,
    members: impl Iterator<Item = (&'a str, &'a Value)>,
) -> Vec<Member> {
    let mut spans = Vec::with_capacity(members.size_hint().0);
    out.push(b'{');
    for (i, (k, v)) in members.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let start = out.len() as u32;
        write_json_str(out, k);
        let colon = out.len() as u32;
        out.push(b':');
        match v {
            Value::String(s) => write_json_str(out, s),
            v => serde_json::to_writer(&mut *out, v).expect("JSON values serialize"),
        }
        spans.push(Member {
            start,
            colon,
            end: out.len() as u32,
        });
    }
    out.push(b'}');
    spans
}

/// A JSON string, as serde_json writes it. Most column names and values need no escapes:
/// those are found eight bytes at a time and copied; the rest are left to serde_json.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec");
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether `b` has a byte JSON escapes: `"`, `\` or a control character below 0x20.
fn needs_escape(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A lane of `x` is zero: the classic "has a zero byte" test (no false negatives; a
    // false positive only sends the string the careful way).
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH != 0;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("eight bytes"));
        // Bytes below 0x20: (w & 0xE0 per lane) == 0.
        if has_zero(w & (0xE0 * ONES))
            || has_zero(w ^ (u64::from(b'"') * ONES))
            || has_zero(w ^ (u64::from(b'\\') * ONES))
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&c| c < 0x20 || c == b'"' || c == b'\\')
}

/// `later` coalesced into `earlier`: keys are unioned, later values win, columns keep the
/// earlier row's order with new ones after. Names compare as JSON text, which serde_json
/// writes one way for one name.
fn merge_rows(earlier: &RowText, later: &RowText) -> RowText {
    let mut t = RowText {
        json: Vec::with_capacity(earlier.len() + later.len()),
        ..RowText::default()
    };
    t.json.extend_from_slice(b"{\"keys\":");
    t.keys = merge_members(&mut t.json, earlier, &earlier.keys, later, &later.keys);
    t.json.extend_from_slice(b",\"values\":");
    t.values = merge_members(&mut t.json, earlier, &earlier.values, later, &later.values);
    t.json.push(b'}');
    t
}

fn merge_members(
    out: &mut Vec<u8>,
    a: &RowText,
    am: &[Member],
    b: &RowText,
    bm: &[Member],
) -> Vec<Member> {
    // Rows of one key usually have the same columns in the same order: look at the same
    // position first.
    let find = |i: usize, name: &[u8]| -> Option<usize> {
        if bm.get(i).is_some_and(|m| b.name(*m) == name) {
            return Some(i);
        }
        bm.iter().position(|m| b.name(*m) == name)
    };
    let mut used = vec![false; bm.len()];
    let mut spans = Vec::with_capacity(am.len().max(bm.len()));
    let mut push = |out: &mut Vec<u8>, name: &[u8], value: &[u8]| {
        if !spans.is_empty() {
            out.push(b',');
        }
        let start = out.len() as u32;
        out.extend_from_slice(name);
        let colon = out.len() as u32;
        out.push(b':');
        out.extend_from_slice(value);
        spans.push(Member {
            start,
            colon,
            end: out.len() as u32,
        });
    };
    out.push(b'{');
    for (i, m) in am.iter().enumerate() {
        let name = a.name(*m);
        match find(i, name) {
            Some(j) => {
                used[j] = true;
                push(out, name, b.value(bm[j]));
            }
            None => push(out, name, a.value(*m)),
        }
    }
    for (j, m) in bm.iter().enumerate() {
        if !used[j] {
            push(out, b.name(*m), b.value(*m));
        }
    }
    out.push(b'}');
    spans
}

/// The primary-key identity of a row: key names (case-insensitive) and values.
fn pk_identity(keys: &Fields) -> String {
    use std::fmt::Write as _;
    let mut parts: Vec<(String, &Value)> =
        keys.iter().map(|(k, v)| (k.to_lowercase(), v)).collect();
    parts.sort_by(|a, b| a.0.cmp(&b.0));
    let mut s = String::new();
    for (k, v) in parts {
        s.push_str(&k);
        s.push('\u{1f}');
        // JSON text: strings quoted and escaped, so no value can forge a separator.
        let _ = write!(s, "{v}");
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
        event: impl Into<EventRef>,
        actions: Vec<Action>,
    ) {
        self.submit_with(line, version, event, actions, None).await
    }

    /// [`Sink::submit`], calling `completion` once the event is delivered or dead-lettered.
    pub async fn submit_with(
        &mut self,
        line: u64,
        version: Arc<str>,
        event: impl Into<EventRef>,
        actions: Vec<Action>,
        completion: Option<Completion>,
    ) {
        self.submit_prepared(line, version, event.into(), prepare(actions), completion)
            .await
    }

    /// [`Sink::submit_with`] for actions already [`prepare`]d (off the async threads).
    pub async fn submit_prepared(
        &mut self,
        line: u64,
        version: Arc<str>,
        event: EventRef,
        prepared: Prepared,
        completion: Option<Completion>,
    ) {
        while self.tasks.try_join_next().is_some() {}
        let actions = prepared.actions;
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
                PreparedAction::Post { path, body } => {
                    let shared = self.shared.clone();
                    let t = ticket.clone();
                    self.spawn(async move {
                        let r = send_one(&shared, path, body).await;
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

    async fn route_row(&mut self, row: PreparedRow, ticket: Arc<Ticket>) {
        let lanes = self.shared.config.lanes.max(1);
        let lane = (row.hash % lanes as u64) as usize;
        let id = (row.lane_key, lane);
        let tx = match self.lanes.get(&id) {
            Some(tx) => tx,
            None => {
                let (tx, rx) = mpsc::channel(self.shared.config.batch_rows.max(1) * 2);
                let shared = self.shared.clone();
                self.tasks
                    .spawn(lane_loop(shared, row.data_extension.clone(), rx));
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
    match e {
        SendError::Permanent {
            status,
            errorcode,
            attempts,
            ..
        } => Failure::failed(
            e.to_string(),
            call,
            Some(*status),
            *errorcode,
            Some(*attempts),
        ),
        SendError::Uncertain { attempts, .. } => {
            Failure::uncertain(e.to_string(), call, Some(*attempts))
        }
        SendError::Undelivered { attempts, .. } => {
            Failure::undelivered(e.to_string(), Some(call), Some(*attempts))
        }
    }
}

/// The body as JSON for a dead-letter record (text that does not parse is kept as a string).
fn body_value(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

async fn send_one(shared: &Shared, path: &str, body: Bytes) -> Result<(), Failure> {
    match shared.client.send(Method::POST, path, body.clone()).await {
        Ok(_) => Ok(()),
        Err(e) => Err(failure_from(
            &e,
            json!({"method": "POST", "path": path, "body": body_value(&body)}),
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
        let mut batch: IndexMap<Box<str>, Row> = IndexMap::with_capacity(cfg.batch_rows);
        // `[` and `]`, plus each row and its comma.
        let mut bytes = 2usize;
        let deadline = Instant::now() + cfg.linger;
        let mut next = Some(first);
        loop {
            if let Some(m) = next.take() {
                if let Some(row) = batch.get_mut(&m.pk) {
                    let merged = merge_rows(&row.json, &m.json);
                    bytes = bytes + merged.len() - row.json.len();
                    row.json = merged;
                    row.tickets.push(m.ticket);
                    shared
                        .counters
                        .rows_coalesced
                        .fetch_add(1, Ordering::Relaxed);
                } else if !batch.is_empty()
                    && (batch.len() >= cfg.batch_rows || bytes + m.json.len() + 1 > cfg.batch_bytes)
                {
                    carry = Some(m);
                    break;
                } else {
                    bytes += m.json.len() + 1;
                    batch.insert(
                        m.pk,
                        Row {
                            json: m.json,
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

/// A rowset body: the rows' JSON in an array.
fn rowset_body(rows: &[Row]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + rows.iter().map(|r| r.json.len() + 1).sum::<usize>());
    out.push(b'[');
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&r.json.json);
    }
    out.push(b']');
    out
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
                    let call = json!({"method": "POST", "path": path, "body": [body_value(&row.json.json)]});
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
    use serde_json::Map;

    fn row(keys: Value, values: Value) -> Action {
        Action::UpsertRow {
            data_extension: "De".into(),
            keys: keys.as_object().unwrap().clone().into_iter().collect(),
            values: values.as_object().unwrap().clone().into_iter().collect(),
        }
    }

    fn prepared_row(a: Action) -> PreparedRow {
        match prepare(vec![a]).actions.pop() {
            Some(PreparedAction::Row(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prepared_rows_serialise_the_row_and_identify_the_key_case_insensitively() {
        let a = prepared_row(row(
            json!({"Contact Key": "u-1"}),
            json!({"Email": "a@b.c"}),
        ));
        let b = prepared_row(row(json!({"contact key": "u-1"}), json!({"N": 2})));
        let c = prepared_row(row(json!({"Contact Key": 1}), json!({})));
        let d = prepared_row(row(json!({"Contact Key": "1"}), json!({})));
        assert_eq!(
            serde_json::from_slice::<Value>(&a.json.json).unwrap(),
            json!({"keys": {"Contact Key": "u-1"}, "values": {"Email": "a@b.c"}})
        );
        assert_eq!((a.pk.clone(), a.hash), (b.pk, b.hash));
        assert_eq!(a.lane_key, "de");
        assert_ne!(c.pk, d.pk, "a number and a string key are different rows");
    }

    #[test]
    fn merged_rows_union_keys_and_later_values_win() {
        let a = prepared_row(row(json!({"K": "1"}), json!({"A": 1, "B": 1})));
        let b = prepared_row(row(json!({"K": "1"}), json!({"B": 2, "C": 2})));
        let m = merge_rows(&a.json, &b.json);
        assert_eq!(
            serde_json::from_slice::<Value>(&m.json).unwrap(),
            json!({"keys": {"K": "1"}, "values": {"A": 1, "B": 2, "C": 2}})
        );
    }

    #[test]
    fn row_text_is_what_serde_json_writes_and_merges_repeatedly() {
        let rows = [
            (
                json!({"K": "1"}),
                json!({"A": 1, "B": {"x": [1, "y"]}, "é\"": "q"}),
            ),
            (json!({"K": "1"}), json!({"B": null, "C": "c", "A": 2})),
            (json!({"K": "1", "L": 2}), json!({"D": true, "é\"": "r"})),
            (json!({"L": 3}), json!({})),
        ];
        let mut merged: Option<RowText> = None;
        let mut want_keys = Map::new();
        let mut want_values = Map::new();
        for (k, v) in rows {
            let a = row(k.clone(), v.clone());
            let p = prepared_row(a);
            let Action::UpsertRow { keys, values, .. } = row(k, v) else {
                unreachable!()
            };
            assert_eq!(
                p.json.json,
                serde_json::to_vec(&crate::action::RowRef {
                    keys: &keys,
                    values: &values
                })
                .unwrap()
            );
            want_keys.extend(keys);
            want_values.extend(values);
            merged = Some(match merged {
                None => p.json,
                Some(m) => merge_rows(&m, &p.json),
            });
            let m = merged.as_ref().unwrap();
            let got: Value = serde_json::from_slice(&m.json).unwrap();
            assert_eq!(got, json!({"keys": want_keys, "values": want_values}));
            // Byte for byte what serde_json writes for the merged maps (same order).
            assert_eq!(
                m.json,
                serde_json::to_vec(&json!({"keys": want_keys, "values": want_values})).unwrap()
            );
        }
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "plain text, longer than eight bytes".into(),
            "é☕ unicode is not escaped \u{7f}/".into(),
        ];
        for pos in 0..20 {
            for c in ['"', '\\', '\n', '\u{0}', '\u{1f}', '\t', ' ', '\u{7f}', 'é'] {
                let mut s: String = "abcdefghijklmnopqrst".into();
                s.insert(pos, c);
                cases.push(s);
            }
        }
        for s in cases {
            let mut out = Vec::new();
            write_json_str(&mut out, &s);
            assert_eq!(out, serde_json::to_vec(&s).unwrap(), "{s:?}");
            let careful = s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\');
            assert_eq!(needs_escape(s.as_bytes()), careful, "{s:?}");
        }
    }

    #[test]
    fn merging_keeps_escaped_names_and_nested_values_intact() {
        let a = prepared_row(row(
            json!({"K\"ey": "1"}),
            json!({"A\\b": [1, {"x": "y"}], "Z": 1}),
        ));
        let b = prepared_row(row(json!({"K\"ey": "1"}), json!({"Z": "two\n", "N": null})));
        let m = merge_rows(&a.json, &b.json);
        let v: Value = serde_json::from_slice(&m.json).unwrap();
        assert_eq!(
            v,
            json!({"keys": {"K\"ey": "1"}, "values": {"A\\b": [1, {"x": "y"}], "Z": "two\n", "N": null}})
        );
        // Column order: the earlier row's, then new columns.
        let cols: Vec<&String> = v["values"].as_object().unwrap().keys().collect();
        assert_eq!(cols, ["A\\b", "Z", "N"]);
    }

    #[test]
    fn rowset_body_is_a_json_array_of_the_rows() {
        let rows: Vec<Row> = [json!({"A": 1}), json!({"B": "x"})]
            .into_iter()
            .map(|v| Row {
                json: prepared_row(row(json!({"K": "k"}), v)).json,
                tickets: vec![],
            })
            .collect();
        assert_eq!(
            serde_json::from_slice::<Value>(&rowset_body(&rows)).unwrap(),
            json!([{"keys": {"K": "k"}, "values": {"A": 1}}, {"keys": {"K": "k"}, "values": {"B": "x"}}])
        );
        assert_eq!(rowset_body(&[]), b"[]");
    }

    #[test]
    fn json_events_are_parsed_back_for_dead_letters() {
        assert_eq!(
            EventRef::Json(r#"{"type":"track"}"#.into()).to_value(),
            json!({"type": "track"})
        );
        assert_eq!(EventRef::Json("nope".into()).to_value(), json!("nope"));
    }
}
