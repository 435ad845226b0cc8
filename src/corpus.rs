//! A seeded generator of Segment events shaped like those analytics-node sends, for
//! benchmarks (no network, deterministic for a seed).
//!
//! Mix: exactly 50% identify, 25% `Order Completed` (order_id, revenue, products array),
//! 25% `Product Viewed` (per block of four events); about 900 bytes each with a full `context`.

use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;

pub struct CorpusConfig {
    pub events: u64,
    /// Distinct users the events come from (real traffic repeats users).
    pub users: u64,
    pub seed: u64,
}

const FIRST: [&str; 8] = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken",
];
const LAST: [&str; 8] = [
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
];
const CITIES: [&str; 6] = ["London", "Paris", "Berlin", "Lisbon", "Oslo", "Rome"];
const PRODUCTS: [&str; 6] = ["Lamp", "Chair", "Desk", "Mug", "Poster", "Rug"];
const CAMPAIGNS: [&str; 4] = ["spring_sale", "newsletter", "retargeting", "launch"];

/// One event (`i` is its index; the same seed and index always give the same event).
pub fn event(cfg: &CorpusConfig, i: u64) -> Value {
    let mut rng = fastrand::Rng::with_seed(cfg.seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let user = rng.u64(0..cfg.users.max(1));
    let user_id = format!("user-{user:08}");
    let email = format!(
        "{}.{}{}@example.com",
        FIRST[(user % 8) as usize].to_lowercase(),
        LAST[(user / 8 % 8) as usize].to_lowercase(),
        user
    );
    let ts = 1_714_560_000_000i64 + (i as i64) * 137;
    let timestamp = chrono::DateTime::from_timestamp_millis(ts)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    let context = json!({
        "app": {"name": "Shop", "version": "4.2.1", "build": "421", "namespace": "com.example.shop"},
        "campaign": {"name": CAMPAIGNS[rng.usize(0..4)], "source": "newsletter", "medium": "email", "term": "lamps", "content": "hero"},
        "device": {"id": format!("dev-{user}"), "adTrackingEnabled": rng.bool(), "manufacturer": "Apple", "model": "iPhone15,2", "name": "iPhone", "type": "ios"},
        "library": {"name": "analytics-node", "version": "2.1.0"},
        "locale": "en-GB",
        "network": {"bluetooth": false, "carrier": "EE", "cellular": rng.bool(), "wifi": rng.bool()},
        "screen": {"density": 3, "height": 844, "width": 390},
        "ip": format!("203.0.113.{}", user % 250),
        "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15",
        "timezone": "Europe/London"
    });
    let message_id = format!("{:016x}-{i:010}", rng.u64(..));
    // The mix is exact: each block of four events holds two identifies, one Order
    // Completed and one Product Viewed, in a seeded order.
    let mut block = [0u8, 1, 2, 3];
    fastrand::Rng::with_seed(cfg.seed ^ (i / 4).wrapping_mul(0xA076_1D64_78BD_642F))
        .shuffle(&mut block);
    let kind = block[(i % 4) as usize];
    match kind {
        0 | 1 => json!({
            "type": "identify",
            "messageId": message_id,
            "userId": user_id,
            "anonymousId": format!("anon-{user}"),
            "traits": {
                "email": email,
                "firstName": FIRST[(user % 8) as usize],
                "lastName": LAST[(user / 8 % 8) as usize],
                "plan": if user.is_multiple_of(3) { "pro" } else { "free" },
                "logins": rng.u32(1..500),
                "createdAt": "2023-03-04T10:11:12.000Z",
                "address": {"street": "1 Main St", "city": CITIES[(user % 6) as usize], "postalCode": "N1 9GU", "country": "GB"}
            },
            "context": context,
            "timestamp": timestamp,
            "sentAt": timestamp,
            "integrations": {}
        }),
        2 => {
            let n = rng.usize(1..4);
            let products: Vec<Value> = (0..n)
                .map(|_| {
                    let p = rng.usize(0..6);
                    json!({"product_id": format!("p-{p}"), "sku": format!("SKU-{p:04}"), "name": PRODUCTS[p], "price": 10.0 + p as f64 * 5.5, "quantity": rng.u32(1..4)})
                })
                .collect();
            json!({
                "type": "track",
                "event": "Order Completed",
                "messageId": message_id,
                "userId": user_id,
                "properties": {"order_id": format!("o-{i:010}"), "revenue": 42.5 + (i % 100) as f64, "currency": "EUR", "coupon": if i.is_multiple_of(5) { Value::Null } else { json!("SPRING") }, "products": products},
                "context": context,
                "timestamp": timestamp,
                "sentAt": timestamp
            })
        }
        _ => {
            let p = rng.usize(0..6);
            json!({
                "type": "track",
                "event": "Product Viewed",
                "messageId": message_id,
                "userId": user_id,
                "properties": {"product_id": format!("p-{p}"), "sku": format!("SKU-{p:04}"), "name": PRODUCTS[p], "price": 10.0 + p as f64 * 5.5, "category": "Home"},
                "context": context,
                "timestamp": timestamp,
                "sentAt": timestamp
            })
        }
    }
}

/// Write the corpus as NDJSON.
pub fn write(cfg: &CorpusConfig, out: &mut impl Write) -> std::io::Result<()> {
    for i in 0..cfg.events {
        serde_json::to_writer(&mut *out, &event(cfg, i))?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// `sfmc-relay corpus`: write the corpus to `path` (created or truncated), or to stdout.
/// A reader that stops early (a closed pipe: `corpus | head`) is not an error.
pub fn write_to(cfg: &CorpusConfig, path: Option<&Path>) -> std::io::Result<()> {
    let sink: Box<dyn Write> = match path {
        None => Box::new(std::io::stdout().lock()),
        Some(p) => Box::new(std::fs::File::create(p).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot create {}: {e}", p.display()))
        })?),
    };
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, sink);
    match write(cfg, &mut out).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
