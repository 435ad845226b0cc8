//! Segment's Node libraries, unmodified from npm, against `sfmc-relay serve`:
//! `@segment/analytics-node` (current) and `analytics-node` 6 (classic). Each sends
//! identify, track, page, screen, group and alias calls and one event of exactly 32,700
//! bytes as the library sends it; every one lands in the simulator.
//!
//! The packages are in tests/js (package.json + package-lock.json), installed by
//! `.ci/install-test-deps`. Skipped, with a message, when node or the packages are missing
//! and `CI` is not set; in CI the test fails instead.

use std::process::Command;
use std::time::Duration;

use crate::support::serve::{
    KEY, Relay, assert_client_calls_landed, client_rules, js_dir, node_packages, require, row,
    run_client, simulator, wait_for_landed,
};

const BIG: usize = 32_700;

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
        let mut cmd = Command::new("node");
        cmd.current_dir(js_dir()).args([
            "send-node.js",
            lib,
            &relay.url(""),
            KEY,
            lib,
            &BIG.to_string(),
        ]);
        let said = run_client(cmd, lib, &relay).await;
        assert_eq!(said["big_event_bytes"], BIG, "{said}");
        let n = i + 1;
        wait_for_landed(
            &sim,
            &relay,
            lib,
            crate::support::serve::SERVER_LIBRARY_CALLS,
            n,
        )
        .await;
        assert_client_calls_landed(&sim, lib, 12.5, &format!("{lib}-big"), &format!("{lib}-2"));
        let person = row(&sim, "people", "Contact Key", &format!("{lib}-1"));
        assert_eq!(person["values"]["First Name"], "Node", "{person}");
        assert!(
            sim.contacts()
                .iter()
                .any(|c| c["contactKey"] == format!("{lib}-1")),
            "{lib}: contact created"
        );
    }
    // Nothing refused or dead-lettered on the way.
    relay.assert_nothing_dead_lettered(&tmp.path().join("spool"));
    let m = relay.metrics().await;
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
