//! deploy/: the systemd unit starts `serve` as written (and passes `systemd-analyze verify`
//! where that tool exists), its environment file names only variables the relay reads, and
//! every metric (and label) the Grafana dashboard queries is exported by `/metrics`.

use crate::support::root;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::support::serve::{KEY, Relay, rules, simulator};
use crate::support::wait_until;
use regex::Regex;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

/// Metric name -> the labels the dashboard groups it by.
fn dashboard_queries() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(root().join("deploy/grafana-dashboard.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id {}",
            p["id"]
        );
        assert!(p["gridPos"]["w"].as_u64().unwrap() <= 24);
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "{}",
                p["title"]
            );
        }
    }
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    assert!(all.len() > 20, "{all:?}");
    let metric = Regex::new(r"\bsfmc_relay_[a-z0-9_]+").unwrap();
    let by = Regex::new(r"\bby \(([a-z_, ]+)\)").unwrap();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in &all {
        let names: Vec<String> = metric
            .find_iter(e)
            .map(|m| m.as_str().to_string())
            .collect();
        assert!(
            !names.is_empty(),
            "a query without an sfmc-relay metric: {e}"
        );
        let labels: BTreeSet<String> = by
            .captures_iter(e)
            .flat_map(|c| {
                c[1].split(',')
                    .map(|l| l.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        for n in names {
            out.entry(n).or_default().extend(labels.iter().cloned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported() {
    let queries = dashboard_queries();
    let sim = simulator().await;
    let tmp = tempfile::tempdir().unwrap();
    let rules = rules(tmp.path(), "");
    let mut relay = Relay::start(&tmp.path().join("spool"), &rules, &sim, &[]);
    let c = reqwest::Client::new();
    // Some of everything, so that labelled series exist: SFMC answers some calls with 429 or
    // 500 (so retries are counted), events of every outcome.
    // (429s are retried on every endpoint; a journey call answered 500 is not: it may
    // have been processed.)
    sim.set_faults(sfmc_relay::sim::Faults {
        rate_429: 0.5,
        retry_after: 0,
        rate_500: 0.2,
        seed: 7,
        ..Default::default()
    });
    let big = "x".repeat(33 * 1024);
    let r = c
        .post(relay.url("/v1/batch"))
        .basic_auth(KEY, Some(""))
        .json(&json!({"batch": [
            {"type": "identify", "messageId": "d-1", "userId": "u1", "traits": {"email": "u1@example.com"}},
            {"type": "track", "messageId": "d-2", "userId": "u1", "event": "Order Completed", "properties": {"order_id": "o1"}},
            {"type": "track", "messageId": "d-3", "userId": "u2", "event": "Signed Up"},
            {"type": "track", "userId": "u3", "event": "Order Completed"},
            {"type": "page", "userId": "u1", "name": "Home"},
            {"type": "track", "userId": "u4", "event": "Order Completed", "properties": {"order_id": "o4", "note": big}},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .post(relay.url("/v1/track"))
        .basic_auth("wrong", Some(""))
        .json(&json!({"userId": "x", "event": "X"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    c.request(reqwest::Method::OPTIONS, relay.url("/v1/t"))
        .header("origin", "http://page.test")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    // The journey entry ends entered, or `uncertain` when its call was answered 500.
    let dead = tmp.path().join("spool").with_extension("deadletter.ndjson");
    wait_until("delivery", Duration::from_secs(20), || {
        sim.rows("orders").len() == 1
            && (sim.api_events().len() == 1
                || std::fs::read_to_string(&dead).is_ok_and(|t| t.contains("\"uncertain\"")))
    })
    .await;
    sim.set_faults(Default::default());
    let metrics = relay.metrics_when_idle().await;
    let mut missing = Vec::new();
    for (name, labels) in &queries {
        if !metrics.contains(&format!("# TYPE {name} ")) {
            missing.push(format!("{name}: not exported"));
            continue;
        }
        let samples: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .collect();
        if samples.is_empty() {
            missing.push(format!("{name}: no sample"));
        }
        for l in labels.iter().filter(|l| l.as_str() != "instance") {
            if !samples.iter().any(|s| s.contains(&format!("{l}=\""))) {
                missing.push(format!(
                    "{name}: no `{l}` label (the dashboard groups by it)"
                ));
            }
        }
    }
    assert!(missing.is_empty(), "{missing:#?}\n/metrics:\n{metrics}");
    assert!(relay.terminate(Duration::from_secs(20)).success());
}

/// The unit's `ExecStart=` as arguments (continuation lines joined).
fn exec_start(unit: &str) -> Vec<String> {
    let joined = unit.replace("\\\n", " ");
    let line = joined
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn systemd_unit_starts_serve_as_written() {
    let unit = std::fs::read_to_string(root().join("deploy/sfmc-relay.service")).unwrap();
    let args = exec_start(&unit);
    assert_eq!(args[0], "/usr/local/bin/sfmc-relay");
    assert_eq!(args[1], "serve");
    // The same arguments, with the paths moved into a temporary directory.
    let tmp = tempfile::tempdir().unwrap();
    let moved: Vec<String> = args[2..]
        .iter()
        .map(|a| {
            if a == "/etc/sfmc-relay/rules" {
                root().join("rules").display().to_string()
            } else if let Some(rest) = a.strip_prefix("/var/lib/sfmc-relay/") {
                tmp.path().join(rest).display().to_string()
            } else if a == "127.0.0.1:8080" {
                "127.0.0.1:0".to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let mut child = Command::new(crate::support::BIN)
        .arg("serve")
        .args(&moved)
        .env("SFMC_RELAY_WRITE_KEYS", KEY)
        .env_remove("SFMC_CLIENT_ID")
        .env_remove("SFMC_CLIENT_SECRET")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            all.push_str(&line);
            all.push('\n');
            if line.contains("listening on") {
                let _ = tx.send(Ok(all.clone()));
            }
        }
        let _ = tx.send(Err(all));
    });
    let started = rx.recv_timeout(Duration::from_secs(30));
    // (The signal handler is installed just after the address is printed.)
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    match started {
        Ok(Ok(_)) => {}
        other => panic!("serve with the unit's arguments did not start: {other:?}"),
    }
    assert!(status.success(), "{status:?}");
    assert!(tmp.path().join("spool").is_dir());

    // `systemd-analyze verify`, where it exists (not in every container).
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if !analyze.is_ok_and(|o| o.status.success()) {
        println!(
            "NOTE: systemd-analyze not found: deploy/sfmc-relay.service not verified by systemd"
        );
        eprintln!(
            "NOTE: systemd-analyze not found: deploy/sfmc-relay.service not verified by systemd"
        );
        return;
    }
    let copy: PathBuf = tmp.path().join("sfmc-relay.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/sfmc-relay", crate::support::BIN),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("sfmc-relay.service"),
        "systemd-analyze verify:\n{err}"
    );
    // The hardening, as systemd scores it (offline: needs systemd 250 or later).
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&copy)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("Unknown key") && !text.contains("ignoring"),
        "{text}"
    );
    match text.lines().find_map(|l| {
        l.split("Overall exposure level for sfmc-relay.service: ")
            .nth(1)
    }) {
        Some(score) => {
            let score: f64 = score.split_whitespace().next().unwrap().parse().unwrap();
            assert!(score <= 2.0, "exposure {score}:\n{text}");
        }
        None => println!("NOTE: systemd-analyze security --offline not available: {text}"),
    }
}

#[test]
fn environment_file_names_only_variables_the_relay_reads() {
    let env = std::fs::read_to_string(root().join("deploy/sfmc-relay.env.example")).unwrap();
    let help = |cmd: &str| {
        let o = Command::new(crate::support::BIN)
            .args([cmd, "--help"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let known = format!(
        "{}{}{}",
        help("serve"),
        help("run"),
        std::fs::read_to_string(root().join("README.md")).unwrap()
    );
    let var = Regex::new(r"^#?([A-Z][A-Z0-9_]+)=").unwrap();
    let mut names = Vec::new();
    for line in env.lines() {
        if let Some(c) = var.captures(line) {
            names.push(c[1].to_string());
        }
        // No secret values in the example.
        if let Some((k, v)) = line.split_once('=')
            && (k.contains("SECRET") || k.contains("WRITE_KEYS"))
        {
            assert!(v.trim().is_empty(), "{line}");
        }
    }
    for n in [
        "SFMC_CLIENT_ID",
        "SFMC_CLIENT_SECRET",
        "SFMC_RELAY_WRITE_KEYS",
    ] {
        assert!(
            names.iter().any(|x| x == n),
            "{n} missing from the environment file"
        );
    }
    for n in &names {
        assert!(
            known.contains(n.as_str()),
            "{n}: not a variable the relay documents"
        );
    }
}
