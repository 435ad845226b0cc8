//! SIGKILL of `serve` mid-stream while several senders post, twice: nothing acknowledged
//! is lost, and no journey is entered twice, although the senders retry what was not
//! answered (as Segment's libraries do: the same batch, the same `messageId`s).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::serve::{KEY, Relay, rules, simulator};
use crate::support::wait_until;
use reqwest::StatusCode;
use serde_json::{Value, json};

const SENDERS: usize = 4;
const BATCHES: usize = 20;
const ORDERS_PER_BATCH: usize = 9;

fn batch(sender: usize, b: usize) -> Value {
    let mut events: Vec<Value> = (0..ORDERS_PER_BATCH)
        .map(|i| {
            json!({"type": "track", "messageId": format!("m-{sender}-{b}-{i}"),
                   "userId": format!("buyer-{sender}-{b}-{i}"), "event": "Order Completed",
                   "properties": {"order_id": format!("o-{sender}-{b}-{i}")}})
        })
        .collect();
    events.push(
        json!({"type": "track", "messageId": format!("m-{sender}-{b}-signup"),
                       "userId": format!("new-{sender}-{b}"), "event": "Signed Up"}),
    );
    json!({"batch": events})
}

/// Posts its batches one after another, each until it is answered 200 (retrying the same
/// body on connection errors and 5xx, as the libraries do). Returns how many were
/// acknowledged (all of them, at the end).
async fn sender(id: usize, addr: Arc<Mutex<String>>, acked: Arc<AtomicUsize>) {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for b in 0..BATCHES {
        let body = batch(id, b);
        let start = Instant::now();
        loop {
            let url = format!("http://{}/v1/batch", addr.lock().unwrap());
            match c
                .post(url)
                .basic_auth(KEY, Some(""))
                .json(&body)
                .send()
                .await
            {
                Ok(r) if r.status() == StatusCode::OK => break,
                Ok(r) => assert!(
                    r.status().is_server_error(),
                    "sender {id}: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ),
                Err(_) => {} // the relay is down: retry, as the libraries do
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "sender {id} stuck"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        acked.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Wait for a journey event to land and then 150 ms without another one landing (its ack
/// is on disk by then: the window in which a kill repeats a journey entry is SFMC's
/// answer -> the ack's fsync, a few ms when the machine is idle, tens of ms with the
/// whole test binary running; documented in docs/serve.md), then SIGKILL.
async fn kill_after_a_journey_event(relay: &mut Relay, sim: &sfmc_relay::sim::SimHandle) {
    let start = Instant::now();
    let first = sim.api_events().len();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no journey event lands\n{}",
            relay.log()
        );
        let n = sim.api_events().len();
        if n > first {
            tokio::time::sleep(Duration::from_millis(150)).await;
            if sim.api_events().len() == n {
                break;
            }
            continue;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    relay.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_with_several_senders_loses_nothing_and_repeats_no_journey() {
    let sim = simulator().await;
    let tmp = tempfile::tempdir().unwrap();
    // Journey entries go in batches (the default): a kill between SFMC entering them and
    // the spool's ack must not enter them again (the journey journal).
    let rules = rules(tmp.path(), "");
    let spool = tmp.path().join("spool");
    // 8 SFMC calls per second: each Signed Up is one call, so delivery lags the senders.
    let slow = ["--requests-per-second", "8"];
    let mut relay = Relay::start(&spool, &rules, &sim, &slow);
    let addr = Arc::new(Mutex::new(relay.addr.to_string()));
    let acked = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..SENDERS)
        .map(|i| tokio::spawn(sender(i, addr.clone(), acked.clone())))
        .collect();

    for round in 0..2 {
        kill_after_a_journey_event(&mut relay, &sim).await;
        let done = acked.load(Ordering::SeqCst);
        assert!(
            done < SENDERS * BATCHES,
            "kill {round} should come mid-stream ({done} batches acknowledged)"
        );
        relay = Relay::start(&spool, &rules, &sim, &slow);
        *addr.lock().unwrap() = relay.addr.to_string();
    }
    for s in senders {
        s.await.unwrap();
    }
    assert_eq!(acked.load(Ordering::SeqCst), SENDERS * BATCHES);
    let orders = SENDERS * BATCHES * ORDERS_PER_BATCH;
    let journeys = SENDERS * BATCHES;
    // A journey entry whose request was on the wire at a kill is `uncertain` (dead-lettered,
    // not sent again): it may or may not have entered.
    let dead = spool.with_extension("deadletter.ndjson");
    let uncertain = || -> Vec<Value> {
        std::fs::read_to_string(&dead)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect()
    };
    wait_until("every acknowledged event", Duration::from_secs(60), || {
        sim.rows("orders").len() >= orders
            && per_contact(&sim).len() + not_entered(&sim, &uncertain()) >= journeys
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut want: Vec<String> = (0..SENDERS)
        .flat_map(|s| {
            (0..BATCHES)
                .flat_map(move |b| (0..ORDERS_PER_BATCH).map(move |i| format!("o-{s}-{b}-{i}")))
        })
        .collect();
    want.sort();
    let mut got: Vec<String> = sim
        .rows("orders")
        .iter()
        .map(|r| r["keys"]["Order Id"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    assert_eq!(got, want, "every acknowledged order, once per key");
    let entered = per_contact(&sim);
    let twice: Vec<_> = entered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "journeys entered twice: {twice:?}");
    // Every journey entered once, or dead-lettered as `uncertain`; nothing else dead.
    let dead = uncertain();
    for d in &dead {
        assert_eq!(d["outcome"], "uncertain", "{d}");
    }
    assert_eq!(
        entered.len() + not_entered(&sim, &dead),
        journeys,
        "{entered:?} {dead:?}"
    );
    assert!(
        relay.terminate(Duration::from_secs(30)).success(),
        "{}",
        relay.log()
    );
}

/// Journey entries per contact in the simulator.
fn per_contact(sim: &sfmc_relay::sim::SimHandle) -> HashMap<String, usize> {
    let mut n: HashMap<String, usize> = HashMap::new();
    for e in sim.api_events() {
        *n.entry(e["ContactKey"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    n
}

/// Uncertain dead letters of contacts that did not enter.
fn not_entered(sim: &sfmc_relay::sim::SimHandle, dead: &[Value]) -> usize {
    let entered = per_contact(sim);
    dead.iter()
        .filter(|d| !entered.contains_key(d["event"]["userId"].as_str().unwrap_or("")))
        .count()
}

// The journey journal. SFMC enters the contact at once and answers 3 s later; serve is
// killed in between, so the entry's record was never acknowledged and the spool delivers
// it again after the restart. Fails if it is sent again (the contact enters twice), or if
// it is not dead-lettered as `uncertain` (the relay cannot know it entered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journey_entry_sent_before_a_kill_is_not_sent_again() {
    let sim = simulator().await;
    let tmp = tempfile::tempdir().unwrap();
    let rules = rules(tmp.path(), "");
    let spool = tmp.path().join("spool");
    sim.add_outage(sfmc_relay::sim::Outage {
        delay_ms: Some(3000),
        ..sfmc_relay::sim::Outage::new(sfmc_relay::sim::OutageKind::SlowJourneyAnswers)
    })
    .unwrap();
    let mut relay = Relay::start(&spool, &rules, &sim, &[]);
    let c = reqwest::Client::new();
    let r = c
        .post(relay.url("/v1/batch"))
        .basic_auth(KEY, Some(""))
        .json(&batch(5, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    wait_until("the journey entry entered", Duration::from_secs(20), || {
        sim.api_events().len() == 1
    })
    .await;
    relay.kill9();
    sim.clear_outages();
    let mut relay = Relay::start(&spool, &rules, &sim, &[]);
    let dead = spool.with_extension("deadletter.ndjson");
    wait_until("the entry dead-lettered", Duration::from_secs(20), || {
        std::fs::read_to_string(&dead).is_ok_and(|t| t.contains("uncertain"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sim.api_events().len(), 1, "entered twice");
    let text = std::fs::read_to_string(&dead).unwrap();
    assert!(
        text.contains("the relay stopped while this journey entry"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");
    assert_eq!(sim.rows("orders").len(), ORDERS_PER_BATCH);
    assert!(
        relay.terminate(Duration::from_secs(30)).success(),
        "{}",
        relay.log()
    );
}

/// The deterministic form of the race above: a batch is accepted and delivered, the relay
/// is killed before the client saw the answer (simulated: the client just sends it again
/// after the restart). The retry is answered 200 and not spooled again: the ids are read
/// back from the spool on start, before delivered segments are deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_crash_is_not_spooled_twice() {
    let sim = simulator().await;
    let tmp = tempfile::tempdir().unwrap();
    let rules = rules(tmp.path(), "");
    let spool = tmp.path().join("spool");
    let mut relay = Relay::start(&spool, &rules, &sim, &[]);
    let c = reqwest::Client::new();
    let body = batch(9, 0);
    let post = |relay: &Relay| {
        c.post(relay.url("/v1/batch"))
            .basic_auth(KEY, Some(""))
            .json(&body)
            .send()
    };
    assert_eq!(post(&relay).await.unwrap().status(), StatusCode::OK);
    wait_until("the batch delivered", Duration::from_secs(20), || {
        sim.rows("orders").len() == ORDERS_PER_BATCH && sim.api_events().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await; // acks on disk
    relay.kill9();
    let mut relay = Relay::start(&spool, &rules, &sim, &[]);
    assert_eq!(post(&relay).await.unwrap().status(), StatusCode::OK);
    // The same ids within one request count once, too.
    let mut twice = batch(9, 1);
    let first = twice["batch"][0].clone();
    twice["batch"].as_array_mut().unwrap().push(first);
    let r = c
        .post(relay.url("/v1/batch"))
        .basic_auth(KEY, Some(""))
        .json(&twice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    wait_until("the second batch", Duration::from_secs(20), || {
        sim.api_events().len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.api_events().len(), 2, "{:?}", sim.api_events());
    assert_eq!(sim.rows("orders").len(), 2 * ORDERS_PER_BATCH);
    let m = relay.metrics().await;
    let dup = format!("sfmc_relay_events_duplicate_total {}", ORDERS_PER_BATCH + 2);
    assert!(m.contains(&dup), "want `{dup}` in:\n{m}");
    assert!(
        m.contains("sfmc_relay_events_received_total{type=\"track\"} 10"),
        "{m}"
    );
    assert!(relay.terminate(Duration::from_secs(20)).success());
}
