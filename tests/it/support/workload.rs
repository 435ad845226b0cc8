//! The Kafka tests' workload (`kafka` against a broker process, `kafka_mock` against
//! rdkafka's mock cluster) and what the simulator must hold after it.

use super::{find_row, key, order, signup};
use serde_json::{Value, json};
use sfmc_relay::sim::SimHandle;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// For each user: a signup (one API event), three identifies in order (the last one's
/// `seq` must win) and two orders (rows with unique keys).
pub fn workload(users: usize, tag: &str) -> Vec<Value> {
    let mut events = Vec::new();
    for u in 0..users {
        let user = format!("{tag}-user-{u}");
        events.push(signup(&user, "pro"));
        for seq in 1..=3 {
            events.push(
                json!({"type": "identify", "messageId": format!("{user}-id-{seq}"),
                "userId": user, "traits": {"email": format!("{user}@example.com"), "seq": seq}}),
            );
        }
        for o in 0..2 {
            events.push(order(&user, &format!("{user}-order-{o}"), 10.0 + o as f64));
        }
    }
    // Interleave users (as live traffic would), keeping each user's own order.
    let per_user = events.len() / users;
    let mut mixed = Vec::with_capacity(events.len());
    for i in 0..per_user {
        for u in 0..users {
            mixed.push(events[u * per_user + i].clone());
        }
    }
    mixed
}

/// Wait until every user's orders, last identify and API event landed.
pub async fn wait_landed(sim: &SimHandle, users: usize, tag: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let missing = missing(sim, users, tag);
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not everything landed in {within:?}: {} missing, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn missing(sim: &SimHandle, users: usize, tag: &str) -> Vec<String> {
    let orders = sim.rows("orders");
    let contacts = sim.rows("contacts");
    let signed: HashSet<String> = sim
        .api_events()
        .iter()
        .filter_map(|e| e["ContactKey"].as_str().map(str::to_string))
        .collect();
    let mut out = Vec::new();
    for u in 0..users {
        let user = format!("{tag}-user-{u}");
        for o in 0..2 {
            let id = format!("{user}-order-{o}");
            if find_row(&orders, &key(&[("Order Id", &id), ("Contact Key", &user)])).is_none() {
                out.push(format!("order {id}"));
            }
        }
        match find_row(&contacts, &key(&[("Contact Key", &user)])) {
            Some(row) if row["values"]["Seq"] == json!(3) || row["values"]["Seq"] == json!("3") => {
            }
            Some(row) => out.push(format!("contact {user} at {}", row["values"])),
            None => out.push(format!("contact {user}")),
        }
        if !signed.contains(&user) {
            out.push(format!("api event {user}"));
        }
    }
    out
}

pub fn api_events_per_user(sim: &SimHandle) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for e in sim.api_events() {
        *n.entry(e["ContactKey"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    n
}

/// `n` identifies per user (`seq` 1..=n), users interleaved, each user's in order.
pub fn sequences(users: usize, n: u64, tag: &str) -> Vec<Value> {
    let mut events = Vec::new();
    for seq in 1..=n {
        for u in 0..users {
            let user = format!("{tag}-user-{u}");
            events.push(
                json!({"type": "identify", "messageId": format!("{user}-seq-{seq}"),
                "userId": user, "traits": {"email": format!("{user}@example.com"), "seq": seq}}),
            );
        }
    }
    events
}

fn seq_of(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

/// Per-user order of the contact upserts in the simulator's log: for each user, the
/// `Seq` of every upsert must be above the one before (no redelivery). Returns the
/// violations.
pub fn order_violations(sim: &SimHandle) -> Vec<String> {
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut out = Vec::new();
    for e in sim.log() {
        if !e.data_extension.eq_ignore_ascii_case("contacts") {
            continue;
        }
        let user = e
            .keys
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Contact Key"))
            .and_then(|(_, v)| v.as_str());
        let (Some(user), Some(seq)) = (user, e.values.get("Seq").and_then(seq_of)) else {
            continue;
        };
        if let Some(prev) = last.insert(user.to_string(), seq)
            && seq <= prev
        {
            out.push(format!("{user}: Seq {seq} after {prev} (log #{})", e.seq));
        }
    }
    out
}

/// Users whose contact row does not hold `Seq` = `want` (or is missing).
pub fn final_seq_wrong(sim: &SimHandle, users: usize, tag: &str, want: i64) -> Vec<String> {
    let contacts = sim.rows("contacts");
    (0..users)
        .map(|u| format!("{tag}-user-{u}"))
        .filter_map(
            |user| match find_row(&contacts, &key(&[("Contact Key", &user)])) {
                Some(row) if seq_of(&row["values"]["Seq"]) == Some(want) => None,
                Some(row) => Some(format!("{user} at {}", row["values"])),
                None => Some(format!("{user} missing")),
            },
        )
        .collect()
}
