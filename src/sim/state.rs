//! Shared simulator state: tokens, stored rows, contacts, API events, the upsert log,
//! statistics and the fault RNG. Every lock is a `std::sync::Mutex` held only for short,
//! synchronous sections (never across an `.await`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::bulk::{BulkState, BulkStats};
use super::config::{Faults, SimConfig, UnknownDataExtensions};
use super::faults::{ALL_SCOPES, Outage, Outages, RestOutage, TokenOutage};
use super::rows::{
    Cols, NO_SLOT, StoredCols, Val, ValIn, clear_slots, cols_to_map, merge_cols, put_col,
};
use super::validate::{DeSchema, PreparedCols, PreparedRow, format_uuid, guid_for};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock must not take the whole simulator down.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counters for one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EndpointStats {
    pub total: u64,
    /// HTTP status (as text, `"dropped"` for closed connections) -> count.
    pub by_status: BTreeMap<String, u64>,
}

/// Statistics since start (or the last reset).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SimStats {
    /// `"METHOD /route"` -> counters. Inspection routes (`/sim/...`) are not counted.
    pub calls: BTreeMap<String, EndpointStats>,
    /// HTTP status -> count over all counted endpoints.
    pub statuses: BTreeMap<String, u64>,
    pub tokens_issued: u64,
    /// Rows accepted (inserted or merged).
    pub rows_upserted: u64,
    /// Rows not saved: the first bad row of a request and every row after it.
    pub rows_rejected: u64,
    pub contacts_upserted: u64,
    pub api_events: u64,
    /// Fault kind (`drop`, `429`, `max_rps`, `500`, `bare_10006`, `slow`, and the outage
    /// kinds of [`crate::sim::OutageKind`]: `reject_secret`, `token_blocked`,
    /// `rest_blocked`, `server_errors`, `drop_journey_answers`, `deny_scope` (calls refused
    /// for the scope), `v1_single_token` (tokens invalidated)) -> count.
    pub faults_injected: BTreeMap<String, u64>,
    /// Upserts not recorded in the log because `log_limit` was reached.
    pub log_dropped: u64,
    /// The bulk endpoints: async rows, establish, async journey events.
    pub bulk: BulkStats,
}

impl SimStats {
    /// Total calls recorded for an endpoint label such as
    /// `"POST /hub/v1/dataevents/{key}/rowset"`.
    pub fn calls_to(&self, endpoint: &str) -> u64 {
        self.calls.get(endpoint).map_or(0, |e| e.total)
    }

    /// Calls answered with `status` (e.g. `"429"`) over all endpoints.
    pub fn status_count(&self, status: &str) -> u64 {
        self.statuses.get(status).copied().unwrap_or(0)
    }
}

/// One accepted row upsert, in arrival order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogEntry {
    /// Sequence number, starting at 1.
    pub seq: u64,
    /// The data extension key (declared casing, or as first sent for undeclared ones).
    pub data_extension: String,
    pub keys: Map<String, Value>,
    pub values: Map<String, Value>,
    /// When the row was saved (RFC 3339, UTC, microseconds): a rowset's when it was
    /// handled; an async request's row when that request completed (its status's
    /// `completionDateTime`, even when the log is read later).
    /// Benchmarks measure delivery latency with it (`scripts/bench-trickle.sh`).
    pub landed_at: String,
}

#[derive(Debug)]
pub(crate) struct StoredRow {
    pub keys: StoredCols,
    pub values: StoredCols,
}

/// One accepted upsert in the log (a [`LogEntry`] is built from it on demand).
#[derive(Debug)]
struct LogRecord {
    seq: u64,
    /// Index into `Data::des`.
    de: usize,
    keys: StoredCols,
    values: StoredCols,
    landed: DateTime<Utc>,
}

#[derive(Debug)]
pub(crate) struct DeData {
    pub key: String,
    /// `key` lower-cased (the key of `Data::de_index`).
    pub lower: String,
    pub guid: String,
    pub rows: Vec<StoredRow>,
    pub index: foldhash::HashMap<String, usize>,
    pub upserts: u64,
    /// Column names by column id: the declared columns in schema order, or (undeclared
    /// data extensions) each column in the first casing seen, in first-seen order.
    pub names: Vec<Box<str>>,
    /// Undeclared: lower-cased column -> id.
    pub by_lower: foldhash::HashMap<String, u32>,
    /// Undeclared: canonical name (exactly as in `names`) -> id, to skip lower-casing.
    pub by_canonical: foldhash::HashMap<Box<str>, u32>,
    /// Scratch, one entry per column id, [`NO_SLOT`] between uses.
    pub slots: Vec<u32>,
    /// Undeclared: the column ids of the previous row's `keys` (0) and `values` (1) by
    /// position; rows usually repeat the same names in the same order.
    memo: [Vec<u32>; 2],
}

impl DeData {
    fn new(key: &str, lower: String, guid: String, columns: Vec<Box<str>>) -> Self {
        DeData {
            key: key.to_string(),
            lower,
            guid,
            rows: Vec::new(),
            index: Default::default(),
            upserts: 0,
            slots: vec![NO_SLOT; columns.len()],
            names: columns,
            by_lower: Default::default(),
            by_canonical: Default::default(),
            memo: Default::default(),
        }
    }

    /// The id of an undeclared column: its first casing seen is canonical.
    fn column_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.by_canonical.get(name) {
            return id;
        }
        let lower = name.to_lowercase();
        if let Some(&id) = self.by_lower.get(&lower) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.into());
        self.by_canonical.insert(name.into(), id);
        self.by_lower.insert(lower, id);
        self.slots.push(NO_SLOT);
        id
    }

    /// Columns of an undeclared data extension as stored: canonical ids, and names that
    /// only differ in casing merged like repeated keys of one object.
    fn canonicalize(&mut self, cols: Cols<'_>, part: usize) -> StoredCols {
        let mut out = Vec::with_capacity(cols.len());
        let mut memo = std::mem::take(&mut self.memo[part]);
        for (pos, (name, v)) in cols.into_iter().enumerate() {
            let id = match memo.get(pos) {
                Some(&id) if *self.names[id as usize] == *name => id,
                _ => {
                    let id = self.column_id(&name);
                    if pos < memo.len() {
                        memo[pos] = id;
                    } else {
                        memo.push(id);
                    }
                    id
                }
            };
            put_col(&mut out, &mut self.slots, id, Val::from(v));
        }
        self.memo[part] = memo;
        clear_slots(&out, &mut self.slots);
        out
    }

    fn to_map(&self, cols: &StoredCols) -> Map<String, Value> {
        cols_to_map(&self.names, cols)
    }
}

fn stored(cols: Vec<(u32, ValIn<'_>)>) -> StoredCols {
    cols.into_iter().map(|(id, v)| (id, Val::from(v))).collect()
}

#[derive(Debug)]
struct Contact {
    key: String,
    id: u64,
    attribute_sets: Value,
}

#[derive(Debug, Default)]
struct Data {
    /// Data extensions that received rows, in first-seen order.
    des: Vec<DeData>,
    /// Lower-cased DE key -> index into `des`.
    de_index: foldhash::HashMap<String, usize>,
    contacts: Vec<Contact>,
    contact_index: HashMap<String, usize>,
    events: Vec<Value>,
    log: Vec<LogRecord>,
    seq: u64,
}

impl Data {
    fn de(&self, lower: &str) -> Option<&DeData> {
        self.de_index.get(lower).map(|&i| &self.des[i])
    }
}

/// What the fault RNG decided for one REST call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultDecision {
    None {
        slow: Option<Duration>,
    },
    /// Close the connection without a response; `after` = only after handling the call
    /// (its rows are saved, the client cannot know).
    Drop {
        after: bool,
    },
    TooManyRequests {
        retry_after: u64,
    },
    ServerError,
    Bare10006,
}

struct FaultState {
    faults: Faults,
    rng: fastrand::Rng,
    window_start: Instant,
    window_count: u32,
}

impl FaultState {
    fn new(faults: Faults) -> Self {
        FaultState {
            rng: fastrand::Rng::with_seed(faults.seed),
            faults,
            window_start: Instant::now(),
            window_count: 0,
        }
    }
}

/// An issued access token.
#[derive(Debug)]
struct TokenInfo {
    expiry: Instant,
    issued: Instant,
    /// Granted scopes; `None` = all.
    scopes: Option<Vec<String>>,
    /// The client id of a v1 token (v1 tokens of one client id can invalidate each other).
    v1_client: Option<String>,
}

/// Whether a bearer token may make a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenCheck {
    Ok,
    /// Unknown, expired or revoked.
    Invalid,
    /// Valid, but without the scope the call needs.
    MissingScope,
}

/// Resolution of a data extension reference in a URL.
pub(crate) enum DeTarget {
    Declared(Arc<DeSchema>),
    Undeclared(String),
}

/// The simulator's state. Cheap to share (`Arc<SimState>`).
pub struct SimState {
    config: SimConfig,
    base_url: String,
    schemas: HashMap<String, Arc<DeSchema>>,
    schemas_by_guid: HashMap<String, Arc<DeSchema>>,
    tokens: Mutex<HashMap<String, TokenInfo>>,
    faults: Mutex<FaultState>,
    outages: Outages,
    data: Mutex<Data>,
    stats: Mutex<SimStats>,
    ids: Mutex<fastrand::Rng>,
    /// Async row requests, event definitions and bulk statistics (`bulk.rs`).
    pub(crate) bulk: BulkState,
}

impl std::fmt::Debug for SimState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimState")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl SimState {
    pub(crate) fn new(config: SimConfig, base_url: String) -> Self {
        let mut schemas = HashMap::new();
        let mut schemas_by_guid = HashMap::new();
        for (key, de) in &config.data_extensions {
            let schema = Arc::new(DeSchema::compile(key, de));
            schemas_by_guid.insert(schema.guid.clone(), schema.clone());
            schemas.insert(key.to_lowercase(), schema);
        }
        SimState {
            bulk: BulkState::new(&config),
            faults: Mutex::new(FaultState::new(config.faults.clone())),
            outages: Outages::new(&config.outages, Instant::now()),
            config,
            base_url,
            schemas,
            schemas_by_guid,
            tokens: Mutex::new(HashMap::new()),
            data: Mutex::new(Data::default()),
            stats: Mutex::new(SimStats::default()),
            ids: Mutex::new(fastrand::Rng::new()),
        }
    }

    /// The configuration the simulator was started with (faults may have been replaced
    /// since; see [`SimState::faults`]).
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// `http://HOST:PORT` (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    // ----- tokens -------------------------------------------------------------------

    pub(crate) fn credentials_ok(&self, id: &str, secret: &str) -> bool {
        if id.is_empty() || secret.is_empty() {
            return false;
        }
        self.config.clients.is_empty()
            || self
                .config
                .clients
                .iter()
                .any(|c| c.client_id == id && c.client_secret == secret)
    }

    /// Issue a new access token with every scope and count it.
    pub fn issue_token(&self) -> String {
        self.issue_token_for(None, None)
    }

    /// Issue a token: `scopes` requested (`None` = all), `v1_client` for a v1 token. Scopes
    /// a `deny_scope` window takes away are left out. Returns the token; its granted scopes
    /// are [`SimState::token_scopes`].
    pub(crate) fn issue_token_for(
        &self,
        scopes: Option<Vec<String>>,
        v1_client: Option<&str>,
    ) -> String {
        let token: String = {
            let mut rng = lock(&self.ids);
            (0..48).map(|_| rng.alphanumeric()).collect()
        };
        let now = Instant::now();
        let expiry = now + Duration::from_secs(self.config.token_lifetime);
        let denied = self.outages.denied_scopes();
        let scopes = if denied.is_empty() {
            scopes
        } else {
            let all = scopes.unwrap_or_else(|| ALL_SCOPES.iter().map(|s| s.to_string()).collect());
            Some(all.into_iter().filter(|s| !denied.contains(s)).collect())
        };
        let mut invalidated = 0u64;
        {
            let mut tokens = lock(&self.tokens);
            if tokens.len() > 10_000 {
                tokens.retain(|_, t| t.expiry > now);
            }
            if let Some(client) = v1_client {
                let others = tokens
                    .values()
                    .filter(|t| t.v1_client.as_deref() == Some(client))
                    .count() as u64;
                if others > 0 && self.outages.v1_single_token(others) {
                    tokens.retain(|_, t| t.v1_client.as_deref() != Some(client));
                    invalidated = others;
                }
            }
            tokens.insert(
                token.clone(),
                TokenInfo {
                    expiry,
                    issued: now,
                    scopes,
                    v1_client: v1_client.map(str::to_string),
                },
            );
        }
        let mut stats = lock(&self.stats);
        stats.tokens_issued += 1;
        if invalidated > 0 {
            *stats
                .faults_injected
                .entry("v1_single_token".into())
                .or_default() += invalidated;
        }
        token
    }

    /// The scopes granted to `token`, space separated (all of them unless restricted).
    pub(crate) fn token_scopes(&self, token: &str) -> String {
        match lock(&self.tokens).get(token).and_then(|t| t.scopes.clone()) {
            Some(s) => s.join(" "),
            None => ALL_SCOPES.join(" "),
        }
    }

    /// Whether `token` is known, unexpired and not revoked.
    pub fn token_valid(&self, token: &str) -> bool {
        self.check_token(token, None) == TokenCheck::Ok
    }

    /// Whether `token` may make a call that needs scope `need` (see
    /// `faults::required_scope`): valid, and granted that scope.
    pub(crate) fn check_token(&self, token: &str, need: Option<&'static str>) -> TokenCheck {
        let mut tokens = lock(&self.tokens);
        let Some(t) = tokens.get(token) else {
            return TokenCheck::Invalid;
        };
        if t.expiry <= Instant::now() {
            tokens.remove(token);
            return TokenCheck::Invalid;
        }
        if self.outages.revoked(t.issued) {
            tokens.remove(token);
            return TokenCheck::Invalid;
        }
        let missing = match (need, &t.scopes) {
            (Some(need), Some(granted)) if !granted.iter().any(|g| g == need) => Some(need),
            _ => None,
        };
        drop(tokens);
        match missing {
            Some(scope) => {
                self.outages.count_denied(scope);
                *lock(&self.stats)
                    .faults_injected
                    .entry("deny_scope".into())
                    .or_default() += 1;
                TokenCheck::MissingScope
            }
            None => TokenCheck::Ok,
        }
    }

    /// Invalidate every issued token (clients must authenticate again).
    pub fn revoke_tokens(&self) {
        lock(&self.tokens).clear();
    }

    // ----- outages ------------------------------------------------------------------

    /// Add an outage window (its `start` counts from now).
    pub fn add_outage(&self, outage: Outage) -> anyhow::Result<()> {
        outage.validate()?;
        self.outages.add(outage);
        Ok(())
    }

    pub(crate) fn outages_add_validated(&self, outage: Outage) {
        self.outages.add(outage);
    }

    /// End every outage window (configured ones included). Tokens they revoked stay revoked.
    pub fn clear_outages(&self) {
        let mut tokens = lock(&self.tokens);
        tokens.retain(|_, t| !self.outages.revoked(t.issued));
        self.outages.clear();
    }

    /// The outage windows with their state and hit counts.
    pub fn outages(&self) -> Vec<Value> {
        self.outages.list()
    }

    fn count_fault(&self, kind: &str) {
        *lock(&self.stats)
            .faults_injected
            .entry(kind.to_string())
            .or_default() += 1;
    }

    /// What the token endpoint does for a request with `secret` (counted).
    pub(crate) fn token_outage(&self, secret: &str, v2: bool) -> TokenOutage {
        let t = self.outages.token(secret, v2);
        if let TokenOutage::Respond(_, kind) = &t {
            self.count_fault(kind);
        }
        t
    }

    /// What a REST call meets (counted).
    pub(crate) fn rest_outage(&self, method: &axum::http::Method, path: &str) -> RestOutage {
        let r = self.outages.rest(method, path);
        match &r {
            RestOutage::Respond(_, kind)
            | RestOutage::DropAfterHandling(kind)
            | RestOutage::DelayAnswer(_, kind) => self.count_fault(kind),
            RestOutage::None => {}
        }
        r
    }

    // ----- faults -------------------------------------------------------------------

    /// The current fault settings.
    pub fn faults(&self) -> Faults {
        lock(&self.faults).faults.clone()
    }

    /// Replace the fault settings (the RNG is reseeded from `faults.seed`).
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.faults) = FaultState::new(faults);
    }

    pub(crate) fn roll_faults(&self, data_extension_call: bool) -> FaultDecision {
        let decision = {
            let mut st = lock(&self.faults);
            let now = Instant::now();
            if now.duration_since(st.window_start) >= Duration::from_secs(1) {
                st.window_start = now;
                st.window_count = 0;
            }
            st.window_count = st.window_count.saturating_add(1);
            // Always draw the same number of values so a run is reproducible per seed.
            let draws: [f64; 5] = std::array::from_fn(|_| st.rng.f64());
            let f = &st.faults;
            if draws[0] < f.rate_drop {
                (
                    FaultDecision::Drop {
                        after: f.drop_after_handling,
                    },
                    "drop",
                )
            } else if f.max_rps.is_some_and(|max| st.window_count > max) {
                (FaultDecision::TooManyRequests { retry_after: 1 }, "max_rps")
            } else if draws[1] < f.rate_429 {
                (
                    FaultDecision::TooManyRequests {
                        retry_after: f.retry_after,
                    },
                    "429",
                )
            } else if draws[2] < f.rate_500 {
                (FaultDecision::ServerError, "500")
            } else if data_extension_call && draws[3] < f.rate_bare_10006 {
                (FaultDecision::Bare10006, "bare_10006")
            } else if draws[4] < f.rate_slow && f.slow_ms > 0 {
                (
                    FaultDecision::None {
                        slow: Some(Duration::from_millis(f.slow_ms)),
                    },
                    "slow",
                )
            } else {
                (FaultDecision::None { slow: None }, "")
            }
        };
        if !decision.1.is_empty() {
            *lock(&self.stats)
                .faults_injected
                .entry(decision.1.to_string())
                .or_default() += 1;
        }
        decision.0
    }

    // ----- statistics ---------------------------------------------------------------

    pub(crate) fn record_call(&self, endpoint: &str, status: &str) {
        let mut stats = lock(&self.stats);
        if !stats.calls.contains_key(endpoint) {
            stats
                .calls
                .insert(endpoint.to_string(), EndpointStats::default());
        }
        let Some(e) = stats.calls.get_mut(endpoint) else {
            return;
        };
        e.total += 1;
        match e.by_status.get_mut(status) {
            Some(n) => *n += 1,
            None => {
                e.by_status.insert(status.to_string(), 1);
            }
        }
        match stats.statuses.get_mut(status) {
            Some(n) => *n += 1,
            None => {
                stats.statuses.insert(status.to_string(), 1);
            }
        }
    }

    /// A snapshot of the statistics (async row requests that are due are applied first).
    pub fn stats(&self) -> SimStats {
        self.bulk.settle(self);
        let mut stats = lock(&self.stats).clone();
        stats.bulk = self.bulk.stats();
        stats
    }

    // ----- data extensions ----------------------------------------------------------

    pub(crate) fn resolve_de(&self, spec: &str) -> Result<DeTarget, String> {
        if let Some(key) = spec
            .strip_prefix("key:")
            .or_else(|| spec.strip_prefix("KEY:"))
        {
            if let Some(schema) = self.schemas.get(&key.to_lowercase()) {
                return Ok(DeTarget::Declared(schema.clone()));
            }
            if key.is_empty()
                || self.config.unknown_data_extensions == UnknownDataExtensions::Reject
            {
                return Err(format!("Parameter key:{key} is invalid."));
            }
            Ok(DeTarget::Undeclared(key.to_string()))
        } else {
            if let Some(schema) = self.schemas_by_guid.get(&spec.to_lowercase()) {
                return Ok(DeTarget::Declared(schema.clone()));
            }
            Err(format!("Parameter {spec} is invalid."))
        }
    }

    /// The GUID used for a data extension in error messages.
    pub(crate) fn de_guid(&self, target: &DeTarget) -> String {
        match target {
            DeTarget::Declared(s) => s.guid.clone(),
            DeTarget::Undeclared(key) => guid_for(key),
        }
    }

    /// Store prepared rows (in order) and count `rejected` refused rows, after the async
    /// row requests that finished before now.
    pub(crate) fn apply_rows(&self, target: &DeTarget, rows: Vec<PreparedRow<'_>>, rejected: u64) {
        self.bulk.settle(self);
        self.apply_rows_now(target, rows, rejected, Utc::now());
    }

    /// [`SimState::apply_rows`] without settling async requests (used by the settling),
    /// the rows logged as saved at `landed`.
    pub(crate) fn apply_rows_now(
        &self,
        target: &DeTarget,
        rows: Vec<PreparedRow<'_>>,
        rejected: u64,
        landed: DateTime<Utc>,
    ) {
        let accepted = rows.len() as u64;
        if accepted > 0 {
            let log_limit = self.config.log_limit;
            let mut log_dropped = 0u64;
            {
                let mut data = lock(&self.data);
                let Data {
                    des,
                    de_index,
                    log,
                    seq,
                    ..
                } = &mut *data;
                let key = match target {
                    DeTarget::Declared(s) => s.key.as_str(),
                    DeTarget::Undeclared(k) => k.as_str(),
                };
                let lower = key.to_lowercase();
                let de_idx = match de_index.get(&lower) {
                    Some(&i) => i,
                    None => {
                        let (guid, columns) = match target {
                            DeTarget::Declared(s) => (
                                s.guid.clone(),
                                s.columns.iter().map(|(n, _)| n.as_str().into()).collect(),
                            ),
                            DeTarget::Undeclared(k) => (guid_for(k), Vec::new()),
                        };
                        des.push(DeData::new(key, lower.clone(), guid, columns));
                        de_index.insert(lower, des.len() - 1);
                        des.len() - 1
                    }
                };
                let de = &mut des[de_idx];
                for row in rows {
                    let (keys, values) = match row.cols {
                        PreparedCols::Declared { keys, values } => (stored(keys), stored(values)),
                        PreparedCols::Undeclared { keys, values } => {
                            (de.canonicalize(keys, 0), de.canonicalize(values, 1))
                        }
                    };
                    if log.len() < log_limit {
                        *seq += 1;
                        log.push(LogRecord {
                            seq: *seq,
                            de: de_idx,
                            keys: keys.clone(),
                            values: values.clone(),
                            landed,
                        });
                    } else {
                        log_dropped += 1;
                    }
                    de.upserts += 1;
                    let existing = row
                        .identity
                        .as_ref()
                        .and_then(|id| de.index.get(id).copied());
                    match existing {
                        Some(i) => merge_cols(&mut de.rows[i].values, values, &mut de.slots),
                        None => {
                            if let Some(id) = row.identity {
                                de.index.insert(id, de.rows.len());
                            }
                            de.rows.push(StoredRow { keys, values });
                        }
                    }
                }
            }
            let mut stats = lock(&self.stats);
            stats.rows_upserted += accepted;
            stats.rows_rejected += rejected;
            stats.log_dropped += log_dropped;
        } else if rejected > 0 {
            lock(&self.stats).rows_rejected += rejected;
        }
    }

    /// Stored rows of a data extension (key matched case-insensitively), each
    /// `{"keys":{...},"values":{...}}`, in first-insert order. `None` if the data extension
    /// is neither declared nor has received rows.
    pub fn rows_opt(&self, key: &str) -> Option<Vec<Value>> {
        self.bulk.settle(self);
        let lower = key.to_lowercase();
        let data = lock(&self.data);
        match data.de(&lower) {
            Some(de) => Some(
                de.rows
                    .iter()
                    .map(|r| {
                        let mut row = Map::with_capacity(2);
                        row.insert("keys".into(), Value::Object(de.to_map(&r.keys)));
                        row.insert("values".into(), Value::Object(de.to_map(&r.values)));
                        Value::Object(row)
                    })
                    .collect(),
            ),
            None if self.schemas.contains_key(&lower) => Some(Vec::new()),
            None => None,
        }
    }

    /// Stored rows of a data extension (empty if unknown).
    pub fn rows(&self, key: &str) -> Vec<Value> {
        self.rows_opt(key).unwrap_or_default()
    }

    /// Data extensions that are declared or received rows: (key, GUID, stored row count).
    pub fn data_extensions(&self) -> Vec<(String, String, usize)> {
        self.bulk.settle(self);
        let data = lock(&self.data);
        let mut out: Vec<(String, String, usize)> = self
            .config
            .data_extensions
            .keys()
            .map(|k| {
                let n = data.de(&k.to_lowercase()).map_or(0, |d| d.rows.len());
                (k.clone(), guid_for(k), n)
            })
            .collect();
        for de in &data.des {
            if !self.schemas.contains_key(&de.lower) {
                out.push((de.key.clone(), de.guid.clone(), de.rows.len()));
            }
        }
        out
    }

    /// Every accepted row upsert in arrival order.
    pub fn log(&self) -> Vec<LogEntry> {
        self.bulk.settle(self);
        let data = lock(&self.data);
        data.log
            .iter()
            .map(|r| {
                let de = &data.des[r.de];
                LogEntry {
                    seq: r.seq,
                    data_extension: de.key.clone(),
                    keys: de.to_map(&r.keys),
                    values: de.to_map(&r.values),
                    landed_at: r.landed.to_rfc3339_opts(SecondsFormat::Micros, true),
                }
            })
            .collect()
    }

    // ----- contacts and events ------------------------------------------------------

    /// Create a contact, or find it; its attribute sets are left as they are
    /// (`/contacts/v1/establish`). Returns (contactId, isNew).
    pub(crate) fn establish_contact(&self, key: &str) -> (u64, bool) {
        self.put_contact(key, None)
    }

    /// Create or update a contact; returns (contactId, isNew).
    pub(crate) fn upsert_contact(&self, key: &str, attribute_sets: Value) -> (u64, bool) {
        self.put_contact(key, Some(attribute_sets))
    }

    /// Create a contact or find it, replacing its attribute sets when given.
    fn put_contact(&self, key: &str, attribute_sets: Option<Value>) -> (u64, bool) {
        let result = {
            let mut data = lock(&self.data);
            if let Some(&i) = data.contact_index.get(key) {
                let c = &mut data.contacts[i];
                if let Some(sets) = attribute_sets {
                    c.attribute_sets = sets;
                }
                (c.id, false)
            } else {
                let attribute_sets = attribute_sets.unwrap_or_else(|| Value::Array(Vec::new()));
                let id = 10_000_001 + data.contacts.len() as u64;
                let i = data.contacts.len();
                data.contacts.push(Contact {
                    key: key.to_string(),
                    id,
                    attribute_sets,
                });
                data.contact_index.insert(key.to_string(), i);
                (id, true)
            }
        };
        lock(&self.stats).contacts_upserted += 1;
        result
    }

    /// Contacts in creation order: `{"contactKey","contactId","attributeSets"}`.
    pub fn contacts(&self) -> Vec<Value> {
        lock(&self.data)
            .contacts
            .iter()
            .map(|c| json!({"contactKey": c.key, "contactId": c.id, "attributeSets": c.attribute_sets}))
            .collect()
    }

    pub(crate) fn new_uuid(&self) -> String {
        let bits = lock(&self.ids).u128(..);
        format_uuid(bits)
    }

    pub(crate) fn record_event(&self, event: Value) {
        lock(&self.data).events.push(event);
        lock(&self.stats).api_events += 1;
    }

    /// API events in arrival order:
    /// `{"eventInstanceId","ContactKey","EventDefinitionKey","Data"}`.
    pub fn api_events(&self) -> Vec<Value> {
        lock(&self.data).events.clone()
    }

    // ----- lifecycle ----------------------------------------------------------------

    /// Forget rows, contacts, events, the log and statistics; reseed the fault RNG.
    /// Tokens stay valid.
    pub fn reset(&self) {
        self.bulk.reset(&self.config);
        *lock(&self.data) = Data::default();
        *lock(&self.stats) = SimStats::default();
        let faults = self.faults();
        self.set_faults(faults);
    }

    /// A human-readable account of what landed, for the end of a run.
    pub fn summary_text(&self) -> String {
        let stats = self.stats();
        let des = self.data_extensions();
        let (upserts, n_contacts, events): (HashMap<String, u64>, usize, Vec<Value>) = {
            let data = lock(&self.data);
            (
                data.des
                    .iter()
                    .map(|d| (d.lower.clone(), d.upserts))
                    .collect(),
                data.contacts.len(),
                data.events.clone(),
            )
        };
        let mut out = String::new();
        let _ = writeln!(out, "SFMC simulator at {}: what landed", self.base_url);
        let _ = writeln!(out, "Data extensions:");
        if des.is_empty() {
            let _ = writeln!(out, "  (none)");
        }
        for (key, _guid, rows) in &des {
            let n = upserts.get(&key.to_lowercase()).copied().unwrap_or(0);
            let _ = writeln!(out, "  {key}: {rows} rows ({n} upserts)");
        }
        let _ = writeln!(out, "Contacts: {n_contacts}");
        let mut by_def: BTreeMap<String, u64> = BTreeMap::new();
        for e in &events {
            let def = e
                .get("EventDefinitionKey")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string();
            *by_def.entry(def).or_default() += 1;
        }
        let _ = write!(out, "API events: {}", events.len());
        if !by_def.is_empty() {
            let parts: Vec<String> = by_def.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            let _ = write!(out, " ({})", parts.join(", "));
        }
        out.push('\n');
        let _ = writeln!(out, "Calls:");
        if stats.calls.is_empty() {
            let _ = writeln!(out, "  (none)");
        }
        for (endpoint, e) in &stats.calls {
            let parts: Vec<String> = e
                .by_status
                .iter()
                .map(|(s, n)| format!("{s}: {n}"))
                .collect();
            let _ = writeln!(out, "  {endpoint}: {} ({})", e.total, parts.join(", "));
        }
        let _ = writeln!(
            out,
            "Tokens issued: {}; rows upserted: {}; rows rejected: {}",
            stats.tokens_issued, stats.rows_upserted, stats.rows_rejected
        );
        out.push_str(&stats.bulk.summary_lines());
        if !stats.faults_injected.is_empty() {
            let parts: Vec<String> = stats
                .faults_injected
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            let _ = writeln!(out, "Faults injected: {}", parts.join(", "));
        }
        out
    }
}
