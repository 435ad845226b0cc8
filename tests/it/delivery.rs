//! End-to-end delivery: `run`/`replay` in-process against the SFMC simulator on loopback.

use crate::support::*;
use serde_json::{Map, Value, json};
use sfmc_relay::action::Action;
use sfmc_relay::commands::run::{InputKind, RunError, RunSummary};
use sfmc_relay::event::{Line, parse_line};
use sfmc_relay::rules::Program;
use sfmc_relay::sim::SimHandle;
use sfmc_relay::transform::{Outcome, Trace, transform};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

const ROWSET: &str = "POST /hub/v1/dataevents/{key}/rowset";
const CONTACTS: &str = "POST /contacts/v1/contacts";

fn assert_accounted(s: &RunSummary) {
    assert_eq!(
        s.events,
        s.delivered + s.skipped + s.dead_lettered,
        "events = delivered + skipped + dead-lettered: {s:?}"
    );
}

type KeysValues = (Map<String, Value>, Map<String, Value>);

/// What `transform` says should land, applying upserts in order.
#[derive(Default)]
struct Expected {
    /// data extension (lower-case) -> pk identity -> (keys, merged values)
    rows: BTreeMap<String, BTreeMap<String, KeysValues>>,
    contacts: BTreeSet<String>,
    api_events: Vec<Value>,
    with_actions: u64,
    skipped: u64,
    rejected: u64,
    events: u64,
}

fn pk_id(keys: &sfmc_relay::action::Fields) -> String {
    let mut v: Vec<String> = keys
        .iter()
        .map(|(k, v)| format!("{}={v}", k.to_lowercase()))
        .collect();
    v.sort();
    v.join("|")
}

fn expected(program: &Program, input: &Path) -> Expected {
    let mut e = Expected::default();
    let text = std::fs::read_to_string(input).unwrap();
    for (i, line) in text.lines().enumerate() {
        match parse_line(line, i as u64) {
            Line::Blank => {}
            Line::Invalid(_) => {
                e.events += 1;
                e.rejected += 1;
            }
            Line::Events(events) => {
                for ev in events {
                    e.events += 1;
                    match transform(program, &ev, &mut Trace::off()) {
                        Outcome::Skipped(_) => e.skipped += 1,
                        Outcome::Rejected(_) => e.rejected += 1,
                        Outcome::Actions(actions) => {
                            e.with_actions += 1;
                            for a in actions {
                                match a {
                                    Action::CreateContact { contact_key } => {
                                        e.contacts.insert(contact_key);
                                    }
                                    Action::UpsertRow {
                                        data_extension,
                                        keys,
                                        values,
                                    } => {
                                        let de = e
                                            .rows
                                            .entry(data_extension.to_lowercase())
                                            .or_default();
                                        let row = de.entry(pk_id(&keys)).or_insert_with(|| {
                                            (keys.clone().into_iter().collect(), Map::new())
                                        });
                                        for (k, v) in values {
                                            row.1.insert(k, v);
                                        }
                                    }
                                    Action::ApiEvent {
                                        contact_key,
                                        definition_key,
                                        data,
                                    } => e.api_events.push(json!({
                                        "ContactKey": contact_key,
                                        "EventDefinitionKey": definition_key,
                                        "Data": data,
                                    })),
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    e
}

/// Every expected row, contact and API event is in the simulator, exactly.
fn assert_landed(sim: &SimHandle, exp: &Expected) {
    for (de, rows) in &exp.rows {
        let stored = sim.rows(de);
        assert_eq!(stored.len(), rows.len(), "row count of {de}: {stored:#?}");
        for (keys, values) in rows.values() {
            let row = find_row(&stored, keys)
                .unwrap_or_else(|| panic!("{de}: no row with keys {keys:?}"));
            assert_eq!(
                row["values"].as_object().unwrap(),
                values,
                "{de} row {keys:?}"
            );
        }
    }
    let contacts: BTreeSet<String> = sim
        .contacts()
        .iter()
        .map(|c| c["contactKey"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(contacts, exp.contacts);
    let mut events: Vec<Value> = sim
        .api_events()
        .into_iter()
        .map(|mut e| {
            e.as_object_mut().unwrap().remove("eventInstanceId");
            e
        })
        .collect();
    let mut want = exp.api_events.clone();
    let key = |v: &Value| v.to_string();
    events.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(events, want, "API events");
}

#[tokio::test(flavor = "multi_thread")]
async fn example_events_land_as_transform_says() {
    let dir = rules_dir(&Settings::default());
    let program = load(dir.path());
    let sim = start_sim("").await;
    let tmp = tempfile::tempdir().unwrap();
    let dead = tmp.path().join("dead.ndjson");
    let s = deliver(&program, &example_events(), &dead, sim_env(&sim, &[])).await;
    let exp = expected(&program, &example_events());

    assert_landed(&sim, &exp);
    assert!(exp.rows.contains_key("contacts") && exp.rows.contains_key("orders"));
    assert!(exp.rows.contains_key("product_views") && !exp.api_events.is_empty());
    assert_accounted(&s);
    assert_eq!(s.lines, 16);
    assert_eq!(s.events, exp.events);
    assert_eq!(s.delivered, exp.with_actions);
    assert_eq!(s.skipped, exp.skipped);
    assert_eq!(s.dead_lettered, exp.rejected);
    let dl = dead_letters(&dead);
    assert_eq!(dl.len() as u64, exp.rejected);
    assert!(dl.iter().all(|d| d["outcome"] == "rejected"), "{dl:#?}");
    assert_eq!(s.client.token_requests, 1);
    assert_eq!(sim.stats().rows_rejected, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_events_use_one_token_and_legacy_v1() {
    let dir = rules_dir(&Settings::default());
    let program = load(dir.path());
    let sim = start_sim("").await;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.ndjson");
    let dead = tmp.path().join("dead.ndjson");
    let mut events = Vec::new();
    for i in 0..3000 {
        let user = format!("u-{}", i % 40);
        if i % 25 == 0 {
            let user = format!("u-{}", (i / 25) % 40);
            events.push(identify(
                &user,
                json!({"email": format!("{user}@example.com")}),
            ));
        } else {
            events.push(order(&user, &format!("o-{i}"), i as f64));
        }
    }
    write_ndjson(&input, &events);
    let s = deliver(&program, &input, &dead, sim_env(&sim, &[])).await;
    assert_accounted(&s);
    assert_eq!(s.delivered, 3000, "{}", s.render());
    assert_eq!(s.client.token_requests, 1);
    let st = sim.stats();
    assert_eq!(st.tokens_issued, 1);
    // No subdomain: the legacy v1 token endpoint.
    assert_eq!(st.calls_to("POST /v1/requestToken"), 1);
    assert_eq!(st.calls_to("POST /v2/token"), 0);
    assert_eq!(sim.rows("orders").len(), 2880);
    assert_eq!(sim.rows("contacts").len(), 40);
    assert_landed(&sim, &expected(&program, &input));
}

#[tokio::test(flavor = "multi_thread")]
async fn v2_path_with_a_valid_subdomain() {
    let dir = rules_dir(&Settings::default());
    let program = load(dir.path());
    let sim = start_sim("").await;
    let tmp = tempfile::tempdir().unwrap();
    let dead = tmp.path().join("dead.ndjson");
    let sub = "mc563885gzs27c5t9-63k636ttgm";
    assert_eq!(sub.len(), 28);
    let s = deliver(
        &program,
        &example_events(),
        &dead,
        sim_env(&sim, &[("SFMC_SUBDOMAIN", sub)]),
    )
    .await;
    assert_accounted(&s);
    let st = sim.stats();
    assert_eq!(st.calls_to("POST /v2/token"), 1);
    assert_eq!(st.calls_to("POST /v1/requestToken"), 0);
    assert_landed(&sim, &expected(&program, &example_events()));
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_subdomains_are_config_errors_and_nothing_is_sent() {
    let dir = rules_dir(&Settings::default());
    let program = load(dir.path());
    let sim = start_sim("").await;
    let tmp = tempfile::tempdir().unwrap();
    let dead = tmp.path().join("dead.ndjson");
    for bad in [
        "evil.com/x",
        "evil.com/x?",
        "a@b",
        "../",
        "mc563885gzs27c5t9-63k636tt.m",
        "mc563885gzs27c5t9-63k636ttgm.evil.com",
    ] {
        let r = Run {
            program: program.clone(),
            input: example_events(),
            dead: dead.clone(),
            kind: InputKind::Events,
            env: sim_env(&sim, &[("SFMC_SUBDOMAIN", bad)]),
        }
        .go()
        .await;
        match r {
            Err(RunError::Config(m)) => {
                assert!(m.contains("subdomain"), "{bad}: {m}");
                assert!(m.contains("28 characters"), "{bad}: {m}");
            }
            other => panic!("{bad}: expected a config error, got {other:?}"),
        }
    }
    assert!(sim.stats().calls.is_empty(), "{:?}", sim.stats());
    assert!(!dead.exists());

    // Empty means unset: legacy v1.
    let s = deliver(
        &program,
        &example_events(),
        &dead,
        sim_env(&sim, &[("SFMC_SUBDOMAIN", "")]),
    )
    .await;
    assert_accounted(&s);
    assert_eq!(sim.stats().calls_to("POST /v1/requestToken"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_refreshed_when_it_expires_mid_stream() {
    let settings = Settings {
        batch_rows: 4,
        max_in_flight: 2,
        ..Settings::default()
    };
    let dir = rules_dir(&settings);
    let program = load(dir.path());
    // Every call takes 250 ms; tokens live 2 s; the stream lasts well over 2 s.
    let sim = start_sim("token_lifetime: 2\nfaults: { rate_slow: 1.0, slow_ms: 250 }\n").await;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.ndjson");
    let dead = tmp.path().join("dead.ndjson");
    let events: Vec<Value> = (0..120)
        .map(|i| order(&format!("u-{}", i % 7), &format!("o-{i}"), 1.5))
        .collect();
    write_ndjson(&input, &events);
    let started = std::time::Instant::now();
    let s = deliver(&program, &input, &dead, sim_env(&sim, &[])).await;
    assert!(started.elapsed() > std::time::Duration::from_secs(3));
    assert_accounted(&s);
    assert_eq!(s.delivered, 120, "{}", s.render());
    assert_eq!(s.dead_lettered, 0);
    assert!(s.client.token_requests >= 2, "{}", s.render());
    assert!(sim.stats().tokens_issued >= 2);
    assert_eq!(sim.rows("orders").len(), 120);
    assert!(dead_letters(&dead).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn storm_of_429_500_and_bare_10006_loses_nothing_and_sends_no_event_twice() {
    // Until issue 14 every event was delivered here: a Journey event answered 500 was sent
    // again. A 5xx does not tell whether SFMC processed it, so it is `uncertain` now:
    // dead-lettered, never resent (the simulator's 500s come before processing, so those
    // events are missing from SFMC, and none is there twice).
    let dir = rules_dir(&Settings {
        batch_rows: 10,
        ..Settings::default()
    });
    let program = load(dir.path());
    let sim = start_sim(
        "faults: { seed: 7, rate_429: 0.3, retry_after: 0, rate_500: 0.2, rate_bare_10006: 0.2 }\n",
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.ndjson");
    let dead = tmp.path().join("dead.ndjson");
    let mut events = Vec::new();
    for i in 0..400 {
        let user = format!("u-{}", i % 30);
        events.push(match i % 4 {
            0 => identify(
                &user,
                json!({"email": format!("{user}@example.com"), "n": i}),
            ),
            1 | 2 => order(&user, &format!("o-{i}"), i as f64),
            _ => signup(&format!("s-{i}"), "pro"),
        });
    }
    write_ndjson(&input, &events);
    let s = deliver(&program, &input, &dead, sim_env(&sim, &[])).await;
    assert_accounted(&s);
    let dl = dead_letters(&dead);
    assert_eq!(s.delivered + dl.len() as u64, 400, "{}", s.render());
    for d in &dl {
        assert_eq!(d["outcome"], "uncertain", "{d}");
        // (The sink batches journey entries through the async endpoint.)
        assert_eq!(d["call"]["path"], "/interaction/v1/async/events", "{d}");
        assert!(d["reason"].as_str().unwrap().contains("HTTP 500"), "{d}");
    }
    assert!(s.client.retries > 0);
    let st = sim.stats();
    for kind in ["429", "500", "bare_10006"] {
        assert!(
            st.faults_injected.get(kind).copied().unwrap_or(0) > 0,
            "{st:?}"
        );
    }
    // API events are not idempotent: each at most once, despite the retries of 429s.
    let mut exp = expected(&program, &input);
    let uncertain: Vec<Value> = dl
        .iter()
        .map(|d| d["call"]["body"]["members"][0]["contactKey"].clone())
        .collect();
    exp.api_events
        .retain(|e| !uncertain.contains(&e["ContactKey"]));
    assert_eq!(exp.api_events.len(), 100 - dl.len());
    assert_eq!(sim.api_events().len(), 100 - dl.len());
    assert_landed(&sim, &exp);
}

const TYPED_CONTACTS: &str = r#"
data_extensions:
  contacts:
    primary_keys: [Contact Key]
    columns: { Contact Key: Text(254), Email: EmailAddress, N: Number }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn bad_rows_are_isolated_and_dead_lettered_with_sfmc_message() {
    let dir = rules_dir(&Settings {
        batch_rows: 50,
        linger: "200ms",
        ..Settings::default()
    });
    let program = load(dir.path());
    let sim = start_sim(TYPED_CONTACTS).await;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.ndjson");
    let dead = tmp.path().join("dead.ndjson");
    let bad: BTreeSet<usize> = [3, 17, 18, 60, 149].into();
    let events: Vec<Value> = (0..150)
        .map(|i| {
            let email = if bad.contains(&i) {
                format!("not-an-email-{i}")
            } else {
                format!("user{i}@example.com")
            };
            identify(&format!("u-{i}"), json!({"email": email, "n": i}))
        })
        .collect();
    // Some bad events arrive in batch envelopes (one of one event, one of two): their dead
    // letters must still hold the event itself, not the envelope.
    let mut text = String::new();
    for (i, e) in events.iter().enumerate() {
        match i {
            3 => text.push_str(&json!({ "batch": [e] }).to_string()),
            17 => text.push_str(&json!({ "batch": [e, &events[18]] }).to_string()),
            18 => continue,
            _ => text.push_str(&e.to_string()),
        }
        text.push('\n');
    }
    std::fs::write(&input, text).unwrap();
    let s = deliver(&program, &input, &dead, sim_env(&sim, &[])).await;
    assert_accounted(&s);
    assert_eq!(s.delivered, 145, "{}", s.render());
    assert_eq!(s.dead_lettered, 5);
    assert!(s.splits > 0);
    let rows = sim.rows("contacts");
    assert_eq!(rows.len(), 145);
    for i in (0..150).filter(|i| !bad.contains(i)) {
        let mut keys = Map::new();
        keys.insert("Contact Key".into(), json!(format!("u-{i}")));
        let row = find_row(&rows, &keys).unwrap_or_else(|| panic!("u-{i} missing"));
        assert_eq!(
            row["values"]["Email"],
            json!(format!("user{i}@example.com"))
        );
        assert_eq!(row["values"]["N"], json!(i));
    }
    let dl = dead_letters(&dead);
    let users: BTreeSet<String> = dl
        .iter()
        .map(|d| d["event"]["userId"].as_str().unwrap().to_string())
        .collect();
    let want: BTreeSet<String> = bad.iter().map(|i| format!("u-{i}")).collect();
    assert_eq!(users, want);
    // Each record names the 1-based line its event was on (event 18 shares line 18 with
    // event 17, in one envelope); regression: `line` was 0-based while reasons said 1-based.
    let lines: BTreeSet<(String, u64)> = dl
        .iter()
        .map(|d| {
            let user = d["event"]["userId"].as_str().unwrap().to_string();
            (user, d["line"].as_u64().expect("line"))
        })
        .collect();
    let want_lines: BTreeSet<(String, u64)> = [(3, 4), (17, 18), (18, 18), (60, 60), (149, 149)]
        .into_iter()
        .map(|(i, l)| (format!("u-{i}"), l))
        .collect();
    assert_eq!(lines, want_lines);
    for d in &dl {
        let reason = d["reason"].as_str().unwrap();
        assert!(
            reason.contains("Email: The value for column [Email] is not a valid email address."),
            "{reason}"
        );
        assert_eq!(d["status"], 400);
        assert_eq!(d["errorcode"], 10006);
        assert_eq!(d["outcome"], "failed");
        // The failed call is the single bad row.
        let body = d["call"]["body"].as_array().unwrap();
        assert_eq!(body.len(), 1);
        assert_eq!(body[0]["keys"]["Contact Key"], d["event"]["userId"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn same_key_updates_coalesce_keep_order_and_contacts_are_created_once() {
    let dir = rules_dir(&Settings {
        batch_rows: 50,
        linger: "50ms",
        ..Settings::default()
    });
    let program = load(dir.path());
    let sim = start_sim("").await;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.ndjson");
    let dead = tmp.path().join("dead.ndjson");
    let users = 8;
    let rounds = 60;
    let mut events = Vec::new();
    for n in 0..rounds {
        for u in 0..users {
            // Each update also sets a column only some updates carry: keys union, last wins.
            let mut traits = json!({"email": format!("u{u}@example.com"), "seq": n});
            if n % 7 == u % 7 {
                traits["marker"] = json!(format!("m{n}"));
            }
            events.push(identify(&format!("u-{u}"), traits));
        }
    }
    write_ndjson(&input, &events);
    let s = deliver(&program, &input, &dead, sim_env(&sim, &[])).await;
    assert_accounted(&s);
    let total = (users * rounds) as u64;
    assert_eq!(s.delivered, total, "{}", s.render());
    assert!(s.rows_coalesced > 0, "{}", s.render());

    // Final values are the last event's per key.
    let rows = sim.rows("contacts");
    assert_eq!(rows.len(), users);
    assert_landed(&sim, &expected(&program, &input));
    for r in &rows {
        assert_eq!(r["values"]["Seq"], json!(rounds - 1));
    }
    // The upsert log shows each key's updates in event order.
    let mut last: HashMap<String, i64> = HashMap::new();
    for entry in sim.log() {
        let key = entry.keys["Contact Key"].as_str().unwrap().to_string();
        let seq = entry.values["Seq"].as_i64().unwrap();
        if let Some(prev) = last.get(&key) {
            assert!(seq > *prev, "{key}: seq {seq} after {prev}");
        }
        last.insert(key, seq);
    }
    let st = sim.stats();
    assert!(
        st.calls_to(ROWSET) < total,
        "{} rowset calls for {total} events",
        st.calls_to(ROWSET)
    );
    // Each Contact Key created once, in establish batches (of up to `contact_batch`), never
    // a call per event or per key.
    assert_eq!(st.calls_to(CONTACTS), 0);
    let establish = st.calls_to("POST /contacts/v1/establish");
    assert!(
        establish >= 1 && establish <= (users as u64).div_ceil(2),
        "{establish} establish calls for {users} keys"
    );
    assert_eq!(sim.contacts().len(), users);
    assert_eq!(s.contacts_cached, total - users as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_sends_dead_letters_again() {
    let dir = rules_dir(&Settings::default());
    let program = load(dir.path());
    let strict = start_sim(TYPED_CONTACTS).await;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.ndjson");
    let dead = tmp.path().join("dead.ndjson");
    let events: Vec<Value> = (0..40)
        .map(|i| {
            let email = if i % 10 == 4 {
                format!("broken-{i}")
            } else {
                format!("user{i}@example.com")
            };
            identify(&format!("u-{i}"), json!({"email": email}))
        })
        .collect();
    write_ndjson(&input, &events);
    let s = deliver(&program, &input, &dead, sim_env(&strict, &[])).await;
    assert_eq!((s.delivered, s.dead_lettered), (36, 4), "{}", s.render());
    assert_eq!(dead_letters(&dead).len(), 4);

    // The data extension is fixed (Email is now text): replay lands them.
    let fixed = start_sim(
        "data_extensions:\n  contacts:\n    primary_keys: [Contact Key]\n    columns: { Contact Key: Text(254), Email: Text(254) }\n",
    )
    .await;
    let dead2 = tmp.path().join("dead2.ndjson");
    let r = Run {
        program: program.clone(),
        input: dead.clone(),
        dead: dead2.clone(),
        kind: InputKind::DeadLetters,
        env: sim_env(&fixed, &[]),
    }
    .go()
    .await
    .expect("replay");
    assert_accounted(&r);
    assert_eq!((r.events, r.delivered, r.dead_lettered), (4, 4, 0));
    assert!(!dead2.exists());
    let rows = fixed.rows("contacts");
    assert_eq!(rows.len(), 4);
    for i in [4, 14, 24, 34] {
        let mut keys = Map::new();
        keys.insert("Contact Key".into(), json!(format!("u-{i}")));
        let row = find_row(&rows, &keys).unwrap();
        assert_eq!(row["values"]["Email"], json!(format!("broken-{i}")));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_credentials_wait_then_everything_is_undelivered_without_the_secret() {
    // Until issue 14 rejected credentials dead-lettered every event as failed at once. They
    // are an outage now: `run` waits `delivery.give_up_after` (2 s in these settings), then
    // writes what was not delivered as `undelivered` (replay sends it).
    let dir = rules_dir(&Settings::default());
    let program = load(dir.path());
    let sim = start_sim("clients: [{ client_id: someone, client_secret: else }]\n").await;
    let tmp = tempfile::tempdir().unwrap();
    let dead = tmp.path().join("dead.ndjson");
    let secret = "in-process-secret-4f1c9e";
    let started = std::time::Instant::now();
    let s = deliver(
        &program,
        &example_events(),
        &dead,
        sim_env(&sim, &[("SFMC_CLIENT_SECRET", secret)]),
    )
    .await;
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    assert_accounted(&s);
    assert_eq!(s.delivered, 0);
    assert_eq!(sim.stats().tokens_issued, 0);
    let text = std::fs::read_to_string(&dead).unwrap();
    assert!(!text.contains(secret));
    assert!(
        text.contains("invalid_client") || text.contains("Unauthorized"),
        "{text}"
    );
    let dl = dead_letters(&dead);
    let undelivered = dl.iter().filter(|d| d["outcome"] == "undelivered").count();
    let rejected = dl.iter().filter(|d| d["outcome"] == "rejected").count();
    assert_eq!(undelivered + rejected, dl.len(), "{text}");
    assert!(undelivered > 0);
    assert!(s.client.undelivered > 0, "{:?}", s.client);
    assert!(!s.render().contains(secret));
}

/// A dead-letter record's `line` and its reason name the same (1-based) line, for input
/// that is not JSON, not an object, not UTF-8 and over the line limit (regression: `line`
/// was 0-based while the reason said "line N", 1-based).
#[tokio::test(flavor = "multi_thread")]
async fn dead_letter_line_is_the_line_its_reason_names() {
    let dir = rules_dir(&Settings::default());
    let program = load(dir.path());
    let sim = start_sim("").await;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.ndjson");
    let dead = tmp.path().join("dead.ndjson");
    let mut bytes = Vec::new();
    bytes.extend_from_slice(
        identify("u-1", json!({"email": "a@b.c"}))
            .to_string()
            .as_bytes(),
    );
    bytes.extend_from_slice(b"\n{not json\n[1,2]\n\n\xff\xfe\n");
    bytes.extend(std::iter::repeat_n(b'x', 1024 * 1024 + 10));
    bytes.push(b'\n');
    std::fs::write(&input, bytes).unwrap();
    let s = deliver(&program, &input, &dead, sim_env(&sim, &[])).await;
    assert_accounted(&s);
    assert_eq!((s.delivered, s.dead_lettered), (1, 4), "{}", s.render());
    let lines: Vec<(u64, String)> = dead_letters(&dead)
        .iter()
        .map(|d| {
            (
                d["line"].as_u64().expect("line"),
                d["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        lines.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
        [2, 3, 5, 6]
    );
    for (line, reason) in &lines {
        assert!(
            reason.starts_with(&format!("line {line}: ")),
            "{line}: {reason}"
        );
    }
}

/// The contact cache survives a restart: a second run over the same Contact Keys (same
/// account, same state directory) creates none of them again; another state directory
/// does.
#[tokio::test(flavor = "multi_thread")]
async fn the_contact_cache_survives_a_restart() {
    let dir = rules_dir(&Settings::default());
    let program = load(dir.path());
    let sim = start_sim("").await;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.ndjson");
    let users = 250;
    let events: Vec<Value> = (0..users)
        .map(|i| {
            identify(
                &format!("u-{i}"),
                json!({"email": format!("u{i}@example.com")}),
            )
        })
        .collect();
    write_ndjson(&input, &events);
    let establish = |sim: &SimHandle| sim.stats().calls_to("POST /contacts/v1/establish");
    let first = deliver(
        &program,
        &input,
        &tmp.path().join("d1.ndjson"),
        sim_env(&sim, &[]),
    )
    .await;
    assert_eq!(first.delivered, users as u64, "{}", first.render());
    let calls = establish(&sim);
    assert!(
        (3..=10).contains(&calls),
        "{calls} establish calls for {users} keys"
    );
    assert_eq!(sim.contacts().len(), users);
    let state: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("sfmc-relay.contacts.")
        })
        .collect();
    assert_eq!(
        state.len(),
        1,
        "one state file next to the dead-letter file"
    );

    // Restart: every key is known; no contact call at all.
    let again = deliver(
        &program,
        &input,
        &tmp.path().join("d2.ndjson"),
        sim_env(&sim, &[]),
    )
    .await;
    assert_eq!(again.delivered, users as u64);
    assert_eq!(establish(&sim), calls, "{}", again.render());
    assert_eq!(again.contacts_cached, users as u64);

    // Elsewhere (another state directory): created again.
    let other = tempfile::tempdir().unwrap();
    let fresh = Run {
        program: program.clone(),
        input: input.clone(),
        dead: other.path().join("d.ndjson"),
        kind: InputKind::Events,
        env: sim_env(&sim, &[]),
    }
    .go()
    .await
    .unwrap();
    assert_eq!(fresh.delivered, users as u64);
    assert!(establish(&sim) > calls);
}

/// Journey entries go through `/interaction/v1/async/events` in batches of up to 100 per
/// event definition, never a call per event; a member SFMC refuses (its `Data` does not fit
/// the event's data extension) is a data dead letter with SFMC's message, and the others
/// enter once.
#[tokio::test(flavor = "multi_thread")]
async fn journey_entries_are_batched_and_member_errors_dead_letter_alone() {
    let dir = rules_dir(&Settings::default());
    let program = load(dir.path());
    let sim = start_sim(
        "event_definitions:\n  signup-journey:\n    fields: { Plan: Number, Referrer: Text(100) }\n",
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.ndjson");
    let dead = tmp.path().join("dead.ndjson");
    let n = 250;
    let events: Vec<Value> = (0..n)
        .map(|i| {
            let mut e = signup(&format!("j-{i}"), "x");
            e["properties"]["plan"] = if i % 50 == 7 { json!("pro") } else { json!(i) };
            e
        })
        .collect();
    write_ndjson(&input, &events);
    let s = deliver(&program, &input, &dead, sim_env(&sim, &[])).await;
    assert_accounted(&s);
    let bad = (0..n).filter(|i| i % 50 == 7).count();
    assert_eq!(s.dead_lettered, bad as u64, "{}", s.render());
    assert_eq!(s.delivered, (n - bad) as u64);
    let st = sim.stats();
    assert_eq!(st.calls_to("POST /interaction/v1/events"), 0);
    let calls = st.calls_to("POST /interaction/v1/async/events");
    assert!((3..=10).contains(&calls), "{calls} calls for {n} entries");
    // Each good entry once.
    let entered: BTreeSet<String> = sim
        .api_events()
        .iter()
        .map(|e| e["ContactKey"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(entered.len(), n - bad);
    assert_eq!(sim.api_events().len(), n - bad);
    for d in dead_letters(&dead) {
        let user = d["event"]["userId"].as_str().unwrap();
        assert!(!entered.contains(user), "{user} entered and dead-lettered");
        assert_eq!(d["outcome"], "failed");
        assert!(d["reason"].as_str().unwrap().contains("Plan"), "{d}");
    }
}

/// A backlog behind the request rate goes through the asynchronous rows API: few calls
/// (polls included), exactly the refused rows dead-lettered with SFMC's message (read from
/// the results pages), and the last write of every key wins although the simulator
/// finishes requests in no fixed order.
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_backlog_goes_through_async_rows() {
    let dir = rules_dir(&Settings::default());
    let settings = std::fs::read_to_string(dir.path().join("settings.yaml")).unwrap();
    std::fs::write(
        dir.path().join("settings.yaml"),
        settings.replace(
            "requests_per_second: 0",
            "requests_per_second: 20\n  async_threshold: 50",
        ),
    )
    .unwrap();
    let program = load(dir.path());
    let sim = start_sim(
        "data_extensions:\n  contacts:\n    primary_keys: [Contact Key]\n    columns: { Contact Key: Text(254), Email: EmailAddress, Seq: Number }\n\
async_rows: { min_delay_ms: 10, max_delay_ms: 300 }\n",
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.ndjson");
    let dead = tmp.path().join("dead.ndjson");
    let (users, rounds) = (300, 6);
    let bad = |u: usize| u % 37 == 5;
    let mut events = Vec::new();
    for r in 0..rounds {
        for u in 0..users {
            let email = if bad(u) {
                format!("broken-{u}")
            } else {
                format!("u{u}@example.com")
            };
            events.push(identify(
                &format!("u-{u}"),
                json!({"email": email, "seq": r}),
            ));
        }
    }
    write_ndjson(&input, &events);
    let s = deliver(&program, &input, &dead, sim_env(&sim, &[])).await;
    assert_accounted(&s);
    let bad_users = (0..users).filter(|u| bad(*u)).count();
    assert_eq!(
        s.dead_lettered,
        (bad_users * rounds) as u64,
        "{}",
        s.render()
    );
    let st = sim.stats();
    let async_submits: u64 = st
        .calls
        .iter()
        .filter(|(k, _)| k.starts_with("PUT /data/v1/async/"))
        .map(|(_, n)| n.total)
        .sum();
    assert!(async_submits > 0, "no async request: {:?}", st.calls);
    // Fewer submits than the rowsets the same rows would take (50 rows each).
    assert!(
        async_submits * 50 < events.len() as u64,
        "{async_submits} async requests: {}",
        s.render()
    );
    let rows = sim.rows("contacts");
    assert_eq!(rows.len(), users - bad_users);
    for r in &rows {
        assert_eq!(r["values"]["Seq"], json!(rounds - 1), "{r}");
    }
    for d in dead_letters(&dead) {
        let user: usize = d["event"]["userId"].as_str().unwrap()[2..].parse().unwrap();
        assert!(bad(user), "{d}");
        assert!(d["reason"].as_str().unwrap().contains("Email"), "{d}");
    }
}

/// `replay` skips `uncertain` records (a Journey entry SFMC may have processed) and says
/// why; `replay --uncertain` sends them deliberately.
#[tokio::test(flavor = "multi_thread")]
async fn replay_skips_uncertain_records_unless_asked() {
    let dir = rules_dir(&Settings::default());
    let program = load(dir.path());
    let sim = start_sim("").await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("dead.ndjson");
    let record = |outcome: &str, user: &str| {
        json!({"time": "2026-12-01T00:00:00Z", "rules_version": "r1", "line": 1,
               "outcome": outcome, "reason": "x", "event": signup(user, "pro")})
        .to_string()
    };
    std::fs::write(
        &file,
        format!(
            "{}\n{}\n",
            record("uncertain", "unsure"),
            record("undelivered", "waiting")
        ),
    )
    .unwrap();
    let replay = |kind: InputKind, dead: &str| Run {
        program: program.clone(),
        input: file.clone(),
        dead: tmp.path().join(dead),
        kind,
        env: sim_env(&sim, &[]),
    };
    let s = replay(InputKind::DeadLetters, "d1.ndjson")
        .go()
        .await
        .unwrap();
    assert_eq!((s.delivered, s.skipped), (1, 1), "{}", s.render());
    assert!(s.render().contains("replay --uncertain"), "{}", s.render());
    let entered: Vec<Value> = sim.api_events();
    assert_eq!(entered.len(), 1);
    assert_eq!(entered[0]["ContactKey"], "waiting");
    let s = replay(InputKind::DeadLettersWithUncertain, "d2.ndjson")
        .go()
        .await
        .unwrap();
    assert_eq!((s.delivered, s.skipped), (2, 0), "{}", s.render());
}

/// Rowsets shrink after slow answers (SFMC times out on large rowsets; Segment fell back to
/// 10 rows): with every answer slow, a backlog goes in ever smaller rowsets, down to 10
/// rows, and every row lands.
#[tokio::test(flavor = "multi_thread")]
async fn rowsets_shrink_when_sfmc_answers_slowly() {
    let dir = rules_dir(&Settings {
        batch_rows: 50,
        max_in_flight: 1,
        request_timeout: "2s",
        ..Settings::default()
    });
    let program = load(dir.path());
    let sim = start_sim("faults: { rate_slow: 1.0, slow_ms: 600 }\n").await;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.ndjson");
    let n = 120;
    let events: Vec<Value> = (0..n)
        .map(|i| {
            identify(
                &format!("s-{i}"),
                json!({"email": format!("s{i}@example.com")}),
            )
        })
        .collect();
    write_ndjson(&input, &events);
    let s = deliver(
        &program,
        &input,
        &tmp.path().join("d.ndjson"),
        sim_env(&sim, &[]),
    )
    .await;
    assert_eq!(s.delivered, n as u64, "{}", s.render());
    assert_eq!(sim.rows("contacts").len(), n);
    let rowsets = sim.stats().calls_to(ROWSET);
    // 50, 25, 12, then 10 at a time (7 calls); without adapting, 3 calls of 50.
    assert!(rowsets >= 6, "{rowsets} rowset calls for {n} rows");
}

// Issue 15's cost target, on its benchmark's backlog: 5,000 seeded corpus events, every
// identify a new user, the example rules at the shipped 20 requests/s, against the
// built-in simulator. Fails if the bulk endpoints stop being used (534 calls per 1,000
// events before them) or if a lane starves into small rowsets again (up to 15.4 when the
// contact lane held the dispatcher up).
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_costs_at_most_15_calls_per_1000_events() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("c5k.ndjson");
    let out = output(relay(
        &["corpus", "5000", "--users", "1000000", "-o", path(&corpus)],
        NO_ENV,
    ))
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rules = root().join("examples/ecommerce/rules");
    let dead = tmp.path().join("dead.ndjson");
    let out = run_file(Some(&rules), &corpus, &dead, &["-q"], NO_ENV).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("5000 delivered"), "{stderr}");
    let number_after = |label: &str| -> u64 {
        let at = stderr
            .find(label)
            .unwrap_or_else(|| panic!("{label}: {stderr}"))
            + label.len();
        stderr[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    let calls = number_after("SFMC calls: ") + number_after("token requests ");
    assert!(calls * 1000 / 5000 <= 15, "{calls} calls: {stderr}");
}
