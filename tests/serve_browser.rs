//! analytics.js in a real browser against `sfmc-relay serve`: `@segment/analytics-next`'s
//! UMD build (unmodified, from npm) in Debian's headless Chromium, driven by
//! `playwright-core`, from a page on another loopback port (every call is cross-origin, so
//! Chromium sends CORS preflights first: analytics.js sends `Authorization`).
//!
//! Three ways a page is set up: `standard` (only `cdnURL` points at the relay, which
//! answers the settings), `batching` (the same, deliveryStrategy batching: `/v1/b`),
//! `apihost` (settings inline, only `apiHost` at the relay). Each sends identify, track, page,
//! group and alias calls and an event of exactly 32,700 bytes as the browser sends it.
//!
//! Installed by `.ci/install-test-deps` (npm packages in tests/js, `apt-get install
//! chromium`; never a browser download). Skipped, with a message, when node, the packages
//! or Chromium are missing and `CI` is not set; in CI the test fails instead.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{KEY, Relay, client_rules, js_dir, node_packages, require, simulator};

const BIG: usize = 32_700;

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

fn browser_available() -> Result<(), String> {
    node_packages(&["playwright-core", "@segment/analytics-next"])?;
    let c = chromium();
    match Command::new(&c).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "{} --version failed: {}",
            c.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!(
            "no Chromium at {} (apt-get install chromium, or set CHROMIUM): {e}",
            c.display()
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_js_in_chromium_delivers_through_serve() {
    let test = "analytics_js_in_chromium_delivers_through_serve";
    if require(test, browser_available()).is_err() {
        return;
    }
    let sim = simulator().await;
    let tmp = tempfile::tempdir().unwrap();
    let rules = client_rules(tmp.path());
    let mut relay = Relay::start(&tmp.path().join("spool"), &rules, &sim, &[]);
    let relay_origin = relay.url("");
    for (i, mode) in ["standard", "batching", "apihost"].into_iter().enumerate() {
        let run = format!("web-{mode}");
        let out = tokio::task::spawn_blocking({
            let (relay_origin, run) = (relay_origin.clone(), run.clone());
            move || {
                Command::new("node")
                    .current_dir(js_dir())
                    .env("CHROMIUM", chromium())
                    .args([
                        "browser.js",
                        &relay_origin,
                        KEY,
                        mode,
                        &run,
                        &BIG.to_string(),
                    ])
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{mode}: {}\n{}\nrelay:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            relay.log()
        );
        let said: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(said["big_event_bytes"], BIG, "{said}");
        let n = i + 1;
        // Per page: 1 person, 3 orders (one small, the probe and the 32,700-byte one), 1
        // journey entry, 1 page view, 1 group, 1 alias.
        let counts = || {
            [
                sim.rows("people").len(),
                sim.rows("orders").len() / 3,
                sim.api_events().len(),
                sim.rows("page_views").len(),
                sim.rows("groups").len(),
                sim.rows("aliases").len(),
            ]
        };
        let start = std::time::Instant::now();
        while counts() != [n; 6] {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{mode}: people, orders/3, journey events, page_views, groups, aliases: {:?}, want {n} each\n{}",
                counts(),
                relay.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let find = |de: &str, key: &str, want: &str| {
            sim.rows(de)
                .into_iter()
                .find(|r| r["keys"][key] == want)
                .unwrap_or_else(|| panic!("{mode}: no {de} row with {key} = {want}"))
        };
        let person = find("people", "Contact Key", &format!("{run}-1"));
        assert_eq!(
            person["values"]["Email"],
            format!("{run}-1@example.com"),
            "{person}"
        );
        // Context columns from the browser's context.
        assert!(
            person["values"]["User Agent"]
                .as_str()
                .unwrap_or("")
                .contains("Chrome"),
            "{person}"
        );
        let order = find("orders", "Order Id", &format!("{run}-o1"));
        assert_eq!(order["keys"]["Contact Key"], format!("{run}-1"), "{order}");
        assert_eq!(order["values"]["Revenue"], 7.5, "{order}");
        let big = find("orders", "Order Id", &format!("{run}-bigB"));
        assert!(big["values"]["Note"].as_str().unwrap().len() > 30_000);
        assert_eq!(
            find("groups", "Contact Key", &format!("{run}-1"))["values"]["Name"],
            "Acme"
        );
        assert!(
            sim.api_events()
                .iter()
                .any(|e| e["ContactKey"] == format!("{run}-1")),
            "{mode}: the Signed Up journey event"
        );
    }
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
    let value = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{m}"))
    };
    assert!(
        value("sfmc_relay_cors_preflights_total{result=\"allowed\"}") >= 3,
        "Chromium preflights every cross-origin POST with Authorization:\n{m}"
    );
    assert_eq!(
        value("sfmc_relay_cors_preflights_total{result=\"refused\"}"),
        0
    );
    assert_eq!(
        value("sfmc_relay_browser_settings_served_total"),
        2,
        "standard and batching load settings from the relay"
    );
    for reason in [
        "unauthorized",
        "too_large",
        "bad_request",
        "not_found",
        "origin_not_allowed",
    ] {
        assert_eq!(
            value(&format!(
                "sfmc_relay_requests_refused_total{{reason=\"{reason}\"}}"
            )),
            0,
            "{reason}"
        );
    }
    assert!(relay.terminate(Duration::from_secs(20)).success());
}
