//! SFMC credentials and the shared access-token cache.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::time::Instant;

use super::endpoints::{AuthVersion, Endpoints};
use super::retry;

/// A secret string: `Debug` and `Display` print `***`, never the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The actual value; only for putting it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Installed-package credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub client_id: String,
    pub client_secret: Secret,
    /// Business unit MID (v2 `account_id`), optional.
    pub account_id: Option<String>,
}

impl Credentials {
    /// Read `SFMC_CLIENT_ID`, `SFMC_CLIENT_SECRET` and optional `SFMC_ACCOUNT_ID`.
    /// `None` unless both id and secret are set and non-empty.
    pub fn from_env(env: &crate::env::Env) -> Option<Credentials> {
        Credentials::from_vars(|name| env.get(name))
    }

    /// [`Credentials::from_env`] over any variable lookup (values are trimmed; empty = unset).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Option<Credentials> {
        let var = |name: &str| {
            get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Some(Credentials {
            client_id: var("SFMC_CLIENT_ID")?,
            client_secret: Secret(var("SFMC_CLIENT_SECRET")?),
            account_id: var("SFMC_ACCOUNT_ID"),
        })
    }
}

/// A bearer token; `Debug`/`Display` print `***`. Cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(Arc<str>);

impl AccessToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(***)")
    }
}

impl fmt::Display for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Failure to obtain a token. Messages never contain the client secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// Credentials rejected or response not understood: retrying will not help.
    #[error("SFMC token request rejected: {0}")]
    Rejected(String),
    /// Throttled, server error, timeout or network error: retry later.
    #[error("SFMC token request failed (retryable): {message}")]
    Transient {
        message: String,
        /// Set for 429 responses (from `Retry-After` or the body), None otherwise.
        retry_after: Option<Duration>,
        throttled: bool,
    },
}

#[derive(Clone)]
struct Cached {
    token: AccessToken,
    refresh_at: Instant,
}

/// Lifetime assumed when the token response has no expiry.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(15 * 60);
const MAX_MARGIN: Duration = Duration::from_secs(60);

/// Refresh margin: 60 s or 10% of the lifetime, whichever is smaller.
pub fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(MAX_MARGIN)
}

/// Caches one access token shared by all in-flight requests.
///
/// Only one refresh runs at a time: concurrent callers that find the token missing or
/// stale wait for that refresh and share its result (token or error).
pub struct TokenCache {
    http: reqwest::Client,
    version: AuthVersion,
    auth_url: String,
    credentials: Credentials,
    cached: RwLock<Option<Cached>>,
    /// Held while a token request is in flight; guards `last_failure`.
    refresh: tokio::sync::Mutex<Option<(Instant, AuthError)>>,
    requests: AtomicU64,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("version", &self.version)
            .field("auth_url", &self.auth_url)
            .field("client_id", &self.credentials.client_id)
            .field("token_requests", &self.token_requests())
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    pub fn new(http: reqwest::Client, endpoints: &Endpoints, credentials: Credentials) -> Self {
        TokenCache {
            http,
            version: endpoints.version,
            auth_url: endpoints.auth_url.clone(),
            credentials,
            cached: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(None),
            requests: AtomicU64::new(0),
        }
    }

    /// Number of token requests sent so far.
    pub fn token_requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn fresh(&self) -> Option<AccessToken> {
        let guard = self.cached.read().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .filter(|c| Instant::now() < c.refresh_at)
            .map(|c| c.token.clone())
    }

    /// A valid token, fetching one if none is cached or it is about to expire.
    pub async fn get(&self) -> Result<AccessToken, AuthError> {
        if let Some(t) = self.fresh() {
            return Ok(t);
        }
        let waited_since = Instant::now();
        let mut last_failure = self.refresh.lock().await;
        // Someone else refreshed while we waited.
        if let Some(t) = self.fresh() {
            return Ok(t);
        }
        // Someone else's refresh failed while we waited: share its error.
        if let Some((at, err)) = last_failure.as_ref()
            && *at >= waited_since
        {
            return Err(err.clone());
        }
        // Count the lifetime from when the request was sent, to err on the early side.
        let sent_at = Instant::now();
        match self.fetch().await {
            Ok((token, lifetime)) => {
                let refresh_at = sent_at + lifetime - refresh_margin(lifetime);
                *self.cached.write().unwrap_or_else(|e| e.into_inner()) = Some(Cached {
                    token: token.clone(),
                    refresh_at,
                });
                *last_failure = None;
                Ok(token)
            }
            Err(err) => {
                *last_failure = Some((Instant::now(), err.clone()));
                Err(err)
            }
        }
    }

    /// Drop the cached token if it is still `failed` (e.g. after a 401), so the next
    /// `get` fetches a new one. A token already replaced by a refresh is left alone.
    pub fn invalidate(&self, failed: &AccessToken) {
        let mut guard = self.cached.write().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_some_and(|c| &c.token == failed) {
            *guard = None;
        }
    }

    /// Replace any occurrence of the secret in server-provided text.
    fn redact(&self, text: &str) -> String {
        let secret = self.credentials.client_secret.expose();
        let mut out = if secret.is_empty() {
            text.to_string()
        } else {
            text.replace(secret, "***")
        };
        if out.len() > 300 {
            let mut cut = 300;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push('…');
        }
        out.replace(['\r', '\n'], " ")
    }

    async fn fetch(&self) -> Result<(AccessToken, Duration), AuthError> {
        let c = &self.credentials;
        let body = match self.version {
            AuthVersion::V2 => {
                let mut b = json!({
                    "grant_type": "client_credentials",
                    "client_id": c.client_id,
                    "client_secret": c.client_secret.expose(),
                });
                if let Some(mid) = &c.account_id {
                    b["account_id"] = Value::String(mid.clone());
                }
                b
            }
            AuthVersion::V1 => json!({
                "clientId": c.client_id,
                "clientSecret": c.client_secret.expose(),
            }),
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        let sent = self.http.post(&self.auth_url).json(&body).send().await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let e = e.without_url();
                let message = format!("{}: {}", self.auth_url, retry::transport_message(&e));
                tracing::debug!(version = %self.version, error = %message, "token request failed");
                return Err(if retry::is_retryable_transport(&e) {
                    AuthError::Transient {
                        message: self.redact(&message),
                        retry_after: None,
                        throttled: false,
                    }
                } else {
                    AuthError::Rejected(self.redact(&message))
                });
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
        tracing::debug!(version = %self.version, status, "token response");
        let text = match resp.bytes().await {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => {
                return Err(AuthError::Transient {
                    message: self.redact(&format!(
                        "reading token response: {}",
                        retry::transport_message(&e.without_url())
                    )),
                    retry_after: None,
                    throttled: false,
                });
            }
        };
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return self.parse_token(&json).ok_or_else(|| {
                AuthError::Rejected(format!(
                    "HTTP {status} from {} without a usable access token",
                    self.auth_url
                ))
            });
        }
        let detail = self.redact(&describe_auth_error(status, &json, &text));
        if retry::is_retryable_status(status, &json) {
            Err(AuthError::Transient {
                message: detail,
                retry_after: retry_after.or_else(|| retry::body_retry_after(&json)),
                throttled: status == 429,
            })
        } else {
            Err(AuthError::Rejected(detail))
        }
    }

    fn parse_token(&self, json: &Value) -> Option<(AccessToken, Duration)> {
        let (tok_key, exp_key) = match self.version {
            AuthVersion::V2 => ("access_token", "expires_in"),
            AuthVersion::V1 => ("accessToken", "expiresIn"),
        };
        let token = json.get(tok_key)?.as_str().filter(|t| !t.is_empty())?;
        let lifetime = json
            .get(exp_key)
            .and_then(|v| v.as_f64().or_else(|| v.as_str()?.trim().parse().ok()))
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(DEFAULT_LIFETIME);
        Some((AccessToken(Arc::from(token)), lifetime))
    }
}

/// One-line description of a token error response (v2 OAuth or SFMC error format).
fn describe_auth_error(status: u16, json: &Value, text: &str) -> String {
    let s = |k: &str| {
        json.get(k)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    if let Some(error) = s("error") {
        match s("error_description") {
            Some(d) => format!("HTTP {status} {error}: {d}"),
            None => format!("HTTP {status} {error}"),
        }
    } else if let Some(message) = s("message") {
        match retry::errorcode(json) {
            Some(code) => format!("HTTP {status} (errorcode {code}): {message}"),
            None => format!("HTTP {status}: {message}"),
        }
    } else if text.trim().is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", text.trim())
    }
}
