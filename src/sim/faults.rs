//! Outage windows: the failure modes of real SFMC that last a while, so a test can show the
//! relay waiting them out (see `docs/sfmc-api.md`, Auth and Limits):
//!
//! | kind | what the simulator does while the window is active |
//! |---|---|
//! | `reject_secret` | the token endpoints answer `invalid_client` (v1: `Unauthorized`), except to `accept_secret` (a rotated secret); every token issued before the window started is revoked |
//! | `token_blocked` | the token endpoints answer 429 errorcode 50200 "temporarily blocked" (no `Retry-After`) |
//! | `rest_blocked` | every REST call is answered 429 errorcode 50200 |
//! | `server_errors` | every REST call is answered `status` (default 503), before anything is processed |
//! | `drop_journey_answers` | every `every`-th (default 1: each) Journey event call is processed, then its connection is dropped without an answer |
//! | `slow_journey_answers` | every Journey event call is processed at once and answered `delay_ms` (default 2000) later (a relay killed meanwhile never learns the outcome) |
//! | `deny_scope` | tokens issued during the window lack `scope` (e.g. `journeys_execute`); REST calls that need it get SFMC's 401 "Not Authorized" |
//! | `v1_single_token` | a v1 token request invalidates the earlier v1 tokens of that client id (legacy v1 behaviour: another relay's token request knocks this one's token out) |
//!
//! Windows come from the YAML config (`outages:`, `start` counted from the simulator's
//! start) or are added at runtime ([`crate::sim::SimHandle::add_outage`], `POST
//! /sim/outages`; `start` counted from then). Each window counts the requests it affected
//! (`GET /sim/outages`), and `stats.faults_injected` counts them by kind.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::bail;
use axum::Json;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What an outage window does (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutageKind {
    RejectSecret,
    TokenBlocked,
    RestBlocked,
    ServerErrors,
    DropJourneyAnswers,
    SlowJourneyAnswers,
    DenyScope,
    V1SingleToken,
}

impl OutageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OutageKind::RejectSecret => "reject_secret",
            OutageKind::TokenBlocked => "token_blocked",
            OutageKind::RestBlocked => "rest_blocked",
            OutageKind::ServerErrors => "server_errors",
            OutageKind::DropJourneyAnswers => "drop_journey_answers",
            OutageKind::SlowJourneyAnswers => "slow_journey_answers",
            OutageKind::DenyScope => "deny_scope",
            OutageKind::V1SingleToken => "v1_single_token",
        }
    }
}

/// One outage window.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    pub kind: OutageKind,
    /// Seconds from the simulator's start (config) or from when it was added (runtime).
    #[serde(default)]
    pub start: f64,
    /// How long it lasts, in seconds; unset = until the simulator stops or the outages are
    /// cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// `reject_secret`: a secret that is still accepted (the rotated one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_secret: Option<String>,
    /// `server_errors`: the status answered (500-599, default 503).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `drop_journey_answers`: drop every n-th Journey call's answer (default 1 = each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<u32>,
    /// `deny_scope`: the scope tokens lack (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `slow_journey_answers`: how long after processing the answer comes (default 2000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

impl Outage {
    /// A window of `kind` starting now (or at the simulator's start), without an end.
    pub fn new(kind: OutageKind) -> Self {
        Outage {
            kind,
            start: 0.0,
            seconds: None,
            accept_secret: None,
            status: None,
            every: None,
            scope: None,
            delay_ms: None,
        }
    }

    /// Start `secs` later.
    pub fn after(mut self, secs: f64) -> Self {
        self.start = secs;
        self
    }

    /// Last `secs`.
    pub fn lasting(mut self, secs: f64) -> Self {
        self.seconds = Some(secs);
        self
    }

    /// `reject_secret`: keep accepting `secret`.
    pub fn accepting(mut self, secret: impl Into<String>) -> Self {
        self.accept_secret = Some(secret.into());
        self
    }

    /// `server_errors`: answer `status`.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// `drop_journey_answers`: every n-th call.
    pub fn every(mut self, n: u32) -> Self {
        self.every = Some(n);
        self
    }

    /// `deny_scope`: the scope tokens lack.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let k = self.kind.as_str();
        if !self.start.is_finite() || self.start < 0.0 {
            bail!(
                "outage {k}: start must be 0 or more seconds, got {}",
                self.start
            );
        }
        if let Some(s) = self.seconds
            && (!s.is_finite() || s <= 0.0)
        {
            bail!("outage {k}: seconds must be more than 0, got {s}");
        }
        let only = |set: bool, field: &str, kind: OutageKind| -> anyhow::Result<()> {
            if set && self.kind != kind {
                bail!("outage {k}: `{field}` only applies to {}", kind.as_str());
            }
            Ok(())
        };
        only(
            self.accept_secret.is_some(),
            "accept_secret",
            OutageKind::RejectSecret,
        )?;
        only(self.status.is_some(), "status", OutageKind::ServerErrors)?;
        only(
            self.every.is_some(),
            "every",
            OutageKind::DropJourneyAnswers,
        )?;
        only(self.scope.is_some(), "scope", OutageKind::DenyScope)?;
        only(
            self.delay_ms.is_some(),
            "delay_ms",
            OutageKind::SlowJourneyAnswers,
        )?;
        if let Some(s) = self.status
            && !(500..=599).contains(&s)
        {
            bail!("outage {k}: status must be 500-599, got {s}");
        }
        if self.every == Some(0) {
            bail!("outage {k}: every must be at least 1");
        }
        if self.kind == OutageKind::DenyScope
            && self.scope.as_deref().is_none_or(|s| s.trim().is_empty())
        {
            bail!("outage {k}: `scope` is required (e.g. journeys_execute)");
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Window {
    outage: Outage,
    from: Instant,
    until: Option<Instant>,
    hits: u64,
    calls: u64,
}

impl Window {
    fn new(outage: Outage, base: Instant) -> Self {
        let from = base + Duration::from_secs_f64(outage.start);
        let until = outage.seconds.map(|s| from + Duration::from_secs_f64(s));
        Window {
            outage,
            from,
            until,
            hits: 0,
            calls: 0,
        }
    }

    fn active(&self, now: Instant) -> bool {
        now >= self.from && self.until.is_none_or(|u| now < u)
    }
}

/// What the token endpoint does for one request.
pub(crate) enum TokenOutage {
    /// No window applies.
    None,
    /// The secret is the one a `reject_secret` window still accepts.
    Accept,
    /// Answer this instead (the kind is counted).
    Respond(Response, &'static str),
}

/// What a REST call meets.
pub(crate) enum RestOutage {
    None,
    Respond(Response, &'static str),
    /// Handle the call, then drop the connection.
    DropAfterHandling(&'static str),
    /// Handle the call at once, answer after the delay.
    DelayAnswer(std::time::Duration, &'static str),
}

fn blocked() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        Json(json!({
            "message": "Your requests are temporarily blocked.",
            "errorcode": 50200,
            "documentation": "https://developer.salesforce.com/docs/atlas.en-us.mc-apis.meta/mc-apis/error-handling.htm",
        })),
    )
        .into_response()
}

/// The active outage windows.
#[derive(Debug)]
pub(crate) struct Outages {
    windows: Mutex<Vec<Window>>,
}

impl Outages {
    pub fn new(configured: &[Outage], started: Instant) -> Self {
        Outages {
            windows: Mutex::new(
                configured
                    .iter()
                    .map(|o| Window::new(o.clone(), started))
                    .collect(),
            ),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Window>> {
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, outage: Outage) {
        self.lock().push(Window::new(outage, Instant::now()));
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Each window: the outage, whether it is active, seconds until it starts / ends, and
    /// how many requests it affected.
    pub fn list(&self) -> Vec<Value> {
        let now = Instant::now();
        self.lock()
            .iter()
            .map(|w| {
                json!({
                    "outage": w.outage,
                    "active": w.active(now),
                    "starts_in": w.from.saturating_duration_since(now).as_secs_f64(),
                    "ends_in": w.until.map(|u| u.saturating_duration_since(now).as_secs_f64()),
                    "hits": w.hits,
                })
            })
            .collect()
    }

    /// The token endpoint's answer to a request with `secret` (`v2`: OAuth error format).
    pub fn token(&self, secret: &str, v2: bool) -> TokenOutage {
        let now = Instant::now();
        let mut windows = self.lock();
        if let Some(w) = windows
            .iter_mut()
            .find(|w| w.outage.kind == OutageKind::TokenBlocked && w.active(now))
        {
            w.hits += 1;
            return TokenOutage::Respond(blocked(), "token_blocked");
        }
        let mut accepted = false;
        for w in windows
            .iter_mut()
            .filter(|w| w.outage.kind == OutageKind::RejectSecret && w.active(now))
        {
            if w.outage.accept_secret.as_deref() == Some(secret) {
                accepted = true;
                continue;
            }
            w.hits += 1;
            let resp = if v2 {
                (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({
                        "error": "invalid_client",
                        "error_description": "Client authentication failed. Make sure that the client ID and client secret are valid and that the package is installed and enabled.",
                        "error_uri": "https://developer.salesforce.com/docs",
                    })),
                )
                    .into_response()
            } else {
                (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"message": "Unauthorized", "errorcode": 1, "documentation": ""})),
                )
                    .into_response()
            };
            return TokenOutage::Respond(resp, "reject_secret");
        }
        if accepted {
            TokenOutage::Accept
        } else {
            TokenOutage::None
        }
    }

    /// Whether a token issued at `issued` was revoked by a `reject_secret` window that
    /// started after it.
    pub fn revoked(&self, issued: Instant) -> bool {
        let now = Instant::now();
        self.lock()
            .iter()
            .any(|w| w.outage.kind == OutageKind::RejectSecret && w.from <= now && issued < w.from)
    }

    /// Scopes a token issued now lacks.
    pub fn denied_scopes(&self) -> Vec<String> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|w| w.outage.kind == OutageKind::DenyScope && w.active(now))
            .filter_map(|w| w.outage.scope.clone())
            .collect()
    }

    /// Count a REST call refused for a scope a `deny_scope` window took away.
    pub fn count_denied(&self, scope: &str) {
        let now = Instant::now();
        if let Some(w) = self.lock().iter_mut().find(|w| {
            w.outage.kind == OutageKind::DenyScope
                && w.outage.scope.as_deref() == Some(scope)
                && w.from <= now
        }) {
            w.hits += 1;
        }
    }

    /// Whether a v1 token request now invalidates the client's earlier v1 tokens (counted
    /// by the caller per invalidated token).
    pub fn v1_single_token(&self, invalidated: u64) -> bool {
        let now = Instant::now();
        let mut windows = self.lock();
        match windows
            .iter_mut()
            .find(|w| w.outage.kind == OutageKind::V1SingleToken && w.active(now))
        {
            Some(w) => {
                w.hits += invalidated;
                true
            }
            None => false,
        }
    }

    /// What a REST call to `path` meets.
    pub fn rest(&self, method: &Method, path: &str) -> RestOutage {
        let now = Instant::now();
        let mut windows = self.lock();
        if let Some(w) = windows
            .iter_mut()
            .find(|w| w.outage.kind == OutageKind::RestBlocked && w.active(now))
        {
            w.hits += 1;
            return RestOutage::Respond(blocked(), "rest_blocked");
        }
        if let Some(w) = windows
            .iter_mut()
            .find(|w| w.outage.kind == OutageKind::ServerErrors && w.active(now))
        {
            w.hits += 1;
            let status = w.outage.status.unwrap_or(503);
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let message = code.canonical_reason().unwrap_or("Server Error");
            return RestOutage::Respond(
                (
                    code,
                    Json(json!({"message": message, "errorcode": 0, "documentation": ""})),
                )
                    .into_response(),
                "server_errors",
            );
        }
        let journey = method == Method::POST
            && (path.eq_ignore_ascii_case("/interaction/v1/events")
                || path.eq_ignore_ascii_case("/interaction/v1/async/events"));
        if journey
            && let Some(w) = windows
                .iter_mut()
                .find(|w| w.outage.kind == OutageKind::DropJourneyAnswers && w.active(now))
        {
            w.calls += 1;
            if w.calls % u64::from(w.outage.every.unwrap_or(1).max(1)) == 0 {
                w.hits += 1;
                return RestOutage::DropAfterHandling("drop_journey_answers");
            }
        }
        if journey
            && let Some(w) = windows
                .iter_mut()
                .find(|w| w.outage.kind == OutageKind::SlowJourneyAnswers && w.active(now))
        {
            w.calls += 1;
            w.hits += 1;
            let ms = w.outage.delay_ms.unwrap_or(2000);
            return RestOutage::DelayAnswer(Duration::from_millis(ms), "slow_journey_answers");
        }
        RestOutage::None
    }
}

/// The scope a REST call needs (what SFMC's installed-package permissions grant).
pub(crate) fn required_scope(method: &Method, path: &str) -> Option<&'static str> {
    let p = path.to_ascii_lowercase();
    let read = method == Method::GET;
    if p.starts_with("/hub/") || p.starts_with("/data/") {
        Some(if read {
            "data_extensions_read"
        } else {
            "data_extensions_write"
        })
    } else if p.starts_with("/contacts/") {
        Some(if read {
            "list_and_subscribers_read"
        } else {
            "list_and_subscribers_write"
        })
    } else if p.starts_with("/interaction/") {
        Some(if read {
            "journeys_read"
        } else {
            "journeys_execute"
        })
    } else {
        None
    }
}

/// Every scope a token gets when the request names none.
pub(crate) const ALL_SCOPES: &[&str] = &[
    "data_extensions_read",
    "data_extensions_write",
    "journeys_read",
    "journeys_execute",
    "list_and_subscribers_read",
    "list_and_subscribers_write",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_validate_their_fields() {
        assert!(
            Outage::new(OutageKind::RestBlocked)
                .lasting(3.0)
                .validate()
                .is_ok()
        );
        assert!(Outage::new(OutageKind::DenyScope).validate().is_err());
        assert!(
            Outage::new(OutageKind::DenyScope)
                .scope("journeys_execute")
                .validate()
                .is_ok()
        );
        assert!(
            Outage::new(OutageKind::ServerErrors)
                .with_status(404)
                .validate()
                .is_err()
        );
        assert!(
            Outage::new(OutageKind::RestBlocked)
                .with_status(503)
                .validate()
                .is_err()
        );
        assert!(
            Outage::new(OutageKind::RestBlocked)
                .lasting(0.0)
                .validate()
                .is_err()
        );
        assert!(
            Outage::new(OutageKind::DropJourneyAnswers)
                .every(0)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn windows_start_and_end() {
        let o = Outages::new(
            &[Outage::new(OutageKind::RestBlocked)
                .after(0.05)
                .lasting(0.05)],
            Instant::now(),
        );
        assert!(matches!(
            o.rest(&Method::POST, "/contacts/v1/contacts"),
            RestOutage::None
        ));
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(
            o.rest(&Method::POST, "/contacts/v1/contacts"),
            RestOutage::Respond(_, "rest_blocked")
        ));
        std::thread::sleep(Duration::from_millis(50));
        assert!(matches!(
            o.rest(&Method::POST, "/contacts/v1/contacts"),
            RestOutage::None
        ));
        assert_eq!(o.list()[0]["hits"], 1);
    }

    #[test]
    fn reject_secret_revokes_older_tokens_and_accepts_the_rotated_secret() {
        let before = Instant::now();
        let o = Outages::new(&[], before);
        std::thread::sleep(Duration::from_millis(2));
        o.add(Outage::new(OutageKind::RejectSecret).accepting("new"));
        assert!(o.revoked(before));
        assert!(!o.revoked(Instant::now()));
        assert!(matches!(
            o.token("old", true),
            TokenOutage::Respond(_, "reject_secret")
        ));
        assert!(matches!(o.token("new", true), TokenOutage::Accept));
        o.clear();
        assert!(matches!(o.token("old", true), TokenOutage::None));
    }

    #[test]
    fn every_nth_journey_answer_is_dropped() {
        let o = Outages::new(
            &[Outage::new(OutageKind::DropJourneyAnswers).every(3)],
            Instant::now(),
        );
        let dropped: Vec<bool> = (0..6)
            .map(|_| {
                matches!(
                    o.rest(&Method::POST, "/interaction/v1/events"),
                    RestOutage::DropAfterHandling(_)
                )
            })
            .collect();
        assert_eq!(dropped, [false, false, true, false, false, true]);
        assert!(matches!(
            o.rest(&Method::POST, "/contacts/v1/contacts"),
            RestOutage::None
        ));
    }

    #[test]
    fn scopes_per_endpoint() {
        assert_eq!(
            required_scope(&Method::POST, "/interaction/v1/events"),
            Some("journeys_execute")
        );
        assert_eq!(
            required_scope(&Method::POST, "/hub/v1/dataevents/key:X/rowset"),
            Some("data_extensions_write")
        );
        assert_eq!(
            required_scope(&Method::GET, "/data/v1/async/x/status"),
            Some("data_extensions_read")
        );
        assert_eq!(required_scope(&Method::GET, "/sim/stats"), None);
    }
}
