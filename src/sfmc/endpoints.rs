//! Where the SFMC token endpoint and REST API live.
//!
//! The tenant subdomain is validated strictly *before* any URL is built from it: a
//! subdomain such as `evil.com/x?` would otherwise send the client secret to another host.

use std::fmt;

/// Which SFMC authentication API the tenant uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVersion {
    /// Legacy `POST https://auth.exacttargetapis.com/v1/requestToken` (no tenant subdomain).
    V1,
    /// `POST https://{subdomain}.auth.marketingcloudapis.com/v2/token`.
    V2,
}

impl AuthVersion {
    /// Path of the token endpoint below the auth base URL.
    pub fn token_path(self) -> &'static str {
        match self {
            AuthVersion::V1 => "/v1/requestToken",
            AuthVersion::V2 => "/v2/token",
        }
    }
}

impl fmt::Display for AuthVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthVersion::V1 => "v1",
            AuthVersion::V2 => "v2",
        })
    }
}

/// Resolved SFMC endpoints.
///
/// `rest_instance_url` returned by the v2 token endpoint is deliberately ignored: for a
/// subdomain-derived base it equals `https://{sub}.rest.marketingcloudapis.com` anyway, and
/// following a URL handed out by a response would let that response redirect bearer tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub version: AuthVersion,
    /// Full token URL (including `/v2/token` or `/v1/requestToken`).
    pub auth_url: String,
    /// REST base URL, without a trailing slash.
    pub rest_base: String,
}

/// Invalid SFMC endpoint configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "invalid SFMC subdomain {shown}: expected 28 characters, `mc` followed by 26 letters, \
         digits or hyphens (e.g. mc563885gzs27c5t9-63k636ttgm)"
    )]
    InvalidSubdomain { shown: String },
    #[error("invalid {what} {shown}: {reason} (expected a base URL such as https://host:port)")]
    InvalidUrl {
        what: &'static str,
        shown: String,
        reason: String,
    },
}

const V1_AUTH_BASE: &str = "https://auth.exacttargetapis.com";
const V1_REST_BASE: &str = "https://www.exacttargetapis.com";
const SUBDOMAIN_LEN: usize = 28;

/// Quote a user-supplied value for an error message, bounded in length.
fn shown(value: &str) -> String {
    let mut s: String = value.chars().take(64).collect();
    if value.chars().count() > 64 {
        s.push('…');
    }
    format!("{s:?}")
}

/// Validate a tenant subdomain: `^mc[a-z0-9-]{26}$`, case-insensitive. Returns it lowercased.
pub fn validate_subdomain(subdomain: &str) -> Result<String, ConfigError> {
    let ok = subdomain.len() == SUBDOMAIN_LEN
        && subdomain.is_ascii()
        && subdomain[..2].eq_ignore_ascii_case("mc")
        && subdomain[2..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(subdomain.to_ascii_lowercase())
    } else {
        Err(ConfigError::InvalidSubdomain {
            shown: shown(subdomain),
        })
    }
}

/// Validate an override base URL (http or https, a host, no credentials, query or
/// fragment). Returns it without trailing slashes.
pub fn validate_base_url(what: &'static str, value: &str) -> Result<String, ConfigError> {
    let err = |reason: &str| ConfigError::InvalidUrl {
        what,
        // Never echo a URL that may carry credentials.
        shown: if value.contains('@') {
            "(redacted)".to_string()
        } else {
            shown(value)
        },
        reason: reason.to_string(),
    };
    let url = reqwest::Url::parse(value.trim()).map_err(|e| err(&e.to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(err("scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(err("missing host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(err("credentials in the URL are not allowed"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(err("query strings and fragments are not allowed"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

impl Endpoints {
    /// Resolve endpoints. With a subdomain: v2 on `{sub}.auth/rest.marketingcloudapis.com`;
    /// without: legacy v1 on `auth/www.exacttargetapis.com`. Overrides are base URLs (the
    /// token path for the version is appended to the auth override).
    pub fn resolve(
        subdomain: Option<&str>,
        auth_url_override: Option<&str>,
        rest_url_override: Option<&str>,
    ) -> Result<Endpoints, ConfigError> {
        let sub = subdomain.map(validate_subdomain).transpose()?;
        let auth_override = auth_url_override
            .map(|u| validate_base_url("SFMC auth URL", u))
            .transpose()?;
        let rest_override = rest_url_override
            .map(|u| validate_base_url("SFMC REST URL", u))
            .transpose()?;
        let (version, auth_base, rest_base) = match &sub {
            Some(sub) => (
                AuthVersion::V2,
                format!("https://{sub}.auth.marketingcloudapis.com"),
                format!("https://{sub}.rest.marketingcloudapis.com"),
            ),
            None => (
                AuthVersion::V1,
                V1_AUTH_BASE.to_string(),
                V1_REST_BASE.to_string(),
            ),
        };
        let auth_base = auth_override.unwrap_or(auth_base);
        Ok(Endpoints {
            version,
            auth_url: format!("{auth_base}{}", version.token_path()),
            rest_base: rest_override.unwrap_or(rest_base),
        })
    }

    /// Resolve from `SFMC_SUBDOMAIN`, `SFMC_AUTH_URL`, `SFMC_REST_URL` (empty = unset).
    pub fn from_env(env: &crate::env::Env) -> Result<Endpoints, ConfigError> {
        Endpoints::from_vars(|name| env.get(name))
    }

    /// [`Endpoints::from_env`] over any variable lookup (values are trimmed; empty = unset).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Endpoints, ConfigError> {
        let var = |name: &str| {
            get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let sub = var("SFMC_SUBDOMAIN");
        let auth = var("SFMC_AUTH_URL");
        let rest = var("SFMC_REST_URL");
        Endpoints::resolve(sub.as_deref(), auth.as_deref(), rest.as_deref())
    }

    /// Full URL for a REST path (which must start with `/`).
    pub fn rest_url(&self, path: &str) -> String {
        format!("{}{}", self.rest_base, path)
    }
}
