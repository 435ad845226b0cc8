//! SFMC credentials, where they come from (values or files re-read on rotation), and the
//! shared access-token cache.
//!
//! Token requests are single-flight and backed off: after a rejected or failed request the
//! next one waits (doubling from [`BreakerConfig::probe_base`] up to `probe_max`, or
//! `blocked_pause` after a 50200), so an outage of the token endpoint costs a handful of
//! requests, not one per waiting call. After `invalid_client`, the credential files are
//! re-read before the next attempt.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::time::Instant;

use super::breaker::{BreakerConfig, humanize};
use super::classify::{self, TokenFailure};
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

/// Where a credential comes from.
#[derive(Debug, Clone)]
enum Origin {
    Value,
    /// Re-read on [`CredentialSource::reload`]; `var` names the variable that gave the path.
    File {
        var: &'static str,
        path: PathBuf,
    },
}

/// Largest credential file read (a client id or secret is well under 100 bytes).
const MAX_CREDENTIAL_FILE: u64 = 64 * 1024;

fn read_credential_file(var: &str, path: &Path) -> Result<String, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {var} {shown}: {e}"))?;
    if meta.len() > MAX_CREDENTIAL_FILE {
        return Err(format!(
            "{var} {shown} is {} bytes: expected a file holding just the value",
            meta.len()
        ));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {var} {shown}: {e}"))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(format!("{var} {shown} is empty"));
    }
    Ok(value.to_string())
}

/// The credentials a client uses, from fixed values or from files that can be replaced
/// while the relay runs (secret rotation: `SFMC_CLIENT_SECRET_FILE`, `SFMC_CLIENT_ID_FILE`).
///
/// Files are re-read by [`CredentialSource::reload`]: the token cache calls it before the
/// next token request after the endpoint rejected the current credentials, and
/// [`crate::sfmc::SfmcClient::reload_credentials`] (SIGHUP) calls it on demand. A new value
/// is logged (which file, the client id; never the secret).
#[derive(Debug)]
pub struct CredentialSource {
    id: Origin,
    secret: Origin,
    current: RwLock<Credentials>,
}

impl CredentialSource {
    /// Fixed credentials (never re-read).
    pub fn fixed(credentials: Credentials) -> Self {
        CredentialSource {
            id: Origin::Value,
            secret: Origin::Value,
            current: RwLock::new(credentials),
        }
    }

    /// From the process environment; see [`CredentialSource::from_vars`].
    pub fn from_env() -> Result<Option<Self>, String> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// From `SFMC_CLIENT_ID` or `SFMC_CLIENT_ID_FILE`, `SFMC_CLIENT_SECRET` or
    /// `SFMC_CLIENT_SECRET_FILE`, and optional `SFMC_ACCOUNT_ID` (values trimmed; empty =
    /// unset; a file holds just the value, surrounding whitespace ignored).
    ///
    /// `Ok(None)` when neither an id nor a secret is set (the built-in simulator is used).
    /// Errors (never containing a secret): only one of id and secret, a value and a file
    /// for the same credential, a file that cannot be read or is empty.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let var = |name: &str| {
            get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let pick = |value_var: &'static str,
                    file_var: &'static str|
         -> Result<Option<(Origin, String)>, String> {
            match (var(value_var), var(file_var)) {
                (Some(_), Some(_)) => Err(format!(
                    "both {value_var} and {file_var} are set: set one of them"
                )),
                (Some(v), None) => Ok(Some((Origin::Value, v))),
                (None, Some(p)) => {
                    let path = PathBuf::from(p);
                    let value = read_credential_file(file_var, &path)?;
                    Ok(Some((
                        Origin::File {
                            var: file_var,
                            path,
                        },
                        value,
                    )))
                }
                (None, None) => Ok(None),
            }
        };
        let id = pick("SFMC_CLIENT_ID", "SFMC_CLIENT_ID_FILE")?;
        let secret = pick("SFMC_CLIENT_SECRET", "SFMC_CLIENT_SECRET_FILE")?;
        let (id, secret) = match (id, secret) {
            (None, None) => return Ok(None),
            (Some(id), Some(secret)) => (id, secret),
            (Some(_), None) => {
                return Err(
                    "SFMC_CLIENT_ID (or SFMC_CLIENT_ID_FILE) is set but SFMC_CLIENT_SECRET \
(or SFMC_CLIENT_SECRET_FILE) is not: set both (or neither, to use the built-in SFMC simulator)"
                        .into(),
                );
            }
            (None, Some(_)) => {
                return Err(
                    "SFMC_CLIENT_SECRET (or SFMC_CLIENT_SECRET_FILE) is set but SFMC_CLIENT_ID \
(or SFMC_CLIENT_ID_FILE) is not: set both (or neither, to use the built-in SFMC simulator)"
                        .into(),
                );
            }
        };
        Ok(Some(CredentialSource {
            id: id.0,
            secret: secret.0,
            current: RwLock::new(Credentials {
                client_id: id.1,
                client_secret: Secret(secret.1),
                account_id: var("SFMC_ACCOUNT_ID"),
            }),
        }))
    }

    /// Use `account_id` when the environment set none (the rules' `sfmc.account_id`).
    pub fn or_account_id(self, account_id: Option<String>) -> Self {
        {
            let mut c = self.current.write().unwrap_or_else(|e| e.into_inner());
            if c.account_id.is_none() {
                c.account_id = account_id.filter(|a| !a.trim().is_empty());
            }
        }
        self
    }

    /// The credentials in use now.
    pub fn current(&self) -> Credentials {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether any credential comes from a file (so [`CredentialSource::reload`] can change it).
    pub fn is_reloadable(&self) -> bool {
        matches!(self.id, Origin::File { .. }) || matches!(self.secret, Origin::File { .. })
    }

    /// Re-read the credential files. `Ok(true)` when a value changed (logged, with `why`:
    /// which file, the client id, never the secret); `Ok(false)` when nothing changed or
    /// nothing comes from a file. On an error the credentials in use are kept.
    pub fn reload(&self, why: &str) -> Result<bool, String> {
        let read = |o: &Origin| match o {
            Origin::Value => Ok(None),
            Origin::File { var, path } => read_credential_file(var, path).map(Some),
        };
        let id = read(&self.id)?;
        let secret = read(&self.secret)?;
        let mut c = self.current.write().unwrap_or_else(|e| e.into_inner());
        let mut changed = Vec::new();
        if let (Some(id), Origin::File { path, .. }) = (id, &self.id)
            && id != c.client_id
        {
            c.client_id = id;
            changed.push(format!("client id from {}", path.display()));
        }
        if let (Some(secret), Origin::File { path, .. }) = (secret, &self.secret)
            && secret != c.client_secret.expose()
        {
            c.client_secret = Secret(secret);
            changed.push(format!("client secret from {}", path.display()));
        }
        if changed.is_empty() {
            tracing::debug!("SFMC credential files re-read ({why}): unchanged");
            return Ok(false);
        }
        tracing::info!(
            "SFMC credentials: picked up a new {} ({why}; client id {})",
            changed.join(" and a new "),
            c.client_id
        );
        Ok(true)
    }
}

/// A bearer token; `Debug`/`Display` print `***`. Cheap to clone. Two tokens are equal
/// when their values are.
#[derive(Clone)]
pub struct AccessToken {
    value: Arc<str>,
    fetched: Instant,
}

impl PartialEq for AccessToken {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Eq for AccessToken {}

impl AccessToken {
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// When the token request that returned it was sent.
    pub fn fetched_at(&self) -> Instant {
        self.fetched
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

/// Failure to obtain a token. Messages never contain the client secret. Every kind is an
/// infrastructure failure: the client's breaker waits and probes.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    pub kind: TokenFailure,
    /// One line: the token URL and SFMC's error.
    pub message: String,
    /// The server's `Retry-After` (429).
    pub retry_after: Option<Duration>,
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

/// Backoff between failed token requests.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    next_attempt: Option<Instant>,
    last: Option<AuthError>,
}

/// Caches one access token shared by all in-flight requests.
///
/// Only one token request runs at a time: concurrent callers that find the token missing
/// or stale wait for it and share its result (token or error). After a failure, no token
/// request is sent before the backoff has passed: callers get the last error at once.
pub struct TokenCache {
    http: reqwest::Client,
    version: AuthVersion,
    auth_url: String,
    source: Arc<CredentialSource>,
    backoff_config: BreakerConfig,
    cached: RwLock<Option<Cached>>,
    /// Held while a token request is in flight; holds the last failure and when it came.
    refresh: tokio::sync::Mutex<Option<(Instant, AuthError)>>,
    backoff: Mutex<Backoff>,
    requests: AtomicU64,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("version", &self.version)
            .field("auth_url", &self.auth_url)
            .field("client_id", &self.source.current().client_id)
            .field("token_requests", &self.token_requests())
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    pub fn new(
        http: reqwest::Client,
        endpoints: &Endpoints,
        source: Arc<CredentialSource>,
        backoff: BreakerConfig,
    ) -> Self {
        TokenCache {
            http,
            version: endpoints.version,
            auth_url: endpoints.auth_url.clone(),
            source,
            backoff_config: backoff,
            cached: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(None),
            backoff: Mutex::new(Backoff::default()),
            requests: AtomicU64::new(0),
        }
    }

    /// Number of token requests sent so far.
    pub fn token_requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The credential source (for [`CredentialSource::reload`]).
    pub fn source(&self) -> &Arc<CredentialSource> {
        &self.source
    }

    fn lock_backoff(&self) -> std::sync::MutexGuard<'_, Backoff> {
        self.backoff.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Time until the next token request may be sent (`None`: now).
    pub fn retry_in(&self) -> Option<Duration> {
        let b = self.lock_backoff();
        b.next_attempt
            .and_then(|at| at.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// Forget the backoff (new credentials were loaded): the next `get` may ask at once.
    pub fn reset_backoff(&self) {
        let mut b = self.lock_backoff();
        b.failures = 0;
        b.next_attempt = None;
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
        let rejected = {
            let b = self.lock_backoff();
            if let (Some(at), Some(last)) = (b.next_attempt, &b.last)
                && at > Instant::now()
            {
                return Err(AuthError {
                    message: format!(
                        "{} (next token request in {})",
                        last.message,
                        humanize(at - Instant::now())
                    ),
                    ..last.clone()
                });
            }
            b.last
                .as_ref()
                .is_some_and(|l| l.kind == TokenFailure::Rejected)
        };
        if rejected && self.source.is_reloadable() {
            match self
                .source
                .reload("the token endpoint rejected the credentials")
            {
                Ok(_) => {}
                Err(e) => tracing::warn!("SFMC credentials: {e}; keeping the current ones"),
            }
        }
        // Count the lifetime from when the request was sent, to err on the early side.
        let sent_at = Instant::now();
        match self.fetch(sent_at).await {
            Ok((token, lifetime)) => {
                let refresh_at = sent_at + lifetime - refresh_margin(lifetime);
                *self.cached.write().unwrap_or_else(|e| e.into_inner()) = Some(Cached {
                    token: token.clone(),
                    refresh_at,
                });
                *last_failure = None;
                *self.lock_backoff() = Backoff::default();
                Ok(token)
            }
            Err(err) => {
                let mut b = self.lock_backoff();
                b.failures = b.failures.saturating_add(1);
                let c = &self.backoff_config;
                let delay = match err.kind {
                    TokenFailure::Blocked => c.blocked_pause,
                    TokenFailure::RateLimited => err
                        .retry_after
                        .unwrap_or_else(|| c.probe_delay(b.failures - 1)),
                    TokenFailure::Rejected | TokenFailure::Unavailable => {
                        c.probe_delay(b.failures - 1)
                    }
                };
                b.next_attempt = Some(Instant::now() + delay);
                b.last = Some(err.clone());
                drop(b);
                tracing::debug!(error = %err.message, retry_in_ms = delay.as_millis() as u64, "token request failed");
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

    /// Drop the cached token if it was fetched before `at` (its scopes may be outdated).
    pub fn invalidate_fetched_before(&self, at: Instant) {
        let mut guard = self.cached.write().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_some_and(|c| c.token.fetched < at) {
            *guard = None;
        }
    }

    /// Replace any occurrence of the secret in server-provided text.
    fn redact(&self, text: &str, secret: &Secret) -> String {
        let secret = secret.expose();
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

    async fn fetch(&self, sent_at: Instant) -> Result<(AccessToken, Duration), AuthError> {
        let c = self.source.current();
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
        let fail = |kind: TokenFailure, message: String, retry_after: Option<Duration>| AuthError {
            kind,
            message: self.redact(
                &format!("token endpoint {}: {message}", self.auth_url),
                &c.client_secret,
            ),
            retry_after,
        };
        let sent = self.http.post(&self.auth_url).json(&body).send().await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let e = e.without_url();
                let kind = classify::classify_token_transport(classify::transport_kind(&e));
                return Err(fail(kind, retry::transport_message(&e), None));
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
                return Err(fail(
                    TokenFailure::Unavailable,
                    format!(
                        "HTTP {status}, reading the answer: {}",
                        retry::transport_message(&e.without_url())
                    ),
                    None,
                ));
            }
        };
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return self.parse_token(&json, sent_at).ok_or_else(|| {
                fail(
                    TokenFailure::Unavailable,
                    format!("HTTP {status} without a usable access token"),
                    None,
                )
            });
        }
        let kind = classify::classify_token_status(status, &json);
        Err(fail(
            kind,
            describe_auth_error(status, &json, &text),
            retry_after.or_else(|| retry::body_retry_after(&json)),
        ))
    }

    fn parse_token(&self, json: &Value, sent_at: Instant) -> Option<(AccessToken, Duration)> {
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
        Some((
            AccessToken {
                value: Arc::from(token),
                fetched: sent_at,
            },
            lifetime,
        ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn credentials_from_values_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, "s3cret-one\n").unwrap();
        let src = CredentialSource::from_vars(vars(&[
            ("SFMC_CLIENT_ID", "id-1".into()),
            ("SFMC_CLIENT_SECRET_FILE", secret_file.display().to_string()),
        ]))
        .unwrap()
        .unwrap()
        .or_account_id(Some("5140".into()));
        let c = src.current();
        assert_eq!(c.client_id, "id-1");
        assert_eq!(c.client_secret.expose(), "s3cret-one");
        assert_eq!(c.account_id.as_deref(), Some("5140"));
        assert!(src.is_reloadable());
        assert!(!src.reload("test").unwrap());
        std::fs::write(&secret_file, "s3cret-two").unwrap();
        assert!(src.reload("test").unwrap());
        assert_eq!(src.current().client_secret.expose(), "s3cret-two");
        // A broken file keeps the credentials in use.
        std::fs::write(&secret_file, "  \n").unwrap();
        let err = src.reload("test").unwrap_err();
        assert!(
            err.contains("is empty") && err.contains("SFMC_CLIENT_SECRET_FILE"),
            "{err}"
        );
        assert_eq!(src.current().client_secret.expose(), "s3cret-two");
        assert!(!format!("{src:?}").contains("s3cret"));
    }

    #[test]
    fn credential_errors_never_show_the_secret() {
        assert!(CredentialSource::from_vars(|_| None).unwrap().is_none());
        let both = CredentialSource::from_vars(vars(&[
            ("SFMC_CLIENT_ID", "id".into()),
            ("SFMC_CLIENT_SECRET", "hidden-value".into()),
            ("SFMC_CLIENT_SECRET_FILE", "/nonexistent".into()),
        ]))
        .unwrap_err();
        assert!(
            both.contains("both SFMC_CLIENT_SECRET and SFMC_CLIENT_SECRET_FILE"),
            "{both}"
        );
        let only_id =
            CredentialSource::from_vars(vars(&[("SFMC_CLIENT_ID", "id".into())])).unwrap_err();
        assert!(only_id.contains("SFMC_CLIENT_SECRET"), "{only_id}");
        let only_secret =
            CredentialSource::from_vars(vars(&[("SFMC_CLIENT_SECRET", "hidden-value".into())]))
                .unwrap_err();
        assert!(only_secret.contains("SFMC_CLIENT_ID"), "{only_secret}");
        let missing = CredentialSource::from_vars(vars(&[
            ("SFMC_CLIENT_ID_FILE", "/nonexistent/id".into()),
            ("SFMC_CLIENT_SECRET", "hidden-value".into()),
        ]))
        .unwrap_err();
        assert!(
            missing.contains("cannot read SFMC_CLIENT_ID_FILE /nonexistent/id"),
            "{missing}"
        );
        for e in [both, only_id, only_secret, missing] {
            assert!(!e.contains("hidden-value"), "{e}");
        }
    }
}
