//! The simulator's bulk endpoints over real HTTP on loopback, driven by the relay's own
//! bodies and parsers (`sfmc_relay::sfmc::bulk`): the asynchronous rows API, establish,
//! async journey events, event definitions, and the rowset rule that values must hold a
//! real column.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use sfmc_relay::action::{
    self, ASYNC_EVENTS_PATH, Action, ESTABLISH_PATH, Fields, async_results_path, async_rows_path,
    async_status_path,
};
use sfmc_relay::sfmc::bulk::{
    self, AsyncRowsBody, AsyncStatus, ContactOutcome, MemberOutcome, PushError, ResultsCollector,
    RowOutcomes, RowResult,
};
use sfmc_relay::sim::{self, SimConfig, SimHandle};

const DECLARED: &str = r#"
unknown_data_extensions: reject
data_extensions:
  orders:
    primary_keys: [Order Id, Contact Key]
    columns: { Order Id: Text(50), Contact Key: Text(254), Revenue: Decimal, Email: EmailAddress, Note: Text(10) }
  kv:
    primary_keys: [K]
    columns: { K: Text(20), V: Text(20) }
  NoKeys:
    columns: { Name: Text(20) }
event_definitions:
  signup-journey:
    fields: { Plan: Text(10), Referrer: Text(50), Signed Up At: Date }
"#;

struct Sim {
    handle: SimHandle,
    http: Client,
    token: String,
}

impl Sim {
    async fn start(yaml: &str) -> Sim {
        let config = SimConfig::from_yaml(yaml).expect("sim config");
        let handle = sim::start(config, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("sim starts");
        let token = handle.state().issue_token();
        Sim {
            handle,
            http: Client::new(),
            token,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handle.base_url())
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn put(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// Submit flat rows; the request id.
    async fn submit(&self, de: &str, rows: &[Value]) -> String {
        let mut body = AsyncRowsBody::new();
        for r in rows {
            body.push_json(&r.to_string()).unwrap();
        }
        let (status, answer) = self.put(&async_rows_path(de), body.finish()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        assert_eq!(answer["resultMessages"], json!([]));
        bulk::parse_submitted(&answer).unwrap().request_id
    }

    async fn status(&self, id: &str) -> AsyncStatus {
        let (status, answer) = self.get(&async_status_path(id)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        bulk::parse_status(&answer).unwrap()
    }

    /// Poll until the request is finished.
    async fn wait(&self, id: &str) -> AsyncStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.status(id).await {
                s @ (AsyncStatus::Complete { .. } | AsyncStatus::Failed) => return s,
                _ if Instant::now() > deadline => panic!("request {id} never finished"),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Every row's result, read page by page.
    async fn results(&self, id: &str, rows: usize, page_size: usize) -> (Vec<RowResult>, usize) {
        let mut c = ResultsCollector::new(rows, page_size);
        let mut calls = 0;
        while let Some((page, size)) = c.next_page() {
            let (status, answer) = self.get(&async_results_path(id, page, size)).await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            c.add(
                bulk::parse_results_page(&answer)
                    .unwrap()
                    .expect("results are there"),
            )
            .unwrap();
            calls += 1;
            assert!(calls <= rows + 1, "paging does not end");
        }
        (c.finish().unwrap(), calls)
    }
}

fn row_map(rows: &[Value], key: &str) -> BTreeMap<String, Value> {
    rows.iter()
        .map(|r| {
            (
                r["keys"][key].as_str().unwrap().to_string(),
                r["values"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_async_request_is_not_found_then_pending_executing_complete() {
    let sim = Sim::start(&format!(
        "{DECLARED}async_rows: {{ min_delay_ms: 1500, max_delay_ms: 1500, status_not_found_polls: 1 }}\n"
    ))
    .await;
    let rows = [
        json!({"Order Id": "o-1", "Contact Key": "u-1", "Revenue": 9.5}),
        json!({"Order Id": "o-2", "Contact Key": "u-1", "Email": "a@example.com"}),
    ];
    let start = Instant::now();
    let id = sim.submit("orders", &rows).await;

    // Right after the submit: 200 without a status.
    let (status, answer) = sim.get(&async_status_path(&id)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(answer.get("status").is_none(), "{answer}");
    assert_eq!(answer["requestId"], id);
    assert_eq!(
        answer["resultMessages"][0]["resultCode"],
        "AsyncRequestStatusNotFound"
    );
    assert_eq!(bulk::parse_status(&answer).unwrap(), AsyncStatus::NotReady);

    // Then pending (picked up after half the delay), and nothing saved yet.
    let (_, answer) = sim.get(&async_status_path(&id)).await;
    assert!(
        start.elapsed() < Duration::from_millis(750),
        "the machine is too slow for this test"
    );
    assert_eq!(answer["status"]["requestStatus"], "Pending", "{answer}");
    assert_eq!(answer["status"]["requestId"], id);
    assert!(answer["status"]["callDateTime"].is_string());
    assert!(sim.handle.rows("orders").is_empty());
    // Results are not there before the request is done.
    let (status, answer) = sim.get(&async_results_path(&id, 1, 50)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bulk::parse_results_page(&answer).unwrap(), None);

    tokio::time::sleep(Duration::from_millis(900).saturating_sub(start.elapsed())).await;
    let (_, answer) = sim.get(&async_status_path(&id)).await;
    if start.elapsed() < Duration::from_millis(1450) {
        assert_eq!(answer["status"]["requestStatus"], "Executing", "{answer}");
        assert!(answer["status"]["pickupDateTime"].is_string());
        assert!(sim.handle.rows("orders").is_empty());
    }

    assert_eq!(
        sim.wait(&id).await,
        AsyncStatus::Complete { has_errors: false }
    );
    assert!(start.elapsed() >= Duration::from_millis(1500));
    let (_, answer) = sim.get(&async_status_path(&id)).await;
    let st = &answer["status"];
    assert_eq!(
        (
            st["requestStatus"].as_str(),
            st["resultStatus"].as_str(),
            st["hasErrors"].as_bool()
        ),
        (Some("Complete"), Some("OK"), Some(false))
    );
    assert!(st["completionDateTime"].is_string());
    // The upsert log dates each row when its request completed (not when it was read).
    let log = sim.handle.log();
    assert_eq!(log.len(), 2);
    for e in &log {
        assert_eq!(
            e.landed_at.get(..23),
            st["completionDateTime"].as_str(),
            "{e:?}"
        );
    }

    let (results, calls) = sim.results(&id, 2, 50).await;
    assert_eq!(results, vec![RowResult::Ok, RowResult::Ok]);
    assert_eq!(calls, 1);
    let (_, page) = sim.get(&async_results_path(&id, 1, 50)).await;
    assert_eq!(
        page["items"][0],
        json!({"status": "OK", "message": "Upserted DataExtensionObject"})
    );
    assert_eq!(
        (
            page["page"].as_u64(),
            page["pageSize"].as_u64(),
            page["count"].as_u64()
        ),
        (Some(1), Some(50), Some(2))
    );

    let stored = sim.handle.rows("orders");
    assert_eq!(stored.len(), 2);
    assert_eq!(
        stored[0]["keys"],
        json!({"Order Id": "o-1", "Contact Key": "u-1"})
    );
    assert_eq!(stored[0]["values"], json!({"Revenue": 9.5}));
    let stats = sim.handle.stats();
    assert_eq!(
        stats.calls_to("PUT /data/v1/async/dataextensions/{key}/rows"),
        1
    );
    assert!(stats.calls_to("GET /data/v1/async/{request_id}/status") >= 4);
    assert_eq!(stats.bulk.async_rows_upserted, 2);
    assert_eq!(stats.rows_upserted, 2);
    let summary = sim.handle.summary_text();
    assert!(
        summary.contains("Async rows: 1 requests (1 complete, 0 failed, 0 pending) with 2 rows: 2 upserted, 0 refused, 0 deadlocked"),
        "{summary}"
    );
    assert!(
        summary.contains("PUT /data/v1/async/dataextensions/{key}/rows: 1 (202: 1)"),
        "{summary}"
    );
}

#[tokio::test]
async fn per_row_errors_are_reported_in_submission_order_over_pages() {
    let sim = Sim::start(&format!(
        "{DECLARED}async_rows: {{ min_delay_ms: 0, max_delay_ms: 0, status_not_found_polls: 0, results_max_page_size: 3 }}\n"
    ))
    .await;
    let rows = [
        json!({"Order Id": "o-1", "Contact Key": "u-1", "Revenue": 1}),
        json!({"Order Id": "o-2", "Contact Key": "u-1", "Email": "not an email"}),
        json!({"Order Id": "o-3", "Contact Key": "u-1", "Note": "fine"}),
        json!({"Order Id": "o-4", "Revenue": 4}),
        json!({"Order Id": "o-5", "Contact Key": "u-1", "Note": "far too long for ten"}),
        json!({"order id": "o-6", "CONTACT KEY": "u-2", "revenue": "6.5", "Unknown Column": 1}),
        json!({"Order Id": "o-7", "Contact Key": "u-1"}),
    ];
    let id = sim.submit("orders", &rows).await;
    assert_eq!(
        sim.wait(&id).await,
        AsyncStatus::Complete { has_errors: true }
    );
    let (_, answer) = sim.get(&async_status_path(&id)).await;
    assert_eq!(answer["status"]["resultStatus"], "Has Errors");

    // Asked for 100 per page; the simulator caps pages at 3, and the collector follows.
    let (results, calls) = sim.results(&id, rows.len(), 100).await;
    assert_eq!(calls, 3);
    let (_, page) = sim.get(&async_results_path(&id, 1, 100)).await;
    assert_eq!(page["pageSize"], 3);
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    let (_, last) = sim.get(&async_results_path(&id, 3, 3)).await;
    assert_eq!(last["items"].as_array().unwrap().len(), 1);
    let (_, past) = sim.get(&async_results_path(&id, 9, 3)).await;
    assert_eq!(past["items"], json!([]));
    let (status, bad) = sim
        .get(&format!("/data/v1/async/{id}/results?$page=0"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");

    let outcomes = RowOutcomes::of(&results);
    assert!(outcomes.deadlocked.is_empty());
    let failed: Vec<usize> = outcomes.failed.iter().map(|(i, _)| *i).collect();
    assert_eq!(failed, vec![1, 3, 4]);
    assert_eq!(
        outcomes.failed[0].1,
        "Email: The value for column [Email] is not a valid email address."
    );
    assert_eq!(
        outcomes.failed[1].1,
        "Cannot locate the existing record. Required keys are missing. (Column [contactkey] does not allow null value.)"
    );
    assert!(
        outcomes.failed[2]
            .1
            .contains("exceeds the column's maximum length")
    );
    assert_eq!(outcomes.saved(rows.len()), 4);

    // Exactly the good rows landed, with casing-insensitive names mapped to the columns.
    let stored = row_map(&sim.handle.rows("orders"), "Order Id");
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        ["o-1", "o-3", "o-6", "o-7"]
    );
    assert_eq!(stored["o-6"], json!({"Revenue": "6.5"}));
    assert_eq!(
        stored["o-7"],
        json!({}),
        "a row of keys only is fine in the async API"
    );
    let stats = sim.handle.stats();
    assert_eq!(
        (
            stats.bulk.async_rows_upserted,
            stats.bulk.async_rows_refused
        ),
        (4, 3)
    );
    assert_eq!(stats.rows_rejected, 3);
}

#[tokio::test]
async fn submits_are_refused_at_the_limits_and_for_their_shape() {
    let sim = Sim::start(DECLARED).await;
    // 32,001 rows: refused as a whole, with a requestId and a result message.
    let row = |i: usize| format!(r#"{{"K":"k{i}","V":"v"}}"#);
    let mut body = AsyncRowsBody::new();
    for i in 0..bulk::ASYNC_ROWS_MAX_ROWS {
        body.push_json(&row(i)).unwrap();
    }
    assert_eq!(
        body.push_json(&row(0)),
        Err(PushError::Full),
        "the builder stops at 32,000"
    );
    let full = body.finish();
    let mut over = full[..full.len() - 2].to_vec();
    over.extend_from_slice(format!(",{}]}}", row(32_000)).as_bytes());
    let (status, answer) = sim.put(&async_rows_path("kv"), over).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["requestId"].is_string());
    assert_eq!(
        answer["resultMessages"][0]["resultCode"],
        "MaxItemsExceeded"
    );
    assert!(
        bulk::refusal_message(&answer)
            .starts_with("MaxItemsExceeded: The request contains 32001 items")
    );
    // 32,000 are accepted.
    let (status, answer) = sim.put(&async_rows_path("kv"), full).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let id = bulk::parse_submitted(&answer).unwrap().request_id;
    assert_eq!(
        sim.wait(&id).await,
        AsyncStatus::Complete { has_errors: false }
    );
    assert_eq!(sim.handle.rows("kv").len(), 32_000);

    // Over 5 MB: 413.
    let big = format!(r#"{{"K":"big","V":"{}"}}"#, "x".repeat(300));
    let mut body = AsyncRowsBody::with_limits(usize::MAX, usize::MAX);
    while body.push_json(&big).is_ok() {}
    assert!(body.bytes() <= bulk::ASYNC_ROWS_MAX_BYTES);
    let mut bytes = body.finish();
    bytes.truncate(bytes.len() - 2);
    bytes.extend_from_slice(format!(",{big},{big}]}}").as_bytes());
    assert!(bytes.len() > 5_000_000);
    let (status, _) = sim.put(&async_rows_path("kv"), bytes).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // An unknown data extension (reject mode), a body without items, empty items, an item
    // that is not an object.
    let (status, answer) = sim
        .put(
            &async_rows_path("nope"),
            br#"{"items":[{"K":"1"}]}"#.to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer["resultMessages"][0]["resultCode"],
        "CustomObjectNotFound"
    );
    assert_eq!(answer["resultMessages"][0]["resultType"], "Validation");
    assert_eq!(answer["resultMessages"][0]["resultClass"], "Error");
    for body in [
        r#"[{"K":"1"}]"#,
        r#"{"items":[]}"#,
        r#"{"items":[{"K":"1"},7]}"#,
        r#"{"rows":[{"K":"1"}]}"#,
    ] {
        let (status, answer) = sim
            .put(&async_rows_path("kv"), body.as_bytes().to_vec())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(answer["requestId"].is_string(), "{body}");
    }
    let (status, _) = sim.put(&async_rows_path("kv"), b"{not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // POST (insert) is not what the relay uses; only PUT is served.
    let (status, _) = sim
        .post(&async_rows_path("kv"), br#"{"items":[{"K":"1"}]}"#.to_vec())
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    // Without a token: 401, nothing queued.
    let resp = sim
        .http
        .put(sim.url(&async_rows_path("kv")))
        .body(r#"{"items":[{"K":"1"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(sim.handle.stats().bulk.async_requests, 1);
}

#[tokio::test]
async fn requests_finish_in_no_fixed_order_so_two_in_flight_for_one_key_can_lose_a_write() {
    let sim = Sim::start(&format!(
        "{DECLARED}async_rows: {{ min_delay_ms: 0, max_delay_ms: 300, status_not_found_polls: 0, seed: 7 }}\n"
    ))
    .await;
    // For each key, "first" then "second" back to back: both in flight at once.
    let mut ids = Vec::new();
    for k in 0..30 {
        for v in ["first", "second"] {
            ids.push(
                sim.submit("kv", &[json!({"K": format!("k{k}"), "V": v})])
                    .await,
            );
        }
    }
    for id in &ids {
        sim.wait(id).await;
    }
    let stored = row_map(&sim.handle.rows("kv"), "K");
    assert_eq!(stored.len(), 30);
    let lost: Vec<&String> = stored
        .iter()
        .filter(|(_, v)| v["V"] == "first")
        .map(|(k, _)| k)
        .collect();
    assert!(
        !lost.is_empty(),
        "no request overtook the one submitted before it"
    );
    // The log shows the later request applied first for those keys.
    let log = sim.handle.log();
    let k = lost[0];
    let order: Vec<&str> = log
        .iter()
        .filter(|e| e.keys["K"] == **k)
        .map(|e| e.values["V"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["second", "first"]);

    // One request per key at a time (wait for it before the next): the last write wins.
    sim.handle.reset();
    for k in 0..10 {
        for v in ["first", "second"] {
            let id = sim
                .submit("kv", &[json!({"K": format!("k{k}"), "V": v})])
                .await;
            sim.wait(&id).await;
        }
    }
    let stored = row_map(&sim.handle.rows("kv"), "K");
    assert!(stored.values().all(|v| v["V"] == "second"), "{stored:?}");
}

#[tokio::test]
async fn deadlocked_rows_are_reported_and_land_when_sent_again() {
    let sim = Sim::start(&format!(
        "{DECLARED}async_rows: {{ min_delay_ms: 0, max_delay_ms: 0, status_not_found_polls: 0, deadlock_rate: 0.3, seed: 3 }}\n"
    ))
    .await;
    let mut pending: Vec<Value> = (0..200)
        .map(|i| json!({"K": format!("k{i}"), "V": "v"}))
        .collect();
    let mut rounds = 0;
    let mut deadlocks = 0;
    while !pending.is_empty() {
        rounds += 1;
        assert!(rounds < 30, "deadlocks never cleared");
        let id = sim.submit("kv", &pending).await;
        let status = sim.wait(&id).await;
        let (results, _) = sim
            .results(&id, pending.len(), bulk::RESULTS_PAGE_SIZE)
            .await;
        let outcomes = RowOutcomes::of(&results);
        assert!(outcomes.failed.is_empty(), "{:?}", outcomes.failed);
        assert_eq!(
            status,
            AsyncStatus::Complete {
                has_errors: !outcomes.deadlocked.is_empty()
            }
        );
        for r in &results {
            if let RowResult::Deadlock { message } = r {
                assert!(message.ends_with("Rerun the transaction."), "{message}");
            }
        }
        // A deadlocked row is not saved; the others are.
        let stored = row_map(&sim.handle.rows("kv"), "K");
        for (i, row) in pending.iter().enumerate() {
            let k = row["K"].as_str().unwrap();
            assert_eq!(
                stored.contains_key(k),
                !outcomes.deadlocked.contains(&i),
                "{k}"
            );
        }
        deadlocks += outcomes.deadlocked.len();
        pending = outcomes
            .deadlocked
            .iter()
            .map(|&i| pending[i].clone())
            .collect();
    }
    assert!(deadlocks > 20, "a 30% deadlock rate gave {deadlocks}");
    assert_eq!(sim.handle.rows("kv").len(), 200);
    assert_eq!(
        sim.handle.stats().bulk.async_rows_deadlocked,
        deadlocks as u64
    );
}

#[tokio::test]
async fn a_failed_request_saves_nothing() {
    let sim = Sim::start(&format!(
        "{DECLARED}async_rows: {{ min_delay_ms: 0, max_delay_ms: 0, status_not_found_polls: 0, error_rate: 1.0 }}\n"
    ))
    .await;
    let id = sim
        .submit(
            "kv",
            &[json!({"K": "a", "V": "1"}), json!({"K": "b", "V": "2"})],
        )
        .await;
    assert_eq!(sim.wait(&id).await, AsyncStatus::Failed);
    let (_, answer) = sim.get(&async_status_path(&id)).await;
    assert_eq!(answer["status"]["requestStatus"], "Error");
    assert!(sim.handle.rows("kv").is_empty());
    let (results, _) = sim.results(&id, 2, 50).await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, RowResult::Failed { .. }))
    );
    assert_eq!(sim.handle.stats().bulk.async_requests_failed, 1);
}

#[tokio::test]
async fn undeclared_data_extensions_take_the_configured_key_columns() {
    let sim =
        Sim::start("async_rows: { min_delay_ms: 0, max_delay_ms: 0, status_not_found_polls: 0 }")
            .await;
    // The relay's own flat rows, from the rowset form it keeps.
    let rowset = [
        r#"{"keys":{"Order Id":"o-1","Contact Key":"u-1"},"values":{"Order Id":"o-1","Revenue":1}}"#,
        r#"{"keys":{"Order Id":"o-1","Contact Key":"u-1"},"values":{"Order Id":"o-1","Revenue":2}}"#,
        r#"{"keys":{"Order Id":"o-1","Contact Key":"u-2"},"values":{"Order Id":"o-1"}}"#,
    ];
    let flat: Vec<Value> = rowset
        .iter()
        .map(|r| serde_json::from_str(&bulk::flatten_rowset_row(r).unwrap()).unwrap())
        .collect();
    let id = sim.submit("orders", &flat).await;
    assert_eq!(
        sim.wait(&id).await,
        AsyncStatus::Complete { has_errors: false }
    );
    let rows = sim.handle.rows("orders");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        rows[0]["keys"],
        json!({"Order Id": "o-1", "Contact Key": "u-1"})
    );
    assert_eq!(rows[0]["values"], json!({"Revenue": 2}));
    // A sync row for the same key is the same row.
    let (status, _) = sim
        .post(
            &action::rowset_path("orders"),
            br#"[{"keys":{"Contact Key":"u-1","Order Id":"o-1"},"values":{"Note":"sync"}}]"#
                .to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let rows = sim.handle.rows("orders");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["values"], json!({"Revenue": 2, "Note": "sync"}));
}

#[tokio::test]
async fn establish_answers_in_request_order_with_per_key_errors() {
    let sim = Sim::start("establish: { max_keys: 6 }").await;
    let (status, _) = sim
        .post(
            "/contacts/v1/contacts",
            br#"{"contactKey":"old","attributeSets":[]}"#.to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let long = "x".repeat(255);
    let keys = ["u-1", "old", "u-2", "", long.as_str(), "u-1"];
    let (status, answer) = sim
        .post(ESTABLISH_PATH, bulk::establish_body(&keys).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let items = answer["items"].as_array().unwrap();
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["value"]["requestItemIndex"], i);
        assert_eq!(item["value"]["requestedContactKey"], keys[i]);
    }
    assert_eq!(
        items[0]["value"]["contactReference"]["contactStatus"], "Active",
        "{answer}"
    );
    assert!(answer["requestServiceMessageID"].is_string());
    let out = bulk::parse_establish(&answer, &keys).unwrap();
    let new: Vec<Option<bool>> = out
        .iter()
        .map(|o| match o {
            ContactOutcome::Established { is_new, .. } => *is_new,
            ContactOutcome::Refused { .. } => None,
        })
        .collect();
    assert_eq!(
        new,
        [Some(true), Some(false), Some(true), None, None, Some(false)]
    );
    assert!(matches!(&out[4], ContactOutcome::Refused { message } if message.contains("254")));
    let ids: Vec<i64> = out
        .iter()
        .filter_map(|o| match o {
            ContactOutcome::Established { contact_id, .. } => *contact_id,
            _ => None,
        })
        .collect();
    assert_eq!(ids[0], ids[3], "u-1 twice is one contact");
    let contacts: Vec<String> = sim
        .handle
        .contacts()
        .iter()
        .map(|c| c["contactKey"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(contacts, ["old", "u-1", "u-2"]);

    // Without correlateResponseItem nothing promises the order: the simulator reverses it,
    // and requestItemIndex still places every item.
    let (_, answer) = sim
        .post(
            ESTABLISH_PATH,
            br#"{"contactKeys":["a","b","c"],"correlateResponseItem":false}"#.to_vec(),
        )
        .await;
    assert_eq!(answer["items"][0]["value"]["requestedContactKey"], "c");
    assert!(
        answer["items"][0]["value"].get("isNewContact").is_none(),
        "only with includeNewContactAwareness"
    );
    let out = bulk::parse_establish(&answer, &["a", "b", "c"]).unwrap();
    assert!(out.iter().all(ContactOutcome::is_established));
    // Matching by position alone would be caught by the key check.
    let mut shuffled = answer.clone();
    for item in shuffled["items"].as_array_mut().unwrap() {
        item["value"]
            .as_object_mut()
            .unwrap()
            .remove("requestItemIndex");
    }
    assert!(bulk::parse_establish(&shuffled, &["a", "b", "c"]).is_err());

    // Limits and shape.
    let seven = ["a", "b", "c", "d", "e", "f", "g"];
    let (status, answer) = sim
        .post(ESTABLISH_PATH, bulk::establish_body(&seven).unwrap())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(bulk::refusal_message(&answer).contains("at most 6"));
    for body in [r#"{"contactKeys":[]}"#, r#"{"contactKeys":"u-1"}"#, "[]"] {
        let (status, _) = sim.post(ESTABLISH_PATH, body.as_bytes().to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    let stats = sim.handle.stats();
    assert_eq!(stats.calls_to("POST /contacts/v1/establish"), 6);
    assert_eq!(
        (
            stats.bulk.establish_keys,
            stats.bulk.establish_new,
            stats.bulk.establish_refused
        ),
        (9, 5, 2)
    );
    assert!(
        sim.handle
            .summary_text()
            .contains("Contacts established: 9 keys (5 new, 2 refused)")
    );
}

fn fields(v: Value) -> Fields {
    serde_json::from_value(v).expect("an object")
}

#[tokio::test]
async fn async_events_answer_per_member_and_check_data_against_the_definition() {
    let sim = Sim::start(DECLARED).await;
    let ok = fields(json!({"plan": "pro", "Referrer": "friend", "eventInstanceId": "ignored"}));
    let unknown = fields(json!({"Plan": "pro", "Bogus": 1, "Other": 2}));
    let too_long = fields(json!({"Plan": "much too long a plan"}));
    let bad_date = fields(json!({"Signed Up At": "yesterday"}));
    let nulls = fields(json!({"Plan": null}));
    let empty = Fields::default();
    let members: [(&str, &Fields); 6] = [
        ("u-1", &ok),
        ("u-2", &unknown),
        ("u-3", &too_long),
        ("u-4", &bad_date),
        ("u-5", &nulls),
        ("u-6", &empty),
    ];
    let body = bulk::async_events_body("signup-journey", &members).unwrap();
    let (status, answer) = sim.post(ASYNC_EVENTS_PATH, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(
        (answer["count"].as_u64(), answer["notQueuedCount"].as_u64()),
        (Some(6), Some(3))
    );
    assert!(answer["requestId"].is_string());
    let keys: Vec<&str> = members.iter().map(|(k, _)| *k).collect();
    let out = bulk::parse_async_events(&answer, &keys).unwrap();
    let queued: Vec<bool> = out
        .iter()
        .map(|o| matches!(o, MemberOutcome::Queued { .. }))
        .collect();
    assert_eq!(queued, [true, false, false, false, true, true]);
    match &out[1] {
        MemberOutcome::Refused { errorcode, message } => {
            assert_eq!(*errorcode, Some(30000));
            assert!(
                message.contains("'Bogus', 'Other'") && message.contains("signup-journey"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&out[2], MemberOutcome::Refused { message, .. } if message.contains("maximum length"))
    );
    let landed = sim.handle.api_events();
    assert_eq!(landed.len(), 3);
    assert_eq!(landed[0]["ContactKey"], "u-1");
    assert_eq!(landed[0]["EventDefinitionKey"], "signup-journey");
    let stats = sim.handle.stats();
    assert_eq!(
        (
            stats.bulk.async_event_members,
            stats.bulk.async_event_refused
        ),
        (3, 3)
    );
    assert!(
        sim.handle
            .summary_text()
            .contains("Journey batch members: 3 queued, 3 refused")
    );

    // A member without a contact key is refused on its own.
    let (_, answer) = sim
        .post(
            ASYNC_EVENTS_PATH,
            br#"{"eventDefinitionKey":"signup-journey","members":[{"data":{}},{"contactKey":"u-9"}]}"#.to_vec(),
        )
        .await;
    assert!(answer["members"][0]["errorcode"].is_number(), "{answer}");
    assert!(
        answer["members"][1]["eventInstanceId"].is_string(),
        "{answer}"
    );

    // 101 members: the whole request is refused.
    let many: Vec<(&str, &Fields)> = (0..100).map(|_| ("u", &empty)).collect();
    let mut body: Value =
        serde_json::from_slice(&bulk::async_events_body("signup-journey", &many).unwrap()).unwrap();
    body["members"]
        .as_array_mut()
        .unwrap()
        .push(json!({"contactKey": "u"}));
    let (status, answer) = sim
        .post(ASYNC_EVENTS_PATH, body.to_string().into_bytes())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer,
        json!({"message": "Interaction Count Limit Exceeded", "errorcode": 10000, "documentation": ""})
    );
    let (status, _) = sim
        .post(
            ASYNC_EVENTS_PATH,
            bulk::async_events_body("signup-journey", &many).unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    // An unknown definition, and bodies without members.
    let (status, answer) = sim
        .post(
            ASYNC_EVENTS_PATH,
            bulk::async_events_body("nope", &members[..1]).unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["errorcode"], 30000);
    for body in [
        r#"{"eventDefinitionKey":"signup-journey","members":[]}"#,
        r#"{"members":[{"contactKey":"u"}]}"#,
    ] {
        let (status, _) = sim.post(ASYNC_EVENTS_PATH, body.as_bytes().to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
}

#[tokio::test]
async fn the_sync_event_endpoint_checks_data_too() {
    let sim = Sim::start(&format!("{DECLARED}api_events: [unchecked]\n")).await;
    let send = |def: &str, data: Value| {
        json!({"ContactKey": "u-1", "EventDefinitionKey": def, "Data": data})
            .to_string()
            .into_bytes()
    };
    let (status, answer) = sim
        .post(
            action::EVENTS_PATH,
            send("signup-journey", json!({"plan": "pro", "Bogus": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["errorcode"], 30000);
    assert!(
        answer["message"].as_str().unwrap().contains("'Bogus'"),
        "{answer}"
    );
    let (status, answer) = sim
        .post(
            action::EVENTS_PATH,
            send(
                "signup-journey",
                json!({"plan": "pro", "Signed Up At": "2024-05-01T00:00:00.000Z"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    // `api_events` keys are known, and their Data is not checked.
    let (status, _) = sim
        .post(
            action::EVENTS_PATH,
            send("unchecked", json!({"Anything": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = sim
        .post(action::EVENTS_PATH, send("unknown", json!({})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(sim.handle.api_events().len(), 2);
}

#[tokio::test]
async fn a_rowset_row_whose_values_hold_no_real_column_fails_and_poisons_the_rest() {
    let sim = Sim::start(DECLARED).await;
    let rows = json!([
        {"keys": {"Order Id": "o-1", "Contact Key": "u-1"}, "values": {"Revenue": 1}},
        {"keys": {"Order Id": "o-2", "Contact Key": "u-1"}, "values": {"Not A Column": 1}},
        {"keys": {"Order Id": "o-3", "Contact Key": "u-1"}, "values": {"Revenue": 3}},
    ]);
    let (status, answer) = sim
        .post(
            &action::rowset_path("orders"),
            rows.to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["errorcode"], 10006);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .starts_with("Unable to save rows for data extension ID ")
    );
    assert_eq!(
        answer["additionalErrors"][0]["message"],
        "At least one existing field is required in the values property"
    );
    let stored = row_map(&sim.handle.rows("orders"), "Order Id");
    assert_eq!(stored.keys().collect::<Vec<_>>(), ["o-1"]);

    // Keys do not count, also for undeclared data extensions; a key column repeated in
    // values does.
    let sim = Sim::start("").await;
    for (values, want) in [
        (json!({}), StatusCode::BAD_REQUEST),
        (json!({"Contact Key": "u-1"}), StatusCode::OK),
    ] {
        let body = json!([{"keys": {"Contact Key": "u-1"}, "values": values}]);
        let (status, answer) = sim
            .post(
                &action::rowset_path("people"),
                body.to_string().into_bytes(),
            )
            .await;
        assert_eq!(status, want, "{values}: {answer}");
    }
}

/// The calls the shipped ecommerce rules make for the example events land in the
/// example simulator config (declared data extensions and event definitions).
#[tokio::test]
async fn the_shipped_rules_fit_the_example_simulator() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = SimConfig::from_file(root.join("examples/sim.yaml")).unwrap();
    let handle = sim::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let sim = Sim {
        token: handle.state().issue_token(),
        handle,
        http: Client::new(),
    };
    let program = sfmc_relay::rules::load(
        Some(&root.join("examples/ecommerce/rules")),
        &sfmc_relay::env::Env::empty(),
        1,
    )
    .unwrap()
    .program;
    let text = std::fs::read_to_string(root.join("examples/events.ndjson")).unwrap();
    let mut events = 0;
    for line in text.lines() {
        let sfmc_relay::event::Line::Events(parsed) = sfmc_relay::event::parse_line(line, 0) else {
            continue;
        };
        for event in parsed {
            let sfmc_relay::transform::Outcome::Actions(actions) = sfmc_relay::transform::transform(
                &program,
                &event,
                &mut sfmc_relay::transform::Trace::off(),
            ) else {
                continue;
            };
            for a in actions {
                if matches!(a, Action::ApiEvent { .. }) {
                    events += 1;
                }
                let call = a.call();
                let (status, answer) = sim
                    .send(
                        call.method.parse().unwrap(),
                        &call.path,
                        Some(call.body.to_string().into_bytes()),
                    )
                    .await;
                assert!(
                    status.is_success(),
                    "{} {}: {status} {answer}",
                    call.method,
                    call.path
                );
            }
        }
    }
    assert!(events > 0);
    assert_eq!(sim.handle.api_events().len(), events);
}
