//! `sfmc-relay run` / `replay` as real processes against an in-process SFMC simulator.

use crate::support::*;
use serde_json::{Map, Value, json};
use sfmc_relay::sim::SimHandle;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::process::Child;

#[tokio::test(flavor = "multi_thread")]
async fn subdomain_injection_is_a_config_error_and_nothing_is_sent() {
    let rules = rules_dir(&Settings::default());
    let sim = start_sim("").await;
    let tmp = tempfile::tempdir().unwrap();
    let dead = tmp.path().join("dead.ndjson");
    let events = example_events();
    let args = [
        "run",
        "--rules",
        path(rules.path()),
        "--input",
        path(&events),
        "--dead-letter",
        path(&dead),
        "-q",
    ];
    for bad in [
        "evil.com/x",
        "evil.com/x?",
        "a@b",
        "../",
        // 28 characters, `mc` first, but a path.
        "mc563885gzs27c5t9-63k6/../x",
        "mc563885gzs27c5t9-63k6/../xy",
        // Look-alikes: Cyrillic `с`, fullwidth `ｍ`, the Kelvin sign (lower-cases to `k`).
        "mс563885gzs27c5t9-63k636ttgm",
        "ｍc563885gzs27c5t9-63k636ttgm",
        "mc563885gzs27c5t9-63\u{212a}636ttgm",
        // Percent-encoding, newlines, spaces, other hosts.
        "mc563885gzs27c5t9-63k636t%2e",
        "mc563885gzs27c5t9-63k636%2e%2e",
        "mc563885gzs27c5t9-63k636ttgm\n",
        "mc563885gzs27c5t9-63k636ttgm\nHost: evil.com",
        "mc563885gzs27c5t9-63k63\r\nX:y",
        "mc563885gzs27c5t9-63k636ttgm.evil.com",
        "mc563885gzs27c5t9-63k6@evil",
        "mc563885gzs27c5t9-63k636ttg ",
        " mc563885gzs27c5t9-63k636ttg",
    ] {
        let env = sim_env(&sim, &[("SFMC_SUBDOMAIN", bad)]);
        let out = output(relay(&args, &env)).await;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("subdomain"), "{bad}: {err}");
        assert!(err.contains("`mc` followed by 26"), "{bad}: {err}");
        assert!(!err.contains(CLIENT_SECRET));
    }
    assert!(sim.stats().calls.is_empty(), "{:?}", sim.stats());
    assert!(!dead.exists());

    // Empty is unset: the legacy v1 endpoints.
    let env = sim_env(&sim, &[("SFMC_SUBDOMAIN", "")]);
    let out = output(relay(&args, &env)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(sim.stats().calls_to("POST /v1/requestToken"), 1);
    assert_eq!(sim.stats().calls_to("POST /v2/token"), 0);

    // A valid subdomain: v2.
    let env = sim_env(&sim, &[("SFMC_SUBDOMAIN", "MC563885gzs27c5t9-63k636ttgm")]);
    let out = output(relay(&args, &env)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(sim.stats().calls_to("POST /v2/token"), 1);
}

/// Bearer tokens the simulator issues are 48 ASCII letters and digits.
fn assert_no_token(what: &str, s: &str) {
    let re = regex::Regex::new(r"[A-Za-z0-9]{48}").unwrap();
    assert!(
        re.find(s).is_none(),
        "{what} contains a token-like string: {s}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_and_tokens_never_appear_in_output() {
    let secret = format!("Sekr1t-{:016x}-end", fastrand::u64(..));
    let rules = rules_dir(&Settings {
        attempts: 3,
        ..Settings::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let events = example_events();

    let rejecting =
        start_sim("clients: [{ client_id: other, client_secret: other-secret }]\n").await;
    let accepting = start_sim(&(only_client(&secret) + CONTACTS_WITH_EMAIL)).await;
    for (name, sim, subdomain) in [
        ("rejecting-v1", &rejecting, ""),
        ("rejecting-v2", &rejecting, "mc563885gzs27c5t9-63k636ttgm"),
        ("accepting-v2", &accepting, "mc563885gzs27c5t9-63k636ttgm"),
        ("accepting-v1", &accepting, ""),
    ] {
        let dead = tmp.path().join(format!("{name}.ndjson"));
        let env = sim_env(
            sim,
            &[
                ("SFMC_CLIENT_SECRET", &secret),
                ("RUST_LOG", "debug"),
                ("SFMC_SUBDOMAIN", subdomain),
            ],
        );
        let out = output(relay(
            &[
                "run",
                "--rules",
                path(rules.path()),
                "--input",
                path(&events),
                "--dead-letter",
                path(&dead),
            ],
            &env,
        ))
        .await;
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        // 4: rejected credentials, the run gave up and left its events undelivered.
        let want = if name.starts_with("rejecting") { 4 } else { 0 };
        assert_eq!(out.status.code(), Some(want), "{name}: {stderr}");
        assert!(
            stderr.contains("DEBUG"),
            "{name}: debug logging is on: {stderr}"
        );
        let dl = std::fs::read_to_string(&dead).unwrap_or_default();
        assert!(!dl.is_empty(), "{name}: expected dead letters");
        for (what, s) in [
            ("stdout", &stdout),
            ("stderr", &stderr),
            ("dead letters", &dl),
        ] {
            assert!(!s.contains(&secret), "{name}: secret in {what}: {s}");
            assert!(
                !s.contains("Sekr1t"),
                "{name}: part of the secret in {what}"
            );
            assert_no_token(&format!("{name} {what}"), s);
        }
        if name.starts_with("rejecting") {
            assert_eq!(sim.stats().tokens_issued, 0);
            assert!(stderr.contains("0 delivered"), "{stderr}");
        }
    }
    assert!(accepting.stats().tokens_issued >= 2);
    assert!(!accepting.rows("contacts").is_empty());

    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["replay", "--help"],
        vec!["sim", "--help"],
    ] {
        let env = [
            ("SFMC_CLIENT_ID", CLIENT_ID),
            ("SFMC_CLIENT_SECRET", secret.as_str()),
        ];
        let out = output(relay(&args, env)).await;
        assert_eq!(out.status.code(), Some(0));
        let all = text(&out.stdout) + &text(&out.stderr);
        assert!(all.contains("Usage"), "{all}");
        assert!(!all.contains(&secret), "{args:?}: {all}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn strict_exit_code_and_replay_of_the_dead_letter_file() {
    let rules = rules_dir(&Settings::default());
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.ndjson");
    let dead = tmp.path().join("dead.ndjson");
    let events: Vec<Value> = (0..30)
        .map(|i| {
            let email = if i % 10 == 7 {
                format!("nope-{i}")
            } else {
                format!("p{i}@example.com")
            };
            identify(&format!("u-{i}"), json!({"email": email}))
        })
        .collect();
    write_ndjson(&input, &events);

    let strict_sim = start_sim(CONTACTS_WITH_EMAIL).await;
    let env = sim_env(&strict_sim, &[]);
    let out = output(relay(
        &[
            "run",
            "--rules",
            path(rules.path()),
            "--input",
            path(&input),
            "--dead-letter",
            path(&dead),
            "--strict",
            "-q",
        ],
        &env,
    ))
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("30 events read"), "{stderr}");
    assert!(stderr.contains("27 delivered"), "{stderr}");
    assert!(stderr.contains("3 dead-lettered"), "{stderr}");
    assert_eq!(strict_sim.rows("contacts").len(), 27);
    let dl = dead_letters(&dead);
    assert_eq!(dl.len(), 3);
    assert!(
        dl.iter().all(|d| d["reason"]
            .as_str()
            .unwrap()
            .contains("is not a valid email address")),
        "{dl:#?}"
    );

    // Fixed data extension: replaying the dead letters lands them; --strict is then happy.
    let fixed = start_sim("").await;
    let dead2 = tmp.path().join("dead2.ndjson");
    let env = sim_env(&fixed, &[]);
    let out = output(relay(
        &[
            "replay",
            "--rules",
            path(rules.path()),
            path(&dead),
            "--dead-letter",
            path(&dead2),
            "--strict",
            "-q",
        ],
        &env,
    ))
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("3 delivered"), "{stderr}");
    assert!(!dead2.exists());
    let rows = fixed.rows("contacts");
    assert_eq!(rows.len(), 3);
    for i in [7, 17, 27] {
        let mut keys = Map::new();
        keys.insert("Contact Key".into(), json!(format!("u-{i}")));
        let row = find_row(&rows, &keys).unwrap_or_else(|| panic!("u-{i}: {rows:#?}"));
        assert_eq!(row["values"]["Email"], json!(format!("nope-{i}")));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_credentials_the_builtin_simulator_is_used() {
    let rules = rules_dir(&Settings::default());
    let tmp = tempfile::tempdir().unwrap();
    let dead = tmp.path().join("dead.ndjson");
    let events = example_events();
    let out = run_examples(Some(rules.path()), &dead, NO_ENV).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("built-in SFMC simulator"), "{stderr}");
    assert!(stderr.contains("what landed"), "{stderr}");
    assert!(stderr.contains("contacts: 4 rows"), "{stderr}");
    assert!(stderr.contains("orders: 2 rows"), "{stderr}");
    assert!(stderr.contains("Contacts: 4"), "{stderr}");
    assert!(stderr.contains("API events: 1"), "{stderr}");
    assert!(stderr.contains("17 events read (16 lines)"), "{stderr}");

    // Only one of the two credentials: a configuration error.
    let out = output(relay(
        &[
            "run",
            "--rules",
            path(rules.path()),
            "--input",
            path(&events),
        ],
        [("SFMC_CLIENT_ID", "x")],
    ))
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("SFMC_CLIENT_SECRET"));
}

/// `run -q` reading events from a pipe, against `sim`.
fn run_from_stdin(rules: &Path, dead: &Path, sim: &SimHandle) -> Child {
    run_on_stdin(rules, dead, sim, &["-q"])
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_flushes_in_flight_rows() {
    // Partial batches linger for 30 s: only the shutdown flush can send them in time.
    let rules = rules_dir(&Settings {
        batch_rows: 20,
        linger: "30s",
        ..Settings::default()
    });
    let sim = start_sim("").await;
    let tmp = tempfile::tempdir().unwrap();
    let dead = tmp.path().join("dead.ndjson");
    let n = 230;
    let mut child = run_from_stdin(rules.path(), &dead, &sim);
    let mut stdin = child.stdin.take().unwrap();
    let mut input = String::new();
    for i in 0..n {
        input.push_str(&order(&format!("u-{}", i % 9), &format!("o-{i}"), 2.0).to_string());
        input.push('\n');
    }
    stdin.write_all(input.as_bytes()).await.unwrap();
    stdin.flush().await.unwrap();

    // Wait until full batches landed (partial ones are still lingering).
    wait_until("rows to land", Duration::from_secs(15), || {
        !sim.rows("orders").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = sim.rows("orders").len();
    assert!(before < n, "everything landed before the signal ({before})");

    signal(child.id().unwrap(), "TERM");
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("relay stopped after SIGTERM")
        .unwrap();
    drop(stdin);
    let stderr = text(&out.stderr);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("stopped by signal"), "{stderr}");
    assert!(stderr.contains(&format!("{n} events read")), "{stderr}");

    let landed = sim.rows("orders").len();
    let dl = dead_letters(&dead);
    assert_eq!(landed + dl.len(), n, "lost events: {stderr}");
    assert_eq!(landed, n, "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_a_backlog_loses_nothing_read() {
    let rules = rules_dir(&Settings {
        batch_rows: 20,
        max_in_flight: 2,
        ..Settings::default()
    });
    // A slow SFMC: the input backs up in the relay while the signal arrives.
    let sim = start_sim("faults: { rate_slow: 1.0, slow_ms: 30 }\n").await;
    let tmp = tempfile::tempdir().unwrap();
    let dead = tmp.path().join("dead.ndjson");
    let n = 9000;
    let mut child = run_from_stdin(rules.path(), &dead, &sim);
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        for i in 0..n {
            let line = order(&format!("u-{}", i % 9), &format!("o-{i}"), 2.0).to_string() + "\n";
            // The relay stops reading after the signal: the pipe then breaks.
            if stdin.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = stdin.flush().await;
        stdin // kept open
    });
    wait_until("100 rows to land", Duration::from_secs(15), || {
        sim.rows("orders").len() >= 100
    })
    .await;
    signal(child.id().unwrap(), "TERM");
    let out = tokio::time::timeout(Duration::from_secs(40), child.wait_with_output())
        .await
        .expect("relay stopped after SIGTERM")
        .unwrap();
    let stdin = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("writer done")
        .unwrap();
    drop(stdin);
    let stderr = text(&out.stderr);
    // 4: stopped before every event was sent (the rest is in the dead-letter file).
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("stopped by signal"), "{stderr}");
    let landed = sim.rows("orders").len();
    let dl = dead_letters(&dead);
    // In input order, so that `replay` sends them as they came.
    let lines: Vec<u64> = dl.iter().map(|d| d["line"].as_u64().unwrap()).collect();
    assert!(lines.windows(2).all(|w| w[0] < w[1]), "{lines:?}");
    let read: usize = stderr
        .split(" events read")
        .next()
        .and_then(|s| s.rsplit(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no summary: {stderr}"));
    // The signal stops the input even with a backlog (regression: it used to be noticed
    // only when the queue ran empty, so the relay kept reading the whole stream).
    assert!(read < n, "read all {n} events after the signal: {stderr}");
    // Every event that was read is delivered or dead-lettered, and the summary says so.
    assert_eq!(landed + dl.len(), read, "lost events: {stderr}");
    assert!(stderr.contains(&format!("{landed} delivered")), "{stderr}");
    assert!(
        stderr.contains(&format!("{} dead-lettered", dl.len())),
        "{stderr}"
    );
    for d in &dl {
        assert!(
            d["reason"].as_str().unwrap().contains("relay stopped"),
            "{d}"
        );
    }
}

/// `corpus`: N as an option or a plain argument, `--output`, `--users`, and the 50/25/25 mix.
#[tokio::test]
async fn corpus_writes_n_events_from_u_users_in_the_required_mix() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.ndjson");
    let out = output(relay(
        &[
            "corpus",
            "400",
            "--users",
            "7",
            "-o",
            file.to_str().unwrap(),
        ],
        NO_ENV,
    ))
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 400);
    let users: std::collections::HashSet<&str> =
        events.iter().filter_map(|e| e["userId"].as_str()).collect();
    assert!(
        !users.is_empty() && users.len() <= 7,
        "{} users",
        users.len()
    );
    let count = |f: &dyn Fn(&serde_json::Value) -> bool| events.iter().filter(|e| f(e)).count();
    assert_eq!(count(&|e| e["type"] == "identify"), 200);
    assert_eq!(count(&|e| e["event"] == "Order Completed"), 100);
    assert_eq!(count(&|e| e["event"] == "Product Viewed"), 100);
    // The same seed gives the same corpus, on stdout too.
    let again = output(relay(&["corpus", "-n", "400", "--users", "7"], NO_ENV)).await;
    assert_eq!(again.stdout, std::fs::read(&file).unwrap());
}

// The demo rules are for the built-in simulator only. Fails if a run with credentials (a
// real account) and no --rules got the demo mappings instead of the embedded defaults.
#[tokio::test(flavor = "multi_thread")]
async fn demo_rules_only_without_rules_and_without_credentials() {
    let sim = start_sim("").await;
    let tmp = tempfile::tempdir().unwrap();
    let dead = tmp.path().join("dead.ndjson");
    let out = run_examples(None, &dead, sim_env(&sim, &[])).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("demo rules"), "{stderr}");
    assert!(sim.rows("orders").is_empty() && sim.api_events().is_empty());
    assert_eq!(sim.contacts().len(), 5, "{stderr}");

    // Without credentials: the built-in simulator with the demo rules, and it says so.
    let out = run_examples(None, &dead, NO_ENV).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("embedded demo rules"), "{stderr}");
    assert!(stderr.contains("orders: 2 rows"), "{stderr}");
    assert!(stderr.contains("API events: 1"), "{stderr}");
}

/// `run` over `examples/events.ndjson` with `rules` (or none) and `env`.
async fn run_examples<K, V>(
    rules: Option<&Path>,
    dead: &Path,
    env: impl IntoIterator<Item = (K, V)>,
) -> std::process::Output
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    run_file(rules, &example_events(), dead, &[], env).await
}
