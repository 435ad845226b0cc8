//! SFMC's bulk endpoints, simulated: the asynchronous rows API, `/contacts/v1/establish`
//! and `/interaction/v1/async/events`, plus the event definitions that both Journey
//! endpoints check `Data` against.
//!
//! Shapes follow `docs/sfmc-api.md`. Where SFMC's documentation gives no text, the
//! simulator's own wording is used (marked "simulator's text" below); clients must match
//! on structure (`status`, `resultCode`, `errorcode`), never on those texts.
//!
//! **Async rows.** A submit is checked for shape and limits at once (202 or 400) and is
//! applied later: each request gets a delay drawn from a seeded RNG
//! (`async_rows.min_delay_ms..=max_delay_ms`), so two requests finish in no fixed order,
//! and one submitted later can be applied first (a relay that keeps two requests for one
//! primary key in flight can lose the later write). Requests are applied lazily, in order
//! of their due time, whenever anything looks at the simulator's state (a REST call, a
//! status or results call, `rows()`, `stats()`, the summary), so what is seen is always
//! what a background worker would have produced. Rows are validated one by one (per-row
//! results, no "poisoned batch"); a fraction of rows can fail with a SQL deadlock.
//!
//! Where SFMC's documentation is silent, the simulator chooses (a client must not rely
//! on these):
//! - texts of refusals (`MaxItemsExceeded`, `InvalidRequest`, per-row value errors, the
//!   unknown-`Data`-field message, establish's `InvalidContactKey`) and their codes;
//! - results asked before a request is done answer 200 with an
//!   `AsyncRequestResultsNotFound` message and no `items`; `$pageSize` is capped at
//!   `async_rows.results_max_page_size` (the answer's `pageSize` says so);
//! - a request that ends in `requestStatus: Error` saved none of its rows, and each of its
//!   results is an error;
//! - async items are flat, so for an undeclared data extension the key columns are
//!   `async_rows.undeclared_primary_keys`; an item holding only key columns is accepted;
//! - establish takes at most `establish.max_keys` keys; `correlateResponseItem: false`
//!   reverses the items (each keeps its `requestItemIndex`); a Contact Key with a colon,
//!   empty or over 254 characters is refused on its own;
//! - the async events endpoint answers 202; `Data` may hold nulls and `eventInstanceId`
//!   (whose value SFMC ignores) without being checked.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::config::{AsyncRowsConfig, DataExtensionConfig, SimConfig};
use super::rows::{Cols, RowIn, ValIn};
use super::server::{
    bad_json, get_ci, json_object, json_response, required_str, sfmc_error, too_large,
};
use super::state::{DeTarget, SimState};
use super::validate::{
    DeSchema, NO_EXISTING_FIELD, RowError, Scratch, check_value, prepare_declared,
    prepare_undeclared,
};

type St = State<Arc<SimState>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The message of a row that lost a SQL Server deadlock (SQL Server's error 1205 text,
/// which SFMC passes on).
pub const DEADLOCK_MESSAGE: &str = "Transaction (Process ID 64) was deadlocked on lock resources with another process and has been chosen as the deadlock victim. Rerun the transaction.";

/// Message of every row of a request that ended in `requestStatus: Error` (simulator's
/// text).
const REQUEST_FAILED_MESSAGE: &str = "The request could not be processed; no row of it was saved.";

/// Finished async requests remembered for status and results calls.
const FINISHED_KEPT: usize = 100_000;

/// Counters of the bulk endpoints (part of [`super::SimStats`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BulkStats {
    /// Async row requests accepted (202).
    pub async_requests: u64,
    /// Rows in accepted async requests.
    pub async_rows_submitted: u64,
    /// Async requests that reached `Complete`.
    pub async_requests_completed: u64,
    /// Async requests that reached `Error` (none of their rows saved).
    pub async_requests_failed: u64,
    /// Async rows saved.
    pub async_rows_upserted: u64,
    /// Async rows refused for their content.
    pub async_rows_refused: u64,
    /// Async rows that failed with a deadlock.
    pub async_rows_deadlocked: u64,
    /// Contact Keys sent to `/contacts/v1/establish` (refused ones included).
    pub establish_keys: u64,
    /// Contacts the establish calls created.
    pub establish_new: u64,
    /// Contact Keys establish refused.
    pub establish_refused: u64,
    /// Members queued by `/interaction/v1/async/events`.
    pub async_event_members: u64,
    /// Members it refused.
    pub async_event_refused: u64,
}

impl BulkStats {
    /// Lines for the "what landed" summary (empty when no bulk endpoint was used).
    pub fn summary_lines(&self) -> String {
        let mut out = String::new();
        if self.async_requests > 0 {
            let pending = self
                .async_requests
                .saturating_sub(self.async_requests_completed + self.async_requests_failed);
            let _ = writeln!(
                out,
                "Async rows: {} requests ({} complete, {} failed, {pending} pending) with {} rows: {} upserted, {} refused, {} deadlocked",
                self.async_requests,
                self.async_requests_completed,
                self.async_requests_failed,
                self.async_rows_submitted,
                self.async_rows_upserted,
                self.async_rows_refused,
                self.async_rows_deadlocked,
            );
        }
        if self.establish_keys > 0 {
            let _ = writeln!(
                out,
                "Contacts established: {} keys ({} new, {} refused)",
                self.establish_keys, self.establish_new, self.establish_refused
            );
        }
        if self.async_event_members + self.async_event_refused > 0 {
            let _ = writeln!(
                out,
                "Journey batch members: {} queued, {} refused",
                self.async_event_members, self.async_event_refused
            );
        }
        out
    }
}

/// One row's outcome in an async request.
#[derive(Debug, Clone, PartialEq)]
enum RowResult {
    Ok,
    Error {
        message: String,
        code: u32,
        /// (column, message, code).
        errors: Vec<(String, String, u32)>,
    },
    Deadlock,
    RequestFailed,
}

impl RowResult {
    fn to_json(&self) -> Value {
        match self {
            RowResult::Ok => json!({"status": "OK", "message": "Upserted DataExtensionObject"}),
            RowResult::Error {
                message,
                code,
                errors,
            } => {
                let mut m = Map::new();
                m.insert("status".into(), "Error".into());
                m.insert("message".into(), message.as_str().into());
                m.insert("errorCode".into(), (*code).into());
                if !errors.is_empty() {
                    let list: Vec<Value> = errors
                        .iter()
                        .map(|(name, msg, code)| {
                            json!({"errorMessage": msg, "name": name, "errorCode": code})
                        })
                        .collect();
                    m.insert("errors".into(), Value::Array(list));
                }
                Value::Object(m)
            }
            RowResult::Deadlock => {
                json!({"status": "Error", "message": DEADLOCK_MESSAGE, "errorCode": 1205})
            }
            RowResult::RequestFailed => {
                json!({"status": "Error", "message": REQUEST_FAILED_MESSAGE, "errorCode": 500})
            }
        }
    }

    fn from_row_error(e: RowError) -> RowResult {
        match e {
            // The docs' example of a row without its key.
            RowError::MissingPrimaryKey(name) => RowResult::Error {
                message: "Cannot locate the existing record. Required keys are missing.".into(),
                code: 2,
                errors: vec![(
                    name.clone(),
                    format!(
                        "Column [{}] does not allow null value.",
                        name.to_lowercase().replace(' ', "")
                    ),
                    70001,
                )],
            },
            RowError::Invalid(messages) => RowResult::Error {
                message: messages.join(" "),
                code: 10000,
                errors: messages
                    .into_iter()
                    .map(|m| {
                        let col = m.split_once(": ").map_or("", |(c, _)| c).to_string();
                        (col, m, 10000)
                    })
                    .collect(),
            },
            RowError::NoExistingField => RowResult::Error {
                message: NO_EXISTING_FIELD.into(),
                code: 10000,
                errors: Vec::new(),
            },
            RowError::Malformed(m) => RowResult::Error {
                message: m,
                code: 10000,
                errors: Vec::new(),
            },
        }
    }
}

struct Done {
    completed: DateTime<Utc>,
    failed: bool,
    has_errors: bool,
    results: Vec<RowResult>,
}

struct AsyncRequest {
    target: DeTarget,
    /// The request body until it is applied.
    body: Option<Bytes>,
    called: DateTime<Utc>,
    submitted: Instant,
    pickup: Instant,
    due: Instant,
    /// Status calls still to answer "not found".
    not_found_left: u32,
    /// Decided at submit: the request ends in `requestStatus: Error`.
    fail: bool,
    done: Option<Done>,
}

impl AsyncRequest {
    fn at(&self, t: Instant) -> DateTime<Utc> {
        self.called + t.duration_since(self.submitted)
    }
}

struct Queue {
    rng: fastrand::Rng,
    seq: u64,
    /// Lower-cased request id -> request.
    requests: HashMap<String, AsyncRequest>,
    /// (due, submit sequence) -> request id, for requests not applied yet.
    pending: BTreeMap<(Instant, u64), String>,
    /// Ids of applied requests, oldest first (at most [`FINISHED_KEPT`]).
    finished: VecDeque<String>,
}

impl Queue {
    fn new(seed: u64) -> Self {
        Queue {
            rng: fastrand::Rng::with_seed(seed),
            seq: 0,
            requests: HashMap::new(),
            pending: BTreeMap::new(),
            finished: VecDeque::new(),
        }
    }
}

/// The bulk endpoints' state, owned by [`SimState`].
pub(crate) struct BulkState {
    rows: AsyncRowsConfig,
    /// Event definitions with declared fields, by exact key.
    definitions: HashMap<String, DeSchema>,
    queue: Mutex<Queue>,
    stats: Mutex<BulkStats>,
}

impl BulkState {
    pub(crate) fn new(config: &SimConfig) -> Self {
        let definitions = config
            .event_definitions
            .iter()
            .map(|(key, def)| {
                let de = DataExtensionConfig {
                    primary_keys: Vec::new(),
                    columns: def.fields.clone(),
                };
                (key.clone(), DeSchema::compile(key, &de))
            })
            .collect();
        BulkState {
            rows: config.async_rows.clone(),
            definitions,
            queue: Mutex::new(Queue::new(config.async_rows.seed)),
            stats: Mutex::new(BulkStats::default()),
        }
    }

    /// Forget every request and counter; reseed the RNG.
    pub(crate) fn reset(&self, config: &SimConfig) {
        *lock(&self.queue) = Queue::new(config.async_rows.seed);
        *lock(&self.stats) = BulkStats::default();
    }

    pub(crate) fn stats(&self) -> BulkStats {
        lock(&self.stats).clone()
    }

    /// Apply every async request whose due time has passed, in due-time order.
    pub(crate) fn settle(&self, st: &SimState) {
        let mut q = lock(&self.queue);
        if q.pending.is_empty() {
            return;
        }
        let now = Instant::now();
        while let Some((&(due, seq), _)) = q.pending.first_key_value() {
            if due > now {
                break;
            }
            let Some(id) = q.pending.remove(&(due, seq)) else {
                break;
            };
            let Queue {
                rng,
                requests,
                finished,
                ..
            } = &mut *q;
            let Some(req) = requests.get_mut(&id) else {
                continue;
            };
            let done = self.run(st, req, rng);
            {
                let mut s = lock(&self.stats);
                if done.failed {
                    s.async_requests_failed += 1;
                } else {
                    s.async_requests_completed += 1;
                }
                for r in &done.results {
                    match r {
                        RowResult::Ok => s.async_rows_upserted += 1,
                        RowResult::Deadlock => s.async_rows_deadlocked += 1,
                        RowResult::Error { .. } | RowResult::RequestFailed => {
                            s.async_rows_refused += 1
                        }
                    }
                }
            }
            req.done = Some(done);
            finished.push_back(id);
            while finished.len() > FINISHED_KEPT {
                if let Some(old) = finished.pop_front() {
                    requests.remove(&old);
                }
            }
        }
    }

    /// Validate and save the rows of one request.
    fn run(&self, st: &SimState, req: &mut AsyncRequest, rng: &mut fastrand::Rng) -> Done {
        let completed = req.at(req.due);
        let body = req.body.take().unwrap_or_default();
        // Checked at submit: cannot fail here.
        let items = parse_items(&body).unwrap_or_default();
        if req.fail {
            return Done {
                completed,
                failed: true,
                has_errors: true,
                results: vec![RowResult::RequestFailed; items.len()],
            };
        }
        let ci = st.config().case_insensitive_key_values;
        let key_names: Vec<String> = self
            .rows
            .undeclared_primary_keys
            .iter()
            .map(|k| k.to_lowercase())
            .collect();
        let mut results = Vec::with_capacity(items.len());
        let mut prepared = Vec::with_capacity(items.len());
        let mut scratch = Scratch::default();
        for item in items {
            // One draw per row, whatever the row holds, so a run is reproducible per seed.
            let deadlock = rng.f64() < self.rows.deadlock_rate;
            let cols = match item {
                ValIn::Obj(obj) => obj.into_members(),
                _ => {
                    results.push(RowResult::from_row_error(RowError::Malformed(
                        "Each item must be an object of column names and values.".into(),
                    )));
                    continue;
                }
            };
            if deadlock {
                results.push(RowResult::Deadlock);
                continue;
            }
            let outcome = match &req.target {
                DeTarget::Declared(schema) => {
                    let keys: Cols = cols
                        .iter()
                        .filter(|(name, _)| {
                            schema.lookup(name).is_some_and(|i| schema.pks.contains(&i))
                        })
                        .cloned()
                        .collect();
                    let row = RowIn::Row {
                        keys: Some(keys),
                        values: Some(cols),
                    };
                    prepare_declared(schema, row, ci, &mut scratch)
                }
                DeTarget::Undeclared(_) => {
                    let (keys, mut values): (Cols, Cols) = cols
                        .into_iter()
                        .partition(|(name, _)| key_names.contains(&name.to_lowercase()));
                    if values.is_empty() {
                        values = keys.clone();
                    }
                    let row = RowIn::Row {
                        keys: Some(keys),
                        values: Some(values),
                    };
                    prepare_undeclared(row, ci)
                }
            };
            match outcome {
                Ok(p) => {
                    prepared.push(p);
                    results.push(RowResult::Ok);
                }
                Err(e) => results.push(RowResult::from_row_error(e)),
            }
        }
        let refused = (results.len() - prepared.len()) as u64;
        st.apply_rows_now(&req.target, prepared, refused, completed);
        Done {
            completed,
            failed: false,
            has_errors: refused > 0,
            results,
        }
    }
}

/// The `items` of an async rows body.
fn parse_items(body: &[u8]) -> Result<Vec<ValIn<'_>>, Result<String, serde_json::Error>> {
    let parsed = match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str::<ValIn>(text),
        Err(_) => serde_json::from_slice::<ValIn>(body),
    };
    let mut obj = match parsed {
        Ok(ValIn::Obj(obj)) => obj,
        Ok(_) => {
            return Err(Ok(
                "The request body must be an object {\"items\":[...]}.".into()
            ));
        }
        Err(e) => return Err(Err(e)),
    };
    match obj.remove("items") {
        Some(ValIn::Arr(items)) => Ok(items),
        Some(_) => Err(Ok("The 'items' property must be an array of rows.".into())),
        None => Err(Ok(
            "The request body must have an 'items' array of rows.".into()
        )),
    }
}

fn result_message(code: &str, message: impl Into<String>) -> Value {
    json!({"resultType": "Validation", "resultClass": "Error", "resultCode": code, "message": message.into()})
}

/// 400 for a request refused at submit: `requestId` and one result message.
fn refused(id: &str, code: &str, message: impl Into<String>) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({"requestId": id, "resultMessages": [result_message(code, message)]}),
    )
}

fn timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
}

// ----- async rows: handlers ------------------------------------------------------------

/// `PUT /data/v1/async/dataextensions/{key}/rows` (`key:{externalKey}` or an id).
pub(super) async fn async_rows(State(st): St, Path(spec): Path<String>, body: Bytes) -> Response {
    let limit = st.config().max_body_bytes;
    if body.len() > limit {
        return too_large(limit);
    }
    let id = st.new_uuid();
    let target = match st.resolve_de(&spec) {
        Ok(t) => t,
        Err(_) => {
            return refused(
                &id,
                "CustomObjectNotFound",
                format!("Failed to resolve the Custom Object from {spec}."),
            );
        }
    };
    let items = match parse_items(&body) {
        Ok(items) => items,
        Err(Ok(message)) => return refused(&id, "InvalidRequest", message),
        Err(Err(e)) => return bad_json(&e),
    };
    let max = st.bulk.rows.max_rows;
    if items.is_empty() {
        return refused(
            &id,
            "InvalidRequest",
            "The request must contain at least one item.",
        );
    }
    if items.len() > max {
        return refused(
            &id,
            "MaxItemsExceeded",
            format!(
                "The request contains {} items; at most {max} are allowed per request.",
                items.len()
            ),
        );
    }
    if let Some(i) = items.iter().position(|v| !matches!(v, ValIn::Obj(_))) {
        return refused(
            &id,
            "InvalidRequest",
            format!("Item {i} is not an object of column names and values."),
        );
    }
    let n = items.len() as u64;
    drop(items);
    let cfg = &st.bulk.rows;
    {
        let mut q = lock(&st.bulk.queue);
        let delay = Duration::from_millis(q.rng.u64(cfg.min_delay_ms..=cfg.max_delay_ms));
        let fail = q.rng.f64() < cfg.error_rate;
        let submitted = Instant::now();
        q.seq += 1;
        let seq = q.seq;
        let key = id.to_ascii_lowercase();
        q.pending.insert((submitted + delay, seq), key.clone());
        q.requests.insert(
            key,
            AsyncRequest {
                target,
                body: Some(body),
                called: Utc::now(),
                submitted,
                pickup: submitted + delay / 2,
                due: submitted + delay,
                not_found_left: cfg.status_not_found_polls,
                fail,
                done: None,
            },
        );
    }
    {
        let mut s = lock(&st.bulk.stats);
        s.async_requests += 1;
        s.async_rows_submitted += n;
    }
    json_response(
        StatusCode::ACCEPTED,
        json!({"requestId": id, "resultMessages": []}),
    )
}

fn status_not_found(id: &str) -> Response {
    json_response(
        StatusCode::OK,
        json!({"requestId": id, "resultMessages": [result_message(
            "AsyncRequestStatusNotFound",
            format!("The status of request {id} was not found."),
        )]}),
    )
}

/// `GET /data/v1/async/{requestId}/status`.
pub(super) async fn async_status(State(st): St, Path(id): Path<String>) -> Response {
    st.bulk.settle(&st);
    let now = Instant::now();
    let mut q = lock(&st.bulk.queue);
    let Some(req) = q.requests.get_mut(&id.to_ascii_lowercase()) else {
        return status_not_found(&id);
    };
    if req.not_found_left > 0 {
        req.not_found_left -= 1;
        return status_not_found(&id);
    }
    let mut status = Map::new();
    status.insert("callDateTime".into(), timestamp(req.called).into());
    match &req.done {
        Some(done) => {
            status.insert(
                "completionDateTime".into(),
                timestamp(done.completed).into(),
            );
            status.insert("hasErrors".into(), done.has_errors.into());
            status.insert(
                "pickupDateTime".into(),
                timestamp(req.at(req.pickup)).into(),
            );
            status.insert(
                "requestStatus".into(),
                if done.failed { "Error" } else { "Complete" }.into(),
            );
            status.insert(
                "resultStatus".into(),
                if done.has_errors { "Has Errors" } else { "OK" }.into(),
            );
        }
        None => {
            status.insert("hasErrors".into(), false.into());
            let picked = now >= req.pickup;
            if picked {
                status.insert(
                    "pickupDateTime".into(),
                    timestamp(req.at(req.pickup)).into(),
                );
            }
            status.insert(
                "requestStatus".into(),
                if picked { "Executing" } else { "Pending" }.into(),
            );
        }
    }
    status.insert("requestId".into(), id.as_str().into());
    json_response(
        StatusCode::OK,
        json!({"status": Value::Object(status), "requestId": id}),
    )
}

/// `GET /data/v1/async/{requestId}/results?$page=1&$pageSize=50`.
pub(super) async fn async_results(
    State(st): St,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let number = |name: &str, default: usize| -> Result<usize, String> {
        match query.get(name) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(format!(
                    "{name} must be a whole number of at least 1, got {v:?}."
                )),
            },
        }
    };
    let (page, page_size) = match (number("$page", 1), number("$pageSize", 50)) {
        (Ok(p), Ok(s)) => (p, s.min(st.bulk.rows.results_max_page_size)),
        (Err(m), _) | (_, Err(m)) => return sfmc_error(StatusCode::BAD_REQUEST, m, 10000),
    };
    st.bulk.settle(&st);
    let q = lock(&st.bulk.queue);
    let Some(done) = q
        .requests
        .get(&id.to_ascii_lowercase())
        .and_then(|r| r.done.as_ref())
    else {
        return json_response(
            StatusCode::OK,
            json!({"requestId": id, "resultMessages": [result_message(
                "AsyncRequestResultsNotFound",
                format!("The results of request {id} were not found."),
            )]}),
        );
    };
    let start = (page - 1).saturating_mul(page_size).min(done.results.len());
    let end = start.saturating_add(page_size).min(done.results.len());
    let items: Vec<Value> = done.results[start..end]
        .iter()
        .map(RowResult::to_json)
        .collect();
    json_response(
        StatusCode::OK,
        json!({"page": page, "pageSize": page_size, "count": done.results.len(), "items": items, "requestId": id}),
    )
}

// ----- contacts -------------------------------------------------------------------------

/// Why a Contact Key is refused (the rules of `POST /contacts/v1/contacts`).
fn contact_key_problem(key: &Value) -> Option<String> {
    match key {
        Value::String(s) if s.is_empty() => Some("contactKey must be a non-empty string.".into()),
        Value::String(s) if s.chars().count() > 254 => {
            Some("contactKey exceeds the maximum length of 254 characters.".into())
        }
        Value::String(s) if s.contains(':') => {
            Some("contactKey must not contain a colon (':').".into())
        }
        Value::String(_) => None,
        _ => Some("contactKey must be a non-empty string.".into()),
    }
}

fn flag(fields: &Map<String, Value>, name: &str, default: bool) -> bool {
    get_ci(fields, name)
        .and_then(Value::as_bool)
        .unwrap_or(default)
}

/// `POST /contacts/v1/establish`.
pub(super) async fn establish(State(st): St, body: Bytes) -> Response {
    let fields = match json_object(&body) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let keys = match get_ci(&fields, "contactKeys") {
        Some(Value::Array(keys)) if !keys.is_empty() => keys,
        _ => {
            return sfmc_error(
                StatusCode::BAD_REQUEST,
                "contactKeys is required: an array of one or more contact keys.",
                10000,
            );
        }
    };
    let max = st.config().establish.max_keys;
    if keys.len() > max {
        return sfmc_error(
            StatusCode::BAD_REQUEST,
            format!(
                "contactKeys holds {} keys; at most {max} are allowed per request.",
                keys.len()
            ),
            10000,
        );
    }
    let awareness = flag(&fields, "includeNewContactAwareness", false);
    let correlate = flag(&fields, "correlateResponseItem", true);
    let return_results = flag(&fields, "returnResults", true);
    let (mut new, mut bad) = (0u64, 0u64);
    let mut items = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let mut value = Map::new();
        value.insert("requestedContactKey".into(), key.clone());
        value.insert("requestItemIndex".into(), i.into());
        match (contact_key_problem(key), key.as_str()) {
            (None, Some(k)) => {
                let (id, is_new) = st.establish_contact(k);
                new += u64::from(is_new);
                if awareness {
                    value.insert("isNewContact".into(), is_new.into());
                }
                value.insert(
                    "contactReference".into(),
                    json!({"contactID": id, "contactType": "Default", "contactKey": k, "contactStatus": "Active"}),
                );
                value.insert("resultMessages".into(), json!([]));
            }
            (problem, _) => {
                bad += 1;
                let message = problem.unwrap_or_else(|| "contactKey is invalid.".into());
                value.insert(
                    "resultMessages".into(),
                    json!([result_message("InvalidContactKey", message)]),
                );
            }
        }
        items.push(json!({"value": Value::Object(value)}));
    }
    if !correlate {
        // Nothing promises the request order then: a client that matches by position
        // instead of `requestItemIndex` gets it wrong.
        items.reverse();
    }
    {
        let mut s = lock(&st.bulk.stats);
        s.establish_keys += keys.len() as u64;
        s.establish_new += new;
        s.establish_refused += bad;
    }
    let mut out = Map::new();
    if return_results {
        out.insert("items".into(), Value::Array(items));
    }
    out.insert("requestServiceMessageID".into(), st.new_uuid().into());
    out.insert("responseDateTime".into(), timestamp(Utc::now()).into());
    out.insert("resultMessages".into(), json!([]));
    out.insert("serviceMessageID".into(), st.new_uuid().into());
    json_response(StatusCode::OK, Value::Object(out))
}

// ----- journey events -------------------------------------------------------------------

/// Whether an EventDefinitionKey is known: declared in `api_events` or
/// `event_definitions`, or neither list is configured (any key goes).
pub(super) fn definition_known(st: &SimState, key: &str) -> bool {
    let config = st.config();
    (config.api_events.is_empty() && config.event_definitions.is_empty())
        || config.api_events.iter().any(|k| k == key)
        || config.event_definitions.contains_key(key)
}

/// The answer to an unknown EventDefinitionKey (both Journey endpoints).
pub(super) fn unknown_definition(key: &str) -> Response {
    sfmc_error(
        StatusCode::BAD_REQUEST,
        format!("Unable to queue Event Definition. Event Definition with key '{key}' not found."),
        30000,
    )
}

/// Check `Data` against the event definition's fields, when it declares them: every
/// member must be a field (case-insensitively) and its value must fit the field's type.
/// `eventInstanceId` is reserved (SFMC ignores its value) and nulls are allowed.
/// `Err` holds the message (simulator's text).
pub(super) fn check_event_data(
    st: &SimState,
    key: &str,
    data: &Map<String, Value>,
) -> Result<(), String> {
    let Some(schema) = st.bulk.definitions.get(key) else {
        return Ok(());
    };
    let mut unknown = Vec::new();
    let mut invalid = Vec::new();
    for (name, v) in data {
        if name.eq_ignore_ascii_case("eventInstanceId") {
            continue;
        }
        match schema.lookup(name) {
            None => unknown.push(format!("'{name}'")),
            Some(_) if v.is_null() => {}
            Some(i) => {
                let (col, ty) = &schema.columns[i];
                if let Err(m) = check_value(col, *ty, v, false) {
                    invalid.push(m);
                }
            }
        }
    }
    if !unknown.is_empty() {
        return Err(format!(
            "Data field(s) {} do not exist in the data extension of event definition '{key}'.",
            unknown.join(", ")
        ));
    }
    if !invalid.is_empty() {
        return Err(invalid.join(" "));
    }
    Ok(())
}

/// `POST /interaction/v1/async/events`.
pub(super) async fn async_events(State(st): St, body: Bytes) -> Response {
    let fields = match json_object(&body) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let definition = match required_str(&fields, "eventDefinitionKey", 30000) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let members = match get_ci(&fields, "members") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        _ => {
            return sfmc_error(
                StatusCode::BAD_REQUEST,
                "members is required: an array of one or more members.",
                30000,
            );
        }
    };
    if members.len() > st.config().async_events.max_members {
        return sfmc_error(
            StatusCode::BAD_REQUEST,
            "Interaction Count Limit Exceeded",
            10000,
        );
    }
    if !definition_known(&st, &definition) {
        return unknown_definition(&definition);
    }
    let mut out = Vec::with_capacity(members.len());
    let mut refused = 0u64;
    for member in members {
        let checked = match member {
            Value::Object(m) => {
                let contact_key = match get_ci(m, "contactKey") {
                    Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                    _ => Err((
                        Value::Null,
                        "contactKey is required and must be a non-empty string.".to_string(),
                    )),
                };
                contact_key.and_then(|ck| match get_ci(m, "data") {
                    None | Some(Value::Null) => Ok((ck, Map::new())),
                    Some(Value::Object(d)) => match check_event_data(&st, &definition, d) {
                        Ok(()) => Ok((ck, d.clone())),
                        Err(msg) => Err((Value::String(ck), msg)),
                    },
                    Some(_) => Err((Value::String(ck), "data must be an object.".into())),
                })
            }
            _ => Err((Value::Null, "Each member must be an object.".to_string())),
        };
        match checked {
            Ok((contact_key, data)) => {
                let id = st.new_uuid();
                st.record_event(json!({
                    "eventInstanceId": id,
                    "ContactKey": contact_key,
                    "EventDefinitionKey": definition,
                    "Data": Value::Object(data),
                }));
                out.push(json!({"contactKey": contact_key, "eventInstanceId": id}));
            }
            Err((contact_key, message)) => {
                refused += 1;
                out.push(
                    json!({"contactKey": contact_key, "errorcode": 30000, "message": message}),
                );
            }
        }
    }
    {
        let mut s = lock(&st.bulk.stats);
        s.async_event_members += members.len() as u64 - refused;
        s.async_event_refused += refused;
    }
    json_response(
        StatusCode::ACCEPTED,
        json!({
            "requestId": st.new_uuid(),
            "count": members.len(),
            "notQueuedCount": refused,
            "members": out,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_empty_without_bulk_calls() {
        assert_eq!(BulkStats::default().summary_lines(), "");
        let s = BulkStats {
            async_requests: 2,
            async_rows_submitted: 10,
            async_requests_completed: 1,
            async_rows_upserted: 4,
            async_rows_refused: 1,
            establish_keys: 3,
            establish_new: 2,
            ..Default::default()
        };
        let text = s.summary_lines();
        assert!(
            text.contains("Async rows: 2 requests (1 complete, 0 failed, 1 pending) with 10 rows: 4 upserted, 1 refused, 0 deadlocked"),
            "{text}"
        );
        assert!(text.contains("Contacts established: 3 keys (2 new, 0 refused)"));
    }

    #[test]
    fn row_errors_keep_the_column_and_message() {
        let r = RowResult::from_row_error(RowError::Invalid(vec![
            "Email: The value for column [Email] is not a valid email address.".into(),
        ]));
        let v = r.to_json();
        assert_eq!(v["status"], "Error");
        assert_eq!(v["errors"][0]["name"], "Email");
        let r = RowResult::from_row_error(RowError::MissingPrimaryKey("Contact Key".into()));
        assert_eq!(
            r.to_json()["errors"][0]["errorMessage"],
            "Column [contactkey] does not allow null value."
        );
        assert!(
            RowResult::Deadlock.to_json()["message"]
                .as_str()
                .unwrap()
                .ends_with("Rerun the transaction.")
        );
    }
}
