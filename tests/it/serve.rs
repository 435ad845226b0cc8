//! `sfmc-relay serve` as a real process: Segment's HTTP API, the durable spool, crashes.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::serve::{KEY, Relay, rules, simulator};
use crate::support::wait_until;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn gzip(v: &Value) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&serde_json::to_vec(v).unwrap()).unwrap();
    e.finish().unwrap()
}

fn contact_keys(rows: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = rows
        .iter()
        .map(|r| r["keys"]["Contact Key"].as_str().unwrap_or("").to_string())
        .collect();
    v.sort();
    v
}

fn order(i: usize) -> Value {
    json!({"type": "track", "userId": format!("buyer-{i}"), "event": "Order Completed",
           "properties": {"order_id": format!("o-{i}"), "revenue": i}})
}

fn signup(i: usize) -> Value {
    json!({"type": "track", "userId": format!("new-{i}"), "event": "Signed Up"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_api_auth_gzip_limits_metrics() {
    let sim = simulator().await;
    let tmp = tempfile::tempdir().unwrap();
    let rules = rules(tmp.path(), "");
    let mut relay = Relay::start(&tmp.path().join("spool"), &rules, &sim, &[]);
    let c = client();

    // Single-event endpoint; `type` from the path; write key as the Basic username.
    let r = c
        .post(relay.url("/v1/identify"))
        .basic_auth(KEY, Some(""))
        .json(&json!({"userId": "u1", "traits": {"email": "u1@example.com", "plan": "pro"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"success": true}));

    // Wrong key, missing key, wrong scheme: 401, nothing spooled.
    for req in [
        c.post(relay.url("/v1/track")).basic_auth("nope", Some("")),
        c.post(relay.url("/v1/track")),
        c.post(relay.url("/v1/track")).bearer_auth(KEY),
        c.post(relay.url("/v1/track"))
            .basic_auth(format!("{KEY}x"), Some("")),
    ] {
        let r = req.json(&order(999)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        // Segment's error shape: the libraries read `code` and `message`.
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["success"], false, "{body}");
        assert_eq!(body["code"], "unauthorized", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("write key"),
            "{body}"
        );
    }

    // Gzip batch, key in the body (as analytics.js sends it), batch-level context.
    let batch = json!({
        "writeKey": KEY,
        "context": {"library": {"name": "test"}},
        "batch": [order(1), order(2), signup(1), {"type": "page", "userId": "u1", "name": "Home"}]
    });
    let r = c
        .post(relay.url("/v1/batch"))
        .header("content-encoding", "gzip")
        .header("content-type", "application/json")
        .body(gzip(&batch))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    // /v1/import is an alias of /v1/batch.
    let r = c
        .post(relay.url("/v1/import"))
        .basic_auth("other-key", None::<&str>)
        .json(&json!({"batch": [order(3)]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Limits: 32 KB per event, 500 KB per batch (after decompression): 400 with a message.
    let big = "x".repeat(33 * 1024);
    let r = c
        .post(relay.url("/v1/track"))
        .basic_auth(KEY, Some(""))
        .json(&json!({"userId": "u", "event": "Order Completed", "properties": {"note": big}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["code"], "too_large", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("32 KB"),
        "{body}"
    );
    // One oversize event in a batch: as Segment's batch endpoint, 200, the rest accepted,
    // that event alone rejected (here: dead-lettered with the reason, never dropped).
    let r = c
        .post(relay.url("/v1/batch"))
        .basic_auth(KEY, Some(""))
        .json(&json!({"batch": [order(4), {"type": "track", "userId": "u-big", "event": "X", "properties": {"note": big}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let huge: Vec<Value> = (0..40)
        .map(|i| json!({"type": "track", "userId": "u", "event": "X", "properties": {"n": i, "note": "y".repeat(15_000)}}))
        .collect();
    let huge = json!({"batch": huge});
    let r = c
        .post(relay.url("/v1/batch"))
        .basic_auth(KEY, Some(""))
        .header("content-encoding", "gzip")
        .body(gzip(&huge)) // tiny compressed, 600 KB inflated
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "too_large", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("500 KB"),
        "{body}"
    );
    let r = c
        .post(relay.url("/v1/batch"))
        .basic_auth(KEY, Some(""))
        .body(serde_json::to_vec(&huge).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Not JSON, bad gzip: 400.
    for (enc, body) in [("", b"{nope".to_vec()), ("gzip", b"not gzip".to_vec())] {
        let mut req = c
            .post(relay.url("/v1/track"))
            .basic_auth(KEY, Some(""))
            .body(body);
        if !enc.is_empty() {
            req = req.header("content-encoding", enc);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "bad_request", "{body}");
    }

    wait_until(
        "rows and the API event in the simulator",
        Duration::from_secs(20),
        || {
            sim.rows("orders").len() == 4
                && sim.api_events().len() == 1
                && sim.rows("people").len() == 1
        },
    )
    .await;
    assert_eq!(
        contact_keys(&sim.rows("orders")),
        vec!["buyer-1", "buyer-2", "buyer-3", "buyer-4"]
    );
    // The oversize event is in the dead-letter file, with the reason.
    let dead = std::fs::read_to_string(tmp.path().join("spool.deadletter.ndjson")).unwrap();
    let dead: Vec<Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["event"]["userId"], "u-big");
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains("batch[1] is 33")
            && dead[0]["reason"].as_str().unwrap().contains("32 KB"),
        "{}",
        dead[0]["reason"]
    );
    let person = &sim.rows("people")[0];
    assert_eq!(person["values"]["Email"], "u1@example.com", "{person}");

    let health = c.get(relay.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // Completions (and so the delivered counters) follow the simulator's answer.
    let metrics = relay.metrics_when_idle().await;
    for line in [
        "sfmc_relay_events_received_total{type=\"identify\"} 1",
        "sfmc_relay_events_received_total{type=\"track\"} 5",
        "sfmc_relay_events_received_total{type=\"page\"} 1",
        "sfmc_relay_events_delivered_total{type=\"track\"} 5",
        "sfmc_relay_events_dead_lettered_total{type=\"track\"} 1",
        "sfmc_relay_ingest_events_rejected_total{reason=\"too_large\"} 1",
        "sfmc_relay_events_delivered_total{type=\"identify\"} 1",
        "sfmc_relay_events_skipped_total{type=\"page\"} 1",
        "sfmc_relay_requests_refused_total{reason=\"unauthorized\"} 4",
        "sfmc_relay_requests_refused_total{reason=\"too_large\"} 3",
        "sfmc_relay_requests_refused_total{reason=\"bad_request\"} 2",
        "sfmc_relay_sfmc_requests_total{endpoint=\"async_events\"} 1",
        "sfmc_relay_sfmc_endpoint_responses_total{endpoint=\"async_events\",status=\"202\"} 1",
        "sfmc_relay_sfmc_responses_total{status=\"202\"} 1",
        "sfmc_relay_queue_depth 0",
        "sfmc_relay_rules_reload_failures_total 0",
        "# TYPE sfmc_relay_events_received_total counter",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");
    }
    // Secrets never reach the metrics: not the write key, not the client secret.
    assert!(!metrics.contains(KEY), "write key in /metrics:\n{metrics}");
    assert!(
        !metrics.contains("s3cret"),
        "client secret in /metrics:\n{metrics}"
    );
    assert!(
        metrics.contains("sfmc_relay_rules_info{version=\"r1-"),
        "{metrics}"
    );
    // Why events were skipped (regression: serve dropped skip reasons, in /metrics and in
    // its summary).
    let by_reason: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("sfmc_relay_events_skipped_by_reason_total{reason="))
        .collect();
    assert_eq!(by_reason.len(), 1, "{metrics}");
    assert!(
        by_reason[0].contains("page") && by_reason[0].ends_with("} 1"),
        "{metrics}"
    );

    let status = relay.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", relay.log());
    assert!(relay.log().contains("skipped: 1 × "), "{}", relay.log());
}

/// N events, SIGKILL while delivery is slow, restart on the same spool: every event
/// lands, and no Journey API event is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_delivery_loses_nothing_and_repeats_no_api_event() {
    const ORDERS: usize = 80;
    const SIGNUPS: usize = 40;
    let sim = simulator().await;
    let tmp = tempfile::tempdir().unwrap();
    // One journey entry per call, so the kill can come between two of them.
    let rules = rules(tmp.path(), "  journey_batch: 1\n");
    let spool = tmp.path().join("spool");
    // 8 SFMC calls per second: every Signed Up is one call, so delivery takes seconds.
    let mut relay = Relay::start(&spool, &rules, &sim, &["--requests-per-second", "8"]);
    let c = client();
    let mut events: Vec<Value> = (0..ORDERS).map(order).collect();
    events.extend((0..SIGNUPS).map(signup));
    fastrand::seed(7);
    fastrand::shuffle(&mut events);
    for chunk in events.chunks(15) {
        let r = c
            .post(relay.url("/v1/batch"))
            .basic_auth(KEY, Some(""))
            .json(&json!({"batch": chunk}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    // Kill between two SFMC calls once some API events landed. (The one window where an
    // API event can repeat is the few ms between SFMC accepting it and the ack's fsync;
    // see docs/serve.md. At 8 calls/s the next call is ~125 ms away; 40 ms after a call
    // landed its ack must be on disk.)
    let mut seen = 0;
    let start = Instant::now();
    loop {
        let n = sim.api_events().len();
        if n >= 10 && n > seen {
            tokio::time::sleep(Duration::from_millis(40)).await;
            break;
        }
        seen = n;
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "delivery too slow"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    relay.kill9();
    let landed = sim.api_events().len();
    assert!(
        landed < SIGNUPS,
        "the kill should come mid-delivery ({landed} API events landed)"
    );

    let mut relay = Relay::start(&spool, &rules, &sim, &["--requests-per-second", "0"]);
    // A journey entry on the wire at the kill is `uncertain` after the restart (the
    // journey journal): dead-lettered, not sent again.
    let dead = spool.with_extension("deadletter.ndjson");
    let uncertain = || {
        std::fs::read_to_string(&dead)
            .map(|t| t.matches("\"uncertain\"").count())
            .unwrap_or(0)
    };
    wait_until(
        "every event after the restart",
        Duration::from_secs(30),
        || sim.rows("orders").len() == ORDERS && sim.api_events().len() + uncertain() >= SIGNUPS,
    )
    .await;
    assert!(
        relay
            .log()
            .contains("not yet delivered: delivering them now"),
        "{}",
        relay.log()
    );
    let expected: Vec<String> = {
        let mut v: Vec<String> = (0..ORDERS).map(|i| format!("buyer-{i}")).collect();
        v.sort();
        v
    };
    assert_eq!(contact_keys(&sim.rows("orders")), expected);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut per_contact: HashMap<String, usize> = HashMap::new();
    for e in sim.api_events() {
        *per_contact
            .entry(e["ContactKey"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(
        per_contact.len() + uncertain() >= SIGNUPS,
        "{per_contact:?}"
    );
    assert!(
        uncertain() <= 1,
        "at most the entry on the wire at the kill"
    );
    let dups: Vec<_> = per_contact.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "API events sent twice: {dups:?}");

    let status = relay.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", relay.log());
    let left: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    assert!(left.is_empty(), "delivered segments are deleted: {left:?}");
}

/// SIGTERM: stop accepting, drain for at most --drain-timeout, exit 0; what was not
/// delivered stays in the spool and the next start delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_or_leaves_in_spool() {
    const N: usize = 40;
    let sim = simulator().await;
    let tmp = tempfile::tempdir().unwrap();
    // One row per call, 10 calls per second: about 4 s to deliver everything.
    let rules = rules(tmp.path(), "  batch_rows: 1");
    let spool = tmp.path().join("spool");
    let mut relay = Relay::start(
        &spool,
        &rules,
        &sim,
        &["--requests-per-second", "10", "--drain-timeout", "1"],
    );
    let c = client();
    let events: Vec<Value> = (0..N).map(order).collect();
    let r = c
        .post(relay.url("/v1/batch"))
        .basic_auth(KEY, Some(""))
        .json(&json!({"batch": events}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    wait_until("some rows", Duration::from_secs(10), || {
        !sim.rows("orders").is_empty()
    })
    .await;
    let t = Instant::now();
    let status = relay.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status:?}\n{}", relay.log());
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    let after_first = sim.rows("orders").len();
    assert!(
        after_first < N,
        "all {N} delivered before the drain timeout"
    );
    // The listener is closed.
    assert!(
        c.post(relay.url("/v1/batch"))
            .basic_auth(KEY, Some(""))
            .json(&json!({"batch": [order(1)]}))
            .send()
            .await
            .is_err()
    );

    let mut relay = Relay::start(&spool, &rules, &sim, &["--requests-per-second", "0"]);
    wait_until(
        "the rest after the restart",
        Duration::from_secs(20),
        || sim.rows("orders").len() == N,
    )
    .await;
    let status = relay.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", relay.log());
}

/// Past --spool-max-bytes the server answers 503 (back-pressure) and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_answers_503() {
    let sim = simulator().await;
    let tmp = tempfile::tempdir().unwrap();
    let rules = rules(tmp.path(), "  batch_rows: 1");
    let spool = tmp.path().join("spool");
    let mut relay = Relay::start(
        &spool,
        &rules,
        &sim,
        &[
            "--requests-per-second",
            "2",
            "--spool-max-bytes",
            "64K",
            "--drain-timeout",
            "0",
        ],
    );
    let c = client();
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..40 {
        let batch: Vec<Value> = (0..10)
            .map(|j| {
                let mut e = order(i * 10 + j);
                e["properties"]["note"] = json!("z".repeat(900));
                e
            })
            .collect();
        let r = c
            .post(relay.url("/v1/batch"))
            .basic_auth(KEY, Some(""))
            .json(&json!({"batch": batch}))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            accepted += 10;
            continue;
        }
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["retry-after"], "5");
        refused = Some(r.text().await.unwrap());
        break;
    }
    let refused = refused.expect("the spool should fill up");
    assert!(refused.contains("spool is full"), "{refused}");
    assert!(accepted > 0);
    let status = relay.terminate(Duration::from_secs(15));
    assert!(status.success());
    // Everything accepted is delivered after a restart without the rate limit.
    let mut relay = Relay::start(&spool, &rules, &sim, &["--requests-per-second", "0"]);
    wait_until("every accepted event", Duration::from_secs(20), || {
        sim.rows("orders").len() == accepted
    })
    .await;
    assert!(relay.terminate(Duration::from_secs(20)).success());
}

/// `GET /healthz`'s JSON.
async fn healthz(c: &reqwest::Client, relay: &Relay) -> Value {
    let r = c.get(relay.url("/healthz")).send().await.unwrap();
    r.json().await.unwrap()
}

/// While SFMC fails (a 5xx storm), `serve` keeps accepting into the spool, `/healthz` says
/// `degraded` with the reason and `/metrics` shows the open breaker; when SFMC answers
/// again every event lands and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_shows_as_degraded_and_nothing_is_dead_lettered() {
    use sfmc_relay::sim::{Outage, OutageKind};
    let sim = simulator().await;
    let tmp = tempfile::tempdir().unwrap();
    let rules = rules(tmp.path(), "");
    let mut relay = Relay::start(&tmp.path().join("spool"), &rules, &sim, &[]);
    let c = client();
    sim.add_outage(Outage::new(OutageKind::ServerErrors).lasting(4.0))
        .unwrap();
    let events: Vec<Value> = (0..30).map(order).collect();
    let r = c
        .post(relay.url("/v1/batch"))
        .basic_auth(KEY, Some(""))
        .json(&json!({"batch": events}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut degraded = Value::Null;
    let mut metrics = String::new();
    for _ in 0..150 {
        let h = healthz(&c, &relay).await;
        if h["status"] == "degraded" {
            degraded = h;
            metrics = c
                .get(relay.url("/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(degraded["status"], "degraded", "never degraded");
    assert!(
        degraded["reason"].as_str().unwrap().contains("unavailable"),
        "{degraded}"
    );
    assert!(
        metrics.contains("sfmc_relay_sfmc_breaker_state 2")
            || metrics.contains("sfmc_relay_sfmc_breaker_state 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sfmc_relay_sfmc_infrastructure_failures_total{kind="),
        "{metrics}"
    );
    // SFMC answers again: everything lands, healthy again, no dead letters.
    wait_until("all rows", Duration::from_secs(40), || {
        sim.rows("orders").len() == 30
    })
    .await;
    // (The probe that landed the rows may still be on its way back: healthy once its
    // answer arrived.)
    let mut h = Value::Null;
    for _ in 0..250 {
        h = healthz(&c, &relay).await;
        if h["status"] == "ok" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h["status"], "ok", "{h}");
    let status = relay.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", relay.log());
    assert!(relay.log().contains("0 dead-lettered"), "{}", relay.log());
}
