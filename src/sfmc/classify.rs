//! What a failed SFMC call means: the one place that decides (after Vector's `RetryLogic`).
//!
//! Every failure falls in one of three classes ([`FailureClass`]):
//!
//! - **data**: SFMC refused the request for its content (a 400 with row errors, a missing
//!   primary key, an unknown event definition, a bare 10006 that persists). Retrying cannot
//!   help; the sink dead-letters the rows or events with SFMC's message.
//! - **uncertain**: a non-idempotent call (a Journey Builder event) that may have been
//!   processed: a timeout or a connection lost after the request was sent, or a 5xx. It is
//!   never sent again automatically (the contact could enter the journey twice).
//! - **infrastructure**: SFMC (or the way to it) is not working: credentials rejected, a 401
//!   on a fresh token, 403, 429 (50100 and 50200), 5xx, timeouts and connection errors on
//!   idempotent calls. Never dead-lettered: the client's circuit breaker pauses delivery
//!   and retries until SFMC answers again.
//!
//! Failures that prove the request was not processed (connection refused, 429, 401, 403,
//! 408) are safe to retry even for non-idempotent calls.
//!
//! The functions here are pure: they look at a status and body or at the kind of a
//! transport error, never at time or state.

use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use serde_json::Value;

use super::retry;

/// Whether sending a request twice can have a different effect from sending it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Upserts (rowsets, single rows, async upserts), contact creation, reads.
    Idempotent,
    /// Journey Builder API events: a second send can enter the contact twice.
    NonIdempotent,
}

/// The Journey Builder event paths: `POST` there is not idempotent.
pub const NON_IDEMPOTENT_PATHS: [&str; 2] =
    ["/interaction/v1/events", "/interaction/v1/async/events"];

/// Idempotency of a REST call, from its method and path (query string ignored, case-insensitive).
pub fn idempotency(method: &Method, path: &str) -> Idempotency {
    let p = path.split(['?', '#']).next().unwrap_or("");
    let p = p.trim_end_matches('/');
    if method == Method::POST
        && NON_IDEMPOTENT_PATHS
            .iter()
            .any(|n| p.eq_ignore_ascii_case(n))
    {
        Idempotency::NonIdempotent
    } else {
        Idempotency::Idempotent
    }
}

/// The three failure classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    Data,
    Uncertain,
    Infrastructure,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Data => "data",
            FailureClass::Uncertain => "uncertain",
            FailureClass::Infrastructure => "infrastructure",
        }
    }
}

/// What kind of infrastructure failure an attempt met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Infra {
    /// 429 other than 50200 (50100 "Rate limit exceeded"), with the server's `Retry-After`
    /// (header, else the body's `retryAfter`).
    RateLimited { retry_after: Option<Duration> },
    /// 429 errorcode 50200 "Your requests are temporarily blocked": minutes, no Retry-After.
    Blocked,
    /// 5xx.
    ServerError,
    /// 408: the server gave up waiting for the request (so it did not process it).
    RequestTimeout,
    /// No answer within the request timeout (the request may have been processed).
    Timeout,
    /// The connection could not be made (refused, DNS): the request never reached SFMC.
    Unreachable,
    /// The connection was lost after the request was (maybe) sent, or the answer could not
    /// be read.
    ConnectionLost,
    /// 403 (SFMC's "Insufficient privileges"): the token lacks a permission.
    Forbidden,
}

impl Infra {
    /// Whether this failure proves the request was not processed (so even a
    /// non-idempotent call may be sent again).
    pub fn proves_unprocessed(self) -> bool {
        match self {
            Infra::RateLimited { .. }
            | Infra::Blocked
            | Infra::RequestTimeout
            | Infra::Unreachable
            | Infra::Forbidden => true,
            Infra::ServerError | Infra::Timeout | Infra::ConnectionLost => false,
        }
    }

    /// Short label for counters and logs.
    pub fn label(self) -> &'static str {
        match self {
            Infra::RateLimited { .. } => "rate_limited",
            Infra::Blocked => "blocked",
            Infra::ServerError => "server_error",
            Infra::RequestTimeout => "request_timeout",
            Infra::Timeout => "timeout",
            Infra::Unreachable => "unreachable",
            Infra::ConnectionLost => "connection_lost",
            Infra::Forbidden => "forbidden",
        }
    }
}

/// The decision for one failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// SFMC refused the content: give the failure to the caller (dead letter).
    Data,
    /// A 400 errorcode 10006 without `additionalErrors`: transient or deterministic, SFMC
    /// does not say. Retried a few times, then treated as [`Verdict::Data`].
    DataOrTransient,
    /// 401: refresh the token once; a 401 again on a token fetched after the request was
    /// queued means the token lacks a permission.
    Unauthorized,
    /// Retry after the circuit breaker lets requests through again.
    Infrastructure(Infra),
    /// The call is not idempotent and may have been processed: never resend it.
    Uncertain(Infra),
}

impl Verdict {
    /// The class the caller sees if this verdict is final.
    pub fn class(self) -> FailureClass {
        match self {
            Verdict::Data | Verdict::DataOrTransient => FailureClass::Data,
            Verdict::Uncertain(_) => FailureClass::Uncertain,
            Verdict::Unauthorized | Verdict::Infrastructure(_) => FailureClass::Infrastructure,
        }
    }
}

fn infra(kind: Infra, idem: Idempotency) -> Verdict {
    if idem == Idempotency::NonIdempotent && !kind.proves_unprocessed() {
        Verdict::Uncertain(kind)
    } else {
        Verdict::Infrastructure(kind)
    }
}

/// Whether an error body is a bare 10006 (no, or empty, `additionalErrors`).
pub fn is_bare_10006(body: &Value) -> bool {
    retry::errorcode(body) == Some(10006)
        && match body.get("additionalErrors") {
            None | Some(Value::Null) => true,
            Some(Value::Array(a)) => a.is_empty(),
            Some(_) => false,
        }
}

/// Classify a non-2xx REST response. `retry_after` is the parsed `Retry-After` header.
pub fn classify_status(
    status: u16,
    body: &Value,
    retry_after: Option<Duration>,
    idem: Idempotency,
) -> Verdict {
    match status {
        401 => Verdict::Unauthorized,
        403 => Verdict::Infrastructure(Infra::Forbidden),
        408 => Verdict::Infrastructure(Infra::RequestTimeout),
        429 if retry::errorcode(body) == Some(50200) => Verdict::Infrastructure(Infra::Blocked),
        429 => Verdict::Infrastructure(Infra::RateLimited {
            retry_after: retry_after.or_else(|| retry::body_retry_after(body)),
        }),
        500..=599 => infra(Infra::ServerError, idem),
        400 if is_bare_10006(body) => Verdict::DataOrTransient,
        _ => Verdict::Data,
    }
}

/// What went wrong below HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The request could not be built (an invalid URL): a bug, not SFMC's answer.
    Invalid,
    /// Connecting failed: nothing was sent.
    NotConnected,
    /// No answer in time.
    Timeout,
    /// Connection lost or answer unreadable after the request was (maybe) sent.
    Lost,
}

/// The [`Transport`] kind of a reqwest error.
pub fn transport_kind(err: &reqwest::Error) -> Transport {
    if err.is_builder() {
        Transport::Invalid
    } else if err.is_connect() {
        Transport::NotConnected
    } else if err.is_timeout() {
        Transport::Timeout
    } else {
        Transport::Lost
    }
}

/// Classify a transport failure of a REST call.
pub fn classify_transport(kind: Transport, idem: Idempotency) -> Verdict {
    match kind {
        Transport::Invalid => Verdict::Data,
        Transport::NotConnected => Verdict::Infrastructure(Infra::Unreachable),
        Transport::Timeout => infra(Infra::Timeout, idem),
        Transport::Lost => infra(Infra::ConnectionLost, idem),
    }
}

/// Why a token request failed. Every kind is an infrastructure failure for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFailure {
    /// The token endpoint refused the credentials (or the request): `invalid_client` and
    /// other 4xx. The credentials are re-read (secret files) before the next attempt.
    Rejected,
    /// 429 errorcode 50200: too many token requests; blocked for minutes.
    Blocked,
    /// Other 429.
    RateLimited,
    /// 5xx, 408, a timeout, a connection error, or a 2xx without a usable token.
    Unavailable,
}

impl TokenFailure {
    pub fn label(self) -> &'static str {
        match self {
            TokenFailure::Rejected => "credentials_rejected",
            TokenFailure::Blocked => "token_blocked",
            TokenFailure::RateLimited => "token_rate_limited",
            TokenFailure::Unavailable => "token_unavailable",
        }
    }
}

/// Classify a non-2xx token endpoint response.
pub fn classify_token_status(status: u16, body: &Value) -> TokenFailure {
    match status {
        429 if retry::errorcode(body) == Some(50200) => TokenFailure::Blocked,
        429 => TokenFailure::RateLimited,
        408 | 500..=599 => TokenFailure::Unavailable,
        _ => TokenFailure::Rejected,
    }
}

/// Classify a transport failure of a token request (an invalid URL is a rejection: it will
/// not fix itself; anything else is an unavailable endpoint).
pub fn classify_token_transport(kind: Transport) -> TokenFailure {
    match kind {
        Transport::Invalid => TokenFailure::Rejected,
        _ => TokenFailure::Unavailable,
    }
}

/// The installed-package permission (API scope) a REST path needs, as SFMC names it in
/// the package's API integration, for a log line after a 401 on a fresh token or a 403.
pub fn required_permission(method: &Method, path: &str) -> &'static str {
    let p = path
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let read = method == Method::GET;
    if p.starts_with("/hub/v1/dataevents/") || p.starts_with("/data/v1/") {
        if read {
            "data_extensions_read (Data > Data Extensions: Read)"
        } else {
            "data_extensions_write (Data > Data Extensions: Write)"
        }
    } else if p.starts_with("/contacts/") {
        if read {
            "list_and_subscribers_read (Contacts > List and Subscribers: Read)"
        } else {
            "list_and_subscribers_write (Contacts > List and Subscribers: Write)"
        }
    } else if p.starts_with("/interaction/") {
        if read {
            "journeys_read (Automation > Journeys: Read)"
        } else {
            "journeys_execute (Automation > Journeys: Execute)"
        }
    } else {
        "the permission for this API"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const IDEM: Idempotency = Idempotency::Idempotent;
    const NON: Idempotency = Idempotency::NonIdempotent;

    #[test]
    fn idempotency_from_method_and_path() {
        let post = Method::POST;
        assert_eq!(idempotency(&post, "/interaction/v1/events"), NON);
        assert_eq!(idempotency(&post, "/interaction/v1/events/"), NON);
        assert_eq!(idempotency(&post, "/Interaction/V1/Events?x=1"), NON);
        assert_eq!(idempotency(&post, "/interaction/v1/async/events"), NON);
        assert_eq!(
            idempotency(
                &Method::GET,
                "/interaction/v1/async/events/status?requestId=1"
            ),
            IDEM
        );
        assert_eq!(idempotency(&Method::GET, "/interaction/v1/events"), IDEM);
        for p in [
            "/hub/v1/dataevents/key:X/rowset",
            "/contacts/v1/contacts",
            "/contacts/v1/establish",
            "/data/v1/async/dataextensions/key:X/rows",
        ] {
            assert_eq!(idempotency(&post, p), IDEM, "{p}");
        }
        assert_eq!(
            idempotency(&Method::PUT, "/hub/v1/dataevents/key:X/rows/Id:1"),
            IDEM
        );
    }

    #[test]
    fn statuses() {
        let e = json!({});
        assert_eq!(classify_status(401, &e, None, NON), Verdict::Unauthorized);
        assert_eq!(
            classify_status(403, &e, None, NON),
            Verdict::Infrastructure(Infra::Forbidden)
        );
        assert_eq!(
            classify_status(408, &e, None, NON),
            Verdict::Infrastructure(Infra::RequestTimeout)
        );
        for s in [500, 502, 503, 504] {
            assert_eq!(
                classify_status(s, &e, None, IDEM),
                Verdict::Infrastructure(Infra::ServerError),
                "{s}"
            );
            assert_eq!(
                classify_status(s, &e, None, NON),
                Verdict::Uncertain(Infra::ServerError),
                "{s}"
            );
        }
        for s in [400, 404, 409, 413, 422, 302] {
            assert_eq!(classify_status(s, &e, None, IDEM), Verdict::Data, "{s}");
            assert_eq!(classify_status(s, &e, None, NON), Verdict::Data, "{s}");
        }
    }

    #[test]
    fn throttling_and_blocks_are_safe_to_retry() {
        let limited = json!({"message":"Rate limit exceeded","errorcode":50100,"retryAfter":5});
        let blocked = json!({"message":"Your requests are temporarily blocked.","errorcode":50200});
        for idem in [IDEM, NON] {
            assert_eq!(
                classify_status(429, &limited, None, idem),
                Verdict::Infrastructure(Infra::RateLimited {
                    retry_after: Some(Duration::from_secs(5))
                })
            );
            // The header wins over the body.
            assert_eq!(
                classify_status(429, &limited, Some(Duration::from_secs(2)), idem),
                Verdict::Infrastructure(Infra::RateLimited {
                    retry_after: Some(Duration::from_secs(2))
                })
            );
            assert_eq!(
                classify_status(429, &blocked, None, idem),
                Verdict::Infrastructure(Infra::Blocked)
            );
            assert_eq!(
                classify_status(429, &json!({}), None, idem),
                Verdict::Infrastructure(Infra::RateLimited { retry_after: None })
            );
        }
    }

    #[test]
    fn bare_10006_is_data_or_transient_and_row_errors_are_data() {
        for body in [
            json!({"errorcode":10006}),
            json!({"errorcode":"10006","additionalErrors":[]}),
            json!({"errorcode":10006,"additionalErrors":null}),
        ] {
            assert_eq!(
                classify_status(400, &body, None, IDEM),
                Verdict::DataOrTransient,
                "{body}"
            );
        }
        let rows = json!({"errorcode":10006,"additionalErrors":[{"message":"Email: bad"}]});
        assert_eq!(classify_status(400, &rows, None, IDEM), Verdict::Data);
        let pk = json!({"message":"Primary key 'id' does not exist.","errorcode":10000});
        assert_eq!(classify_status(400, &pk, None, IDEM), Verdict::Data);
        // A bare 10006 on anything but a 400 follows its status.
        assert_eq!(
            classify_status(500, &json!({"errorcode":10006}), None, IDEM),
            Verdict::Infrastructure(Infra::ServerError)
        );
    }

    #[test]
    fn transport_failures() {
        assert_eq!(classify_transport(Transport::Invalid, IDEM), Verdict::Data);
        for idem in [IDEM, NON] {
            assert_eq!(
                classify_transport(Transport::NotConnected, idem),
                Verdict::Infrastructure(Infra::Unreachable)
            );
        }
        assert_eq!(
            classify_transport(Transport::Timeout, IDEM),
            Verdict::Infrastructure(Infra::Timeout)
        );
        assert_eq!(
            classify_transport(Transport::Timeout, NON),
            Verdict::Uncertain(Infra::Timeout)
        );
        assert_eq!(
            classify_transport(Transport::Lost, IDEM),
            Verdict::Infrastructure(Infra::ConnectionLost)
        );
        assert_eq!(
            classify_transport(Transport::Lost, NON),
            Verdict::Uncertain(Infra::ConnectionLost)
        );
    }

    #[test]
    fn classes() {
        assert_eq!(Verdict::Data.class(), FailureClass::Data);
        assert_eq!(Verdict::DataOrTransient.class(), FailureClass::Data);
        assert_eq!(
            Verdict::Uncertain(Infra::Timeout).class(),
            FailureClass::Uncertain
        );
        assert_eq!(Verdict::Unauthorized.class(), FailureClass::Infrastructure);
        assert_eq!(
            Verdict::Infrastructure(Infra::Blocked).class(),
            FailureClass::Infrastructure
        );
        assert_eq!(
            serde_json::to_value(FailureClass::Infrastructure).unwrap(),
            json!("infrastructure")
        );
    }

    #[test]
    fn token_endpoint_statuses() {
        let invalid =
            json!({"error":"invalid_client","error_description":"Client authentication failed."});
        assert_eq!(classify_token_status(401, &invalid), TokenFailure::Rejected);
        assert_eq!(
            classify_token_status(400, &json!({"error":"invalid_grant"})),
            TokenFailure::Rejected
        );
        assert_eq!(
            classify_token_status(429, &json!({"errorcode":50200})),
            TokenFailure::Blocked
        );
        assert_eq!(
            classify_token_status(429, &json!({"errorcode":50100})),
            TokenFailure::RateLimited
        );
        for s in [408, 500, 503] {
            assert_eq!(
                classify_token_status(s, &json!({})),
                TokenFailure::Unavailable
            );
        }
        assert_eq!(
            classify_token_transport(Transport::NotConnected),
            TokenFailure::Unavailable
        );
        assert_eq!(
            classify_token_transport(Transport::Invalid),
            TokenFailure::Rejected
        );
    }

    #[test]
    fn permissions_are_named_per_endpoint() {
        let p = required_permission(&Method::POST, "/interaction/v1/events");
        assert!(p.starts_with("journeys_execute"), "{p}");
        let p = required_permission(&Method::POST, "/hub/v1/dataevents/key:X/rowset");
        assert!(p.starts_with("data_extensions_write"), "{p}");
        let p = required_permission(&Method::GET, "/data/v1/async/abc/status");
        assert!(p.starts_with("data_extensions_read"), "{p}");
        let p = required_permission(&Method::POST, "/contacts/v1/contacts");
        assert!(p.starts_with("list_and_subscribers_write"), "{p}");
    }
}
