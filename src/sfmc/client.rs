//! The SFMC REST client: auth, rate governing, bounded concurrency, retries, counters.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::auth::{AccessToken, AuthError, Credentials, TokenCache};
use super::endpoints::Endpoints;
use super::retry::{self, RetryPolicy};

/// Client tuning.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Request rate cap for REST calls (default 20/s, [`crate::defaults`]; `None` = unlimited). Token requests
    /// are not counted against it. The first second may burst up to this many requests.
    pub requests_per_second: Option<NonZeroU32>,
    /// Concurrent REST requests (default 4).
    pub max_in_flight: usize,
    /// Per-HTTP-request timeout, token requests included (default 30 s).
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            requests_per_second: NonZeroU32::new(crate::defaults::REQUESTS_PER_SECOND),
            max_in_flight: crate::defaults::MAX_IN_FLIGHT,
            request_timeout: crate::defaults::REQUEST_TIMEOUT,
            retry: RetryPolicy::default(),
        }
    }
}

/// A successful (2xx) SFMC response. `body` is `Null` when empty or larger than
/// [`MAX_PARSED_SUCCESS_BODY`] (a rowset's echo of its rows), and a JSON string when the
/// body is not JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct SfmcResponse {
    pub status: u16,
    pub body: Value,
}

/// Why a request failed for good. Never contains the client secret or a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// SFMC rejected the request and retrying will not help (e.g. a bad row). `status` is
    /// 0 when no HTTP response was involved (an invalid request URL).
    #[error("{}", permanent_line(*status, *errorcode, message, *attempts))]
    Permanent {
        status: u16,
        message: String,
        errorcode: Option<i64>,
        body: Value,
        attempts: u32,
    },
    /// Retryable failures until the attempt or time budget ran out.
    #[error("SFMC request failed after {attempts} attempt(s) in {elapsed:.1?}: {last_error}")]
    Exhausted {
        last_error: String,
        attempts: u32,
        elapsed: Duration,
    },
    /// Credentials rejected (token endpoint) or a fresh token still got 401.
    #[error("SFMC authentication failed: {0}")]
    Auth(String),
}

fn permanent_line(status: u16, errorcode: Option<i64>, message: &str, attempts: u32) -> String {
    let code = errorcode
        .map(|c| format!(", errorcode {c}"))
        .unwrap_or_default();
    format!("SFMC rejected the request (HTTP {status}{code}, attempt {attempts}): {message}")
}

/// Counter snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClientStats {
    /// HTTP requests sent (retries included) by endpoint pattern: `rowset`, `row`,
    /// `async_rows`, `async_status`, `async_results`, `contacts`, `events`, `other`,
    /// and `token` (token requests).
    pub requests_per_endpoint: BTreeMap<String, u64>,
    /// REST attempts beyond the first of each `send` (401 refresh retries included).
    pub retries: u64,
    pub token_requests: u64,
    /// REST response statuses (token responses excluded).
    pub statuses: BTreeMap<u16, u64>,
    /// REST responses by endpoint pattern and status.
    pub responses: BTreeMap<String, BTreeMap<u16, u64>>,
    /// Retries by endpoint pattern.
    pub retries_per_endpoint: BTreeMap<String, u64>,
}

const ENDPOINT_NAMES: [&str; 10] = [
    "rowset",
    "row",
    "async_rows",
    "async_status",
    "async_results",
    "contacts",
    "events",
    "other",
    "establish",
    "async_events",
];

/// Endpoint pattern of a REST path, used as the `requests_per_endpoint` key.
pub fn endpoint_pattern(path: &str) -> &'static str {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = path.trim_end_matches('/');
    ENDPOINT_NAMES[endpoint_index(path)]
}

fn endpoint_index(path: &str) -> usize {
    let p = path.to_ascii_lowercase();
    if p.starts_with("/hub/v1/dataevents/") {
        if p.ends_with("/rowset") {
            0
        } else if p.contains("/rows/") {
            1
        } else {
            7
        }
    } else if p.starts_with("/data/v1/async/") {
        if p.starts_with("/data/v1/async/dataextensions/") {
            2
        } else if p.ends_with("/status") {
            3
        } else if p.ends_with("/results") || p.contains("/results?") {
            4
        } else {
            7
        }
    } else if p.starts_with("/contacts/v1/establish") {
        8
    } else if p.starts_with("/contacts/") {
        5
    } else if p.starts_with("/interaction/v1/events") {
        6
    } else if p.starts_with("/interaction/v1/async/events") {
        9
    } else {
        7
    }
}

struct Stats {
    endpoints: [AtomicU64; ENDPOINT_NAMES.len()],
    retries: AtomicU64,
    retries_per_endpoint: [AtomicU64; ENDPOINT_NAMES.len()],
    /// Indexed by status code (100..=599 in practice).
    statuses: Box<[AtomicU64]>,
    /// Indexed by endpoint * 600 + status code.
    endpoint_statuses: Box<[AtomicU64]>,
}

impl Stats {
    fn new() -> Self {
        Stats {
            endpoints: Default::default(),
            retries: AtomicU64::new(0),
            retries_per_endpoint: Default::default(),
            statuses: (0..600).map(|_| AtomicU64::new(0)).collect(),
            endpoint_statuses: (0..600 * ENDPOINT_NAMES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

struct Inner {
    http: reqwest::Client,
    endpoints: Endpoints,
    config: ClientConfig,
    tokens: TokenCache,
    limiter: Option<DefaultDirectRateLimiter>,
    in_flight: Semaphore,
    /// No request starts before this instant (set by 429 responses).
    not_before: Mutex<Option<Instant>>,
    stats: Stats,
}

/// SFMC REST client. Cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct SfmcClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for SfmcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SfmcClient")
            .field("endpoints", &self.inner.endpoints)
            .field("config", &self.inner.config)
            .field("tokens", &self.inner.tokens)
            .finish_non_exhaustive()
    }
}

/// What one HTTP attempt produced, when it did not succeed.
enum Failure {
    Unauthorized(AccessToken, String),
    Retryable {
        message: String,
        retry_after: Option<Duration>,
        throttled: bool,
    },
    Permanent(SendError),
}

impl SfmcClient {
    pub fn new(
        endpoints: Endpoints,
        credentials: Credentials,
        config: ClientConfig,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(config.max_in_flight > 0, "max_in_flight must be at least 1");
        anyhow::ensure!(
            config.retry.max_attempts > 0,
            "retry.max_attempts must be at least 1"
        );
        anyhow::ensure!(
            !credentials.client_id.trim().is_empty(),
            "SFMC client id is empty"
        );
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            // SFMC does not redirect; never forward credentials or tokens elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sfmc-relay/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let tokens = TokenCache::new(http.clone(), &endpoints, credentials);
        let limiter = config
            .requests_per_second
            .map(|rps| RateLimiter::direct(Quota::per_second(rps)));
        Ok(SfmcClient {
            inner: Arc::new(Inner {
                in_flight: Semaphore::new(config.max_in_flight),
                http,
                endpoints,
                config,
                tokens,
                limiter,
                not_before: Mutex::new(None),
                stats: Stats::new(),
            }),
        })
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.inner.endpoints
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The shared token cache.
    pub fn tokens(&self) -> &TokenCache {
        &self.inner.tokens
    }

    /// Snapshot of the counters.
    pub fn stats(&self) -> ClientStats {
        let s = &self.inner.stats;
        let mut requests_per_endpoint: BTreeMap<String, u64> = ENDPOINT_NAMES
            .iter()
            .zip(&s.endpoints)
            .map(|(n, c)| (n.to_string(), c.load(Ordering::Relaxed)))
            .filter(|(_, c)| *c > 0)
            .collect();
        let token_requests = self.inner.tokens.token_requests();
        if token_requests > 0 {
            requests_per_endpoint.insert("token".into(), token_requests);
        }
        let mut responses: BTreeMap<String, BTreeMap<u16, u64>> = BTreeMap::new();
        for (i, c) in s.endpoint_statuses.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                responses
                    .entry(ENDPOINT_NAMES[i / 600].to_string())
                    .or_default()
                    .insert((i % 600) as u16, n);
            }
        }
        let retries_per_endpoint = ENDPOINT_NAMES
            .iter()
            .zip(&s.retries_per_endpoint)
            .map(|(n, c)| (n.to_string(), c.load(Ordering::Relaxed)))
            .filter(|(_, c)| *c > 0)
            .collect();
        ClientStats {
            responses,
            retries_per_endpoint,
            requests_per_endpoint,
            retries: s.retries.load(Ordering::Relaxed),
            token_requests,
            statuses: s
                .statuses
                .iter()
                .enumerate()
                .filter_map(|(code, c)| {
                    let n = c.load(Ordering::Relaxed);
                    (n > 0).then_some((code as u16, n))
                })
                .collect(),
        }
    }

    /// Send `body` (already-serialized JSON) to `path` (starting with `/`, relative to the
    /// REST base). Retries retryable failures per the policy, refreshes the token once on a
    /// 401, and pauses the whole client after a 429.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<SfmcResponse, SendError> {
        let inner = &*self.inner;
        let policy = &inner.config.retry;
        let start = Instant::now();
        let mut attempts: u32 = 0;
        let mut refreshed_after_401 = false;
        if !path.starts_with('/') {
            return Err(SendError::Permanent {
                status: 0,
                message: format!("invalid request path {path:?}: must start with '/'"),
                errorcode: None,
                body: Value::Null,
                attempts: 0,
            });
        }
        let url = inner.endpoints.rest_url(path);
        let endpoint = endpoint_index(path);
        loop {
            attempts += 1;
            if attempts > 1 {
                inner.stats.retries.fetch_add(1, Ordering::Relaxed);
                inner.stats.retries_per_endpoint[endpoint].fetch_add(1, Ordering::Relaxed);
            }
            let failure = match self
                .attempt(&method, path, &url, endpoint, &body, attempts)
                .await
            {
                Ok(resp) => return Ok(resp),
                Err(f) => f,
            };
            let (message, retry_after, throttled) = match failure {
                Failure::Permanent(SendError::Permanent {
                    status,
                    message,
                    errorcode,
                    body,
                    ..
                }) => {
                    return Err(SendError::Permanent {
                        status,
                        message,
                        errorcode,
                        body,
                        attempts,
                    });
                }
                Failure::Permanent(e) => return Err(e),
                Failure::Unauthorized(token, message) => {
                    if refreshed_after_401 {
                        return Err(SendError::Auth(format!(
                            "{message} (still 401 after fetching a new token)"
                        )));
                    }
                    refreshed_after_401 = true;
                    inner.tokens.invalidate(&token);
                    // Retry at once with a new token; this does not use up the retry budget.
                    continue;
                }
                Failure::Retryable {
                    message,
                    retry_after,
                    throttled,
                } => (message, retry_after, throttled),
            };
            let delay = policy.delay(attempts, retry_after);
            let elapsed = start.elapsed();
            let budget_attempts = attempts - u32::from(refreshed_after_401);
            if budget_attempts >= policy.max_attempts || elapsed + delay > policy.max_elapsed {
                return Err(SendError::Exhausted {
                    last_error: message,
                    attempts,
                    elapsed,
                });
            }
            if throttled {
                self.pause_until(Instant::now() + delay);
            }
            tracing::debug!(%method, path, attempt = attempts, delay_ms = delay.as_millis() as u64, error = %message, "retrying SFMC request");
            tokio::time::sleep(delay).await;
        }
    }

    /// Make every request of this client wait until `at` (never shortens a pause).
    fn pause_until(&self, at: Instant) {
        let mut nb = self
            .inner
            .not_before
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if nb.is_none_or(|cur| cur < at) {
            *nb = Some(at);
        }
    }

    async fn wait_not_before(&self) {
        loop {
            let nb = *self
                .inner
                .not_before
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match nb {
                Some(at) if at > Instant::now() => tokio::time::sleep_until(at).await,
                _ => return,
            }
        }
    }

    async fn attempt(
        &self,
        method: &Method,
        path: &str,
        url: &str,
        endpoint: usize,
        body: &Bytes,
        attempt: u32,
    ) -> Result<SfmcResponse, Failure> {
        let inner = &*self.inner;
        self.wait_not_before().await;
        let token = match inner.tokens.get().await {
            Ok(t) => t,
            Err(AuthError::Rejected(m)) => return Err(Failure::Permanent(SendError::Auth(m))),
            Err(AuthError::Transient {
                message,
                retry_after,
                throttled,
            }) => {
                return Err(Failure::Retryable {
                    message: format!("token request: {message}"),
                    retry_after,
                    throttled,
                });
            }
        };
        let _permit = inner
            .in_flight
            .acquire()
            .await
            .expect("semaphore never closed");
        if let Some(limiter) = &inner.limiter {
            limiter.until_ready().await;
        }
        // A 429 may have arrived while we queued.
        self.wait_not_before().await;

        inner.stats.endpoints[endpoint].fetch_add(1, Ordering::Relaxed);
        let sent = inner
            .http
            .request(method.clone(), url)
            .bearer_auth(token.expose())
            .header(CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let e = e.without_url();
                let message = format!("{method} {path}: {}", retry::transport_message(&e));
                tracing::debug!(%method, path, attempt, error = %message, "SFMC request failed");
                return Err(if retry::is_retryable_transport(&e) {
                    Failure::Retryable {
                        message,
                        retry_after: None,
                        throttled: false,
                    }
                } else {
                    Failure::Permanent(SendError::Permanent {
                        status: 0,
                        message,
                        errorcode: None,
                        body: Value::Null,
                        attempts: attempt,
                    })
                });
            }
        };
        let status = resp.status().as_u16();
        if let Some(c) = inner.stats.statuses.get(status as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if (status as usize) < 600
            && let Some(c) = inner
                .stats
                .endpoint_statuses
                .get(endpoint * 600 + status as usize)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(%method, path, status, attempt, "SFMC response");
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return Err(Failure::Retryable {
                    message: format!(
                        "{method} {path}: HTTP {status}, reading body: {}",
                        retry::transport_message(&e.without_url())
                    ),
                    retry_after: None,
                    throttled: false,
                });
            }
        };
        if (200..300).contains(&status) {
            // SFMC echoes every row of a rowset back; nothing reads that echo, and parsing
            // it was 17% of a run's instructions (callgrind). Large rowset answers are
            // read (so the connection is reused) but not parsed; every other answer (the
            // bulk endpoints' results) is read by the caller.
            let body = if bytes.len() > MAX_PARSED_SUCCESS_BODY && path.ends_with("/rowset") {
                Value::Null
            } else {
                parse_body(&bytes)
            };
            return Ok(SfmcResponse { status, body });
        }
        let body = parse_body(&bytes);
        let message = error_message(status, &body);
        if status == 401 {
            return Err(Failure::Unauthorized(
                token,
                format!("{method} {path}: HTTP 401: {message}"),
            ));
        }
        if retry::is_retryable_status(status, &body) {
            let throttled = status == 429;
            let retry_after = retry_after.or_else(|| {
                if throttled {
                    retry::body_retry_after(&body)
                } else {
                    None
                }
            });
            let code = retry::errorcode(&body)
                .map(|c| format!(" errorcode {c}"))
                .unwrap_or_default();
            return Err(Failure::Retryable {
                message: format!("{method} {path}: HTTP {status}{code}: {message}"),
                retry_after,
                throttled,
            });
        }
        Err(Failure::Permanent(SendError::Permanent {
            status,
            errorcode: retry::errorcode(&body),
            message,
            body,
            attempts: attempt,
        }))
    }
}

/// Rowset answers up to this size are parsed into [`SfmcResponse::body`] (larger ones are
/// an echo nothing reads); other answers are always parsed.
pub const MAX_PARSED_SUCCESS_BODY: usize = 8 * 1024;

fn parse_body(bytes: &[u8]) -> Value {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// SFMC's `message` plus every `additionalErrors[].message`, joined with "; ", one line.
pub fn error_message(status: u16, body: &Value) -> String {
    let mut parts: Vec<String> = Vec::new();
    match body {
        Value::String(s) if !s.trim().is_empty() => parts.push(s.trim().to_string()),
        _ => {
            if let Some(m) = body.get("message").and_then(Value::as_str) {
                parts.push(m.to_string());
            } else if let Some(e) = body.get("error").and_then(Value::as_str) {
                parts.push(e.to_string());
            }
            if let Some(Value::Array(extra)) = body.get("additionalErrors") {
                parts.extend(
                    extra
                        .iter()
                        .filter_map(|e| e.get("message").and_then(Value::as_str))
                        .map(str::to_string),
                );
            }
        }
    }
    if parts.is_empty() {
        return format!("HTTP {status}");
    }
    let mut line = parts.join("; ").replace(['\r', '\n'], " ");
    if line.len() > 2000 {
        let mut cut = 2000;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line
}
