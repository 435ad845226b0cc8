//! HTTP ingest compatible with Segment's tracking API (`api.segment.io/v1/...`).
//!
//! Endpoints: `POST /v1/{identify,track,page,screen,group,alias}` (one event; `type` is
//! taken from the path when the body has none), `POST /v1/batch` and `/v1/import`
//! (`{"batch":[...]}`; top-level `context`, `integrations` and `sentAt` apply to every
//! event that lacks them), plus analytics.js's short paths (`/v1/t`, `/v1/i`, `/v1/p`,
//! `/v1/s`, `/v1/g`, `/v1/a`, `/v1/b`) so its `apiHost` can point here; `POST /v1/m`
//! (analytics.js's usage metrics: counted, not delivered); `GET
//! /v1/projects/{writeKey}/settings` (analytics.js's settings, so a page can point its
//! `cdnURL` here); CORS preflights ([`super::cors`]). `GET /healthz`, `GET /metrics`
//! (Prometheus text).
//!
//! Authentication as Segment's API: the write key is the HTTP Basic username (password
//! empty). Without an `Authorization` header the body's `writeKey` is used (analytics.js
//! sends it there). Keys are compared in constant time.
//!
//! Limits as Segment's, on the bytes as received (after gzip inflation), never on what the
//! relay makes of them: 32 KB for a single-event request, 500 KB for a batch request
//! (larger: 400), and 32 KB for each event of a batch, measured on that event's own JSON
//! text in the request. As Segment's batch endpoint documents, an event over that limit
//! (or past the 2,500th of a batch) is rejected alone and the rest is accepted (200): the
//! rejected event goes to the dead-letter file with the reason and is counted, never
//! dropped silently. Error bodies are Segment's shape: `{"success":false,"message":...,
//! "code":...}`, every refusal counted by its code in `/metrics`.
//!
//! An accepted request is in the spool, fsync'd, before the `{"success":true}` reply; a
//! full spool answers 503 with `Retry-After` (Segment's libraries retry 5xx). An event
//! whose `messageId` was accepted lately (a client's retry of a request whose answer it
//! lost, e.g. in a crash) is answered 200 and not spooled again ([`super::dedup`]).

use super::cors::{self, CorsOrigins};
use super::dedup::{RELAY_ID_PREFIX, RecentIds};
use super::metrics::{self, Metrics, refusal};
use crate::commands::run::RuleSource;
use crate::sfmc::SfmcClient;
use crate::sfmc::deadletter::{DeadLetters, Failure};
use crate::spool::{AppendError, Spool};
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use base64::Engine;
use indexmap::IndexMap;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use subtle::ConstantTimeEq;

/// Segment's limit for one event (bytes of JSON).
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Segment's limit for one batch request (bytes of JSON, after decompression).
pub const MAX_BATCH_BYTES: usize = 500 * 1024;
/// Segment's limit on events per batch request; later ones are rejected alone.
pub const MAX_BATCH_EVENTS: usize = 2500;

/// The environment variable holding the accepted write keys (comma-separated).
pub const WRITE_KEYS_VAR: &str = "SFMC_RELAY_WRITE_KEYS";

/// The write keys in [`WRITE_KEYS_VAR`]: comma-separated, trimmed, empty ones dropped.
pub fn write_keys(env: &crate::env::Env) -> Vec<String> {
    parse_write_keys(&env.get(WRITE_KEYS_VAR).unwrap_or_default())
}

/// `"k1, k2,,k3"` -> `["k1", "k2", "k3"]`.
pub fn parse_write_keys(list: &str) -> Vec<String> {
    list.split(',')
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect()
}

/// Everything the handlers share.
pub struct Ingest {
    pub spool: Arc<Spool>,
    pub write_keys: Vec<Vec<u8>>,
    pub metrics: Arc<Metrics>,
    pub client: SfmcClient,
    pub rules: RuleSource,
    /// Browser origins allowed to call (`--cors-origins`).
    pub cors: CorsOrigins,
    /// Where events of a batch that break Segment's per-event limits go (the same file
    /// the sink writes).
    pub dead_letters: Arc<DeadLetters>,
    /// Client `messageId`s spooled lately: a retry of an accepted request is not spooled
    /// twice ([`super::dedup`]). Seed it with [`RecentIds::from_spool`] before opening
    /// the spool.
    pub recent_ids: std::sync::Mutex<RecentIds>,
}

#[derive(Clone, Copy)]
enum Kind {
    Single(&'static str),
    Batch,
}

/// The ingest router.
pub fn router(state: Arc<Ingest>) -> Router {
    let mut r = Router::new();
    for t in ["identify", "track", "page", "screen", "group", "alias"] {
        let short = &t[..1];
        for path in [format!("/v1/{t}"), format!("/v1/{short}")] {
            r = r.route(
                &path,
                v1(post(
                    move |st: State<Arc<Ingest>>, h: HeaderMap, b: Body| {
                        ingest(st, Kind::Single(t), h, b)
                    },
                )),
            );
        }
    }
    for path in ["/v1/batch", "/v1/import", "/v1/b"] {
        r = r.route(
            path,
            v1(post(|st: State<Arc<Ingest>>, h: HeaderMap, b: Body| {
                ingest(st, Kind::Batch, h, b)
            })),
        );
    }
    r.route("/v1/m", v1(post(client_metrics)))
        .route("/v1/projects/{key}/settings", v1(get(settings)))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_handler))
        .fallback(not_found)
        // Limits are enforced in `read_body` (400 with a message, as Segment answers).
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cors::layer,
        ))
        .with_state(state)
}

/// A `/v1` route: other methods get Segment's error body (and are counted).
fn v1(m: MethodRouter<Arc<Ingest>>) -> MethodRouter<Arc<Ingest>> {
    m.fallback(method_not_allowed)
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Segment's error body, `{"success":false,"message":...,"code":...}`, counted in
/// `/metrics` under its code (one of [`metrics::REFUSALS`]).
pub(crate) fn error_response(
    m: &Metrics,
    reason: usize,
    status: StatusCode,
    message: impl Into<String>,
) -> Response {
    m.refuse(reason);
    reply(
        status,
        json!({"success": false, "message": message.into(), "code": metrics::REFUSALS[reason]}),
    )
}

fn fail(m: &Metrics, reason: usize, status: StatusCode, message: impl Into<String>) -> Response {
    error_response(m, reason, status, message)
}

use refusal::{BAD_REQUEST, ERROR, SPOOL_FULL, TOO_LARGE, UNAUTHORIZED};

async fn not_found(State(st): State<Arc<Ingest>>) -> Response {
    fail(
        &st.metrics,
        refusal::NOT_FOUND,
        StatusCode::NOT_FOUND,
        "no such endpoint (Segment's tracking API: POST /v1/batch, /v1/track, /v1/identify, ...)",
    )
}

async fn method_not_allowed(State(st): State<Arc<Ingest>>) -> Response {
    fail(
        &st.metrics,
        refusal::METHOD_NOT_ALLOWED,
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed here (the tracking API takes POST)",
    )
}

/// analytics.js's usage metrics (`{"series":[...]}` every 30 s to `{apiHost}/m`):
/// accepted so the browser console stays quiet, counted, never delivered.
async fn client_metrics(State(st): State<Arc<Ingest>>, headers: HeaderMap, body: Body) -> Response {
    let m = &st.metrics;
    match read_body(&headers, body, MAX_EVENT_BYTES).await {
        Ok(_) => {
            m.client_metric_posts.fetch_add(1, Ordering::Relaxed);
            reply(StatusCode::OK, json!({"success": true}))
        }
        Err(BodyError::TooLarge(msg)) => fail(m, TOO_LARGE, StatusCode::BAD_REQUEST, msg),
        Err(BodyError::Bad(msg)) => fail(m, BAD_REQUEST, StatusCode::BAD_REQUEST, msg),
    }
}

/// The settings analytics.js loads from `{cdnURL}/v1/projects/{writeKey}/settings`:
/// only the Segment.io integration, pointed back at this relay (host from `Host`, scheme
/// from `X-Forwarded-Proto` when a TLS proxy sets it), so a page needs only `cdnURL`.
async fn settings(
    State(st): State<Arc<Ingest>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Response {
    let m = &st.metrics;
    if !key_ok(&st.write_keys, key.as_bytes()) {
        return fail(
            m,
            UNAUTHORIZED,
            StatusCode::NOT_FOUND,
            "unknown write key (SFMC_RELAY_WRITE_KEYS)",
        );
    }
    let header_str = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or("").trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let Some(host) = header_str("x-forwarded-host").or_else(|| header_str("host")) else {
        return fail(
            m,
            BAD_REQUEST,
            StatusCode::BAD_REQUEST,
            "no Host header: cannot tell analytics.js where to send events",
        );
    };
    let valid_host = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
    if !valid_host {
        return fail(
            m,
            BAD_REQUEST,
            StatusCode::BAD_REQUEST,
            "invalid Host header",
        );
    }
    let protocol = match header_str("x-forwarded-proto").as_deref() {
        Some("https") => "https",
        _ => "http",
    };
    let api_host = format!("{host}/v1");
    m.settings_served.fetch_add(1, Ordering::Relaxed);
    let mut r = reply(
        StatusCode::OK,
        json!({
            "integrations": {
                "Segment.io": {
                    "apiKey": key,
                    "apiHost": api_host,
                    "protocol": protocol,
                    "unbundledIntegrations": [],
                    "addBundledMetadata": true,
                    "maybeBundledConfigIds": {},
                    "versionSettings": {"componentTypes": []}
                }
            },
            "plan": {
                "track": {"__default": {"enabled": true, "integrations": {}}},
                "identify": {"__default": {"enabled": true}},
                "group": {"__default": {"enabled": true}}
            },
            "edgeFunction": {},
            "analyticsNextEnabled": true,
            "middlewareSettings": {},
            "enabledMiddleware": {},
            "metrics": {"sampleRate": 0.1, "host": api_host},
            "legacyVideoPluginsEnabled": false,
            "remotePlugins": []
        }),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// True when `given` is an accepted write key. Every key is compared, each in constant
/// time (`subtle`), so the time taken does not depend on how much of a key matched
/// (only, unavoidably, on the keys' lengths).
fn key_ok(keys: &[Vec<u8>], given: &[u8]) -> bool {
    let mut ok = subtle::Choice::from(0);
    for k in keys {
        ok |= k.as_slice().ct_eq(given);
    }
    bool::from(ok) && !given.is_empty()
}

/// The write key from `Authorization: Basic base64(key:)`: `Some(None)` when the header
/// is present but unreadable, `None` when there is no header.
fn basic_user(headers: &HeaderMap) -> Option<Option<Vec<u8>>> {
    let h = headers.get(header::AUTHORIZATION)?;
    let parsed = (|| {
        let s = h.to_str().ok()?.trim();
        let (scheme, rest) = s.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let user = match raw.iter().position(|b| *b == b':') {
            Some(i) => raw[..i].to_vec(),
            None => raw,
        };
        Some(user)
    })();
    Some(parsed)
}

fn kb(n: usize) -> String {
    format!("{} KB", n / 1024)
}

/// Read the body (decompressing gzip) up to `limit` bytes of JSON.
/// Why a body could not be read.
enum BodyError {
    TooLarge(String),
    Bad(String),
}

async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, BodyError> {
    let too_big = || {
        BodyError::TooLarge(format!(
            "request body is larger than the {} limit",
            kb(limit)
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Bodies somewhat over the limit are read (and dropped) before answering, so the client
    // gets the 400 with its message instead of a connection reset mid-upload; far larger
    // ones are refused at once.
    let drain_limit = limit.saturating_mul(4);
    if declared.is_some_and(|n| n > drain_limit as u64) {
        return Err(too_big());
    }
    let raw = axum::body::to_bytes(body, drain_limit).await.map_err(|e| {
        // http-body-util's LengthLimitError ("length limit exceeded"), possibly wrapped.
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = src {
            if s.to_string().contains("length limit exceeded") {
                return too_big();
            }
            src = s.source();
        }
        BodyError::Bad(format!("cannot read the request body: {e}"))
    })?;
    if raw.len() > limit {
        return Err(too_big());
    }
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "" | "identity" => Ok(raw.to_vec()),
        "gzip" | "x-gzip" => {
            let mut out = Vec::new();
            // `take` bounds the output: a small "gzip bomb" cannot blow up memory.
            flate2::read::MultiGzDecoder::new(&raw[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| BodyError::Bad(format!("invalid gzip body: {e}")))?;
            if out.len() > limit {
                return Err(too_big());
            }
            Ok(out)
        }
        other => Err(BodyError::Bad(format!(
            "unsupported Content-Encoding `{other}` (gzip or none)"
        ))),
    }
}

fn uuid4() -> String {
    let a = fastrand::u64(..);
    let b = fastrand::u64(..);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// Fill in what Segment's API adds: `messageId` and `receivedAt` when absent; drop
/// `writeKey` (a secret has no business in the spool or the dead-letter file).
fn stamp(ev: &mut Map<String, Value>, now: &str) {
    ev.remove("writeKey");
    if !ev.get("messageId").is_some_and(Value::is_string) {
        ev.insert(
            "messageId".into(),
            Value::String(format!("{RELAY_ID_PREFIX}{}", uuid4())),
        );
    }
    if !ev.contains_key("receivedAt") {
        ev.insert("receivedAt".into(), Value::String(now.to_string()));
    }
}

/// Shallow merge of a batch-level object (`context`, `integrations`) under an event's.
fn inherit(ev: &mut Map<String, Value>, key: &str, top: Option<&Value>) {
    let Some(Value::Object(top)) = top else {
        return;
    };
    match ev.get_mut(key) {
        Some(Value::Object(own)) => {
            for (k, v) in top {
                if !own.contains_key(k) {
                    own.insert(k.clone(), v.clone());
                }
            }
        }
        Some(_) => {}
        None => {
            ev.insert(key.into(), Value::Object(top.clone()));
        }
    }
}

/// Parse a body that must be a JSON object, each top-level value kept as its raw text.
fn parse_object(bytes: &[u8]) -> Result<IndexMap<String, &RawValue>, String> {
    serde_json::from_slice::<IndexMap<String, &RawValue>>(bytes).map_err(|e| {
        match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => "the body must be a JSON object".to_string(),
            Err(_) => format!("invalid JSON: {e}"),
        }
    })
}

/// One event of a request, before the spool.
struct Incoming {
    event: Map<String, Value>,
    /// Set when Segment's batch endpoint would reject this event alone.
    rejected: Option<(usize, String)>,
}

async fn ingest(
    State(st): State<Arc<Ingest>>,
    kind: Kind,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let m = &st.metrics;
    // Authenticate from the header before reading the body when we can.
    let header_key = basic_user(&headers);
    if let Some(k) = &header_key
        && !k.as_deref().is_some_and(|k| key_ok(&st.write_keys, k))
    {
        return fail(
            m,
            UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            "invalid write key",
        );
    }
    let limit = match kind {
        Kind::Single(_) => MAX_EVENT_BYTES,
        Kind::Batch => MAX_BATCH_BYTES,
    };
    let bytes = match read_body(&headers, body, limit).await {
        Ok(b) => b,
        Err(BodyError::TooLarge(msg)) => {
            return fail(m, TOO_LARGE, StatusCode::BAD_REQUEST, msg);
        }
        Err(BodyError::Bad(msg)) => return fail(m, BAD_REQUEST, StatusCode::BAD_REQUEST, msg),
    };
    let events: Vec<Incoming> = match kind {
        Kind::Single(t) => {
            let mut doc: Map<String, Value> = match serde_json::from_slice(&bytes) {
                Ok(Value::Object(o)) => o,
                Ok(_) => {
                    return fail(
                        m,
                        BAD_REQUEST,
                        StatusCode::BAD_REQUEST,
                        "the body must be a JSON object",
                    );
                }
                Err(e) => {
                    return fail(
                        m,
                        BAD_REQUEST,
                        StatusCode::BAD_REQUEST,
                        format!("invalid JSON: {e}"),
                    );
                }
            };
            if header_key.is_none() {
                let given = doc.get("writeKey").and_then(Value::as_str).unwrap_or("");
                if !key_ok(&st.write_keys, given.as_bytes()) {
                    return fail(
                        m,
                        UNAUTHORIZED,
                        StatusCode::UNAUTHORIZED,
                        "missing or invalid write key (HTTP Basic auth username)",
                    );
                }
            }
            if !doc.get("type").is_some_and(Value::is_string) {
                doc.insert("type".into(), Value::String(t.into()));
            }
            vec![Incoming {
                event: doc,
                rejected: None,
            }]
        }
        Kind::Batch => {
            let top = match parse_object(&bytes) {
                Ok(t) => t,
                Err(msg) => return fail(m, BAD_REQUEST, StatusCode::BAD_REQUEST, msg),
            };
            if header_key.is_none() {
                let given: Option<String> = top
                    .get("writeKey")
                    .and_then(|r| serde_json::from_str(r.get()).ok());
                if !key_ok(&st.write_keys, given.unwrap_or_default().as_bytes()) {
                    return fail(
                        m,
                        UNAUTHORIZED,
                        StatusCode::UNAUTHORIZED,
                        "missing or invalid write key (HTTP Basic auth username)",
                    );
                }
            }
            let batch: Option<Vec<&RawValue>> = top
                .get("batch")
                .and_then(|r| serde_json::from_str(r.get()).ok());
            let Some(batch) = batch else {
                return fail(
                    m,
                    BAD_REQUEST,
                    StatusCode::BAD_REQUEST,
                    "`batch` must be an array of events",
                );
            };
            let shared = |k: &str| -> Option<Value> {
                top.get(k).and_then(|r| serde_json::from_str(r.get()).ok())
            };
            let (context, integrations, sent_at) =
                (shared("context"), shared("integrations"), shared("sentAt"));
            let mut out = Vec::with_capacity(batch.len());
            for (i, raw) in batch.into_iter().enumerate() {
                // The event's size as the client sent it (its own JSON text).
                let size = raw.get().len();
                let Ok(Value::Object(mut ev)) = serde_json::from_str::<Value>(raw.get()) else {
                    return fail(
                        m,
                        BAD_REQUEST,
                        StatusCode::BAD_REQUEST,
                        format!("batch[{i}] is not a JSON object"),
                    );
                };
                inherit(&mut ev, "context", context.as_ref());
                inherit(&mut ev, "integrations", integrations.as_ref());
                if let Some(s) = &sent_at
                    && !ev.contains_key("sentAt")
                {
                    ev.insert("sentAt".into(), s.clone());
                }
                let rejected = if i >= MAX_BATCH_EVENTS {
                    Some((
                        1,
                        format!(
                            "batch[{i}]: past Segment's limit of {MAX_BATCH_EVENTS} events per batch request; the rest of the batch was accepted"
                        ),
                    ))
                } else if size > MAX_EVENT_BYTES {
                    Some((
                        0,
                        format!(
                            "batch[{i}] is {size} bytes: larger than Segment's {} limit per event; the rest of the batch was accepted",
                            kb(MAX_EVENT_BYTES)
                        ),
                    ))
                } else {
                    None
                };
                out.push(Incoming {
                    event: ev,
                    rejected,
                });
            }
            out
        }
    };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut payloads = Vec::with_capacity(events.len());
    let mut types = [0u64; 7];
    let mut refused = Vec::new();
    // Ids remembered for this request: forgotten again if it fails, so the client's retry
    // is accepted.
    let mut remembered = Vec::new();
    let mut duplicates = 0u64;
    {
        let mut seen = st.recent_ids.lock().unwrap_or_else(|e| e.into_inner());
        for (
            index,
            Incoming {
                mut event,
                rejected,
            },
        ) in events.into_iter().enumerate()
        {
            if let Some(id) = event.get("messageId").and_then(Value::as_str)
                && RecentIds::is_client_id(id)
            {
                if !seen.remember(id) {
                    duplicates += 1;
                    continue;
                }
                remembered.push(id.to_string());
            }
            stamp(&mut event, &now);
            let ty = metrics::type_index(event.get("type").and_then(Value::as_str));
            match rejected {
                Some((why, reason)) => refused.push((index as u64, ty, why, event, reason)),
                None => {
                    types[ty] += 1;
                    payloads.push(serde_json::to_vec(&event).expect("JSON values serialize"));
                }
            }
        }
    }
    if duplicates > 0 {
        m.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        tracing::debug!(
            "ingest: {duplicates} event(s) with a messageId accepted before: not spooled again"
        );
    }
    let forget = |ids: &[String]| {
        let mut seen = st.recent_ids.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            seen.forget(id);
        }
    };
    if !refused.is_empty() {
        // Written (and flushed) before the reply: a dead letter is data. Written before
        // the spool append: if that fails, the client's retry repeats a dead letter, not
        // a delivery.
        let (dead, version) = (st.dead_letters.clone(), (st.rules)().version.clone());
        let written = tokio::task::spawn_blocking(move || {
            let mut done = Vec::with_capacity(refused.len());
            for (index, ty, why, event, reason) in refused {
                tracing::warn!("ingest: {reason}: dead-lettered");
                dead.write(
                    &crate::source::Origin::Ingest { index },
                    &version,
                    &Value::Object(event),
                    &Failure::rejected(reason),
                )?;
                done.push((ty, why));
            }
            Ok::<_, std::io::Error>(done)
        })
        .await;
        match written {
            Ok(Ok(done)) => {
                for (ty, why) in done {
                    m.reject_event(why);
                    m.outcomes.dead_lettered.add(ty, 1);
                }
            }
            Ok(Err(e)) => {
                forget(&remembered);
                return fail(
                    m,
                    ERROR,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("dead-letter file: {e}"),
                );
            }
            Err(_) => {
                forget(&remembered);
                return fail(
                    m,
                    ERROR,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "dead-letter writer failed",
                );
            }
        }
    }
    if payloads.is_empty() {
        return reply(StatusCode::OK, json!({"success": true}));
    }
    let appended = st.spool.append(payloads).await;
    if appended.is_err() {
        forget(&remembered);
    }
    match appended {
        Ok(()) => {
            for (i, n) in types.iter().enumerate() {
                m.received.add(i, *n);
            }
            reply(StatusCode::OK, json!({"success": true}))
        }
        Err(e @ AppendError::Full { .. }) => {
            let mut r = fail(
                m,
                SPOOL_FULL,
                StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
        Err(e @ AppendError::Closed) => {
            fail(m, ERROR, StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(e @ AppendError::Io(_)) => {
            fail(m, ERROR, StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// `ok`, or `degraded` with the reason while SFMC is unavailable (the breaker is open):
/// the ingest still accepts into the spool (200 either way, so a load balancer keeps
/// sending), and delivery resumes when SFMC answers again.
async fn healthz(State(st): State<Arc<Ingest>>) -> Response {
    let s = st.spool.stats();
    let health = st.client.health();
    let mut body = json!({"status": "ok", "queue_depth": s.pending, "spool_bytes": s.bytes, "spool_max_bytes": s.max_bytes});
    if health.is_degraded() {
        body["status"] = json!("degraded");
        body["reason"] = json!(health.summary());
    }
    body["sfmc"] = health.to_json();
    reply(StatusCode::OK, body)
}

async fn metrics_handler(State(st): State<Arc<Ingest>>) -> Response {
    let stats = st.client.stats();
    let mut text = metrics::render(
        &st.metrics,
        &stats,
        &st.spool.stats(),
        &(st.rules)().version,
    );
    metrics::render_health(&mut text, &st.client.health(), &stats);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
