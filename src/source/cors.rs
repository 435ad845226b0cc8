//! CORS for the ingest API, so that analytics.js in a browser can post to the relay.
//!
//! analytics.js (`@segment/analytics-next` since 1.84) sends `Authorization: Basic ...`
//! (and `X-Retry-Count` on retries), so the browser sends a preflight `OPTIONS /v1/...`
//! first. It is answered as Segment's API answers it: 204 with
//! `Access-Control-Allow-Origin` (the request's origin), `-Methods: POST`, `-Headers`
//! covering what the libraries send, and a max age. Which origins may call is
//! `--cors-origins` (default: any origin, as Segment's API: a browser write key is public).
//!
//! A request from a browser whose `Origin` is not allowed is refused with 403 (preflight
//! or not: a `text/plain` POST needs no preflight, so refusing only preflights would not
//! keep such an origin out) and counted. Requests without `Origin` (servers, curl) are
//! not CORS requests and pass.

use super::http::{Ingest, error_response};
use super::metrics::refusal;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Request headers every preflight allows: what Segment's libraries send.
const ALLOWED_HEADERS: &str = "authorization, content-type, content-encoding, x-retry-count";
/// How long a browser may cache a preflight answer (Chromium caps it at 2 hours).
const MAX_AGE_SECS: &str = "86400";

/// The browser origins allowed to call the ingest API (`--cors-origins`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// Any origin (the default, as Segment's API).
    #[default]
    Any,
    /// Only these: `scheme://host[:port]`, or `scheme://*.domain` for its subdomains.
    List(Vec<String>),
}

impl CorsOrigins {
    /// Parse `*` or a comma-separated list of origins (`https://shop.example.com`,
    /// `https://*.example.com`, `http://localhost:3000`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let items: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .collect();
        if items.is_empty() {
            return Err("no origins given: use `*` for any origin, or a comma-separated list such as `https://shop.example.com,https://*.example.com`".into());
        }
        if items.contains(&"*") {
            if items.len() > 1 {
                return Err("`*` (any origin) cannot be combined with a list of origins".into());
            }
            return Ok(CorsOrigins::Any);
        }
        let mut list = Vec::with_capacity(items.len());
        for item in items {
            list.push(normalize_pattern(item)?);
        }
        Ok(CorsOrigins::List(list))
    }

    /// Whether a request with this `Origin` header may call the API.
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            CorsOrigins::Any => true,
            CorsOrigins::List(list) => {
                let origin = origin.trim().to_ascii_lowercase();
                list.iter().any(|p| matches(p, &origin))
            }
        }
    }
}

impl FromStr for CorsOrigins {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        CorsOrigins::parse(s)
    }
}

impl fmt::Display for CorsOrigins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorsOrigins::Any => f.write_str("*"),
            CorsOrigins::List(l) => f.write_str(&l.join(",")),
        }
    }
}

/// `https://Shop.Example.com/` -> `https://shop.example.com`; refuses paths, queries and
/// anything that is not `scheme://host[:port]`.
fn normalize_pattern(item: &str) -> Result<String, String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid origin `{item}` in --cors-origins: {why} (expected scheme://host[:port], e.g. https://shop.example.com or https://*.example.com)"
        ))
    };
    let lower = item.to_ascii_lowercase();
    let lower = lower.strip_suffix('/').unwrap_or(&lower);
    let Some((scheme, rest)) = lower.split_once("://") else {
        return bad("no scheme");
    };
    if scheme != "http" && scheme != "https" {
        return bad("the scheme must be http or https");
    }
    if rest.is_empty() {
        return bad("no host");
    }
    if rest.contains(['/', '?', '#', '@', ' ']) {
        return bad("an origin has no path, query or user");
    }
    let host = rest.strip_prefix("*.").unwrap_or(rest);
    let (host, port) = if let Some(v6) = host.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, tail)) => match tail.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return bad("unreadable IPv6 address"),
            },
            None => return bad("unreadable IPv6 address"),
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        }
    };
    if host.is_empty() || host.contains('*') {
        return bad("`*` is only allowed as the first label (`https://*.example.com`)");
    }
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return bad("the port is not a number");
    }
    Ok(lower.to_string())
}

fn matches(pattern: &str, origin: &str) -> bool {
    match pattern.split_once("://*.") {
        None => pattern == origin,
        Some((scheme, domain)) => origin
            .strip_prefix(scheme)
            .and_then(|r| r.strip_prefix("://"))
            .is_some_and(|host| {
                host.len() > domain.len() + 1 && host.ends_with(&format!(".{domain}"))
            }),
    }
}

/// Middleware on every route: answers preflights, refuses origins not allowed, and adds
/// the CORS headers to every answer a browser gets from `/v1/...`.
pub async fn layer(State(st): State<Arc<Ingest>>, req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with("/v1/") {
        return next.run(req).await;
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = origin
        .as_ref()
        .is_none_or(|o| o.to_str().is_ok_and(|o| st.cors.allows(o)));
    let m = &st.metrics;
    if req.method() == Method::OPTIONS {
        if !allowed {
            m.preflights_refused.fetch_add(1, Ordering::Relaxed);
            return refuse_origin(&st, origin.as_ref());
        }
        let wanted = req.headers().get(header::ACCESS_CONTROL_REQUEST_METHOD);
        if wanted.is_some_and(|w| w != "POST" && w != "GET") {
            m.preflights_refused.fetch_add(1, Ordering::Relaxed);
            let mut r = error_response(
                m,
                refusal::METHOD_NOT_ALLOWED,
                StatusCode::METHOD_NOT_ALLOWED,
                "only POST (and GET for the settings) is accepted",
            );
            add_origin(r.headers_mut(), origin.as_ref());
            return r;
        }
        m.preflights_allowed.fetch_add(1, Ordering::Relaxed);
        return preflight(req.headers(), origin.as_ref());
    }
    if !allowed {
        return refuse_origin(&st, origin.as_ref());
    }
    let mut r = next.run(req).await;
    add_origin(r.headers_mut(), origin.as_ref());
    r
}

fn refuse_origin(st: &Ingest, origin: Option<&HeaderValue>) -> Response {
    let shown = origin
        .and_then(|o| o.to_str().ok())
        .unwrap_or("?")
        .chars()
        .take(200)
        .collect::<String>();
    // No Access-Control-Allow-Origin: the browser blocks the page from reading this.
    error_response(
        &st.metrics,
        refusal::ORIGIN_NOT_ALLOWED,
        StatusCode::FORBIDDEN,
        format!("origin {shown} is not allowed (sfmc-relay serve --cors-origins)"),
    )
}

fn add_origin(h: &mut HeaderMap, origin: Option<&HeaderValue>) {
    match origin {
        Some(o) => {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        None => {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
    }
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("retry-after"),
    );
}

fn preflight(req: &HeaderMap, origin: Option<&HeaderValue>) -> Response {
    let mut r = Response::new(axum::body::Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    add_origin(h, origin);
    h.remove(header::ACCESS_CONTROL_EXPOSE_HEADERS);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    );
    // What the libraries send, plus whatever else this request asks for (custom headers
    // configured in analytics.js): the write key, not the header list, is the access
    // control here.
    let mut allow = ALLOWED_HEADERS.to_string();
    if let Some(asked) = req
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
    {
        for name in asked.split(',').map(str::trim) {
            let lower = name.to_ascii_lowercase();
            let token = !lower.is_empty()
                && lower
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if token && !allow.split(", ").any(|a| a == lower) {
                allow.push_str(", ");
                allow.push_str(&lower);
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(&allow) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(MAX_AGE_SECS),
    );
    // Chromium's Private Network Access: a public page calling a relay on a private
    // address asks first.
    if req
        .get("access-control-request-private-network")
        .is_some_and(|v| v == "true")
    {
        h.insert(
            "access-control-allow-private-network",
            HeaderValue::from_static("true"),
        );
    }
    h.append(
        header::VARY,
        HeaderValue::from_static("Access-Control-Request-Headers"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches_origins() {
        assert_eq!(CorsOrigins::parse("*").unwrap(), CorsOrigins::Any);
        assert!(CorsOrigins::Any.allows("https://anything.example"));
        let c = CorsOrigins::parse(
            "https://Shop.Example.com/, https://*.example.org, http://localhost:3000",
        )
        .unwrap();
        assert!(c.allows("https://shop.example.com"));
        assert!(c.allows("HTTPS://SHOP.EXAMPLE.COM"));
        assert!(!c.allows("http://shop.example.com"));
        assert!(!c.allows("https://shop.example.com.evil.net"));
        assert!(c.allows("https://a.example.org"));
        assert!(c.allows("https://a.b.example.org"));
        assert!(!c.allows("https://example.org"));
        assert!(!c.allows("https://evilexample.org"));
        assert!(c.allows("http://localhost:3000"));
        assert!(!c.allows("http://localhost:3001"));
        assert!(!c.allows("null"));
        let v6 = CorsOrigins::parse("http://[::1]:8080,http://[::1]").unwrap();
        assert!(v6.allows("http://[::1]:8080") && v6.allows("http://[::1]"));
        assert_eq!(
            c.to_string(),
            "https://shop.example.com,https://*.example.org,http://localhost:3000"
        );
    }

    #[test]
    fn refuses_what_is_not_an_origin() {
        for bad in [
            "",
            " , ",
            "shop.example.com",
            "ftp://x.example",
            "https://x.example/path",
            "https://x.example?q",
            "https://a.*.example",
            "https://*",
            "https://x.example:http",
            "*, https://x.example",
        ] {
            let e = CorsOrigins::parse(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
    }
}
