//! Property tests: invariants of the interpreter, the casing table and the sink, for
//! arbitrary Segment-like events (unicode, nulls, nesting, colons, missing fields).
//!
//! `PROPTEST_CASES=N cargo test --test it properties::` runs more cases than the default.

use crate::support::*;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use sfmc_relay::commands::transform;
use sfmc_relay::rules::casing::{Casing, Style};
use sfmc_relay::rules::program::PrimaryKey;
use sfmc_relay::rules::{self, Program};
use std::collections::{BTreeMap, HashMap};

use std::path::Path;
use std::sync::Arc;

/// `n` cases, or `PROPTEST_CASES` when set (to run longer).
fn config(n: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig {
        cases,
        // Failures are kept as named regression tests (src/rules/casing.rs), not a file.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- generators

/// Strings that exercise the interpreter: colons, blanks, unicode, look-alikes, controls.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9_ .:@-]{0,12}",
        2 => any::<String>().prop_map(|s| s.chars().take(16).collect()),
        1 => Just(String::new()),
        1 => Just(":".to_string()),
        1 => Just("  :: ".to_string()),
        1 => Just("user:42:x".to_string()),
        1 => Just("ǅemo ßtraße İ ﬁ".to_string()),
        1 => Just("🎉".to_string()),
        1 => Just("2024-05-01T10:00:00Z".to_string()),
        1 => Just("a@example.com".to_string()),
    ]
}

/// Keys: the columns the rules care about, in several spellings, plus arbitrary ones.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "order_id", "orderId", "Order Id", "ORDER_ID", "order id", "revenue", "email",
            "created_at", "createdAt", "order_date", "Order Date", "contact_key", "Contact Key",
            "uuid", "Uuid", "plan", "utm_campaign", "UTMCampaign", "first_name", "",
            ":", "🎉", "ß", "a.b", "$", "null",
        ])
        .prop_map(str::to_string),
        2 => text(),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        2 => any::<i64>().prop_map(|i| json!(i)),
        1 => any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        4 => text().prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn object() -> impl Strategy<Value = Value> {
    prop::collection::vec((key(), value()), 0..8)
        .prop_map(|kv| Value::Object(kv.into_iter().collect()))
}

/// A field that may be missing (`None`), or set to anything.
fn maybe<S: Strategy<Value = Value>>(s: S) -> impl Strategy<Value = Option<Value>> {
    prop::option::weighted(0.8, s)
}

fn event() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        6 => prop::sample::select(vec!["identify", "track", "page", "screen", "group", "alias"])
            .prop_map(|s| json!(s)),
        1 => text().prop_map(Value::String),
        1 => leaf(),
    ];
    let name = prop_oneof![
        5 => prop::sample::select(vec!["Order Completed", "Product Viewed", "Signed Up", "Cart Viewed"])
            .prop_map(|s| json!(s)),
        1 => leaf(),
    ];
    let user = prop_oneof![4 => text().prop_map(Value::String), 1 => leaf()];
    let context = prop_oneof![
        3 => (object(), object(), maybe(text().prop_map(Value::String)))
            .prop_map(|(mut c, traits, email)| {
                let m = c.as_object_mut().unwrap();
                let mut t = traits;
                if let (Some(e), Some(tm)) = (email, t.as_object_mut()) {
                    tm.insert("email".into(), e);
                }
                m.insert("traits".into(), t);
                m.insert("app".into(), json!({"name": "Shop", "version": null}));
                c
            }),
        1 => value(),
    ];
    (
        maybe(kind),
        maybe(name),
        maybe(user),
        maybe(text().prop_map(Value::String)),
        maybe(prop_oneof![4 => object(), 1 => value()]),
        maybe(prop_oneof![4 => object(), 1 => value()]),
        maybe(context),
        object(),
    )
        .prop_map(
            |(kind, name, user, message_id, traits, properties, context, extra)| {
                let mut ev = match extra {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                for (k, v) in [
                    ("type", kind),
                    ("event", name),
                    ("userId", user),
                    ("messageId", message_id),
                    ("traits", traits),
                    ("properties", properties),
                    ("context", context),
                ] {
                    if let Some(v) = v {
                        ev.insert(k.to_string(), v);
                    }
                }
                Value::Object(ev)
            },
        )
}

// ---------------------------------------------------------------- transform

fn env() -> sfmc_relay::env::Env {
    sfmc_relay::env::Env::from_map([("SFMC_IDENTIFY_DE", "identify_rows")])
}

fn programs() -> Vec<(&'static str, Arc<Program>)> {
    let root = root();
    vec![
        (
            "default",
            Arc::new(
                rules::load(Some(&root.join("rules")), &env(), 1)
                    .unwrap()
                    .program,
            ),
        ),
        (
            "ecommerce",
            Arc::new(
                rules::load(Some(&root.join("examples/ecommerce/rules")), &env(), 1)
                    .unwrap()
                    .program,
            ),
        ),
    ]
}

/// The configured primary-key columns of every data extension the program writes.
fn primary_keys(p: &Program) -> HashMap<String, Vec<String>> {
    let mut out = HashMap::new();
    if let Some(de) = &p.identify.data_extension {
        out.insert(de.clone(), vec!["Contact Key".to_string()]);
    }
    for m in &p.mappings {
        if let Some(de) = &m.data_extension {
            let cols = match &m.primary_key {
                PrimaryKey::Uuid => vec!["Uuid".to_string()],
                PrimaryKey::Columns(c) => c.clone(),
            };
            out.insert(de.clone(), cols);
        }
    }
    out
}

fn transform_lines(program: &Arc<Program>, input: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut reader = sfmc_relay::source::lines::LineReader::new(input.as_bytes());
    let p = program.clone();
    transform::run(&mut reader, &mut out, &mut || p.clone()).expect("transform");
    String::from_utf8(out)
        .expect("UTF-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("every output line is JSON"))
        .collect()
}

fn assert_no_null(v: &Value, where_: &str) {
    match v {
        Value::Null => panic!("null value in body: {where_}"),
        Value::Array(a) => a.iter().for_each(|x| assert_no_null(x, where_)),
        Value::Object(m) => m.values().for_each(|x| assert_no_null(x, where_)),
        _ => {}
    }
}

fn assert_contact_key(v: Option<&Value>, line: &Value) {
    let ck = v
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("Contact Key missing or not a string: {line}"));
    assert!(!ck.trim().is_empty(), "empty Contact Key: {line}");
    assert!(!ck.contains(':'), "colon in Contact Key: {line}");
}

/// Check every invariant of the output lines for `events` (one event per input line).
fn check_outputs(name: &str, p: &Program, events: &[Value], lines: &[Value]) {
    let pks = primary_keys(p);
    let mut per_event: BTreeMap<u64, usize> = BTreeMap::new();
    for l in lines {
        let idx = l["event"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: no event index: {l}"));
        *per_event.entry(idx).or_default() += 1;
        if l.get("outcome").is_some() {
            assert!(
                matches!(l["outcome"].as_str(), Some("skipped" | "rejected")),
                "{name}: {l}"
            );
            assert!(l["reason"].as_str().is_some_and(|r| !r.is_empty()), "{l}");
            continue;
        }
        let body = &l["body"];
        assert_no_null(body, &format!("{name}: {l}"));
        let path = l["path"].as_str().unwrap();
        if path == "/contacts/v1/contacts" {
            assert_contact_key(body.get("contactKey"), l);
        } else if path == "/interaction/v1/events" {
            assert_contact_key(body.get("ContactKey"), l);
        } else {
            let de = path
                .strip_prefix("/hub/v1/dataevents/key:")
                .and_then(|s| s.strip_suffix("/rowset"))
                .unwrap_or_else(|| panic!("{name}: unexpected path {l}"));
            let row = &body[0];
            let keys = row["keys"].as_object().expect("keys object");
            let wanted = pks
                .get(de)
                .unwrap_or_else(|| panic!("{name}: unknown data extension {de}: {l}"));
            for col in wanted {
                let v = keys
                    .get(col)
                    .unwrap_or_else(|| panic!("{name}: primary key {col:?} missing: {l}"));
                assert!(
                    v.as_str().is_none_or(|s| !s.is_empty()),
                    "{name}: empty primary key {col:?}: {l}"
                );
                assert!(!v.is_null() && !v.is_object() && !v.is_array(), "{l}");
            }
            if keys.contains_key("Contact Key") {
                assert_contact_key(keys.get("Contact Key"), l);
            }
        }
    }
    for i in 0..events.len() as u64 {
        assert!(
            per_event.get(&i).is_some_and(|n| *n >= 1),
            "{name}: no outcome line for event {i}: {}",
            events[i as usize]
        );
    }
    assert_eq!(
        per_event.keys().next_back().copied(),
        (!events.is_empty()).then(|| events.len() as u64 - 1),
        "{name}: outcome for an event that does not exist"
    );
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn transform_invariants(events in prop::collection::vec(event(), 1..12)) {
        let mut input = String::new();
        for e in &events {
            input.push_str(&serde_json::to_string(e).unwrap());
            input.push('\n');
        }
        for (name, p) in programs() {
            let lines = transform_lines(&p, &input);
            check_outputs(name, &p, &events, &lines);
        }
    }

    /// A batch envelope's events all get lines under the envelope's line number.
    #[test]
    fn batch_envelopes_give_every_event_an_outcome(events in prop::collection::vec(event(), 0..6)) {
        let input = serde_json::to_string(&json!({"batch": events})).unwrap() + "\n";
        for (name, p) in programs() {
            let lines = transform_lines(&p, &input);
            // Every line is for line 0; at least one per event.
            prop_assert!(lines.iter().all(|l| l["event"] == 0), "{name}");
            prop_assert!(lines.len() >= events.len(), "{name}: {lines:?}");
        }
    }

    /// Arbitrary bytes never crash `transform`: every non-blank line gets an outcome.
    #[test]
    fn arbitrary_lines_never_crash(lines in prop::collection::vec(
        prop_oneof![any::<String>(), "[{}\\[\\]\":,a-z0-9 ]{0,40}"], 1..8)) {
        let input: String = lines.iter().map(|l| l.replace(['\n', '\r'], " ") + "\n").collect();
        for (_, p) in programs() {
            let out = transform_lines(&p, &input);
            let blank = lines.iter().filter(|l| l.replace(['\n', '\r'], " ").trim().is_empty()).count();
            prop_assert!(out.len() >= lines.len() - blank);
        }
    }
}

// ---------------------------------------------------------------- borrowed view

/// JSON text of an object written member by member, so keys can repeat (serde_json keeps
/// the first position and the later value).
fn members_text(kv: &[(String, Value)]) -> String {
    let parts: Vec<String> = kv
        .iter()
        .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v))
        .collect();
    format!("{{{}}}", parts.join(","))
}

proptest! {
    #![proptest_config(config(256))]

    /// The fast path (`transform_view` over a view borrowing from the line) decides
    /// exactly what `transform` over a `serde_json::Value` of the same text does,
    /// including objects that repeat a key and strings with escapes.
    #[test]
    fn the_borrowed_view_transforms_like_value(
        event in event(),
        data in prop::collection::vec((key(), value()), 0..10),
        repeat in prop::collection::vec((0usize..10, value()), 0..3),
    ) {
        let mut data = data;
        for (i, v) in repeat {
            if let Some((k, _)) = data.get(i % data.len().max(1)).cloned() {
                data.push((k, v));
            }
        }
        let mut text = serde_json::to_string(&event).unwrap();
        // Replace the data field (traits or properties) with the text that repeats keys.
        let field = if matches!(event["type"].as_str(), Some("identify" | "group")) {
            "traits"
        } else {
            "properties"
        };
        if text.ends_with('}') && event.get(field).is_none() {
            text.pop();
            if text.len() > 1 {
                text.push(',');
            }
            text.push_str(&format!("\"{field}\":{}}}", members_text(&data)));
        }
        for (name, p) in programs() {
            let by_value = match sfmc_relay::event::parse_line(&text, 0) {
                sfmc_relay::event::Line::Events(evs) => evs
                    .iter()
                    .map(|e| sfmc_relay::transform::transform(&p, e, &mut sfmc_relay::transform::Trace::off()))
                    .collect::<Vec<_>>(),
                _ => panic!("{text}"),
            };
            let by_view = match sfmc_relay::event::parse_line_view(&text, 0).0 {
                sfmc_relay::event::LineView::Events(evs) => evs
                    .iter()
                    .map(|e| sfmc_relay::transform::transform_view(&p, e, &mut sfmc_relay::transform::Trace::off()))
                    .collect::<Vec<_>>(),
                _ => panic!("{text}"),
            };
            prop_assert_eq!(&by_view, &by_value, "{}: {}", name, text);
        }
    }
}

// ---------------------------------------------------------------- casing

fn style() -> impl Strategy<Value = Style> {
    prop::sample::select(vec![
        Style::Title,
        Style::None,
        Style::Snake,
        Style::Camel,
        Style::Pascal,
    ])
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn casing_is_idempotent(
        style in style(),
        overrides in prop::collection::vec((key(), key()), 0..4),
        keys in prop::collection::vec(key(), 1..8),
    ) {
        let mut c = Casing::new(style);
        for (k, col) in &overrides {
            c.add_override(k, col);
        }
        let probe: Vec<&String> = keys.iter().chain(overrides.iter().flat_map(|(k, c)| [k, c])).collect();
        for k in probe {
            let once = c.apply(k).into_owned();
            let twice = c.apply(&once).into_owned();
            prop_assert_eq!(&twice, &once, "style {:?}, key {:?}, overrides {:?}", style, k, overrides);
        }
    }
}

// ---------------------------------------------------------------- coalescing

/// Events that land rows: orders (few order ids and users, so keys repeat) and identifies.
fn delivery_event() -> impl Strategy<Value = Value> {
    let user = prop::sample::select(vec!["u-1", "u-2", "u:3", "u-4"]);
    let props = prop::collection::vec(
        (
            prop::sample::select(vec!["revenue", "coupon", "currency", "note", "step"]),
            prop_oneof![
                any::<i32>().prop_map(|i| json!(i)),
                "[a-z ]{0,6}".prop_map(Value::String),
                Just(Value::Null),
            ],
        ),
        0..4,
    );
    prop_oneof![
        3 => (user.clone(), 0..4u8, props.clone()).prop_map(|(u, o, props)| {
            let mut p: Map<String, Value> = props.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            p.insert("order_id".into(), json!(format!("o-{o}")));
            json!({"type": "track", "event": "Order Completed", "userId": u, "properties": p})
        }),
        2 => (user, props).prop_map(|(u, props)| {
            let t: Map<String, Value> = props.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            json!({"type": "identify", "userId": u, "traits": t})
        }),
    ]
}

/// Deliver `events` through the ecommerce rules with `batch_rows` to a fresh simulator;
/// the rows that landed, per data extension, sorted.
async fn landed(events: &[Value], batch_rows: usize, tmp: &Path) -> BTreeMap<String, Vec<Value>> {
    let dir = rules_dir(&Settings {
        batch_rows,
        linger: "5ms",
        ..Settings::default()
    });
    let program = load(dir.path());
    let sim = start_sim("").await;
    let input = tmp.join(format!("in-{batch_rows}.ndjson"));
    write_ndjson(&input, events);
    let dead = tmp.join(format!("dead-{batch_rows}.ndjson"));
    let summary = deliver(&program, &input, &dead, sim_env(&sim, &[])).await;
    assert_eq!(summary.dead_lettered, 0, "{}", summary.render());
    let mut out = BTreeMap::new();
    for de in ["orders", "contacts"] {
        let mut rows = sim.rows(de);
        rows.sort_by_key(|r| r["keys"].to_string());
        out.insert(de.to_string(), rows);
    }
    sim.shutdown().await;
    out
}

proptest! {
    #![proptest_config(config(24))]

    /// Coalescing rows into batches, then sending, lands exactly what sending them one
    /// by one in order lands.
    #[test]
    fn coalescing_equals_sending_one_by_one(events in prop::collection::vec(delivery_event(), 1..80)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let (batched, single) = rt.block_on(async {
            (
                landed(&events, 50, tmp.path()).await,
                landed(&events, 1, tmp.path()).await,
            )
        });
        prop_assert_eq!(batched, single);
    }
}
