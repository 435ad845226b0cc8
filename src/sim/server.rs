//! The HTTP side: router, handlers, fault/auth gate, listener and lifecycle.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::serve::{IncomingStream, Listener};
use axum::{Json, Router};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::bulk;
use super::config::{Faults, SimConfig};
use super::faults::{Outage, RestOutage, TokenOutage, required_scope};
use super::rows::{RowIn, ValIn};
use super::state::{DeTarget, FaultDecision, LogEntry, SimState, SimStats, TokenCheck};
use super::validate::{
    NO_EXISTING_FIELD, RowError, Scratch, guid_for, prepare_declared, prepare_undeclared,
};

const DOCS_URL: &str = "https://developer.salesforce.com/docs";

// ----- lifecycle ------------------------------------------------------------------------

/// A running simulator. Dropping the handle starts a graceful shutdown in the background;
/// [`SimHandle::shutdown`] waits for it.
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    state: Arc<SimState>,
    shutdown_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// The bound address (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT`, no trailing slash. Serves both the auth and the REST endpoints.
    pub fn base_url(&self) -> &str {
        self.state.base_url()
    }

    /// The environment that points a relay at this simulator: its base URL for the auth
    /// and REST endpoints (legacy v1), and credentials it accepts when no `clients` are
    /// configured. For tests and benchmarks that run the relay in-process.
    pub fn client_env(&self) -> std::collections::HashMap<String, String> {
        [
            ("SFMC_CLIENT_ID", "sim-client"),
            ("SFMC_CLIENT_SECRET", "sim-secret"),
            ("SFMC_AUTH_URL", self.base_url()),
            ("SFMC_REST_URL", self.base_url()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Shared state, for inspection and control from Rust.
    pub fn state(&self) -> &Arc<SimState> {
        &self.state
    }

    /// Stored rows of a data extension (see [`SimState::rows`]).
    pub fn rows(&self, data_extension_key: &str) -> Vec<Value> {
        self.state.rows(data_extension_key)
    }

    /// Contacts in creation order.
    pub fn contacts(&self) -> Vec<Value> {
        self.state.contacts()
    }

    /// API events in arrival order.
    pub fn api_events(&self) -> Vec<Value> {
        self.state.api_events()
    }

    /// Statistics snapshot.
    pub fn stats(&self) -> SimStats {
        self.state.stats()
    }

    /// Every accepted row upsert in arrival order.
    pub fn log(&self) -> Vec<LogEntry> {
        self.state.log()
    }

    /// Human-readable "what landed".
    pub fn summary_text(&self) -> String {
        self.state.summary_text()
    }

    /// Invalidate all tokens.
    pub fn revoke_tokens(&self) {
        self.state.revoke_tokens()
    }

    /// Replace the fault settings.
    pub fn set_faults(&self, faults: Faults) {
        self.state.set_faults(faults)
    }

    /// Start an outage window (its `start` counts from now). Errors on an invalid outage.
    pub fn add_outage(&self, outage: Outage) -> anyhow::Result<()> {
        self.state.add_outage(outage)
    }

    /// End every outage window.
    pub fn clear_outages(&self) {
        self.state.clear_outages()
    }

    /// Forget stored data and statistics.
    pub fn reset(&self) {
        self.state.reset()
    }

    /// Stop serving and wait (at most 5 s, then abort) for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(());
        }
    }
}

/// Bind `addr` (port 0 picks a free port) and serve the simulator in a background task.
pub async fn start(config: SimConfig, addr: SocketAddr) -> anyhow::Result<SimHandle> {
    config.validate()?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the SFMC simulator to {addr}"))?;
    let local = listener.local_addr()?;
    let mut url_addr = local;
    if url_addr.ip().is_unspecified() {
        url_addr.set_ip(if local.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let state = Arc::new(SimState::new(config, format!("http://{url_addr}")));
    let app = router(state.clone());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let result = axum::serve(
            SimListener { inner: listener },
            app.into_make_service_with_connect_info::<ConnMeta>(),
        )
        .with_graceful_shutdown(async move {
            let _ = rx.await;
        })
        .await;
        if let Err(e) = result {
            tracing::error!("SFMC simulator stopped: {e}");
        }
    });
    Ok(SimHandle {
        addr: local,
        state,
        shutdown_tx: Some(tx),
        task: Some(task),
    })
}

/// Serve until ctrl-c (for `sfmc-relay sim`). Prints the listening address on stderr
/// at start and the summary of what landed at the end.
pub async fn serve(config: SimConfig, addr: SocketAddr) -> anyhow::Result<()> {
    let handle = start(config, addr).await?;
    eprintln!(
        "SFMC simulator listening on {} (auth: {0}/v2/token, REST: {0}/, inspection: {0}/sim/summary)",
        handle.base_url()
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for ctrl-c")?;
    eprintln!("\n{}", handle.summary_text());
    handle.shutdown().await;
    Ok(())
}

// ----- listener that can drop a connection mid-request --------------------------------

/// Per-connection data handed to handlers: the peer and a flag that kills the connection
/// (used by the `rate_drop` fault: the response is never written).
#[derive(Debug, Clone)]
pub(crate) struct ConnMeta {
    #[allow(dead_code)]
    remote: SocketAddr,
    kill: Arc<AtomicBool>,
}

struct SimListener {
    inner: TcpListener,
}

impl Listener for SimListener {
    type Io = KillableStream;
    type Addr = ConnMeta;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, remote) = Listener::accept(&mut self.inner).await;
        let _ = stream.set_nodelay(true);
        let kill = Arc::new(AtomicBool::new(false));
        (
            KillableStream {
                inner: stream,
                kill: kill.clone(),
            },
            ConnMeta { remote, kill },
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(ConnMeta {
            remote: self.inner.local_addr()?,
            kill: Arc::new(AtomicBool::new(false)),
        })
    }
}

impl Connected<IncomingStream<'_, SimListener>> for ConnMeta {
    fn connect_info(stream: IncomingStream<'_, SimListener>) -> Self {
        stream.remote_addr().clone()
    }
}

struct KillableStream {
    inner: TcpStream,
    kill: Arc<AtomicBool>,
}

impl KillableStream {
    fn killed(&self) -> bool {
        self.kill.load(Ordering::Relaxed)
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection dropped by fault injection",
    )
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ----- router ---------------------------------------------------------------------------

type St = State<Arc<SimState>>;

fn router(state: Arc<SimState>) -> Router {
    let body_limit = state
        .config()
        .max_body_bytes
        .saturating_mul(4)
        .max(64 << 20);
    let api = Router::new()
        .route("/v2/token", post(token_v2))
        .route("/v1/requestToken", post(token_v1))
        .route("/hub/v1/dataevents/{key}/rowset", post(rowset))
        .route("/hub/v1/dataevents/{key}/rows/{pk}", put(put_row))
        .route("/contacts/v1/contacts", post(contacts))
        .route("/interaction/v1/events", post(events))
        .route(
            "/data/v1/async/dataextensions/{key}/rows",
            put(bulk::async_rows),
        )
        .route(
            "/data/v1/async/{request_id}/status",
            get(bulk::async_status),
        )
        .route(
            "/data/v1/async/{request_id}/results",
            get(bulk::async_results),
        )
        .route("/contacts/v1/establish", post(bulk::establish))
        .route("/interaction/v1/async/events", post(bulk::async_events))
        .route_layer(middleware::from_fn_with_state(state.clone(), gate));
    let inspect = Router::new()
        .route("/sim/dataextensions", get(sim_data_extensions))
        .route("/sim/dataextensions/{key}/rows", get(sim_rows))
        .route("/sim/contacts", get(sim_contacts))
        .route("/sim/events", get(sim_events))
        .route("/sim/stats", get(sim_stats))
        .route("/sim/log", get(sim_log))
        .route("/sim/summary", get(sim_summary))
        .route("/sim/revoke-tokens", post(sim_revoke))
        .route("/sim/faults", post(sim_set_faults).get(sim_get_faults))
        .route(
            "/sim/outages",
            post(sim_add_outage)
                .get(sim_get_outages)
                .delete(sim_clear_outages),
        )
        .route("/sim/reset", post(sim_reset));
    api.merge(inspect)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

pub(super) fn json_response(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

pub(super) fn sfmc_error(
    status: StatusCode,
    message: impl Into<String>,
    errorcode: u32,
) -> Response {
    json_response(
        status,
        json!({"message": message.into(), "errorcode": errorcode, "documentation": ""}),
    )
}

fn not_authorized() -> Response {
    json_response(
        StatusCode::UNAUTHORIZED,
        json!({"message": "Not Authorized", "errorcode": 0, "documentation": DOCS_URL}),
    )
}

fn too_many_requests(retry_after: u64) -> Response {
    let mut resp = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        json!({"message": "Rate limit exceeded", "errorcode": 50100, "retryAfter": retry_after}),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    resp
}

pub(super) fn too_large(limit: usize) -> Response {
    sfmc_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("Request body exceeds the maximum size of {limit} bytes."),
        10000,
    )
}

pub(super) fn bad_json(e: &serde_json::Error) -> Response {
    sfmc_error(
        StatusCode::BAD_REQUEST,
        format!("Request body is not valid JSON: {e}"),
        10000,
    )
}

async fn not_found(method: Method, uri: axum::http::Uri, State(st): St) -> Response {
    st.record_call("unmatched", "404");
    sfmc_error(
        StatusCode::NOT_FOUND,
        format!("Not Found: no route for {method} {}", uri.path()),
        404,
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    sfmc_error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("Method {method} is not allowed for {}", uri.path()),
        405,
    )
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Counts every call, and for REST calls applies faults and the bearer-token check.
async fn gate(State(st): St, req: Request, next: Next) -> Response {
    let endpoint = match req.extensions().get::<MatchedPath>() {
        Some(m) => format!("{} {}", req.method(), m.as_str()),
        None => format!("{} {}", req.method(), req.uri().path()),
    };
    let path = req.uri().path();
    let is_auth = path == "/v2/token" || path == "/v1/requestToken";
    let mut answer_delay = None;
    if !is_auth {
        let de_call = path.starts_with("/hub/");
        let decision = match st.rest_outage(req.method(), path) {
            RestOutage::Respond(resp, _) => {
                st.record_call(&endpoint, resp.status().as_str());
                return resp;
            }
            RestOutage::DropAfterHandling(_) => FaultDecision::Drop { after: true },
            RestOutage::DelayAnswer(d, _) => {
                answer_delay = Some(d);
                FaultDecision::None { slow: None }
            }
            RestOutage::None => st.roll_faults(de_call),
        };
        let need = required_scope(req.method(), path);
        let early = match decision {
            FaultDecision::Drop { after } => {
                let kill = req
                    .extensions()
                    .get::<ConnectInfo<ConnMeta>>()
                    .map(|ConnectInfo(meta)| meta.kill.clone());
                if after
                    && bearer(req.headers())
                        .is_some_and(|t| st.check_token(t, need) == TokenCheck::Ok)
                {
                    let _ = next.run(req).await;
                }
                if let Some(kill) = kill {
                    kill.store(true, Ordering::Relaxed);
                }
                st.record_call(&endpoint, "dropped");
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
            FaultDecision::TooManyRequests { retry_after } => Some(too_many_requests(retry_after)),
            _ => None,
        };
        let early = early.or_else(|| {
            // A token without the call's scope gets the same 401 as an expired one.
            let ok =
                bearer(req.headers()).is_some_and(|t| st.check_token(t, need) == TokenCheck::Ok);
            (!ok).then(not_authorized)
        });
        let early = early.or_else(|| match decision {
            FaultDecision::ServerError => Some(sfmc_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "An unexpected error occurred.",
                0,
            )),
            FaultDecision::Bare10006 => {
                let spec = path.split('/').nth(4).unwrap_or_default();
                let guid = match st.resolve_de(spec) {
                    Ok(t) => st.de_guid(&t),
                    Err(_) => guid_for(spec),
                };
                Some(sfmc_error(
                    StatusCode::BAD_REQUEST,
                    format!("Unable to save rows for data extension ID {guid}"),
                    10006,
                ))
            }
            _ => None,
        });
        if let Some(resp) = early {
            st.record_call(&endpoint, resp.status().as_str());
            return resp;
        }
        if let FaultDecision::None { slow: Some(delay) } = decision {
            tokio::time::sleep(delay).await;
        }
    }
    let resp = next.run(req).await;
    if let Some(d) = answer_delay {
        tokio::time::sleep(d).await;
    }
    st.record_call(&endpoint, resp.status().as_str());
    resp
}

// ----- auth -----------------------------------------------------------------------------

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        json!({"error": error, "error_description": description, "error_uri": DOCS_URL}),
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_form(body: &str) -> Map<String, Value> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), Value::String(percent_decode(v)))
        })
        .collect()
}

fn field_str(map: &Map<String, Value>, name: &str) -> Option<String> {
    match map.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

async fn token_v2(State(st): St, headers: HeaderMap, body: Bytes) -> Response {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("application/x-www-form-urlencoded"));
    let Ok(text) = std::str::from_utf8(&body) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request body is not UTF-8.",
        );
    };
    let fields = if is_form {
        parse_form(text)
    } else {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "The request body must be a JSON object.",
                );
            }
            Err(_) if !text.trim_start().starts_with(['{', '[']) && text.contains('=') => {
                parse_form(text)
            }
            Err(e) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    &format!("The request body is not valid JSON: {e}"),
                );
            }
        }
    };
    if field_str(&fields, "grant_type").as_deref() != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Use \"client_credentials\" as the value for the \"grant_type\" parameter.",
        );
    }
    let id = field_str(&fields, "client_id").unwrap_or_default();
    let secret = field_str(&fields, "client_secret").unwrap_or_default();
    let accepted = match st.token_outage(&secret, true) {
        TokenOutage::Respond(resp, _) => return resp,
        TokenOutage::Accept => !id.is_empty(),
        TokenOutage::None => false,
    };
    if !accepted && !st.credentials_ok(&id, &secret) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed. Make sure that the client ID and client secret are correct.",
        );
    }
    let requested = field_str(&fields, "scope")
        .map(|s| s.split_whitespace().map(str::to_string).collect::<Vec<_>>());
    let token = st.issue_token_for(requested, None);
    let scope = st.token_scopes(&token);
    let base = st.base_url();
    json_response(
        StatusCode::OK,
        json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": st.config().token_lifetime,
            "scope": scope,
            "soap_instance_url": format!("{base}/"),
            "rest_instance_url": format!("{base}/"),
        }),
    )
}

async fn token_v1(State(st): St, body: Bytes) -> Response {
    let fields = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return sfmc_error(
                StatusCode::BAD_REQUEST,
                "The request body must be a JSON object.",
                10000,
            );
        }
        Err(e) => return bad_json(&e),
    };
    let id = field_str(&fields, "clientId").unwrap_or_default();
    let secret = field_str(&fields, "clientSecret").unwrap_or_default();
    let accepted = match st.token_outage(&secret, false) {
        TokenOutage::Respond(resp, _) => return resp,
        TokenOutage::Accept => !id.is_empty(),
        TokenOutage::None => false,
    };
    if !accepted && !st.credentials_ok(&id, &secret) {
        return sfmc_error(StatusCode::UNAUTHORIZED, "Unauthorized", 1);
    }
    let token = st.issue_token_for(None, Some(&id));
    json_response(
        StatusCode::OK,
        json!({"accessToken": token, "expiresIn": st.config().token_lifetime}),
    )
}

// ----- data extension rows --------------------------------------------------------------

fn row_error_response(st: &SimState, target: &DeTarget, e: RowError) -> Response {
    match e {
        RowError::MissingPrimaryKey(name) => sfmc_error(
            StatusCode::BAD_REQUEST,
            format!("Primary key '{name}' does not exist."),
            10000,
        ),
        RowError::Invalid(errors) => {
            let additional: Vec<Value> = errors
                .into_iter()
                .map(|m| json!({"message": m, "errorcode": 10000, "documentation": ""}))
                .collect();
            json_response(
                StatusCode::BAD_REQUEST,
                json!({
                    "message": format!("Unable to save rows for data extension ID {}", st.de_guid(target)),
                    "errorcode": 10006,
                    "documentation": "",
                    "additionalErrors": additional,
                }),
            )
        }
        // Reported inside the 10006 aggregate, as SFMC does.
        RowError::NoExistingField => row_error_response(
            st,
            target,
            RowError::Invalid(vec![NO_EXISTING_FIELD.to_string()]),
        ),
        RowError::Malformed(m) => sfmc_error(StatusCode::BAD_REQUEST, m, 10000),
    }
}

/// Validate rows in order; save those before the first bad one; everything from the bad
/// row on is rejected (and the error does not say which row it was).
fn process_rows(st: &SimState, target: &DeTarget, rows: Vec<RowIn<'_>>) -> Result<(), RowError> {
    let ci = st.config().case_insensitive_key_values;
    let total = rows.len();
    let mut prepared = Vec::with_capacity(total);
    let mut failure = None;
    let mut scratch = Scratch::default();
    for row in rows {
        let result = match target {
            DeTarget::Declared(schema) => prepare_declared(schema, row, ci, &mut scratch),
            DeTarget::Undeclared(_) => prepare_undeclared(row, ci),
        };
        match result {
            Ok(p) => prepared.push(p),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let rejected = (total - prepared.len()) as u64;
    st.apply_rows(target, prepared, rejected);
    match failure {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

async fn rowset(State(st): St, Path(spec): Path<String>, body: Bytes) -> Response {
    let limit = st.config().max_body_bytes;
    if body.len() > limit {
        return too_large(limit);
    }
    let target = match st.resolve_de(&spec) {
        Ok(t) => t,
        Err(m) => return sfmc_error(StatusCode::BAD_REQUEST, m, 10001),
    };
    // Rows borrow their names and strings from `body`. UTF-8 is checked once for the whole
    // body (per string it was a tenth of the simulator); a body that is not UTF-8 is read
    // as bytes so the error is serde_json's own.
    let parsed = match std::str::from_utf8(&body) {
        Ok(text) => serde_json::from_str::<ValIn>(text),
        Err(_) => serde_json::from_slice::<ValIn>(&body),
    };
    let rows: Vec<RowIn> = match parsed {
        Ok(ValIn::Arr(rows)) => rows.into_iter().map(RowIn::from_view).collect(),
        Ok(_) => {
            return sfmc_error(
                StatusCode::BAD_REQUEST,
                "The request body must be a JSON array of rows ({\"keys\":{...},\"values\":{...}}).",
                10000,
            );
        }
        Err(e) => return bad_json(&e),
    };
    let result = process_rows(&st, &target, rows);
    match result {
        // The rows are echoed back as sent.
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => row_error_response(&st, &target, e),
    }
}

/// `K1:v1,K2:v2` -> keys object.
fn parse_pk_spec(pk: &str) -> Option<Map<String, Value>> {
    let mut keys = Map::new();
    for part in pk.split(',') {
        let (k, v) = part.split_once(':')?;
        if k.trim().is_empty() {
            return None;
        }
        keys.insert(k.to_string(), Value::String(v.to_string()));
    }
    Some(keys)
}

async fn put_row(State(st): St, Path((spec, pk)): Path<(String, String)>, body: Bytes) -> Response {
    let limit = st.config().max_body_bytes;
    if body.len() > limit {
        return too_large(limit);
    }
    let target = match st.resolve_de(&spec) {
        Ok(t) => t,
        Err(m) => return sfmc_error(StatusCode::BAD_REQUEST, m, 10001),
    };
    let Some(keys) = parse_pk_spec(&pk) else {
        return sfmc_error(
            StatusCode::BAD_REQUEST,
            format!("Invalid primary key specification '{pk}': expected Key:value[,Key2:value2]."),
            10000,
        );
    };
    let values = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut m)) => match m.remove("values") {
            Some(Value::Object(v)) => v,
            None | Some(Value::Null) => Map::new(),
            Some(_) => {
                return sfmc_error(
                    StatusCode::BAD_REQUEST,
                    "The 'values' property must be an object.",
                    10000,
                );
            }
        },
        Ok(_) => {
            return sfmc_error(
                StatusCode::BAD_REQUEST,
                "The request body must be an object {\"values\":{...}}.",
                10000,
            );
        }
        Err(e) => return bad_json(&e),
    };
    let row = json!({"keys": keys, "values": values});
    match process_rows(&st, &target, vec![RowIn::from_value(&row)]) {
        Ok(()) => json_response(StatusCode::OK, row),
        Err(e) => row_error_response(&st, &target, e),
    }
}

// ----- contacts and events --------------------------------------------------------------

fn contact_error(message: String) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({
            "message": message,
            "errorcode": 10000,
            "documentation": "",
            "operationStatus": "FAIL",
            "hasErrors": true,
            "resultMessages": [{"resultType": "Error", "resultCode": "InvalidContactKey", "resultMessage": message}],
        }),
    )
}

async fn contacts(State(st): St, body: Bytes) -> Response {
    let fields = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return contact_error("The request body must be a JSON object.".into()),
        Err(e) => return bad_json(&e),
    };
    let key = match fields.get("contactKey") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return contact_error("contactKey is required and must be a non-empty string.".into()),
    };
    if key.chars().count() > 254 {
        return contact_error("contactKey exceeds the maximum length of 254 characters.".into());
    }
    if key.contains(':') {
        return contact_error("contactKey must not contain a colon (':').".into());
    }
    let attribute_sets = match fields.get("attributeSets") {
        None | Some(Value::Null) => Value::Array(Vec::new()),
        Some(v @ Value::Array(_)) => v.clone(),
        Some(_) => return contact_error("attributeSets must be an array.".into()),
    };
    let (id, is_new) = st.upsert_contact(&key, attribute_sets);
    json_response(
        StatusCode::OK,
        json!({
            "operationStatus": "OK",
            "rowsAffetcted": 1,
            "contactKey": key,
            "contactId": id,
            "isNewContactKey": is_new,
            "hasErrors": false,
            "resultMessages": [],
        }),
    )
}

pub(super) fn get_ci<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// A request body that must be a JSON object (else the 400 to answer).
pub(super) fn json_object(body: &[u8]) -> Result<Map<String, Value>, Box<Response>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Box::new(sfmc_error(
            StatusCode::BAD_REQUEST,
            "The request body must be a JSON object.",
            10000,
        ))),
        Err(e) => Err(Box::new(bad_json(&e))),
    }
}

/// A member (named case-insensitively) that must be a non-empty string (else the 400).
pub(super) fn required_str(
    fields: &Map<String, Value>,
    name: &str,
    errorcode: u32,
) -> Result<String, Box<Response>> {
    match get_ci(fields, name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(Box::new(sfmc_error(
            StatusCode::BAD_REQUEST,
            format!("{name} is required and must be a non-empty string."),
            errorcode,
        ))),
    }
}

async fn events(State(st): St, body: Bytes) -> Response {
    let fields = match json_object(&body) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let (contact_key, definition) = match (
        required_str(&fields, "ContactKey", 30000),
        required_str(&fields, "EventDefinitionKey", 30000),
    ) {
        (Ok(c), Ok(d)) => (c, d),
        (Err(r), _) | (_, Err(r)) => return *r,
    };
    if !bulk::definition_known(&st, &definition) {
        return bulk::unknown_definition(&definition);
    }
    let data = match get_ci(&fields, "Data") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return sfmc_error(StatusCode::BAD_REQUEST, "Data must be an object.", 30000),
    };
    if let Value::Object(m) = &data
        && let Err(message) = bulk::check_event_data(&st, &definition, m)
    {
        return sfmc_error(StatusCode::BAD_REQUEST, message, 30000);
    }
    let id = st.new_uuid();
    st.record_event(json!({
        "eventInstanceId": id,
        "ContactKey": contact_key,
        "EventDefinitionKey": definition,
        "Data": data,
    }));
    json_response(StatusCode::CREATED, json!({"eventInstanceId": id}))
}

// ----- inspection -----------------------------------------------------------------------

async fn sim_data_extensions(State(st): St) -> Response {
    let list: Vec<Value> = st
        .data_extensions()
        .into_iter()
        .map(|(key, guid, rows)| json!({"key": key, "id": guid, "rows": rows}))
        .collect();
    json_response(StatusCode::OK, Value::Array(list))
}

async fn sim_rows(State(st): St, Path(key): Path<String>) -> Response {
    let key = key.strip_prefix("key:").unwrap_or(&key);
    match st.rows_opt(key) {
        Some(rows) => json_response(StatusCode::OK, Value::Array(rows)),
        None => sfmc_error(
            StatusCode::NOT_FOUND,
            format!("Unknown data extension '{key}'."),
            404,
        ),
    }
}

async fn sim_contacts(State(st): St) -> Response {
    json_response(StatusCode::OK, Value::Array(st.contacts()))
}

async fn sim_events(State(st): St) -> Response {
    json_response(StatusCode::OK, Value::Array(st.api_events()))
}

async fn sim_stats(State(st): St) -> Response {
    (StatusCode::OK, Json(st.stats())).into_response()
}

async fn sim_log(State(st): St) -> Response {
    (StatusCode::OK, Json(st.log())).into_response()
}

async fn sim_summary(State(st): St) -> Response {
    st.summary_text().into_response()
}

async fn sim_revoke(State(st): St) -> Response {
    st.revoke_tokens();
    json_response(StatusCode::OK, json!({"revoked": true}))
}

async fn sim_get_faults(State(st): St) -> Response {
    (StatusCode::OK, Json(st.faults())).into_response()
}

async fn sim_set_faults(State(st): St, body: Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => {
            return sfmc_error(
                StatusCode::BAD_REQUEST,
                format!("Invalid faults: {e}"),
                10000,
            );
        }
    };
    if let Err(e) = faults.validate() {
        return sfmc_error(
            StatusCode::BAD_REQUEST,
            format!("Invalid faults: {e}"),
            10000,
        );
    }
    st.set_faults(faults.clone());
    (StatusCode::OK, Json(faults)).into_response()
}

async fn sim_get_outages(State(st): St) -> Response {
    json_response(StatusCode::OK, Value::Array(st.outages()))
}

/// Body: one outage or a list of them; each starts `start` seconds from now.
async fn sim_add_outage(State(st): St, body: Bytes) -> Response {
    let invalid = |e: String| {
        sfmc_error(
            StatusCode::BAD_REQUEST,
            format!("Invalid outage: {e}"),
            10000,
        )
    };
    let outages: Vec<Outage> = match serde_json::from_slice::<Value>(&body) {
        Ok(v @ Value::Array(_)) => match serde_json::from_value(v) {
            Ok(list) => list,
            Err(e) => return invalid(e.to_string()),
        },
        Ok(v) => match serde_json::from_value(v) {
            Ok(one) => vec![one],
            Err(e) => return invalid(e.to_string()),
        },
        Err(e) => return invalid(e.to_string()),
    };
    if let Some(e) = outages.iter().find_map(|o| o.validate().err()) {
        return invalid(e.to_string());
    }
    for o in outages {
        st.outages_add_validated(o);
    }
    json_response(StatusCode::OK, Value::Array(st.outages()))
}

async fn sim_clear_outages(State(st): St) -> Response {
    st.clear_outages();
    json_response(StatusCode::OK, json!({"cleared": true}))
}

async fn sim_reset(State(st): St) -> Response {
    st.reset();
    json_response(StatusCode::OK, json!({"reset": true}))
}

// ----- pure request validation (fuzzing) ------------------------------------------------

/// Run one request body through every pure validation step the simulator applies to a
/// request, without state or HTTP: the token endpoint's form/JSON field parsing, the
/// single-row primary-key path spec, and rowset rows against an undeclared data extension
/// and a declared one with a column of every type (`Id` Text(50) and `Email` primary keys).
///
/// Rowset bodies also go through the fast rowset parser, which must give up or agree
/// exactly with the `serde_json::Value` path.
///
/// For fuzzing (`fuzz/fuzz_targets/sim_body.rs`) and tests: it must never panic (a panic
/// on one of those checks is a bug). Returns the number of rows the
/// declared data extension accepted.
pub fn check_request_body(body: &[u8]) -> usize {
    use super::config::{ColumnType, DataExtensionConfig};
    use super::validate::{DeSchema, check_value, is_valid_date, is_valid_email};
    let Ok(text) = std::str::from_utf8(body) else {
        return 0;
    };
    let form = parse_form(text);
    let _ = field_str(&form, "grant_type");
    let _ = parse_pk_spec(text);
    let columns = [
        ("Id", ColumnType::Text(50)),
        ("Email", ColumnType::EmailAddress),
        ("Count", ColumnType::Number),
        (
            "Price",
            ColumnType::Decimal {
                precision: 18,
                scale: 2,
            },
        ),
        (
            "Small",
            ColumnType::Decimal {
                precision: 2,
                scale: 2,
            },
        ),
        ("Flag", ColumnType::Boolean),
        ("When", ColumnType::Date),
        ("Phone", ColumnType::Phone),
    ];
    let schema = DeSchema::compile(
        "fuzz",
        &DataExtensionConfig {
            primary_keys: vec!["Id".into(), "email".into()],
            columns: columns.iter().map(|(n, t)| (n.to_string(), *t)).collect(),
        },
    );
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        assert!(
            serde_json::from_str::<ValIn>(text).is_err(),
            "the borrowed view accepted a body serde_json::Value rejects"
        );
        return 0;
    };
    let mut accepted = 0;
    match &value {
        Value::Array(rows) => {
            let rows: Vec<RowIn> = rows.iter().map(RowIn::from_value).collect();
            // serde_json's `Value` gives keys starting `$serde_json::private::` a meaning
            // of its own (`raw_value`); the view reads them as plain keys.
            match serde_json::from_str::<ValIn>(text) {
                _ if text.contains("$serde_json::private::") => {}
                Ok(ValIn::Arr(view)) => assert_eq!(
                    view.into_iter().map(RowIn::from_view).collect::<Vec<_>>(),
                    rows,
                    "the borrowed view disagrees with serde_json::Value"
                ),
                other => panic!("the borrowed view read an array as {other:?}"),
            }
            let mut scratch = Scratch::default();
            for row in rows {
                let _ = prepare_undeclared(row.clone(), true);
                if prepare_declared(&schema, row, false, &mut scratch).is_ok() {
                    accepted += 1;
                }
            }
        }
        Value::Object(m) => {
            for v in m.values() {
                if let Value::String(s) = v {
                    let _ = is_valid_date(s);
                    let _ = is_valid_email(s);
                }
                for (name, ty) in columns {
                    let _ = check_value(name, ty, v, false);
                }
            }
            let _ = field_str(m, "clientId");
        }
        _ => {}
    }
    accepted
}
