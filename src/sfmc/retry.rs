//! Retry policy: which failures are retryable and how long to wait before the next attempt.

use std::time::{Duration, SystemTime};

use serde_json::Value;

/// Exponential backoff with full jitter, bounded by attempts and total elapsed time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts including the first one (default 8).
    pub max_attempts: u32,
    /// Give up when the next attempt would start later than this after the first (default 10 min).
    pub max_elapsed: Duration,
    /// Backoff ceiling for the first retry (default 200 ms); doubles per retry.
    pub base_delay: Duration,
    /// Upper bound of the backoff ceiling (default 30 s). `Retry-After` is not capped by it.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// The defaults of [`crate::defaults`] (the rules' `delivery.retry`).
    fn default() -> Self {
        use crate::defaults as d;
        RetryPolicy {
            max_attempts: d::RETRY_ATTEMPTS,
            max_elapsed: d::RETRY_WITHIN,
            base_delay: d::RETRY_BASE_DELAY,
            max_delay: d::RETRY_MAX_DELAY,
        }
    }
}

impl RetryPolicy {
    /// Backoff ceiling after failed attempt number `attempt` (1-based):
    /// `min(max_delay, base_delay * 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        self.base_delay
            .checked_mul(1u32 << exp)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// Full-jitter backoff: uniformly random in `[0, ceiling(attempt)]`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.ceiling(attempt).mul_f64(fastrand::f64())
    }

    /// Delay before the next attempt: the server's `Retry-After` when given, else backoff.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        retry_after.unwrap_or_else(|| self.backoff(attempt))
    }
}

/// Parse a `Retry-After` header value: delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The `retryAfter` seconds SFMC puts in some 429 bodies.
pub fn body_retry_after(body: &Value) -> Option<Duration> {
    match body.get("retryAfter")? {
        Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64),
        Value::String(s) => s.trim().parse::<u64>().ok().map(Duration::from_secs),
        _ => None,
    }
}

/// SFMC's numeric `errorcode` from an error body.
pub fn errorcode(body: &Value) -> Option<i64> {
    match body.get("errorcode")? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Whether an HTTP error response is worth retrying: 408, 429, 5xx, and a 400 with
/// errorcode 10006 and no (or empty) `additionalErrors` (transient on SFMC's side).
/// Everything else (other 4xx) is permanent. 401 is handled separately by the client.
pub fn is_retryable_status(status: u16, body: &Value) -> bool {
    match status {
        408 | 429 | 500..=599 => true,
        400 => {
            errorcode(body) == Some(10006)
                && match body.get("additionalErrors") {
                    None | Some(Value::Null) => true,
                    Some(Value::Array(a)) => a.is_empty(),
                    Some(_) => false,
                }
        }
        _ => false,
    }
}

/// Whether a transport error is worth retrying (timeouts, connection and I/O errors).
/// Only errors building the request (an invalid URL, ...) are permanent.
pub fn is_retryable_transport(err: &reqwest::Error) -> bool {
    !err.is_builder()
}

/// A transport error with its causes, on one line (`error sending request: connection refused`).
pub fn transport_message(err: &reqwest::Error) -> String {
    let mut out = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_retry_after("5", now), Some(Duration::from_secs(5)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn classification() {
        let e = json!({});
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable_status(s, &e), "{s}");
        }
        for s in [400, 403, 404, 409, 422] {
            assert!(!is_retryable_status(s, &e), "{s}");
        }
        assert!(is_retryable_status(400, &json!({"errorcode":10006})));
        assert!(is_retryable_status(
            400,
            &json!({"errorcode":10006,"additionalErrors":[]})
        ));
        assert!(!is_retryable_status(
            400,
            &json!({"errorcode":10006,"additionalErrors":[{"message":"x"}]})
        ));
    }

    #[test]
    fn backoff_bounds() {
        let p = RetryPolicy::default();
        assert_eq!(p.ceiling(1), Duration::from_millis(200));
        assert_eq!(p.ceiling(3), Duration::from_millis(800));
        assert_eq!(p.ceiling(40), Duration::from_secs(30));
        for a in 1..20 {
            assert!(p.backoff(a) <= p.ceiling(a));
        }
    }
}
