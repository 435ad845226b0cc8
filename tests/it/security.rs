//! Security pass: secrets never leave the process in output, input size limits.
//!
//! Every subcommand runs as a real process at `RUST_LOG=debug` with known secrets in
//! `SFMC_CLIENT_SECRET` and `SFMC_RELAY_WRITE_KEYS` (the ingest server's write keys); the
//! secrets must appear nowhere in stdout, stderr or dead letters.

use crate::support::*;
use sfmc_relay::sim::SimHandle;
use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

struct Secrets {
    secret: String,
    write_key: String,
}

impl Secrets {
    fn new() -> Self {
        Secrets {
            secret: format!("Sekr1t-{:016x}-end", fastrand::u64(..)),
            write_key: format!("wk_{:016x}Zq", fastrand::u64(..)),
        }
    }

    fn assert_absent(&self, what: &str, s: &str) {
        for (name, needle) in [
            ("client secret", self.secret.as_str()),
            ("part of the client secret", "Sekr1t"),
            ("write key", self.write_key.as_str()),
        ] {
            assert!(!s.contains(needle), "{what}: {name} leaked: {s}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_subcommand_prints_a_secret() {
    let s = Secrets::new();
    let tmp = tempfile::tempdir().unwrap();
    let rules = rules_dir(&Settings {
        attempts: 2,
        ..Settings::default()
    });
    let rules_path = path(rules.path()).to_string();
    let accepting = start_sim(&(only_client(&s.secret) + CONTACTS_WITH_EMAIL)).await;
    let rejecting = start_sim("clients: [{ client_id: other, client_secret: other }]\n").await;

    // Input: the examples, a malformed line, and an event carrying a bad email (dead letter).
    let input = tmp.path().join("in.ndjson");
    let mut events = std::fs::read_to_string(example_events()).unwrap();
    events.push_str("{not json\n");
    events.push_str(
        &(identify("u-bad", serde_json::json!({"email": "not-an-email"})).to_string() + "\n"),
    );
    std::fs::write(&input, events).unwrap();

    // The secrets reach every subcommand through its own environment (never set_var:
    // the tests of this binary share one process).
    let env_for = |sim: &SimHandle| -> HashMap<String, String> {
        sim_env(
            sim,
            &[
                ("RUST_LOG", "debug"),
                ("SFMC_CLIENT_SECRET", &s.secret),
                ("SFMC_RELAY_WRITE_KEYS", &s.write_key),
            ],
        )
    };

    let mut runs: Vec<(String, Vec<String>, HashMap<String, String>)> = Vec::new();
    let dead_ok = tmp.path().join("dead-ok.ndjson");
    let dead_rej = tmp.path().join("dead-rej.ndjson");
    let dead_replay = tmp.path().join("dead-replay.ndjson");
    let input_s = path(&input).to_string();
    runs.push((
        "transform".into(),
        vec![
            "transform",
            "--rules",
            &rules_path,
            "--input",
            &input_s,
            "--no-watch",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        env_for(&accepting),
    ));
    for (name, sim, dead) in [
        ("run-accepting", &accepting, &dead_ok),
        ("run-rejecting", &rejecting, &dead_rej),
    ] {
        runs.push((
            name.into(),
            vec![
                "run",
                "--rules",
                &rules_path,
                "--input",
                &input_s,
                "--dead-letter",
                path(dead),
                "--no-watch",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            env_for(sim),
        ));
    }
    for (name, args) in [
        (
            "explain",
            vec!["explain", "--rules", &rules_path, "--input", &input_s],
        ),
        ("check", vec!["check", "--rules", &rules_path]),
        ("check-json", vec!["check", "--format", "json"]),
        (
            "test",
            vec![
                "test",
                "--rules",
                "examples/ecommerce/rules",
                "tests/golden/ecommerce",
            ],
        ),
        ("corpus", vec!["corpus", "-n", "20"]),
        ("help", vec!["--help"]),
        ("run-help", vec!["run", "--help"]),
    ] {
        runs.push((
            name.into(),
            args.into_iter().map(String::from).collect(),
            env_for(&accepting),
        ));
    }

    for (name, args, env) in &runs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = relay(&args, env);
        cmd.current_dir(root());
        let out = output(cmd).await;
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        // 4: a run that gave up on rejected credentials (its events are undelivered).
        assert!(
            out.status.code().is_some_and(|c| c <= 1 || c == 4),
            "{name}: exit {:?}: {stderr}",
            out.status
        );
        s.assert_absent(&format!("{name} stdout"), &stdout);
        s.assert_absent(&format!("{name} stderr"), &stderr);
        if name.starts_with("run-") && !name.ends_with("help") {
            assert!(stderr.contains("DEBUG"), "{name}: debug logging is on");
        }
    }
    for dead in [&dead_ok, &dead_rej] {
        let dl = std::fs::read_to_string(dead).unwrap_or_default();
        assert!(!dl.is_empty(), "{}: expected dead letters", dead.display());
        s.assert_absent("dead letters", &dl);
    }

    // replay the dead letters of the rejecting run into the accepting simulator.
    let env = env_for(&accepting);
    let out = output(relay(
        &[
            "replay",
            "--rules",
            &rules_path,
            path(&dead_rej),
            "--dead-letter",
            path(&dead_replay),
        ],
        &env,
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    s.assert_absent("replay stdout", &text(&out.stdout));
    s.assert_absent("replay stderr", &text(&out.stderr));
    s.assert_absent(
        "replay dead letters",
        &std::fs::read_to_string(&dead_replay).unwrap_or_default(),
    );

    // sim: runs until SIGINT, then prints its summary.
    let child = relay(&["sim", "--listen", "127.0.0.1:0"], &env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(child.id().unwrap(), "INT");
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("sim stopped")
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(stderr.contains("listening"), "{stderr}");
    s.assert_absent("sim stdout", &text(&out.stdout));
    s.assert_absent("sim stderr", &stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_cannot_interpolate_secrets() {
    let s = Secrets::new();
    let rules = rules_dir(&Settings::default());
    std::fs::write(
        rules.path().join("leak.yaml"),
        "reject:\n  - when: { path: userId, equals: \"${SFMC_CLIENT_SECRET}\" }\n    reason: \"${SFMC_RELAY_WRITE_KEYS:-x}\"\n",
    )
    .unwrap();
    let env = [
        ("SFMC_CLIENT_SECRET", s.secret.as_str()),
        ("SFMC_RELAY_WRITE_KEYS", s.write_key.as_str()),
        ("RUST_LOG", "debug"),
    ];
    for args in [
        vec!["check", "--rules", path(rules.path())],
        vec!["check", "--format", "json", "--rules", path(rules.path())],
        vec!["transform", "--rules", path(rules.path()), "--no-watch"],
    ] {
        let out = output(relay(&args, env)).await;
        let all = text(&out.stdout) + &text(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{args:?}: {all}");
        assert!(all.contains("SFMC_CLIENT_SECRET"), "{args:?}: {all}");
        assert!(all.contains("holds a secret"), "{args:?}: {all}");
        s.assert_absent(&format!("{args:?}"), &all);
    }
}

/// A 10 MB line: rejected with a clear reason (limit 1 MiB per line); the stream goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_ten_megabyte_line_is_rejected_and_the_stream_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("big.ndjson");
    let big = format!(
        "{{\"type\":\"track\",\"event\":\"Order Completed\",\"userId\":\"u\",\"properties\":{{\"order_id\":\"o\",\"blob\":\"{}\"}}}}",
        "x".repeat(10 * 1024 * 1024)
    );
    let ok = order("u-1", "o-1", 2.0).to_string();
    std::fs::write(&input, format!("{ok}\n{big}\n{ok}\n")).unwrap();
    let rules = root().join("examples/ecommerce/rules");

    let out = output(relay(
        &[
            "transform",
            "--rules",
            path(&rules),
            "--input",
            path(&input),
            "--no-watch",
        ],
        NO_ENV,
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{stdout:.2000}");
    assert_eq!(lines[1]["event"], 1);
    assert_eq!(lines[1]["outcome"], "rejected");
    let reason = lines[1]["reason"].as_str().unwrap();
    assert!(
        reason.contains("10485") && reason.contains("limit is 1048576 bytes"),
        "{reason}"
    );
    assert_eq!(lines[2]["event"], 2);
    assert!(lines[2]["path"].as_str().unwrap().contains("orders"));
    // The output does not echo the huge line.
    assert!(stdout.len() < 10_000);

    // run: dead-lettered with the reason and only the start of the line.
    let dead = tmp.path().join("dead.ndjson");
    let out = run_file(Some(&rules), &input, &dead, &["-q", "--no-watch"], NO_ENV).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr:.3000}");
    assert!(
        stderr.contains("3 events read (3 lines): 2 delivered, 0 skipped, 1 dead-lettered"),
        "{stderr:.3000}"
    );
    let dl = dead_letters(&dead);
    assert_eq!(dl.len(), 1);
    assert!(
        dl[0]["reason"]
            .as_str()
            .unwrap()
            .contains("limit is 1048576 bytes")
    );
    assert!(std::fs::metadata(&dead).unwrap().len() < 10_000);
}

/// Fuzz findings (`scripts/fuzz.sh`), kept as regression tests.
#[test]
fn fuzz_regressions() {
    use sfmc_relay::commands::transform;
    // transform_line: a lone vertical tab is a blank line (no output), not a crash.
    let program = std::sync::Arc::new(
        sfmc_relay::rules::load(None, &sfmc_relay::env::Env::empty(), 1)
            .unwrap()
            .program,
    );
    for input in [&b"\x0b"[..], b"\x0b\n", b"\xe2\x80\xa8\n"] {
        let mut out = Vec::new();
        let p = program.clone();
        let counts = transform::run(
            &mut sfmc_relay::source::lines::LineReader::new(input),
            &mut out,
            &mut || p.clone(),
        )
        .unwrap();
        assert_eq!(counts.events, 0);
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    }
    // sim_body: a date whose UTC offset holds a multi-byte character used to panic the
    // simulator (byte slicing mid-character); see also src/sim/validate.rs.
    for body in [
        r#"[{"keys":{"Id":"a","Email":"a@b.co"},"values":{"When":"2013-05-23T14:32:00+1\u00e90"}}]"#,
        r#"{"When":"2013-05-23T14:32:00+\u00e900"}"#,
    ] {
        sfmc_relay::sim::check_request_body(body.as_bytes());
    }
}
