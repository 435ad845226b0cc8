//! Live rules, end to end: real `sfmc-relay` processes, real files in temp directories.
//!
//! Hot reload: `transform --rules DIR` reads events from a pipe while the test edits the
//! rules directory; the output's event numbers and data extension keys show which rule set
//! processed each event. Also `check`, `explain` and `test`.

use crate::support::{BIN, Collected, collect_lines, signal};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(20);

fn rules(de: &str) -> String {
    format!(
        "# rules for the live test\ntrack:\n  - event: E\n    data_extension: {de}\n    include_context: false\n"
    )
}

/// A `transform` process fed through a pipe.
struct Relay {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Collected,
    /// Events written so far (the next event's number).
    sent: u64,
    /// (event number, data extension) of every output line so far.
    seen: Vec<(u64, String)>,
}

impl Relay {
    fn start(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Relay {
        let mut cmd = Command::new(BIN);
        cmd.arg("transform")
            .arg("--rules")
            .arg(dir)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start sfmc-relay");
        let (tx, lines) = channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stderr = collect_lines(child.stderr.take().unwrap(), |_| {});
        Relay {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            sent: 0,
            seen: Vec::new(),
        }
    }

    /// Write one event and wait for its output line; returns its data extension.
    fn event(&mut self) -> String {
        let n = self.sent;
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(
            stdin,
            r#"{{"type":"track","event":"E","userId":"u-{n}","messageId":"m-{n}"}}"#
        )
        .unwrap();
        stdin.flush().unwrap();
        self.sent += 1;
        let line = match self.lines.recv_timeout(TIMEOUT) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => {
                panic!("no output for event {n}; stderr:\n{}", self.err())
            }
            Err(e) => panic!("relay ended ({e}); stderr:\n{}", self.err()),
        };
        let v: Value = serde_json::from_str(&line).unwrap();
        let got = v["event"].as_u64().unwrap();
        assert_eq!(got, n, "output lines out of order or lost: {line}");
        let path = v["path"].as_str().expect("a call line");
        let de = path
            .strip_prefix("/hub/v1/dataevents/key:")
            .and_then(|p| p.strip_suffix("/rowset"))
            .unwrap_or_else(|| panic!("not a rowset call: {line}"))
            .to_string();
        self.seen.push((n, de.clone()));
        de
    }

    fn err(&self) -> String {
        self.stderr.text()
    }

    /// Send events until one goes to `de`; returns the time from `since` to that output.
    fn until(&mut self, de: &str, since: Instant, old: &str) -> Duration {
        loop {
            let got = self.event();
            if got == de {
                return since.elapsed();
            }
            assert_eq!(
                got, old,
                "an event went neither to the old nor the new rules"
            );
            assert!(
                since.elapsed() < TIMEOUT,
                "the change to {de} never took effect; stderr:\n{}",
                self.err()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Close stdin, wait for exit, check that every event produced exactly one line.
    fn finish(mut self) -> String {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        // The summary is the last thing on stderr: read it to the end first.
        self.stderr.wait_eof();
        assert!(status.success(), "exit {status}; stderr:\n{}", self.err());
        assert!(
            self.lines.recv_timeout(Duration::from_secs(1)).is_err(),
            "an event was processed twice"
        );
        let numbers: Vec<u64> = self.seen.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, (0..self.sent).collect::<Vec<_>>());
        let err = self.err();
        assert!(
            err.contains(&format!("transform: {} events", self.sent)),
            "summary: {err}"
        );
        err
    }

    /// The data extensions in the order they were used: each change is a clean switch.
    fn phases(&self) -> Vec<String> {
        let mut p: Vec<String> = Vec::new();
        for (_, de) in &self.seen {
            if p.last() != Some(de) {
                p.push(de.clone());
            }
        }
        p
    }
}

fn setup(de: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.yaml");
    std::fs::write(&file, rules(de)).unwrap();
    (dir, file)
}

/// Before the change: old rules; after: new. Returns the reload-to-effect latency.
fn change_and_check(r: &mut Relay, old: &str, new: &str, change: impl FnOnce()) -> Duration {
    let start = r.seen.len();
    for _ in 0..3 {
        assert_eq!(r.event(), old);
    }
    let before = r.sent;
    let t0 = Instant::now();
    change();
    let latency = r.until(new, t0, old);
    for _ in 0..3 {
        assert_eq!(
            r.event(),
            new,
            "events after the change must use the new rules"
        );
    }
    assert!(r.seen[start..before as usize].iter().all(|(_, d)| d == old));
    latency
}

#[test]
fn hot_reload_in_place_edit() {
    let (dir, file) = setup("one");
    let mut r = Relay::start(dir.path(), &[], &[]);
    let lat = change_and_check(&mut r, "one", "two", || {
        std::fs::write(&file, rules("two")).unwrap();
    });
    eprintln!("in-place edit: reload-to-effect {} ms", lat.as_millis());
    // Saving the same content again makes no new version.
    std::fs::write(&file, rules("two")).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(r.event(), "two");
    assert_eq!(r.phases(), ["one", "two"]);
    let err = r.finish();
    assert!(err.contains("-> r2-"), "{err}");
    assert!(
        !err.contains("r3-"),
        "an unchanged save made a new version: {err}"
    );
}

#[test]
fn hot_reload_atomic_rename() {
    let (dir, file) = setup("one");
    let mut r = Relay::start(dir.path(), &[], &[]);
    let lat = change_and_check(&mut r, "one", "two", || {
        let tmp = dir.path().join("events.yaml.tmp");
        std::fs::write(&tmp, rules("two")).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    });
    eprintln!("atomic rename: reload-to-effect {} ms", lat.as_millis());
    // The watch survives the rename (the directory is watched, not the file).
    let lat = change_and_check(&mut r, "two", "three", || {
        let tmp = dir.path().join(".events.yaml.swp");
        std::fs::write(&tmp, rules("three")).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    });
    eprintln!(
        "second atomic rename: reload-to-effect {} ms",
        lat.as_millis()
    );
    assert_eq!(r.phases(), ["one", "two", "three"]);
    r.finish();
}

#[test]
fn hot_reload_refuses_a_broken_edit_then_takes_the_fix() {
    let (dir, file) = setup("one");
    let mut r = Relay::start(dir.path(), &[], &[]);
    for _ in 0..3 {
        assert_eq!(r.event(), "one");
    }
    // Broken: a misspelt key on line 4, column 5.
    std::fs::write(
        &file,
        rules("two").replace("data_extension", "data_extensio"),
    )
    .unwrap();
    let t0 = Instant::now();
    let want = format!("{}:4:5", file.display());
    while !r.err().contains(&want) {
        assert_eq!(r.event(), "one", "the broken edit changed something");
        assert!(
            t0.elapsed() < TIMEOUT,
            "no error logged; stderr:\n{}",
            r.err()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(r.err().contains("keeping r1-"), "{}", r.err());
    for _ in 0..5 {
        assert_eq!(r.event(), "one", "the broken edit changed something");
    }
    // A second broken save (a YAML syntax error) is refused too.
    std::fs::write(&file, "track:\n  - event: [E\n").unwrap();
    let t0 = Instant::now();
    while r.err().matches("reload failed").count() < 2 {
        assert_eq!(r.event(), "one");
        assert!(t0.elapsed() < TIMEOUT, "stderr:\n{}", r.err());
        std::thread::sleep(Duration::from_millis(5));
    }
    // The fix is taken on the next save.
    let lat = change_and_check(&mut r, "one", "two", || {
        std::fs::write(&file, rules("two")).unwrap();
    });
    eprintln!(
        "fix after broken edit: reload-to-effect {} ms",
        lat.as_millis()
    );
    assert_eq!(r.phases(), ["one", "two"]);
    let err = r.finish();
    assert!(err.contains("1 reload(s), 2 failed"), "{err}");
    assert!(
        err.contains("rules r1-") && err.contains(" -> r2-"),
        "{err}"
    );
}

#[test]
fn reload_latency() {
    let (dir, file) = setup("v0");
    let mut r = Relay::start(dir.path(), &[], &[]);
    let mut lats = Vec::new();
    for i in 1..=5 {
        let old = format!("v{}", i - 1);
        let new = format!("v{i}");
        lats.push(change_and_check(&mut r, &old, &new, || {
            std::fs::write(&file, rules(&new)).unwrap();
        }));
    }
    r.finish();
    lats.sort();
    let ms: Vec<u128> = lats.iter().map(Duration::as_millis).collect();
    println!(
        "reload-to-effect latency over {} in-place edits: min {} ms, median {} ms, max {} ms (debounce 100 ms)",
        ms.len(),
        ms[0],
        ms[ms.len() / 2],
        ms[ms.len() - 1]
    );
    eprintln!("reload latency ms: {ms:?}");
}

#[test]
fn hot_reload_with_the_poll_watcher_fallback() {
    let (dir, file) = setup("one");
    let mut r = Relay::start(dir.path(), &[], &[("SFMC_RELAY_POLL_WATCH", "1")]);
    let lat = change_and_check(&mut r, "one", "two", || {
        std::fs::write(&file, rules("two")).unwrap();
    });
    eprintln!("poll watcher: reload-to-effect {} ms", lat.as_millis());
    r.finish();
}

#[cfg(unix)]
#[test]
fn no_watch_ignores_edits_but_sighup_reloads() {
    let (dir, file) = setup("one");
    let mut r = Relay::start(dir.path(), &["--no-watch"], &[]);
    assert_eq!(r.event(), "one");
    std::fs::write(&file, rules("two")).unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(600) {
        assert_eq!(r.event(), "one", "--no-watch reloaded on a file change");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(r.child.id(), "HUP");
    let lat = r.until("two", Instant::now(), "one");
    eprintln!("SIGHUP: reload-to-effect {} ms", lat.as_millis());
    assert_eq!(r.phases(), ["one", "two"]);
    let err = r.finish();
    assert!(err.contains("SIGHUP"), "{err}");
}

// ---- check ----

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn check_valid_rules_exit_0() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("examples/ecommerce/rules");
    let (code, out, _) = run(&["check", "--rules", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("valid"), "{out}");
    let (code, out, _) = run(&["check"]);
    assert_eq!(code, 0, "embedded rules: {out}");
}

#[test]
fn check_reports_every_error_with_location() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "nested: sideways\ndelivery:\n  linger: soon\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        "track:\n  - event: E\n    data_extensio: x\n",
    )
    .unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, out, _) = run(&["check", "--rules", d]);
    assert_eq!(code, 1, "{out}");
    let a = dir.path().join("a.yaml").display().to_string();
    let b = dir.path().join("b.yaml").display().to_string();
    for want in [
        format!("{a}:1:9: error: unknown `nested` value \"sideways\": expected drop or flatten"),
        format!("{a}:3:11: error: expected a duration"),
        format!("{b}:3:5: error: unknown field `data_extensio`"),
        "1 | nested: sideways".to_string(),
        "INVALID: 3 errors".to_string(),
    ] {
        assert!(out.contains(&want), "missing {want:?} in:\n{out}");
    }

    let (code, out, _) = run(&["check", "--rules", d, "--format", "json"]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(v["valid"], false);
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 3, "{out}");
    assert_eq!(errors[0]["file"], a.as_str());
    assert_eq!(errors[0]["line"], 1);
    assert_eq!(errors[0]["column"], 9);
    assert_eq!(errors[0]["source_line"], "nested: sideways");
    assert!(v["version"].as_str().unwrap().starts_with("r1-"));
    assert_eq!(v["files"].as_array().unwrap().len(), 2);
    assert!(v["warnings"].as_array().unwrap().is_empty());
}

#[test]
fn check_warns_about_likely_mistakes_but_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        "\
casing:
  overrides:
    utm_campaign: UTM Campaign
    campaign_name: UTM Campaign
track:
  - event: Order Completed
    data_extension: orders
    primary_key: order_id, Contact Key
  - event: Test Order
    data_extension: orders_test
  - event: Fine
    data_extension: fine
    primary_key: Order Id, App Name
skip:
  - when: { path: event, equals: Test Order }
    reason: test traffic
",
    )
    .unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, out, _) = run(&["check", "--rules", d, "--format", "json"]);
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], true);
    let warnings: Vec<String> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            format!(
                "{}:{}: {}",
                w["line"],
                w["column"],
                w["message"].as_str().unwrap()
            )
        })
        .collect();
    let all = warnings.join("\n");
    assert_eq!(warnings.len(), 3, "{all}");
    assert!(all.contains("4:5: overrides \"utm_campaign\""), "{all}");
    assert!(all.contains("6:5: primary key \"order_id\""), "{all}");
    assert!(
        all.contains(
            "9:5: this mapping can never match track event \"Test Order\": the skip filter at"
        ),
        "{all}"
    );
    let (code, out, _) = run(&["check", "--rules", d]);
    assert_eq!(code, 0);
    assert!(out.contains("valid (1 file, 3 warnings"), "{out}");
}

// ---- explain ----

#[test]
fn explain_shows_matches_renames_drops_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        "track:\n  - event: Order Completed\n    data_extension: orders\n    primary_key: Order Id, Contact Key\n",
    )
    .unwrap();
    let input = dir.path().join("events.ndjson");
    std::fs::write(
        &input,
        r#"{"type":"track","event":"Order Completed","userId":"u:1","properties":{"orderId":"o-1","order_id":"o-2","items":[{"sku":"a"}],"coupon":null,"total":5}}
{"type":"track","event":"Other","userId":"u1"}
"#,
    )
    .unwrap();
    let (code, out, err) = run(&[
        "explain",
        "--rules",
        dir.path().to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "== line 1: track \"Order Completed\"",
        "rules.yaml:2:5) matched: track event \"Order Completed\"",
        "orderId → Order Id",
        "order_id → Order Id",
        "collision on column \"Order Id\": dropped the value of orderId, order_id overrides it",
        "items: array (nested: drop)",
        "coupon: null value",
        "primary key: orders: Order Id = \"o-2\", Contact Key = \"u1\"",
        "\"u1\" from userId (1 character(s) removed)",
        "result: 1 SFMC call",
        "POST /hub/v1/dataevents/key:orders/rowset",
        "== line 2: track \"Other\"",
        "result: skipped: no mapping for track event \"Other\"",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

// ---- test ----

#[test]
fn test_command_pass_fail_and_update() {
    let cases = tempfile::tempdir().unwrap();
    let rules_dir = tempfile::tempdir().unwrap();
    std::fs::write(rules_dir.path().join("r.yaml"), rules("one")).unwrap();
    let event = r#"{"type":"track","event":"E","userId":"u1"}"#;
    let good = r#"{"event":0,"method":"POST","path":"/hub/v1/dataevents/key:one/rowset","body":[{"keys":{"Contact Key":"u1"},"values":{"Contact Key":"u1"}}]}"#;
    for (name, expected) in [
        ("a_pass", good),
        ("b_fail", &good.replace("u1\"}", "u2\"}")),
    ] {
        let c = cases.path().join(name);
        std::fs::create_dir(&c).unwrap();
        std::fs::write(c.join("input.ndjson"), format!("{event}\n")).unwrap();
        std::fs::write(c.join("expected.ndjson"), format!("{expected}\n")).unwrap();
    }
    let args = |update: bool| {
        let mut a = vec![
            "test".to_string(),
            "--rules".into(),
            rules_dir.path().display().to_string(),
            cases.path().display().to_string(),
        ];
        if update {
            a.push("--update".into());
        }
        a
    };
    let argv = args(false);
    let (code, out, _) = run(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("PASS a_pass"), "{out}");
    assert!(out.contains("FAIL b_fail"), "{out}");
    assert!(out.contains("-{\"event\":0"), "the diff: {out}");
    assert!(out.contains("+{\"event\":0"), "the diff: {out}");
    assert!(out.trim_end().ends_with("1 passed, 1 failed"), "{out}");

    let argv = args(true);
    let (code, out, _) = run(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("UPDATED b_fail"), "{out}");
    let argv = args(false);
    let (code, out, _) = run(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{out}");
    assert!(out.trim_end().ends_with("2 passed, 0 failed"), "{out}");
    assert_eq!(
        std::fs::read_to_string(cases.path().join("b_fail/expected.ndjson")).unwrap(),
        format!("{good}\n")
    );
}

#[test]
fn test_command_without_cases_fails() {
    let cases = tempfile::tempdir().unwrap();
    let (code, out, _) = run(&["test", cases.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("0 passed, 0 failed"), "{out}");
}
