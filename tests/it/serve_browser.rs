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

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::support::serve::{
    KEY, Relay, assert_client_calls_landed, client_rules, js_dir, metric_value, node_packages,
    require, row, run_client, simulator, wait_for_landed,
};

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
        let mut cmd = Command::new("node");
        cmd.current_dir(js_dir()).env("CHROMIUM", chromium()).args([
            "browser.js",
            &relay_origin,
            KEY,
            mode,
            &run,
            &BIG.to_string(),
        ]);
        let said = run_client(cmd, mode, &relay).await;
        assert_eq!(said["big_event_bytes"], BIG, "{said}");
        // Per page: 1 person, 3 orders (one small, the probe and the 32,700-byte one), 1
        // journey entry, 1 page view, 1 group, 1 alias.
        wait_for_landed(
            &sim,
            &relay,
            mode,
            &[
                ("people", 1),
                ("orders", 3),
                ("journey", 1),
                ("page_views", 1),
                ("groups", 1),
                ("aliases", 1),
            ],
            i + 1,
        )
        .await;
        assert_client_calls_landed(&sim, &run, 7.5, &format!("{run}-bigB"), &format!("{run}-1"));
        // Context columns from the browser's context.
        let person = row(&sim, "people", "Contact Key", &format!("{run}-1"));
        assert!(
            person["values"]["User Agent"]
                .as_str()
                .unwrap_or("")
                .contains("Chrome"),
            "{person}"
        );
    }
    relay.assert_nothing_dead_lettered(&tmp.path().join("spool"));
    let m = relay.metrics().await;
    let value = |series: &str| metric_value(&m, series);
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
