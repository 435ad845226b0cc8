//! SFMC client over real loopback HTTP against small axum servers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use sfmc_relay::sfmc::{
    AuthVersion, ClientConfig, ConfigError, Credentials, Endpoints, RetryPolicy, Secret, SendError,
    SfmcClient,
};
use tokio::time::Instant;

const SUB: &str = "mc563885gzs27c5t9-63k636ttgm";
const SECRET: &str = "s3cr3t-VALUE-do-not-print";

#[derive(Clone)]
struct Scripted {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Value,
}

fn resp(status: u16, body: Value) -> Scripted {
    Scripted {
        status,
        headers: vec![],
        body,
    }
}

#[derive(Default)]
struct Mock {
    token_requests: AtomicU64,
    token_bodies: Mutex<Vec<Value>>,
    /// Lifetime handed out with tokens (seconds).
    expires_in: Mutex<f64>,
    /// Scripted token responses, consumed before issuing real tokens.
    token_script: Mutex<VecDeque<Scripted>>,
    token_delay: Mutex<Duration>,
    next_token: AtomicU64,
    valid_tokens: Mutex<HashSet<String>>,
    /// Scripted REST responses by path, consumed in order; default is 200.
    script: Mutex<HashMap<String, VecDeque<Scripted>>>,
    rest_hits: Mutex<Vec<(Instant, String, String)>>,
    rest_delay: Mutex<Duration>,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
}

impl Mock {
    fn push(&self, path: &str, r: Scripted) {
        self.script
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default()
            .push_back(r);
    }
    fn revoke_all(&self) {
        self.valid_tokens.lock().unwrap().clear();
    }
    fn hits(&self, path: &str) -> Vec<Instant> {
        self.rest_hits
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p, _)| p == path)
            .map(|(t, _, _)| *t)
            .collect()
    }
}

fn scripted_response(s: Scripted) -> Response {
    let mut r = (
        StatusCode::from_u16(s.status).unwrap(),
        axum::Json(s.body.clone()),
    )
        .into_response();
    for (k, v) in s.headers {
        r.headers_mut().insert(k, v.parse().unwrap());
    }
    r
}

async fn issue_token(m: &Mock, body: Bytes, v2: bool) -> Response {
    m.token_requests.fetch_add(1, Ordering::SeqCst);
    m.token_bodies
        .lock()
        .unwrap()
        .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
    let delay = *m.token_delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(s) = m.token_script.lock().unwrap().pop_front() {
        return scripted_response(s);
    }
    let token = format!("tok-{}", m.next_token.fetch_add(1, Ordering::SeqCst));
    m.valid_tokens.lock().unwrap().insert(token.clone());
    let exp = *m.expires_in.lock().unwrap();
    let body = if v2 {
        json!({"access_token": token, "token_type": "Bearer", "expires_in": exp,
               "rest_instance_url": "https://elsewhere.invalid/"})
    } else {
        json!({"accessToken": token, "expiresIn": exp})
    };
    axum::Json(body).into_response()
}

async fn token_v2(State(m): State<Arc<Mock>>, body: Bytes) -> Response {
    issue_token(&m, body, true).await
}

async fn token_v1(State(m): State<Arc<Mock>>, body: Bytes) -> Response {
    issue_token(&m, body, false).await
}

async fn rest(
    State(m): State<Arc<Mock>>,
    _method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    m.rest_hits
        .lock()
        .unwrap()
        .push((Instant::now(), path.clone(), auth.clone()));
    let now = m.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    m.peak_in_flight.fetch_max(now, Ordering::SeqCst);
    let delay = *m.rest_delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    m.in_flight.fetch_sub(1, Ordering::SeqCst);
    let token = auth.strip_prefix("Bearer ").unwrap_or("");
    if !m.valid_tokens.lock().unwrap().contains(token) {
        return scripted_response(resp(
            401,
            json!({"message":"Not Authorized","errorcode":0,"documentation":""}),
        ));
    }
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/json",
        "content type"
    );
    let next = m
        .script
        .lock()
        .unwrap()
        .get_mut(&path)
        .and_then(VecDeque::pop_front);
    match next {
        Some(s) => scripted_response(s),
        None => {
            let echoed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            axum::Json(json!({"ok": true, "echo": echoed})).into_response()
        }
    }
}

async fn start_mock() -> (Arc<Mock>, String) {
    let m = Arc::new(Mock::default());
    *m.expires_in.lock().unwrap() = 1079.0;
    let app = Router::new()
        .route("/v2/token", post(token_v2))
        .route("/v1/requestToken", post(token_v1))
        .fallback(rest)
        .with_state(m.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (m, base)
}

fn creds() -> Credentials {
    Credentials {
        client_id: "client-id-1".into(),
        client_secret: Secret::new(SECRET),
        account_id: Some("514000123".into()),
    }
}

fn fast_config() -> ClientConfig {
    ClientConfig {
        requests_per_second: None,
        max_in_flight: 8,
        request_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_attempts: 5,
            max_elapsed: Duration::from_secs(10),
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
        },
    }
}

fn client_v2(base: &str, config: ClientConfig) -> SfmcClient {
    let ep = Endpoints::resolve(Some(SUB), Some(base), Some(&format!("{base}/"))).unwrap();
    SfmcClient::new(ep, creds(), config).unwrap()
}

const ROWSET: &str = "/hub/v1/dataevents/key:Users/rowset";

fn rows() -> Bytes {
    Bytes::from_static(br#"[{"keys":{"Contact Key":"u-1"},"values":{"Email":"a@example.com"}}]"#)
}

// ---------------------------------------------------------------- endpoints

#[test]
fn subdomain_validation() {
    let ep = Endpoints::resolve(Some(SUB), None, None).unwrap();
    assert_eq!(ep.version, AuthVersion::V2);
    assert_eq!(
        ep.auth_url,
        format!("https://{SUB}.auth.marketingcloudapis.com/v2/token")
    );
    assert_eq!(
        ep.rest_base,
        format!("https://{SUB}.rest.marketingcloudapis.com")
    );
    // Case-insensitive, normalised to lower case.
    let upper = Endpoints::resolve(Some(&SUB.to_uppercase()), None, None).unwrap();
    assert_eq!(upper, ep);

    let bad = [
        "evil.com/x",
        "a@b",
        "../",
        "",
        &SUB[..27],
        &format!("{SUB}a"),
        "mc563885gzs27c5t9-63k636tt/x",
        "mc563885gzs27c5t9-63k636tt.m",
        "xx563885gzs27c5t9-63k636ttgm",
        "mc563885gzs27c5t9-63k636ttgé",
    ];
    for b in bad {
        let err = Endpoints::resolve(Some(b), None, None).unwrap_err();
        assert!(
            matches!(err, ConfigError::InvalidSubdomain { .. }),
            "{b:?}: {err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("28 characters") && text.contains("`mc`"),
            "{text}"
        );
    }
}

#[test]
fn v1_defaults_and_overrides() {
    let ep = Endpoints::resolve(None, None, None).unwrap();
    assert_eq!(ep.version, AuthVersion::V1);
    assert_eq!(
        ep.auth_url,
        "https://auth.exacttargetapis.com/v1/requestToken"
    );
    assert_eq!(ep.rest_base, "https://www.exacttargetapis.com");

    let ep = Endpoints::resolve(
        None,
        Some("http://127.0.0.1:9000//"),
        Some("http://127.0.0.1:9001/"),
    )
    .unwrap();
    assert_eq!(ep.auth_url, "http://127.0.0.1:9000/v1/requestToken");
    assert_eq!(ep.rest_base, "http://127.0.0.1:9001");
    let ep = Endpoints::resolve(Some(SUB), Some("http://127.0.0.1:9000"), None).unwrap();
    assert_eq!(ep.auth_url, "http://127.0.0.1:9000/v2/token");

    for bad in [
        "ftp://x",
        "not a url",
        "127.0.0.1:9000",
        "http://u:p@host",
        "http://h/?q=1",
    ] {
        let err = Endpoints::resolve(None, Some(bad), None).unwrap_err();
        assert!(matches!(err, ConfigError::InvalidUrl { .. }), "{bad}");
        assert!(!err.to_string().contains("u:p"), "{err}");
    }
    assert!(Endpoints::resolve(None, None, Some("file:///etc")).is_err());
}

// ---------------------------------------------------------------- token flows

#[tokio::test]
async fn v2_token_flow() {
    let (m, base) = start_mock().await;
    let c = client_v2(&base, fast_config());
    let r = c.send(Method::POST, ROWSET, rows()).await.expect("send ok");
    assert_eq!(r.status, 200);
    assert_eq!(r.body["echo"][0]["keys"]["Contact Key"], "u-1");
    let bodies = m.token_bodies.lock().unwrap().clone();
    assert_eq!(
        bodies,
        vec![
            json!({"grant_type":"client_credentials","client_id":"client-id-1",
                    "client_secret": SECRET, "account_id":"514000123"})
        ]
    );
    let hits = m.rest_hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].2, "Bearer tok-0");
    let stats = c.stats();
    assert_eq!(stats.token_requests, 1);
    assert_eq!(stats.requests_per_endpoint["rowset"], 1);
    assert_eq!(stats.requests_per_endpoint["token"], 1);
    assert_eq!(stats.statuses[&200], 1);
    assert_eq!(stats.retries, 0);
}

#[tokio::test]
async fn v1_token_flow() {
    let (m, base) = start_mock().await;
    let ep = Endpoints::resolve(None, Some(&base), Some(&base)).unwrap();
    let creds = Credentials {
        account_id: None,
        ..creds()
    };
    let c = SfmcClient::new(ep, creds, fast_config()).unwrap();
    c.send(
        Method::POST,
        "/contacts/v1/contacts",
        Bytes::from_static(br#"{"contactKey":"u-1","attributeSets":[]}"#),
    )
    .await
    .unwrap();
    c.send(
        Method::POST,
        "/interaction/v1/events",
        Bytes::from_static(br#"{"ContactKey":"u-1","EventDefinitionKey":"E","Data":{}}"#),
    )
    .await
    .unwrap();
    assert_eq!(
        m.token_bodies.lock().unwrap().clone(),
        vec![json!({"clientId":"client-id-1","clientSecret": SECRET})]
    );
    let stats = c.stats();
    assert_eq!(stats.token_requests, 1);
    assert_eq!(stats.requests_per_endpoint["contacts"], 1);
    assert_eq!(stats.requests_per_endpoint["events"], 1);
    assert_eq!(m.rest_hits.lock().unwrap()[1].2, "Bearer tok-0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_reused_by_200_concurrent_sends() {
    let (m, base) = start_mock().await;
    *m.token_delay.lock().unwrap() = Duration::from_millis(100);
    let c = client_v2(
        &base,
        ClientConfig {
            max_in_flight: 16,
            ..fast_config()
        },
    );
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.send(Method::POST, ROWSET, rows()).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(m.token_requests.load(Ordering::SeqCst), 1);
    assert_eq!(c.stats().token_requests, 1);
    assert_eq!(c.stats().requests_per_endpoint["rowset"], 200);
    assert!(m.peak_in_flight.load(Ordering::SeqCst) <= 16);
}

#[tokio::test]
async fn token_refreshed_when_expired() {
    let (m, base) = start_mock().await;
    *m.expires_in.lock().unwrap() = 1.0; // margin 0.1 s -> refresh after 0.9 s
    let c = client_v2(&base, fast_config());
    c.send(Method::POST, ROWSET, rows()).await.unwrap();
    c.send(Method::POST, ROWSET, rows()).await.unwrap();
    assert_eq!(m.token_requests.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(950)).await;
    c.send(Method::POST, ROWSET, rows()).await.unwrap();
    assert_eq!(m.token_requests.load(Ordering::SeqCst), 2);
    let hits = m.rest_hits.lock().unwrap().clone();
    assert_eq!(hits[2].2, "Bearer tok-1");
}

#[tokio::test]
async fn token_refreshed_on_401() {
    let (m, base) = start_mock().await;
    let c = client_v2(&base, fast_config());
    c.send(Method::POST, ROWSET, rows()).await.unwrap();
    m.revoke_all();
    let r = c.send(Method::POST, ROWSET, rows()).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(m.token_requests.load(Ordering::SeqCst), 2);
    let hits = m.rest_hits.lock().unwrap().clone();
    assert_eq!(
        hits.iter().map(|h| h.2.as_str()).collect::<Vec<_>>(),
        ["Bearer tok-0", "Bearer tok-0", "Bearer tok-1"]
    );
    let stats = c.stats();
    assert_eq!(stats.statuses[&401], 1);
    assert_eq!(stats.retries, 1);
}

#[tokio::test]
async fn persistent_401_is_auth_error() {
    let (m, base) = start_mock().await;
    let c = client_v2(&base, fast_config());
    // Every REST call is rejected: tokens are revoked as soon as they are issued.
    let m2 = m.clone();
    let revoker = tokio::spawn(async move {
        loop {
            m2.revoke_all();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    *m.rest_delay.lock().unwrap() = Duration::from_millis(5);
    let err = c.send(Method::POST, ROWSET, rows()).await.unwrap_err();
    revoker.abort();
    assert!(matches!(err, SendError::Auth(_)), "{err}");
    assert_eq!(m.token_requests.load(Ordering::SeqCst), 2);
    assert!(!format!("{err} {err:?}").contains("tok-"), "{err:?}");
}

#[tokio::test]
async fn invalid_client_is_permanent_and_redacted() {
    let (m, base) = start_mock().await;
    m.token_script.lock().unwrap().push_back(resp(
        401,
        json!({"error":"invalid_client",
               "error_description": format!("Client authentication failed. (got {SECRET})"),
               "error_uri":"https://developer.salesforce.com/docs"}),
    ));
    let c = client_v2(&base, fast_config());
    let err = c.send(Method::POST, ROWSET, rows()).await.unwrap_err();
    let SendError::Auth(msg) = &err else {
        panic!("expected Auth, got {err:?}")
    };
    assert!(msg.contains("invalid_client"), "{msg}");
    assert!(msg.contains("Client authentication failed"), "{msg}");
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains(SECRET), "{text}");
    }
    assert_eq!(m.token_requests.load(Ordering::SeqCst), 1);
    assert!(m.rest_hits.lock().unwrap().is_empty());
}

#[tokio::test]
async fn token_endpoint_5xx_and_429_are_retried() {
    let (m, base) = start_mock().await;
    {
        let mut s = m.token_script.lock().unwrap();
        s.push_back(resp(500, json!({"message":"oops"})));
        s.push_back(resp(
            429,
            json!({"message":"Your requests are temporarily blocked.","errorcode":50200}),
        ));
    }
    let c = client_v2(&base, fast_config());
    c.send(Method::POST, ROWSET, rows()).await.unwrap();
    assert_eq!(m.token_requests.load(Ordering::SeqCst), 3);
    assert_eq!(c.stats().token_requests, 3);
}

// ---------------------------------------------------------------- retries

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_429_slows_whole_client() {
    let (m, base) = start_mock().await;
    m.push(
        "/a",
        Scripted {
            status: 429,
            headers: vec![("retry-after", "1".into())],
            body: json!({"message":"Rate limit exceeded","errorcode":50100,"retryAfter":1}),
        },
    );
    let c = client_v2(&base, fast_config());
    // Warm the token so both requests go straight to REST.
    c.send(Method::GET, "/warm", Bytes::new()).await.unwrap();
    let t0 = Instant::now();
    let ca = c.clone();
    let a = tokio::spawn(async move { ca.send(Method::POST, "/a", Bytes::new()).await });
    // Wait until the 429 has been answered, then start an unrelated request.
    while !c.stats().statuses.contains_key(&429) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let b = c.send(Method::POST, "/b", Bytes::new()).await.unwrap();
    assert_eq!(b.status, 200);
    let a = a.await.unwrap().unwrap();
    assert_eq!(a.status, 200);
    let a_hits = m.hits("/a");
    let b_hits = m.hits("/b");
    assert_eq!(a_hits.len(), 2);
    assert_eq!(b_hits.len(), 1);
    assert!(
        a_hits[1] - a_hits[0] >= Duration::from_millis(950),
        "{:?}",
        a_hits[1] - a_hits[0]
    );
    assert!(
        b_hits[0] - a_hits[0] >= Duration::from_millis(900),
        "other request not slowed: {:?}",
        b_hits[0] - a_hits[0]
    );
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(c.stats().retries, 1);
}

#[tokio::test]
async fn server_errors_retried_then_success() {
    let (m, base) = start_mock().await;
    for s in [500, 502, 503] {
        m.push(ROWSET, resp(s, json!({"message":"Internal error"})));
    }
    let c = client_v2(&base, fast_config());
    let r = c.send(Method::POST, ROWSET, rows()).await.unwrap();
    assert_eq!(r.status, 200);
    let stats = c.stats();
    assert_eq!(stats.retries, 3);
    assert_eq!(stats.requests_per_endpoint["rowset"], 4);
    assert_eq!(stats.statuses[&500], 1);
    assert_eq!(stats.statuses[&503], 1);
    assert_eq!(stats.statuses[&200], 1);
}

#[tokio::test]
async fn bare_10006_is_retried() {
    let (m, base) = start_mock().await;
    m.push(
        ROWSET,
        resp(
            400,
            json!({"message":"Unable to save rows for data extension ID 1","errorcode":10006,"documentation":""}),
        ),
    );
    m.push(
        ROWSET,
        resp(
            400,
            json!({"message":"Unable to save rows","errorcode":10006,"additionalErrors":[]}),
        ),
    );
    let c = client_v2(&base, fast_config());
    let r = c.send(Method::POST, ROWSET, rows()).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(c.stats().retries, 2);
}

#[tokio::test]
async fn rejected_rows_are_permanent() {
    let (m, base) = start_mock().await;
    m.push(ROWSET, resp(400, json!({
        "message":"Unable to save rows for data extension ID 1","errorcode":10006,"documentation":"",
        "additionalErrors":[
            {"message":"Email: The value for column [Email] is not a valid email address.","errorcode":10000,"documentation":""},
            {"message":"Name: The value for column [Name] exceeds the column's maximum length.","errorcode":10000}
        ]})));
    let c = client_v2(&base, fast_config());
    let err = c.send(Method::POST, ROWSET, rows()).await.unwrap_err();
    match &err {
        SendError::Permanent {
            status,
            message,
            errorcode,
            body,
            attempts,
        } => {
            assert_eq!(*status, 400);
            assert_eq!(*errorcode, Some(10006));
            assert_eq!(*attempts, 1);
            assert_eq!(
                message,
                "Unable to save rows for data extension ID 1; \
                 Email: The value for column [Email] is not a valid email address.; \
                 Name: The value for column [Name] exceeds the column's maximum length."
            );
            assert_eq!(body["additionalErrors"][0]["errorcode"], 10000);
        }
        other => panic!("expected Permanent, got {other:?}"),
    }
    let line = err.to_string();
    assert!(!line.contains('\n'));
    assert!(
        line.contains("HTTP 400") && line.contains("10006"),
        "{line}"
    );
    assert_eq!(c.stats().retries, 0);

    // Other 4xx are permanent too.
    m.push(
        "/hub/v1/dataevents/key:Nope/rowset",
        resp(
            400,
            json!({"message":"Parameter {guid} is invalid.","errorcode":10001}),
        ),
    );
    let err = c
        .send(Method::POST, "/hub/v1/dataevents/key:Nope/rowset", rows())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SendError::Permanent {
                status: 400,
                errorcode: Some(10001),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn attempts_exhausted() {
    let (m, base) = start_mock().await;
    for _ in 0..10 {
        m.push(
            ROWSET,
            resp(
                503,
                json!({"message":"Service Unavailable","errorcode":50300}),
            ),
        );
    }
    let mut config = fast_config();
    config.retry.max_attempts = 3;
    let c = client_v2(&base, config);
    let err = c.send(Method::POST, ROWSET, rows()).await.unwrap_err();
    match &err {
        SendError::Exhausted {
            last_error,
            attempts,
            ..
        } => {
            assert_eq!(*attempts, 3);
            assert!(last_error.contains("503"), "{last_error}");
            assert!(last_error.contains("Service Unavailable"), "{last_error}");
        }
        other => panic!("expected Exhausted, got {other:?}"),
    }
    assert_eq!(m.hits(ROWSET).len(), 3);
    assert!(
        err.to_string()
            .starts_with("SFMC request failed after 3 attempt(s)")
    );
}

#[tokio::test]
async fn elapsed_budget_exhausted_by_long_retry_after() {
    let (m, base) = start_mock().await;
    m.push(
        ROWSET,
        Scripted {
            status: 429,
            headers: vec![("retry-after", "60".into())],
            body: json!({"message":"Rate limit exceeded","errorcode":50100}),
        },
    );
    let mut config = fast_config();
    config.retry.max_elapsed = Duration::from_secs(2);
    let c = client_v2(&base, config);
    let t0 = Instant::now();
    let err = c.send(Method::POST, ROWSET, rows()).await.unwrap_err();
    assert!(
        matches!(err, SendError::Exhausted { attempts: 1, .. }),
        "{err:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn connection_errors_are_retried_then_exhausted() {
    // Bind then drop a listener to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let mut config = fast_config();
    config.retry.max_attempts = 2;
    let c = client_v2(&base, config);
    let err = c.send(Method::POST, ROWSET, rows()).await.unwrap_err();
    match &err {
        SendError::Exhausted {
            attempts,
            last_error,
            ..
        } => {
            assert_eq!(*attempts, 2);
            assert!(last_error.contains("token request"), "{last_error}");
        }
        other => panic!("expected Exhausted, got {other:?}"),
    }
    assert!(!format!("{err} {err:?}").contains(SECRET));
}

// ---------------------------------------------------------------- governance

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_is_bounded() {
    let (m, base) = start_mock().await;
    *m.rest_delay.lock().unwrap() = Duration::from_millis(30);
    let c = client_v2(
        &base,
        ClientConfig {
            max_in_flight: 2,
            ..fast_config()
        },
    );
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.send(Method::POST, ROWSET, rows()).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(m.peak_in_flight.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_is_governed() {
    let (_m, base) = start_mock().await;
    let c = client_v2(
        &base,
        ClientConfig {
            requests_per_second: NonZeroU32::new(20),
            max_in_flight: 8,
            ..fast_config()
        },
    );
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.send(Method::POST, ROWSET, rows()).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // Burst of 20, then 10 more at 50 ms each.
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

// ---------------------------------------------------------------- secrecy

#[test]
fn secret_never_printed() {
    let creds = creds();
    let secret = Secret::new(SECRET);
    assert_eq!(secret.to_string(), "***");
    assert_eq!(format!("{secret:?}"), "***");
    assert_eq!(secret.expose(), SECRET);
    let dbg = format!("{creds:?}");
    assert!(
        !dbg.contains(SECRET) && dbg.contains("client-id-1"),
        "{dbg}"
    );

    let ep = Endpoints::resolve(Some(SUB), None, None).unwrap();
    let c = SfmcClient::new(ep, creds, ClientConfig::default()).unwrap();
    let dbg = format!("{c:?} {:?}", c.config());
    assert!(!dbg.contains(SECRET), "{dbg}");
    assert!(dbg.contains("marketingcloudapis.com"), "{dbg}");
}

#[test]
fn stats_serialize() {
    let ep = Endpoints::resolve(Some(SUB), None, None).unwrap();
    let c = SfmcClient::new(ep, creds(), ClientConfig::default()).unwrap();
    let v = serde_json::to_value(c.stats()).unwrap();
    assert_eq!(
        v,
        json!({"requests_per_endpoint":{},"retries":0,"token_requests":0,"statuses":{},"responses":{},"retries_per_endpoint":{}})
    );
    assert_eq!(
        sfmc_relay::sfmc::client::endpoint_pattern("/hub/v1/dataevents/key:X/rows/Id:1"),
        "row"
    );
    assert_eq!(
        sfmc_relay::sfmc::client::endpoint_pattern("/data/v1/async/dataextensions/key:X/rows"),
        "async_rows"
    );
    assert_eq!(
        sfmc_relay::sfmc::client::endpoint_pattern("/data/v1/async/abc/status"),
        "async_status"
    );
}

#[test]
fn from_vars_lookup() {
    let vars: HashMap<&str, &str> = [
        ("SFMC_SUBDOMAIN", SUB),
        ("SFMC_AUTH_URL", ""),
        ("SFMC_REST_URL", " http://127.0.0.1:9001/ "),
        ("SFMC_CLIENT_ID", "id"),
        ("SFMC_CLIENT_SECRET", SECRET),
        ("SFMC_ACCOUNT_ID", ""),
    ]
    .into_iter()
    .collect();
    let get = |k: &str| vars.get(k).map(|v| v.to_string());
    let ep = Endpoints::from_vars(get).unwrap();
    assert_eq!(ep.version, AuthVersion::V2);
    assert!(
        ep.auth_url
            .ends_with(".auth.marketingcloudapis.com/v2/token")
    );
    assert_eq!(ep.rest_base, "http://127.0.0.1:9001");
    let c = Credentials::from_vars(get).unwrap();
    assert_eq!(c.client_id, "id");
    assert_eq!(c.client_secret.expose(), SECRET);
    assert_eq!(c.account_id, None);
    assert!(Credentials::from_vars(|k| (k == "SFMC_CLIENT_ID").then(|| "id".into())).is_none());
    let ep = Endpoints::from_vars(|_| None).unwrap();
    assert_eq!(ep.version, AuthVersion::V1);
    assert!(
        Endpoints::from_vars(|k| (k == "SFMC_SUBDOMAIN").then(|| "evil.com/x".into())).is_err()
    );
}
