//! Loopback load generator for `sfmc-relay serve` (measures accepted events per second).
//!
//! ```sh
//! SFMC_RELAY_WRITE_KEYS=k target/debug/sfmc-relay serve --spool /tmp/spool --listen 127.0.0.1:8080 &
//! cargo run --example ingest_load -- http://127.0.0.1:8080 k 64 10 track
//! #                                  URL                   KEY CONCURRENCY SECONDS track|batch
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or("http://127.0.0.1:8080".into());
    let key = args.get(2).cloned().unwrap_or("k".into());
    let conc: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    let secs: u64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(10);
    let mode = args.get(5).cloned().unwrap_or("track".into());
    let events = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for t in 0..conc {
        let (client, url, key, mode) = (client.clone(), url.clone(), key.clone(), mode.clone());
        let (events, errors) = (events.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                i += 1;
                let ev = |j: u64| serde_json::json!({"type": "track", "userId": format!("u{t}-{i}-{j}"),
                    "event": "Order Completed", "properties": {"order_id": format!("o{t}-{i}-{j}"), "revenue": 10}});
                let (path, body, n) = if mode == "batch" {
                    let batch: Vec<_> = (0..100).map(ev).collect();
                    ("/v1/batch", serde_json::json!({"batch": batch}), 100)
                } else {
                    ("/v1/track", ev(0), 1)
                };
                match client.post(format!("{url}{path}")).basic_auth(&key, Some("")).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {
                        events.fetch_add(n, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let n = events.load(Ordering::Relaxed);
    println!(
        "{mode}: {n} events accepted in {secs} s = {:.0} events/s ({conc} concurrent clients, {} failed requests)",
        n as f64 / secs as f64,
        errors.load(Ordering::Relaxed)
    );
}
