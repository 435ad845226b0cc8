//! The SFMC REST client: auth, rate governing, bounded concurrency, retries, the circuit
//! breaker, counters.
//!
//! What a caller of [`SfmcClient::send`] sees (see [`super::classify`] for the classes):
//!
//! - `Ok`: SFMC accepted the request.
//! - [`SendError::Permanent`]: SFMC refused the content (data): dead-letter it.
//! - [`SendError::Uncertain`]: a Journey event that SFMC may have processed; it was not
//!   sent again and must not be resent blindly.
//! - [`SendError::Undelivered`]: the caller gave up ([`SfmcClient::give_up`] or
//!   [`ClientConfig::give_up_after`]) before the request could be delivered.
//!
//! Infrastructure failures are never returned: the request waits. Each attempt is made in
//! this order: wait for the breaker, take an in-flight permit, wait for the rate limiter,
//! then take the token (so a request that queued cannot carry a stale one), then send.

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

use super::auth::{AccessToken, CredentialSource, Credentials, TokenCache};
use super::breaker::{Breaker, BreakerConfig, BreakerState, Health, Pass, Trip};
use super::classify::{self, FailureClass, Idempotency, Infra, Verdict};
use super::endpoints::{AuthVersion, Endpoints};
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
    /// Backoff between retries of one request while the breaker is closed. A request that
    /// failed `max_attempts` times in a row, or for `max_elapsed`, opens the breaker (it
    /// is not returned as a failure).
    pub retry: RetryPolicy,
    /// When SFMC counts as unavailable and how it is probed.
    pub breaker: BreakerConfig,
    /// Attempts of a call answered with a bare 10006 (no `additionalErrors`) before it is
    /// returned as a data failure (default 3).
    pub bare_10006_attempts: u32,
    /// Give up once SFMC has been unavailable (the global breaker open) this long: every
    /// waiting and later request returns [`SendError::Undelivered`]. `None` (the default)
    /// waits for ever; `run` uses `delivery.give_up_after` (4 h), `serve` and `consume`
    /// never give up (their input is durable). See also [`SfmcClient::set_give_up_after`].
    pub give_up_after: Option<Duration>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            requests_per_second: NonZeroU32::new(crate::defaults::REQUESTS_PER_SECOND),
            max_in_flight: crate::defaults::MAX_IN_FLIGHT,
            request_timeout: crate::defaults::REQUEST_TIMEOUT,
            retry: RetryPolicy::default(),
            breaker: BreakerConfig::default(),
            bare_10006_attempts: 3,
            give_up_after: None,
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

/// Why a request did not succeed. Never contains the client secret or a token.
/// Infrastructure failures are not among them: the client waits those out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// SFMC refused the request for its content (a data failure: a bad row, an unknown
    /// event definition, a bare 10006 that persisted). `status` is 0 when no HTTP
    /// response was involved (an invalid request URL).
    #[error("{}", permanent_line(*status, *errorcode, message, *attempts))]
    Permanent {
        status: u16,
        message: String,
        errorcode: Option<i64>,
        body: Value,
        attempts: u32,
    },
    /// A non-idempotent call (Journey event) failed in a way that does not tell whether
    /// SFMC processed it (timeout, connection lost after sending, 5xx). It was not sent
    /// again.
    #[error(
        "SFMC may have processed this request (attempt {attempts}): {message}; it was not sent again"
    )]
    Uncertain { message: String, attempts: u32 },
    /// The caller gave up while the request waited for SFMC to become available; SFMC did
    /// not accept it (it may never have been sent).
    #[error("not delivered: {reason}{}", last_error.as_deref().filter(|e| !reason.contains(e)).map(|e| format!("; last error: {e}")).unwrap_or_default())]
    Undelivered {
        reason: String,
        attempts: u32,
        last_error: Option<String>,
    },
}

impl SendError {
    /// The failure class: data, uncertain, or infrastructure (undelivered).
    pub fn class(&self) -> FailureClass {
        match self {
            SendError::Permanent { .. } => FailureClass::Data,
            SendError::Uncertain { .. } => FailureClass::Uncertain,
            SendError::Undelivered { .. } => FailureClass::Infrastructure,
        }
    }

    /// HTTP attempts made.
    pub fn attempts(&self) -> u32 {
        match self {
            SendError::Permanent { attempts, .. }
            | SendError::Uncertain { attempts, .. }
            | SendError::Undelivered { attempts, .. } => *attempts,
        }
    }
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
    /// Failures by class: `data` and `uncertain` count calls returned as such,
    /// `infrastructure` counts failed attempts (token requests included) that were waited
    /// out.
    pub failures: BTreeMap<String, u64>,
    /// Infrastructure failures by kind: `rate_limited`, `blocked`, `server_error`,
    /// `request_timeout`, `timeout`, `unreachable`, `connection_lost`, `forbidden`,
    /// `unauthorized` (401, token refreshed), `missing_permission`,
    /// `credentials_rejected`, `token_blocked`, `token_rate_limited`, `token_unavailable`.
    pub infrastructure: BTreeMap<String, u64>,
    /// Calls returned as undelivered (the caller gave up).
    pub undelivered: u64,
    /// Times the global breaker opened.
    pub breaker_opens: u64,
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
    /// Failure class and infrastructure kind counters (failure paths only).
    failures: Mutex<BTreeMap<&'static str, u64>>,
    infrastructure: Mutex<BTreeMap<&'static str, u64>>,
    undelivered: AtomicU64,
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
            failures: Mutex::new(BTreeMap::new()),
            infrastructure: Mutex::new(BTreeMap::new()),
            undelivered: AtomicU64::new(0),
        }
    }

    fn class(&self, class: FailureClass) {
        *self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(class.as_str())
            .or_default() += 1;
    }

    fn infra(&self, kind: &'static str) {
        self.class(FailureClass::Infrastructure);
        *self
            .infrastructure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default() += 1;
    }
}

struct Inner {
    http: reqwest::Client,
    endpoints: Endpoints,
    config: ClientConfig,
    tokens: TokenCache,
    limiter: Option<DefaultDirectRateLimiter>,
    in_flight: Semaphore,
    breaker: Breaker,
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

/// What [`SfmcClient::send_noting`] tells its caller about an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptNote {
    /// The attempt goes on the wire now.
    Sending,
    /// SFMC answered it without processing it (it is retried, or waits for SFMC).
    NotProcessed,
}

/// What one HTTP attempt produced, when it did not succeed.
struct AttemptFailure {
    verdict: Verdict,
    /// SFMC's message (or the transport error), one line.
    message: String,
    status: u16,
    body: Value,
}

/// A breaker pass that is released if the attempt ends without an outcome.
struct Ticket<'a> {
    breaker: &'a Breaker,
    pass: Pass,
    settled: bool,
}

impl Ticket<'_> {
    fn answered(mut self) {
        self.settled = true;
        self.breaker.answered(self.pass);
    }
    fn failed(mut self, trip: Trip) -> bool {
        self.settled = true;
        self.breaker.failed(self.pass, trip)
    }
    fn permission_denied(mut self, endpoint: usize, reason: String) {
        self.settled = true;
        self.breaker.permission_denied(self.pass, endpoint, reason);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.release(self.pass);
        }
    }
}

/// Why a request is not sent after the caller gave up.
fn undelivered(reason: String, attempts: u32, last_error: Option<String>) -> SendError {
    SendError::Undelivered {
        reason,
        attempts,
        last_error,
    }
}

impl SfmcClient {
    pub fn new(
        endpoints: Endpoints,
        credentials: Credentials,
        config: ClientConfig,
    ) -> anyhow::Result<Self> {
        Self::with_credentials(
            endpoints,
            Arc::new(CredentialSource::fixed(credentials)),
            config,
        )
    }

    /// A client whose credentials come from `source` (files re-read on rotation).
    pub fn with_credentials(
        endpoints: Endpoints,
        source: Arc<CredentialSource>,
        config: ClientConfig,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(config.max_in_flight > 0, "max_in_flight must be at least 1");
        anyhow::ensure!(
            config.retry.max_attempts > 0,
            "retry.max_attempts must be at least 1"
        );
        anyhow::ensure!(
            !source.current().client_id.trim().is_empty(),
            "SFMC client id is empty"
        );
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            // SFMC does not redirect; never forward credentials or tokens elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sfmc-relay/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let tokens = TokenCache::new(http.clone(), &endpoints, source, config.breaker.clone());
        let limiter = config
            .requests_per_second
            .map(|rps| RateLimiter::direct(Quota::per_second(rps)));
        let breaker = Breaker::new(
            config.breaker.clone(),
            &ENDPOINT_NAMES,
            config.give_up_after,
        );
        Ok(SfmcClient {
            inner: Arc::new(Inner {
                in_flight: Semaphore::new(config.max_in_flight),
                http,
                endpoints,
                config,
                tokens,
                limiter,
                breaker,
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

    /// Whether SFMC is available, and if not since when, why, and when the next probe is.
    pub fn health(&self) -> Health {
        self.inner.breaker.health()
    }

    /// Give up waiting for SFMC: every request waiting for the breaker, for an in-flight
    /// permit, for the rate limiter or between retries, and every later one, returns
    /// [`SendError::Undelivered`] promptly. Requests already on the wire finish. Not
    /// reversible: for the end of a `run` (after `give_up_after`, or a signal during an
    /// outage).
    pub fn give_up(&self) {
        let h = self.health();
        let why = match (h.state, h.reason) {
            (BreakerState::Closed, _) | (_, None) => {
                "the relay stopped before SFMC accepted it".to_string()
            }
            (_, Some(r)) => format!("the relay stopped while SFMC was unavailable ({r})"),
        };
        self.inner.breaker.stop(why);
    }

    /// [`SfmcClient::give_up`] only if SFMC is unavailable now (a circuit is open); returns
    /// whether it gave up. For SIGINT/SIGTERM: during an outage the waiting events are
    /// dead-lettered as undelivered; otherwise in-flight events are flushed normally.
    pub fn give_up_if_unavailable(&self) -> bool {
        if self.health().state == BreakerState::Closed {
            return false;
        }
        self.give_up();
        true
    }

    /// Whether the client gave up.
    pub fn given_up(&self) -> bool {
        self.inner.breaker.is_stopped()
    }

    /// Resolves once the client gave up ([`SfmcClient::give_up`], or
    /// [`ClientConfig::give_up_after`] of unavailability), with the reason.
    pub async fn until_given_up(&self) -> String {
        self.inner.breaker.until_stopped().await.0
    }

    /// Change [`ClientConfig::give_up_after`] (e.g. `run` sets `delivery.give_up_after`).
    pub fn set_give_up_after(&self, after: Option<Duration>) {
        self.inner.breaker.set_give_up_after(after);
    }

    /// Re-read the credential files (`SFMC_CLIENT_SECRET_FILE`, `SFMC_CLIENT_ID_FILE`).
    /// When they changed (logged, never the secret) the token backoff is reset and, during
    /// an outage, the next probe is sent at once. `Ok(false)` when nothing changed or no
    /// credential comes from a file.
    pub fn reload_credentials(&self, why: &str) -> Result<bool, String> {
        let changed = self.inner.tokens.source().reload(why)?;
        if changed {
            self.inner.tokens.reset_backoff();
            self.inner.breaker.probe_now();
        }
        Ok(changed)
    }

    /// Re-read the credential files on every SIGHUP (Unix), for as long as the client
    /// lives. Call once per process, from a Tokio runtime.
    #[cfg(unix)]
    pub fn reload_credentials_on_sighup(&self) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        let weak = Arc::downgrade(&self.inner);
        Ok(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let Some(inner) = weak.upgrade() else { break };
                let client = SfmcClient { inner };
                match client.reload_credentials("SIGHUP") {
                    Ok(true) => {}
                    Ok(false) => tracing::info!(
                        "SIGHUP: SFMC credentials unchanged{}",
                        if client.inner.tokens.source().is_reloadable() {
                            ""
                        } else {
                            " (they do not come from SFMC_CLIENT_SECRET_FILE / SFMC_CLIENT_ID_FILE)"
                        }
                    ),
                    Err(e) => tracing::warn!("SIGHUP: {e}; keeping the current SFMC credentials"),
                }
            }
        }))
    }

    /// The start-up warning for legacy v1 endpoints (no subdomain), if they are used.
    /// `several_relays`: the caller may run next to other relays with the same client id
    /// (`consume`).
    pub fn legacy_v1_warning(&self, several_relays: bool) -> Option<String> {
        self.inner.endpoints.legacy_v1_warning(several_relays)
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
        let named = |m: &Mutex<BTreeMap<&'static str, u64>>| {
            m.lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect()
        };
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
            failures: named(&s.failures),
            infrastructure: named(&s.infrastructure),
            undelivered: s.undelivered.load(Ordering::Relaxed),
            breaker_opens: self.inner.breaker.opens(),
        }
    }

    /// Send `body` (already-serialized JSON) to `path` (starting with `/`, relative to the
    /// REST base), with the idempotency its method and path imply (Journey event POSTs are
    /// not idempotent; see [`classify::idempotency`]).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<SfmcResponse, SendError> {
        let idem = classify::idempotency(&method, path);
        self.send_as(method, path, body, idem).await
    }

    /// [`SfmcClient::send`] with the idempotency given by the caller.
    ///
    /// Data failures come back at once (a bare 10006 after `bare_10006_attempts`). A 401
    /// refreshes the token once; a 401 again on a token fetched after the request was
    /// queued (or a 403) means the token lacks a permission: that endpoint's requests wait
    /// (logged with the permission) while others go on. Other infrastructure failures are
    /// retried with backoff and, when they persist or SFMC throttles, open the breaker:
    /// every request then waits for a probe to succeed. A non-idempotent call that may
    /// have been processed returns [`SendError::Uncertain`] without a resend.
    pub async fn send_as(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        idem: Idempotency,
    ) -> Result<SfmcResponse, SendError> {
        self.send_inner(method, path, body, idem, &|_| {}).await
    }

    /// [`SfmcClient::send`], telling `on_send` when an attempt goes on the wire (after every
    /// wait: breaker, in-flight bound, rate limiter, token) and when an attempt's failure
    /// proves SFMC did not process it (429, 401, 5xx before processing...: it will be
    /// retried). The journey journal records there whether SFMC may have processed the
    /// request.
    pub async fn send_noting(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        on_send: &(dyn Fn(AttemptNote) + Sync),
    ) -> Result<SfmcResponse, SendError> {
        let idem = classify::idempotency(&method, path);
        self.send_inner(method, path, body, idem, on_send).await
    }

    async fn send_inner(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        idem: Idempotency,
        on_send: &(dyn Fn(AttemptNote) + Sync),
    ) -> Result<SfmcResponse, SendError> {
        let inner = &*self.inner;
        let policy = &inner.config.retry;
        if !path.starts_with('/') {
            inner.stats.class(FailureClass::Data);
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
        let idempotent = idem == Idempotency::Idempotent;
        let queued_at = Instant::now();
        let mut attempts: u32 = 0;
        let mut refreshed = false;
        let mut bare_10006: u32 = 0;
        // This request's infrastructure failures in a row while the breaker stayed closed.
        let mut streak: u32 = 0;
        let mut streak_since: Option<Instant> = None;
        let mut last_error: Option<String> = None;
        let stop = |attempts: u32, last_error: Option<String>, why: String| {
            inner.stats.undelivered.fetch_add(1, Ordering::Relaxed);
            undelivered(why, attempts, last_error)
        };
        loop {
            let pass = match inner.breaker.pass(endpoint, idempotent).await {
                Ok(p) => p,
                Err(s) => return Err(stop(attempts, last_error, s.0)),
            };
            if pass != Pass::Go {
                // Waited out an outage: this request's earlier failures no longer count.
                streak = 0;
                streak_since = None;
            }
            let ticket = Ticket {
                breaker: &inner.breaker,
                pass,
                settled: false,
            };
            let permit = tokio::select! {
                p = inner.in_flight.acquire() => p.expect("semaphore never closed"),
                s = inner.breaker.until_stopped() => return Err(stop(attempts, last_error, s.0)),
            };
            if let Some(limiter) = &inner.limiter {
                tokio::select! {
                    _ = limiter.until_ready() => {}
                    s = inner.breaker.until_stopped() => return Err(stop(attempts, last_error, s.0)),
                }
            }
            // The breaker may have opened while this request queued.
            if !inner.breaker.still_open_for(endpoint, pass, idempotent) {
                continue;
            }
            // A permission probe needs a token minted after its last 401 (scopes are fixed
            // when a token is issued).
            if let Pass::Probe {
                circuit,
                last_failure,
            } = pass
                && circuit != 0
            {
                inner.tokens.invalidate_fetched_before(last_failure);
            }
            // The token is taken now, after every wait.
            let token = match inner.tokens.get().await {
                Ok(t) => {
                    if t.fetched_at() >= queued_at {
                        // Fetched for this request: the token endpoint answered.
                        inner.breaker.token_answered();
                    }
                    t
                }
                Err(e) => {
                    drop(permit);
                    inner.stats.infra(e.kind.label());
                    let delay = inner.tokens.retry_in();
                    last_error = Some(e.message.clone());
                    ticket.failed(Trip {
                        reason: e.message,
                        now: true,
                        delay,
                    });
                    continue;
                }
            };
            attempts += 1;
            on_send(AttemptNote::Sending);
            if attempts > 1 {
                inner.stats.retries.fetch_add(1, Ordering::Relaxed);
                inner.stats.retries_per_endpoint[endpoint].fetch_add(1, Ordering::Relaxed);
            }
            let outcome = self
                .attempt(&method, path, &url, endpoint, &body, &token, idem, attempts)
                .await;
            drop(permit);
            let f = match outcome {
                Ok(resp) => {
                    ticket.answered();
                    return Ok(resp);
                }
                Err(f) => f,
            };
            // A 401 on this token means a missing permission, not an old token: it was
            // fetched after this request's own refresh, or for a permission probe.
            let fresh_token = (refreshed && token.fetched_at() >= queued_at)
                || matches!(pass, Pass::Probe { circuit, last_failure }
                    if circuit != 0 && token.fetched_at() >= last_failure);
            // Failures that are retried prove SFMC did not process the attempt.
            if matches!(
                f.verdict,
                Verdict::Unauthorized | Verdict::Infrastructure(_)
            ) {
                on_send(AttemptNote::NotProcessed);
            }
            match f.verdict {
                Verdict::Data => {
                    ticket.answered();
                    inner.stats.class(FailureClass::Data);
                    return Err(permanent(f, attempts));
                }
                Verdict::DataOrTransient => {
                    ticket.answered();
                    bare_10006 += 1;
                    if bare_10006 >= inner.config.bare_10006_attempts.max(1) {
                        inner.stats.class(FailureClass::Data);
                        return Err(permanent(f, attempts));
                    }
                    let delay = policy.backoff(bare_10006);
                    tracing::debug!(%method, path, attempt = attempts, delay_ms = delay.as_millis() as u64, "bare 10006: retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        s = inner.breaker.until_stopped() => return Err(stop(attempts, Some(f.message), s.0)),
                    }
                }
                Verdict::Unauthorized if !fresh_token => {
                    // The token expired or was revoked: refresh once and retry at once.
                    inner.stats.infra("unauthorized");
                    inner.tokens.invalidate(&token);
                    refreshed = true;
                    ticket.answered();
                }
                Verdict::Unauthorized | Verdict::Infrastructure(Infra::Forbidden) => {
                    let reason = self.permission_reason(&method, path, f.status, &f.message);
                    inner.stats.infra("missing_permission");
                    last_error = Some(reason.clone());
                    ticket.permission_denied(endpoint, reason);
                }
                Verdict::Uncertain(kind) => {
                    let line = failure_line(&method, path, &f);
                    inner.stats.infra(kind.label());
                    inner.stats.class(FailureClass::Uncertain);
                    ticket.failed(Trip {
                        reason: line.clone(),
                        now: false,
                        delay: None,
                    });
                    return Err(SendError::Uncertain {
                        message: line,
                        attempts,
                    });
                }
                Verdict::Infrastructure(kind) => {
                    let line = failure_line(&method, path, &f);
                    inner.stats.infra(kind.label());
                    streak += 1;
                    let since = *streak_since.get_or_insert_with(Instant::now);
                    let persistent =
                        streak >= policy.max_attempts || since.elapsed() >= policy.max_elapsed;
                    let (now, delay) = match kind {
                        Infra::Blocked => (true, Some(inner.config.breaker.blocked_pause)),
                        Infra::RateLimited { retry_after } => (true, retry_after),
                        _ => (persistent, None),
                    };
                    last_error = Some(line.clone());
                    let open = ticket.failed(Trip {
                        reason: line,
                        now,
                        delay,
                    });
                    if !open {
                        let delay = policy.backoff(streak);
                        tracing::debug!(%method, path, attempt = attempts, delay_ms = delay.as_millis() as u64, "retrying SFMC request");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            s = inner.breaker.until_stopped() => return Err(stop(attempts, last_error, s.0)),
                        }
                    }
                }
            }
        }
    }

    /// The log line for a token that lacks the permission for a call.
    fn permission_reason(&self, method: &Method, path: &str, status: u16, message: &str) -> String {
        let permission = classify::required_permission(method, path);
        let what = if status == 403 {
            format!("HTTP 403 ({message})")
        } else {
            "HTTP 401 again with a token fetched after the request was queued".to_string()
        };
        let v1 = if self.inner.endpoints.version == AuthVersion::V1 {
            " (on legacy v1 endpoints, another process requesting tokens with the same client id also causes this)"
        } else {
            ""
        };
        format!(
            "{method} {path}: {what}: the API integration likely lacks the permission {permission}; \
grant it to the installed package in Marketing Cloud Setup{v1}"
        )
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        method: &Method,
        path: &str,
        url: &str,
        endpoint: usize,
        body: &Bytes,
        token: &AccessToken,
        idem: Idempotency,
        attempt: u32,
    ) -> Result<SfmcResponse, AttemptFailure> {
        let inner = &*self.inner;
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
                let message = retry::transport_message(&e);
                tracing::debug!(%method, path, attempt, error = %message, "SFMC request failed");
                return Err(AttemptFailure {
                    verdict: classify::classify_transport(classify::transport_kind(&e), idem),
                    message,
                    status: 0,
                    body: Value::Null,
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
        let success = (200..300).contains(&status);
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            // The status says SFMC accepted it; the echo is not needed.
            Err(_) if success => Bytes::new(),
            Err(e) => {
                let message = format!(
                    "HTTP {status}, reading the answer: {}",
                    retry::transport_message(&e.without_url())
                );
                return Err(AttemptFailure {
                    verdict: classify::classify_status(status, &Value::Null, retry_after, idem),
                    message,
                    status,
                    body: Value::Null,
                });
            }
        };
        if success {
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
        Err(AttemptFailure {
            verdict: classify::classify_status(status, &body, retry_after, idem),
            message: error_message(status, &body),
            status,
            body,
        })
    }
}

fn permanent(f: AttemptFailure, attempts: u32) -> SendError {
    SendError::Permanent {
        status: f.status,
        errorcode: retry::errorcode(&f.body),
        message: f.message,
        body: f.body,
        attempts,
    }
}

/// `POST /path: HTTP 503 errorcode 0: message` (or the transport error), one line.
fn failure_line(method: &Method, path: &str, f: &AttemptFailure) -> String {
    if f.status == 0 {
        return format!("{method} {path}: {}", f.message);
    }
    let code = retry::errorcode(&f.body)
        .map(|c| format!(" errorcode {c}"))
        .unwrap_or_default();
    format!("{method} {path}: HTTP {}{code}: {}", f.status, f.message)
}

/// Success bodies up to this size are parsed into [`SfmcResponse::body`].
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
