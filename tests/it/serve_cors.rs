//! `serve` as browsers and Segment's API limits see it, over real HTTP: CORS preflights and
//! `--cors-origins`, analytics.js's `/v1/m` and settings endpoints, Segment's error bodies,
//! and the 32 KB / 500 KB limits measured on the bytes as sent.

use std::io::Write;
use std::time::Duration;

use crate::support::serve::{KEY, Relay, rules, simulator};
use crate::support::wait_until;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A track event whose JSON text is exactly `n` bytes.
fn event_of(n: usize, user: &str) -> String {
    let base = json!({"type": "track", "userId": user, "event": "Order Completed",
        "properties": {"order_id": format!("o-{user}"), "note": ""}})
    .to_string();
    assert!(n > base.len());
    let pad = "p".repeat(n - base.len());
    let s = base.replace(r#""note":"""#, &format!(r#""note":"{pad}""#));
    assert_eq!(s.len(), n);
    s
}

async fn metrics(c: &reqwest::Client, relay: &Relay) -> String {
    c.get(relay.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_settings_and_client_metrics_with_any_origin() {
    let sim = simulator().await;
    let tmp = tempfile::tempdir().unwrap();
    let rules = rules(tmp.path(), "");
    let mut relay = Relay::start(&tmp.path().join("spool"), &rules, &sim, &[]);
    let c = reqwest::Client::new();
    let page = "http://shop.test:3000";

    // The preflight Chromium sends before analytics.js's POST with Authorization.
    for path in ["/v1/i", "/v1/t", "/v1/p", "/v1/b", "/v1/batch", "/v1/m"] {
        let r = c
            .request(reqwest::Method::OPTIONS, relay.url(path))
            .header("origin", page)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-retry-count",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{path}");
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], page, "{path}");
        assert_eq!(h["access-control-allow-methods"], "POST");
        let allowed = h["access-control-allow-headers"].to_str().unwrap();
        for want in ["authorization", "content-type", "x-retry-count"] {
            assert!(allowed.contains(want), "{allowed}");
        }
        assert!(h.contains_key("access-control-max-age"));
    }

    // A browser POST (text/plain, key in the body) gets the origin back.
    let r = c
        .post(relay.url("/v1/t"))
        .header("origin", page)
        .header("content-type", "text/plain")
        .body(
            json!({"writeKey": KEY, "userId": "b1", "event": "Order Completed",
                   "properties": {"order_id": "ob-1"}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["access-control-allow-origin"], page);
    wait_until("the browser's order", Duration::from_secs(20), || {
        sim.rows("orders").len() == 1
    })
    .await;

    // analytics.js's usage metrics: accepted and counted, not delivered.
    let r = c
        .post(relay.url("/v1/m"))
        .header("origin", page)
        .header("content-type", "text/plain")
        .body(
            r#"{"series":[{"type":"Counter","metric":"analytics_js.invoke","value":1,"tags":{}}]}"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Settings for a page that points only its cdnURL at the relay.
    let r = c
        .get(relay.url(&format!("/v1/projects/{KEY}/settings")))
        .header("origin", page)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let s: Value = r.json().await.unwrap();
    let seg = &s["integrations"]["Segment.io"];
    assert_eq!(seg["apiHost"], format!("{}/v1", relay.addr), "{s}");
    assert_eq!(seg["protocol"], "http");
    assert_eq!(seg["apiKey"], KEY);
    // Behind a TLS proxy.
    let s: Value = c
        .get(relay.url(&format!("/v1/projects/{KEY}/settings")))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "relay.example.com")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        s["integrations"]["Segment.io"]["apiHost"],
        "relay.example.com/v1"
    );
    assert_eq!(s["integrations"]["Segment.io"]["protocol"], "https");
    // An unknown key has no settings.
    let r = c
        .get(relay.url("/v1/projects/nope/settings"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Unknown paths and methods: Segment's error body, counted.
    let r = c.post(relay.url("/v1/nothing")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");
    let r = c.get(relay.url("/v1/batch")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "method_not_allowed"
    );

    let m = metrics(&c, &relay).await;
    for line in [
        "sfmc_relay_cors_preflights_total{result=\"allowed\"} 6",
        "sfmc_relay_cors_preflights_total{result=\"refused\"} 0",
        "sfmc_relay_client_metrics_posts_total 1",
        "sfmc_relay_browser_settings_served_total 2",
        "sfmc_relay_requests_refused_total{reason=\"not_found\"} 1",
        "sfmc_relay_requests_refused_total{reason=\"method_not_allowed\"} 1",
        "sfmc_relay_requests_refused_total{reason=\"unauthorized\"} 1",
        "sfmc_relay_events_received_total{type=\"track\"} 1",
    ] {
        assert!(m.contains(line), "missing `{line}` in:\n{m}");
    }
    assert!(!m.contains(KEY), "write key in /metrics");
    assert!(relay.terminate(Duration::from_secs(20)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_origins_list_refuses_other_origins() {
    let sim = simulator().await;
    let tmp = tempfile::tempdir().unwrap();
    let rules = rules(tmp.path(), "");
    let mut relay = Relay::start(
        &tmp.path().join("spool"),
        &rules,
        &sim,
        &[
            "--cors-origins",
            "https://shop.example.com, https://*.example.org",
        ],
    );
    let c = reqwest::Client::new();
    let preflight = |origin: &str| {
        c.request(reqwest::Method::OPTIONS, relay.url("/v1/t"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    for ok in ["https://shop.example.com", "https://www.example.org"] {
        let r = preflight(ok).await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{ok}");
        assert_eq!(r.headers()["access-control-allow-origin"], ok);
    }
    for bad in [
        "https://evil.example.net",
        "http://shop.example.com",
        "https://example.org",
    ] {
        let r = preflight(bad).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{bad}");
        assert!(!r.headers().contains_key("access-control-allow-origin"));
        assert_eq!(
            r.json::<Value>().await.unwrap()["code"],
            "origin_not_allowed"
        );
    }
    // A simple (no-preflight) POST from a refused origin is refused too, and not spooled.
    let r = c
        .post(relay.url("/v1/t"))
        .header("origin", "https://evil.example.net")
        .header("content-type", "text/plain")
        .body(
            json!({"writeKey": KEY, "userId": "x", "event": "Order Completed",
                     "properties": {"order_id": "evil"}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Servers send no Origin: not a CORS request, accepted.
    let r = c
        .post(relay.url("/v1/track"))
        .basic_auth(KEY, Some(""))
        .json(&json!({"userId": "srv", "event": "Order Completed", "properties": {"order_id": "srv-1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    wait_until("the server's order", Duration::from_secs(20), || {
        sim.rows("orders").len() == 1
    })
    .await;
    assert_eq!(sim.rows("orders")[0]["keys"]["Order Id"], "srv-1");
    let m = metrics(&c, &relay).await;
    for line in [
        "sfmc_relay_cors_preflights_total{result=\"allowed\"} 2",
        "sfmc_relay_cors_preflights_total{result=\"refused\"} 3",
        "sfmc_relay_requests_refused_total{reason=\"origin_not_allowed\"} 4",
        "sfmc_relay_events_received_total{type=\"track\"} 1",
    ] {
        assert!(m.contains(line), "missing `{line}` in:\n{m}");
    }
    assert!(relay.terminate(Duration::from_secs(20)).success());
}

#[test]
fn invalid_cors_origins_is_a_configuration_error() {
    let out = std::process::Command::new(crate::support::BIN)
        .args([
            "serve",
            "--spool",
            "/nonexistent/x",
            "--cors-origins",
            "https://shop.example.com/path",
        ])
        .env("SFMC_RELAY_WRITE_KEYS", KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("https://shop.example.com/path") && err.contains("no path"),
        "{err}"
    );
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// The limits apply to the bytes as the client sent them (after gzip inflation), never to
/// what the relay adds (`messageId`, `receivedAt`, the batch's `sentAt` and `context`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_measured_on_the_bytes_as_sent() {
    const LIMIT: usize = 32 * 1024;
    let sim = simulator().await;
    let tmp = tempfile::tempdir().unwrap();
    let rules = rules(tmp.path(), "");
    let mut relay = Relay::start(&tmp.path().join("spool"), &rules, &sim, &[]);
    let c = reqwest::Client::new();
    let post = |path: &str, body: Vec<u8>, gz: bool| {
        let mut r = c
            .post(relay.url(path))
            .basic_auth(KEY, Some(""))
            .header("content-type", "application/json");
        if gz {
            r = r.header("content-encoding", "gzip").body(gzip(&body));
        } else {
            r = r.body(body);
        }
        r.send()
    };
    // Single-event requests: the body is the event.
    for (n, gz, ok) in [
        (32_700, false, true),
        (LIMIT, true, true),
        (LIMIT + 1, false, false),
    ] {
        let r = post("/v1/track", event_of(n, &format!("s{n}")).into_bytes(), gz)
            .await
            .unwrap();
        let want = if ok {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        };
        assert_eq!(r.status(), want, "{n} bytes: {}", r.text().await.unwrap());
    }
    // A batch: each event's own text counts; the shared context and sentAt do not.
    let batch = format!(
        r#"{{"sentAt":"2026-01-01T00:00:00.000Z","context":{{"library":{{"name":"{}"}}}},"batch":[{},{},{}]}}"#,
        "l".repeat(2000),
        event_of(32_700, "b1"),
        event_of(LIMIT, "b2"),
        event_of(LIMIT + 1, "b3"),
    );
    let r = post("/v1/batch", batch.into_bytes(), true).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    wait_until("the four accepted events", Duration::from_secs(20), || {
        sim.rows("orders").len() == 4
    })
    .await;
    let mut users: Vec<String> = sim
        .rows("orders")
        .iter()
        .map(|r| r["keys"]["Contact Key"].as_str().unwrap().to_string())
        .collect();
    users.sort();
    assert_eq!(users, ["b1", "b2", "s32700", "s32768"]);
    let dead = std::fs::read_to_string(tmp.path().join("spool.deadletter.ndjson")).unwrap();
    let dead: Vec<Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["event"]["userId"], "b3");
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains("batch[2] is 32769 bytes"),
        "{}",
        dead[0]["reason"]
    );
    assert!(dead[0]["event"].get("writeKey").is_none());
    let m = metrics(&c, &relay).await;
    assert!(
        m.contains("sfmc_relay_ingest_events_rejected_total{reason=\"too_large\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("sfmc_relay_requests_refused_total{reason=\"too_large\"} 1"),
        "{m}"
    );
    assert!(relay.terminate(Duration::from_secs(20)).success());
}
