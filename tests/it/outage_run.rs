//! `run` as a real process reading a stream on stdin, through SFMC outages (issue 14):
//! an outage is waited out without a dead letter; after `delivery.give_up_after` the run
//! stops reading, writes what it did not deliver as `undelivered` in input order, exits 4,
//! and `replay` of that file lands every row with the last write winning.

use crate::support::*;
use serde_json::Value;
use sfmc_relay::sim::{Outage, OutageKind, SimHandle};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin};

fn spawn_run(rules: &Path, dead: &Path, sim: &SimHandle) -> Child {
    run_on_stdin(rules, dead, sim, &["--input", "-"])
}

/// Orders of 30 users; order `o-last` is updated at every 10th line, its revenue the line
/// number, so the row that must win is the one of the last such line.
fn events(n: usize) -> (Vec<Value>, f64) {
    let mut last = 0.0;
    let events = (1..=n)
        .map(|i| {
            if i % 10 == 0 {
                last = i as f64;
                order("u-last", "o-last", i as f64)
            } else {
                order(&format!("u-{}", i % 30), &format!("o-{i}"), 1.0)
            }
        })
        .collect();
    (events, last)
}

async fn write_lines(stdin: &mut ChildStdin, events: &[Value], pause: Duration) {
    for chunk in events.chunks(10) {
        let mut text = String::new();
        for e in chunk {
            text.push_str(&e.to_string());
            text.push('\n');
        }
        stdin.write_all(text.as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
        tokio::time::sleep(pause).await;
    }
}

fn revenue_of_last(sim: &SimHandle) -> Option<f64> {
    let rows = sim.rows("orders");
    find_row(
        &rows,
        &key(&[("Order Id", "o-last"), ("Contact Key", "u-last")]),
    )
    .and_then(|r| r["values"]["Revenue"].as_f64())
}

fn distinct_orders(n: usize) -> usize {
    n - n / 10 + 1
}

// Fails if an outage turns events into dead letters (infrastructure errors must pause
// delivery), or if rows are lost or land out of order.
#[tokio::test(flavor = "multi_thread")]
async fn a_streaming_run_waits_out_an_outage_without_dead_letters() {
    let rules = rules_dir(&Settings {
        give_up_after: "60s",
        attempts: 3,
        ..Settings::default()
    });
    let sim = start_sim("").await;
    let tmp = tempfile::tempdir().unwrap();
    let dead = tmp.path().join("dead.ndjson");
    let mut child = spawn_run(rules.path(), &dead, &sim);
    let mut stdin = child.stdin.take().unwrap();
    let n = 200;
    let (events, last) = events(n);

    // A first part lands, then SFMC answers 503 for 3 s while the stream goes on.
    write_lines(&mut stdin, &events[..50], Duration::from_millis(10)).await;
    wait_until("the first rows", Duration::from_secs(15), || {
        !sim.rows("orders").is_empty()
    })
    .await;
    sim.add_outage(Outage {
        seconds: Some(3.0),
        ..Outage::new(OutageKind::ServerErrors)
    })
    .unwrap();
    write_lines(&mut stdin, &events[50..], Duration::from_millis(100)).await;
    wait_until("every row", Duration::from_secs(30), || {
        sim.rows("orders").len() == distinct_orders(n)
    })
    .await;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("run ended with its input")
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let refused = sim.stats().faults_injected.values().sum::<u64>();
    assert!(refused > 0, "the outage refused nothing: {stderr}");
    assert_eq!(dead_letters(&dead), Vec::<Value>::new(), "{stderr}");
    assert!(stderr.contains(&format!("{n} delivered")), "{stderr}");
    assert_eq!(revenue_of_last(&sim), Some(last));
}

// Fails if the run does not stop at `give_up_after`, if it dead-letters anything but
// `undelivered`, if the records are not in input order, if the exit status is not 4, or
// if replaying the file lets an older write win.
#[tokio::test(flavor = "multi_thread")]
async fn giving_up_writes_undelivered_in_input_order_and_replay_resumes() {
    let rules = rules_dir(&Settings {
        give_up_after: "2s",
        batch_rows: 7,
        ..Settings::default()
    });
    let sim = start_sim("").await;
    // SFMC blocks every REST call (50200) from the start, for as long as it takes.
    sim.add_outage(Outage::new(OutageKind::RestBlocked))
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dead = tmp.path().join("dead.ndjson");
    let mut child = spawn_run(rules.path(), &dead, &sim);
    let mut stdin = child.stdin.take().unwrap();
    let n = 300;
    let (events, last) = events(n);
    write_lines(&mut stdin, &events, Duration::ZERO).await;
    // stdin stays open: the run must stop by itself.
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("run gave up within its bound")
        .unwrap();
    drop(stdin);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("giving up"), "{stderr}");
    assert!(stderr.contains("undelivered: 300 events"), "{stderr}");
    assert!(sim.rows("orders").is_empty());

    let dl = dead_letters(&dead);
    let lines: Vec<u64> = dl.iter().map(|d| d["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, (1..=n as u64).collect::<Vec<_>>(), "input order");
    for d in &dl {
        assert_eq!(d["outcome"], "undelivered", "{d}");
    }

    // SFMC is back: replaying the file delivers everything, the last write of o-last wins.
    sim.clear_outages();
    replay_cleanly(&dead, rules.path(), &sim).await;
    assert_eq!(sim.rows("orders").len(), distinct_orders(n));
    assert_eq!(revenue_of_last(&sim), Some(last));
}

// An event with a row and a journey entry whose row failed after its entry was entered:
// the dead letter says `journey_sent`, and `replay` sends the row only. Fails if the
// replay enters the contact into the journey again.
#[tokio::test(flavor = "multi_thread")]
async fn replaying_an_event_whose_journey_entry_went_through_sends_only_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let rules = rules_dir(&Settings::default());
    std::fs::write(
        rules.path().join("events.yaml"),
        "track:\n  - event: Signed Up\n    data_extension: signups\n    api_event: signup-journey\n    data: [plan]\n",
    )
    .unwrap();
    // This SFMC's `signups` has a numeric Plan: the row is refused, the entry goes in.
    let strict = start_sim(
        "data_extensions:\n  signups:\n    primary_keys: [Contact Key]\n    columns: { Contact Key: Text(254), Plan: Number }\n",
    )
    .await;
    let input = tmp.path().join("in.ndjson");
    write_ndjson(&input, &[signup("u-1", "pro")]);
    let dead = tmp.path().join("dead.ndjson");
    let out = run_file(
        Some(rules.path()),
        &input,
        &dead,
        &[],
        sim_env(&strict, &[]),
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(strict.api_events().len(), 1, "{stderr}");
    let dl = dead_letters(&dead);
    assert_eq!(dl.len(), 1, "{stderr}");
    assert_eq!(dl[0]["outcome"], "failed", "{}", dl[0]);
    assert_eq!(dl[0]["journey_sent"], true, "{}", dl[0]);

    // Replayed once the data extension is fixed: the row lands, the journey is not
    // entered again.
    let fixed = start_sim("").await;
    let stderr = replay_cleanly(&dead, rules.path(), &fixed).await;
    assert_eq!(fixed.rows("signups").len(), 1, "{stderr}");
    assert_eq!(fixed.api_events().len(), 0, "entered again: {stderr}");
}

/// `replay DEAD` against `sim`: exit 0 and nothing dead-lettered again; its stderr.
async fn replay_cleanly(dead: &Path, rules: &Path, sim: &SimHandle) -> String {
    let again = dead.with_extension("again.ndjson");
    let out = output(relay(
        &[
            "replay",
            path(dead),
            "--rules",
            path(rules),
            "--dead-letter",
            path(&again),
        ],
        &sim_env(sim, &[]),
    ))
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(dead_letters(&again).is_empty(), "{stderr}");
    stderr
}
