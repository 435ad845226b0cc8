//! Segment's Node libraries, unmodified from npm, against `sfmc-relay serve`:
//! `@segment/analytics-node` (current) and `analytics-node` 6 (classic). Each sends
//! identify, track, page, screen, group and alias calls and one event of exactly 32,700
//! bytes as the library sends it; every one lands in the simulator.
//!
//! The packages are in tests/js (package.json + package-lock.json), installed by
//! `.ci/install-test-deps`. Skipped, with a message, when node or the packages are missing
//! and `CI` is not set; in CI the test fails instead.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{KEY, Relay, client_rules, js_dir, node_packages, require, simulator};

const BIG: usize = 32_700;

fn find<'a>(rows: &'a [Value], key: &str, want: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["keys"][key] == want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_node_libraries_deliver_every_call_type_through_serve() {
    let test = "segment_node_libraries_deliver_every_call_type_through_serve";
    if require(
        test,
        node_packages(&["@segment/analytics-node", "analytics-node"]),
    )
    .is_err()
    {
        return;
    }
    let sim = simulator().await;
    let tmp = tempfile::tempdir().unwrap();
    let rules = client_rules(tmp.path());
    let mut relay = Relay::start(&tmp.path().join("spool"), &rules, &sim, &[]);
    for (i, lib) in ["next", "classic"].into_iter().enumerate() {
        let out = tokio::task::spawn_blocking({
            let host = relay.url("");
            move || {
                Command::new("node")
                    .current_dir(js_dir())
                    .args(["send-node.js", lib, &host, KEY, lib, &BIG.to_string()])
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{lib}: {}\n{}\nrelay:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            relay.log()
        );
        let said: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(said["big_event_bytes"], BIG, "{said}");
        let n = i + 1;
        let counts = || {
            [
                sim.rows("people").len(),
                sim.rows("orders").len() / 2,
                sim.api_events().len(),
                sim.rows("page_views").len(),
                sim.rows("screen_views").len(),
                sim.rows("groups").len(),
                sim.rows("aliases").len(),
            ]
        };
        let start = std::time::Instant::now();
        while counts() != [n; 7] {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{lib}: people, orders/2, journey events, page_views, screen_views, groups, aliases: {:?}, want {n} each\n{}",
                counts(),
                relay.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let people = sim.rows("people");
        let person = find(&people, "Contact Key", &format!("{lib}-1")).expect("person row");
        assert_eq!(
            person["values"]["Email"],
            format!("{lib}-1@example.com"),
            "{person}"
        );
        assert_eq!(person["values"]["First Name"], "Node", "{person}");
        let orders = sim.rows("orders");
        let order = find(&orders, "Order Id", &format!("{lib}-o1")).expect("order row");
        assert_eq!(order["values"]["Revenue"], 12.5, "{order}");
        let big = find(&orders, "Order Id", &format!("{lib}-big")).expect("the 32,700-byte event");
        assert!(
            big["values"]["Note"].as_str().unwrap().len() > 32_000,
            "{lib}: the big event's note"
        );
        let journey = sim
            .api_events()
            .into_iter()
            .find(|e| e["ContactKey"] == format!("{lib}-2"));
        assert!(journey.is_some(), "{lib}: the Signed Up journey event");
        let groups = sim.rows("groups");
        let group = find(&groups, "Contact Key", &format!("{lib}-1")).expect("group row");
        assert_eq!(group["values"]["Name"], "Acme", "{group}");
        assert!(
            sim.contacts()
                .iter()
                .any(|c| c["contactKey"] == format!("{lib}-1")),
            "{lib}: contact created"
        );
    }
    // Nothing refused or dead-lettered on the way.
    let dead = tmp.path().join("spool.deadletter.ndjson");
    assert!(
        !dead.exists(),
        "{}",
        std::fs::read_to_string(&dead).unwrap_or_default()
    );
    let m = reqwest::get(relay.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "sfmc_relay_events_received_total{type=\"track\"} 6",
        "sfmc_relay_events_received_total{type=\"identify\"} 2",
        "sfmc_relay_events_received_total{type=\"alias\"} 2",
        "sfmc_relay_requests_refused_total{reason=\"too_large\"} 0",
    ] {
        assert!(m.contains(line), "missing `{line}` in:\n{m}");
    }
    assert!(relay.terminate(Duration::from_secs(20)).success());
}
