//! What the integration tests share: one way to start the simulator (`sim`), to run the
//! relay binary (`process`), to run `run`/`replay` in-process (`run`), to start `serve`
//! (`serve`), the Kafka tests' helpers and workload (`kafka`, `workload`), and here the
//! test data: rule directories, events, NDJSON files, dead letters, stored rows, waiting.
//!
//! The items of `process`, `run` and `sim` are re-exported here: `use crate::support::*;`.
#![allow(dead_code)]

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod process;
pub mod run;
pub mod serve;
pub mod sim;
pub mod workload;

pub use process::*;
pub use run::*;
pub use sim::*;

use serde_json::{Map, Value, json};
use sfmc_relay::rules::{self, Program};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn example_events() -> PathBuf {
    root().join("examples/events.ndjson")
}

/// Delivery settings for a test: fast retries, no rate limit.
#[derive(Debug, Clone)]
pub struct Settings {
    pub batch_rows: usize,
    pub linger: &'static str,
    pub max_in_flight: usize,
    pub attempts: u32,
    pub base_delay: &'static str,
    pub max_delay: &'static str,
    pub request_timeout: &'static str,
    /// `delivery.give_up_after`: how long `run` waits for an unavailable SFMC.
    pub give_up_after: &'static str,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            batch_rows: 50,
            linger: "20ms",
            max_in_flight: 4,
            attempts: 30,
            base_delay: "2ms",
            max_delay: "20ms",
            request_timeout: "10s",
            give_up_after: "2s",
        }
    }
}

/// A copy of `examples/ecommerce/rules` in a temp dir, with `settings.yaml` replaced.
pub fn rules_dir(s: &Settings) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = root().join("examples/ecommerce/rules");
    for entry in std::fs::read_dir(&src).expect("examples/ecommerce/rules") {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "settings.yaml" {
            continue;
        }
        std::fs::copy(entry.path(), dir.path().join(&name)).unwrap();
    }
    let settings = format!(
        "sfmc:\n  subdomain: ${{SFMC_SUBDOMAIN:-}}\n  account_id: ${{SFMC_ACCOUNT_ID:-}}\n\
delivery:\n  batch_rows: {}\n  linger: {}\n  requests_per_second: 0\n  max_in_flight: {}\n  \
request_timeout: {}\n  contact_cache: 100000\n  give_up_after: {}\n  retry:\n    attempts: {}\n    within: 60s\n    \
base_delay: {}\n    max_delay: {}\n",
        s.batch_rows,
        s.linger,
        s.max_in_flight,
        s.request_timeout,
        s.give_up_after,
        s.attempts,
        s.base_delay,
        s.max_delay
    );
    std::fs::write(dir.path().join("settings.yaml"), settings).unwrap();
    dir
}

/// `sfmc-relay run` as a process reading events from a pipe (stdin, stdout and stderr
/// piped), against `sim`, with `args` after `run --rules RULES --dead-letter DEAD`.
pub fn run_on_stdin(
    rules: &Path,
    dead: &Path,
    sim: &sfmc_relay::sim::SimHandle,
    args: &[&str],
) -> tokio::process::Child {
    let mut all = vec!["run", "--rules", path(rules), "--dead-letter", path(dead)];
    all.extend_from_slice(args);
    relay(&all, &sim_env(sim, &[]))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn relay")
}

/// `sfmc-relay run --input INPUT --dead-letter DEAD` (with `--rules RULES` when given and
/// `extra` flags) as a process with `env`, to its end.
pub async fn run_file<K, V>(
    rules: Option<&Path>,
    input: &Path,
    dead: &Path,
    extra: &[&str],
    env: impl IntoIterator<Item = (K, V)>,
) -> std::process::Output
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let mut args = vec!["run", "--input", path(input), "--dead-letter", path(dead)];
    if let Some(r) = rules {
        args.extend(["--rules", path(r)]);
    }
    args.extend_from_slice(extra);
    output(relay(&args, env)).await
}

/// A copy of `rules_dir`'s settings with `line` added under `delivery.retry:` (e.g.
/// `blocked_pause: 1s`).
pub fn add_retry_setting(rules: &Path, line: &str) {
    let settings = rules.join("settings.yaml");
    let text = std::fs::read_to_string(&settings).unwrap();
    std::fs::write(
        &settings,
        text.replace("  retry:\n", &format!("  retry:\n    {line}\n")),
    )
    .unwrap();
}

/// Compile a rules directory (no environment variables).
pub fn load(dir: &Path) -> Arc<Program> {
    let loaded = rules::load(Some(dir), &sfmc_relay::env::Env::empty(), 1).expect("rules compile");
    Arc::new(loaded.program)
}

pub fn identify(user: &str, traits: Value) -> Value {
    json!({"type": "identify", "messageId": format!("id-{user}-{}", fastrand::u64(..)), "userId": user, "traits": traits})
}

pub fn order(user: &str, order_id: &str, revenue: f64) -> Value {
    json!({"type": "track", "messageId": format!("ord-{order_id}"), "userId": user, "event": "Order Completed",
           "properties": {"order_id": order_id, "revenue": revenue}})
}

pub fn signup(user: &str, plan: &str) -> Value {
    json!({"type": "track", "messageId": format!("su-{user}"), "userId": user, "event": "Signed Up",
           "properties": {"plan": plan}})
}

/// Write events as NDJSON.
pub fn write_ndjson(path: &Path, events: &[Value]) {
    let mut text = String::new();
    for e in events {
        text.push_str(&serde_json::to_string(e).unwrap());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// Dead-letter records (empty when the file does not exist).
pub fn dead_letters(path: &Path) -> Vec<Value> {
    match std::fs::read_to_string(path) {
        Ok(t) => t
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("dead letter is JSON"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// A stored sim row with these keys (key names compared case-insensitively).
pub fn find_row<'a>(rows: &'a [Value], keys: &serde_json::Map<String, Value>) -> Option<&'a Value> {
    rows.iter().find(|r| {
        let rk = r["keys"].as_object().unwrap();
        rk.len() == keys.len()
            && keys.iter().all(|(k, v)| {
                rk.iter()
                    .any(|(rk, rv)| rk.eq_ignore_ascii_case(k) && rv == v)
            })
    })
}

/// A key map from (column, value) pairs, for [`find_row`].
pub fn key(pairs: &[(&str, &str)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect()
}

/// Wait until `cond` holds (checked every 20 ms), or fail naming `what`.
pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Send the in-process relays' log lines (`RUST_LOG`, default `warn,sfmc_relay=info`) to
/// the running test's output. The subscriber is global to the process, so whichever test
/// calls this first installs it for every test of the binary; later calls do nothing.
pub fn log_to_test_output() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sfmc_relay=info")),
        )
        .try_init();
}
