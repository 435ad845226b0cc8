//! HTTP ingest compatible with Segment's tracking API (`api.segment.io/v1/...`).
//!
//! Endpoints: `POST /v1/{identify,track,page,screen,group,alias}` (one event; `type` is
//! taken from the path when the body has none), `POST /v1/batch` and `/v1/import`
//! (`{"batch":[...]}`; top-level `context`, `integrations` and `sentAt` apply to every
//! event that lacks them), plus analytics.js's short paths (`/v1/t`, `/v1/i`, `/v1/p`,
//! `/v1/s`, `/v1/g`, `/v1/a`, `/v1/b`) so its `apiHost` can point here. `GET /healthz`,
//! `GET /metrics` (Prometheus text).
//!
//! Authentication as Segment's API: the write key is the HTTP Basic username (password
//! empty). Without an `Authorization` header the body's `writeKey` is used (analytics.js
//! sends it there). Keys are compared in constant time.
//!
//! Limits as Segment's: 32 KB per event, 500 KB per batch request, measured after gzip
//! decompression (`Content-Encoding: gzip`); bigger requests get 400 with a message.
//! An accepted request is in the spool, fsync'd, before the `{"success":true}` reply; a
//! full spool answers 503 with `Retry-After` (Segment's libraries retry 5xx).

use super::metrics::{self, Metrics};
use crate::commands::run::RuleSource;
use crate::sfmc::SfmcClient;
use crate::spool::{AppendError, Spool};
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Map, Value, json};
use std::io::Read;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Segment's limit for one event (bytes of JSON).
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Segment's limit for one batch request (bytes of JSON, after decompression).
pub const MAX_BATCH_BYTES: usize = 500 * 1024;

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
                post(move |st: State<Arc<Ingest>>, h: HeaderMap, b: Body| {
                    ingest(st, Kind::Single(t), h, b)
                }),
            );
        }
    }
    for path in ["/v1/batch", "/v1/import", "/v1/b"] {
        r = r.route(
            path,
            post(|st: State<Arc<Ingest>>, h: HeaderMap, b: Body| ingest(st, Kind::Batch, h, b)),
        );
    }
    r.route("/healthz", get(healthz))
        .route("/metrics", get(metrics_handler))
        // Limits are enforced in `read_body` (400 with a message, as Segment answers).
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

fn reply(status: StatusCode, body: Value) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    // analytics.js posts from browsers (text/plain, no preflight); let it read replies.
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

fn fail(m: &Metrics, reason: usize, status: StatusCode, message: impl Into<String>) -> Response {
    m.refuse(reason);
    reply(status, json!({"success": false, "message": message.into()}))
}

const UNAUTHORIZED: usize = 0;
const TOO_LARGE: usize = 1;
const BAD_REQUEST: usize = 2;
const SPOOL_FULL: usize = 3;
const ERROR: usize = 4;

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
            Value::String(format!("relay-{}", uuid4())),
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
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let events: Vec<Map<String, Value>> = match kind {
        Kind::Single(t) => {
            if !doc.get("type").is_some_and(Value::is_string) {
                doc.insert("type".into(), Value::String(t.into()));
            }
            vec![doc]
        }
        Kind::Batch => {
            let Some(Value::Array(batch)) = doc.remove("batch") else {
                return fail(
                    m,
                    BAD_REQUEST,
                    StatusCode::BAD_REQUEST,
                    "`batch` must be an array of events",
                );
            };
            let mut out = Vec::with_capacity(batch.len());
            for (i, ev) in batch.into_iter().enumerate() {
                let Value::Object(mut ev) = ev else {
                    return fail(
                        m,
                        BAD_REQUEST,
                        StatusCode::BAD_REQUEST,
                        format!("batch[{i}] is not a JSON object"),
                    );
                };
                inherit(&mut ev, "context", doc.get("context"));
                inherit(&mut ev, "integrations", doc.get("integrations"));
                if let Some(s) = doc.get("sentAt")
                    && !ev.contains_key("sentAt")
                {
                    ev.insert("sentAt".into(), s.clone());
                }
                out.push(ev);
            }
            out
        }
    };
    let mut payloads = Vec::with_capacity(events.len());
    let mut types = [0u64; 7];
    for (i, mut ev) in events.into_iter().enumerate() {
        stamp(&mut ev, &now);
        types[metrics::type_index(ev.get("type").and_then(Value::as_str))] += 1;
        let p = serde_json::to_vec(&ev).expect("JSON values serialize");
        if p.len() > MAX_EVENT_BYTES {
            return fail(
                m,
                TOO_LARGE,
                StatusCode::BAD_REQUEST,
                format!(
                    "event {} is {} bytes: larger than the {} limit per event",
                    match kind {
                        Kind::Single(_) => "body".to_string(),
                        Kind::Batch => format!("batch[{i}]"),
                    },
                    p.len(),
                    kb(MAX_EVENT_BYTES)
                ),
            );
        }
        payloads.push(p);
    }
    if payloads.is_empty() {
        return reply(StatusCode::OK, json!({"success": true}));
    }
    match st.spool.append(payloads).await {
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

async fn healthz(State(st): State<Arc<Ingest>>) -> Response {
    let s = st.spool.stats();
    reply(
        StatusCode::OK,
        json!({"status": "ok", "queue_depth": s.pending, "spool_bytes": s.bytes, "spool_max_bytes": s.max_bytes}),
    )
}

async fn metrics_handler(State(st): State<Arc<Ingest>>) -> Response {
    let text = metrics::render(
        &st.metrics,
        &st.client.stats(),
        &st.spool.stats(),
        &(st.rules)().version,
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
