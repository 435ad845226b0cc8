//! Every default of the delivery settings, defined once.
//!
//! The rules' `delivery:` section ([`crate::rules::program::Delivery::default`]), the sink
//! ([`crate::sfmc::sink::SinkConfig::default`]), the client
//! ([`crate::sfmc::ClientConfig::default`], [`crate::sfmc::RetryPolicy::default`]) and the
//! command-line flags read them from here. The README's sink-settings table and the
//! comments of `rules/settings.yaml` document them; a test below fails when either says
//! something else.

use std::time::Duration;

// The rules' `delivery:` settings (README "Sink settings", rules/settings.yaml).

/// `delivery.batch_rows`: rows per rowset call (SFMC recommends about 50).
pub const BATCH_ROWS: usize = 50;
/// `delivery.batch_bytes`: bytes per rowset call (SFMC's limit is 5 MB).
pub const BATCH_BYTES: usize = 4_000_000;
/// `delivery.linger`: how long a partial batch waits for more rows.
pub const LINGER: Duration = Duration::from_millis(200);
/// `delivery.requests_per_second`: Segment's documented rate for SFMC (`0` = unlimited).
pub const REQUESTS_PER_SECOND: u32 = 20;
/// `delivery.max_in_flight`: concurrent requests to SFMC, and batch lanes per data extension.
pub const MAX_IN_FLIGHT: usize = 4;
/// `delivery.request_timeout`: per HTTP request, token requests included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// `delivery.contact_cache`: Contact Keys remembered as already created.
pub const CONTACT_CACHE: usize = 100_000;
/// Contact Keys per `POST /contacts/v1/establish` call (SFMC documents no maximum; keep
/// batches modest). 1: one `POST /contacts/v1/contacts` per key.
pub const CONTACT_BATCH: usize = 100;
/// `delivery.journey_batch`: Journey entries per `POST /interaction/v1/async/events`
/// call, per event definition (SFMC's limit: 100).
pub const JOURNEY_BATCH: usize = 100;
/// `delivery.async_threshold`: rows waiting in one lane (a backlog behind the request
/// rate) that send them through the asynchronous rows API instead of rowsets; 0: never.
/// Only when `requests_per_second` limits the rate (unlimited, rowsets keep up).
pub const ASYNC_THRESHOLD: usize = 200;
/// `delivery.async_batch_rows`: rows per asynchronous request (SFMC's limit: 32,000).
pub const ASYNC_BATCH_ROWS: usize = 5_000;
/// `delivery.retry.attempts`: per request (the first included), then the rows are
/// dead-lettered.
pub const RETRY_ATTEMPTS: u32 = 8;
/// `delivery.retry.within`: total time budget per request.
pub const RETRY_WITHIN: Duration = Duration::from_secs(600);
/// `delivery.retry.base_delay`: backoff ceiling of the first retry (doubles per retry).
pub const RETRY_BASE_DELAY: Duration = Duration::from_millis(200);
/// `delivery.retry.max_delay`: upper bound of the backoff ceiling (`Retry-After` is not
/// capped by it).
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(30);
/// `delivery.retry.blocked_pause`: pause between probes while SFMC answers 50200
/// ("temporarily blocked": minutes, not seconds).
pub const RETRY_BLOCKED_PAUSE: Duration = Duration::from_secs(120);
/// `delivery.give_up_after`: how long `run` waits for an unavailable SFMC before writing
/// what is left as `undelivered` dead letters (Segment's retry window).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(4 * 3600);

// Command-line flags (their `--help` shows them).

/// `--dead-letter` of `run`, `replay`, `serve` and `consume`.
pub const DEAD_LETTER_FILE: &str = "sfmc-relay.deadletter.ndjson";
/// `serve --listen`.
pub const SERVE_LISTEN: &str = "127.0.0.1:8080";
/// `serve --spool-max-bytes`.
pub const SPOOL_MAX_BYTES: &str = "1GiB";
/// `serve --drain-timeout`, seconds.
pub const DRAIN_TIMEOUT_SECS: u64 = 30;
/// `sim --listen`.
pub const SIM_LISTEN: &str = "127.0.0.1:9000";
/// `corpus --events`.
pub const CORPUS_EVENTS: u64 = 100_000;
/// `consume --commit-interval-ms`.
pub const COMMIT_INTERVAL_MS: u64 = 1000;
/// `consume --rebalance-flush-ms`.
pub const REBALANCE_FLUSH_MS: u64 = 10_000;
/// `consume --max-in-flight`: events in flight before the partitions are paused.
pub const CONSUME_MAX_IN_FLIGHT: usize = 10_000;
/// `consume --dedup-window`: Journey Builder messageIds remembered.
pub const DEDUP_WINDOW: usize = 100_000;

#[cfg(test)]
mod tests {
    //! The documentation of the defaults cannot drift from the constants.

    use crate::rules::compile::parse_duration;
    use crate::rules::program::Delivery;
    use std::collections::BTreeMap;
    use std::time::Duration;

    /// Every `delivery:` setting with its default, as the docs write it (`retry.x` for the
    /// `retry:` sub-section).
    fn constants() -> Vec<(&'static str, Value)> {
        use super::*;
        vec![
            ("batch_rows", Value::Int(BATCH_ROWS as u64)),
            ("batch_bytes", Value::Int(BATCH_BYTES as u64)),
            ("linger", Value::Duration(LINGER)),
            (
                "requests_per_second",
                Value::Int(u64::from(REQUESTS_PER_SECOND)),
            ),
            ("max_in_flight", Value::Int(MAX_IN_FLIGHT as u64)),
            ("request_timeout", Value::Duration(REQUEST_TIMEOUT)),
            ("contact_cache", Value::Int(CONTACT_CACHE as u64)),
            ("contact_batch", Value::Int(CONTACT_BATCH as u64)),
            ("journey_batch", Value::Int(JOURNEY_BATCH as u64)),
            ("async_threshold", Value::Int(ASYNC_THRESHOLD as u64)),
            ("async_batch_rows", Value::Int(ASYNC_BATCH_ROWS as u64)),
            ("retry.attempts", Value::Int(u64::from(RETRY_ATTEMPTS))),
            ("retry.within", Value::Duration(RETRY_WITHIN)),
            ("retry.base_delay", Value::Duration(RETRY_BASE_DELAY)),
            ("retry.max_delay", Value::Duration(RETRY_MAX_DELAY)),
            ("retry.blocked_pause", Value::Duration(RETRY_BLOCKED_PAUSE)),
            ("give_up_after", Value::Duration(GIVE_UP_AFTER)),
        ]
    }

    #[derive(Debug, PartialEq)]
    enum Value {
        Int(u64),
        Duration(Duration),
    }

    /// A documented value: a whole number (`_` allowed) or a duration (`200ms`, `10m`).
    fn parse(text: &str) -> Value {
        let t = text.trim();
        if let Ok(n) = t.replace('_', "").parse::<u64>() {
            return Value::Int(n);
        }
        Value::Duration(parse_duration(t).unwrap_or_else(|| panic!("not a value: {t:?}")))
    }

    fn expect(documented: &BTreeMap<String, Value>, what: &str) {
        let constants: BTreeMap<String, Value> = constants()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(
            documented, &constants,
            "{what} documents other delivery defaults than src/defaults.rs"
        );
    }

    /// The README's sink-settings table: `| \`name\` | default | meaning |` rows, where a
    /// row may document two settings (`` `a` / `b` | 1 / 2 ``).
    #[test]
    fn readme_table_matches_the_constants() {
        let readme = include_str!("../README.md");
        let start = readme
            .find("**Sink settings**")
            .expect("README has the sink-settings table");
        let mut documented = BTreeMap::new();
        let rows = readme[start..]
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2); // header and separator
        for row in rows {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let names: Vec<&str> = cells[1].split(" / ").map(|n| n.trim_matches('`')).collect();
            let values: Vec<&str> = cells[2].split(" / ").collect();
            assert_eq!(names.len(), values.len(), "README row {row:?}");
            for (n, v) in names.into_iter().zip(values) {
                documented.insert(n.to_string(), parse(v));
            }
        }
        expect(&documented, "README.md");
    }

    /// The `delivery:` section of a YAML text, flattened (`retry.attempts`).
    fn yaml_delivery(text: &str, what: &str) -> BTreeMap<String, Value> {
        let yaml: serde_json::Value =
            serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{what} is not YAML: {e}"));
        let mut documented = BTreeMap::new();
        let delivery = yaml["delivery"]
            .as_object()
            .unwrap_or_else(|| panic!("{what} has no delivery: section"));
        for (k, v) in delivery {
            let mut put = |name: String, v: &serde_json::Value| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                documented.insert(name, parse(&text));
            };
            match v.as_object() {
                Some(sub) => sub.iter().for_each(|(s, v)| put(format!("{k}.{s}"), v)),
                None => put(k.clone(), v),
            }
        }
        documented
    }

    /// `rules/settings.yaml` sets every delivery setting to its default (so the file
    /// documents them): read as YAML, and compiled.
    #[test]
    fn settings_yaml_matches_the_constants() {
        let text = include_str!("../rules/settings.yaml");
        expect(
            &yaml_delivery(text, "rules/settings.yaml"),
            "rules/settings.yaml",
        );
        let files = [crate::rules::SourceFile {
            name: "settings.yaml".into(),
            text: text.into(),
        }];
        let loaded = crate::rules::compile_sources(&files, &crate::env::Env::empty(), 1)
            .expect("settings.yaml compiles");
        assert_eq!(loaded.program.settings.delivery, Delivery::default());
    }

    /// docs/rules.md's example of the `delivery:` section shows the defaults.
    #[test]
    fn rules_reference_matches_the_constants() {
        let doc = include_str!("../docs/rules.md");
        let section = &doc[doc
            .find("## Delivery settings")
            .expect("docs/rules.md has a delivery settings section")..];
        let start = section.find("```yaml\n").expect("a YAML example") + "```yaml\n".len();
        let end = start + section[start..].find("```").expect("the example ends");
        expect(
            &yaml_delivery(&section[start..end], "docs/rules.md"),
            "docs/rules.md",
        );
    }

    /// Without a `delivery:` section a rule set gets the same defaults as every other user.
    #[test]
    fn every_reader_has_the_same_defaults() {
        let d = Delivery::default();
        let sink = crate::sfmc::sink::SinkConfig::default();
        assert_eq!(
            (sink.batch_rows, sink.batch_bytes, sink.linger),
            (d.batch_rows, d.batch_bytes, d.linger)
        );
        assert_eq!(
            (sink.lanes, sink.contact_cache, sink.contact_batch),
            (d.max_in_flight, d.contact_cache, d.contact_batch)
        );
        let client = crate::sfmc::ClientConfig::default();
        assert_eq!(
            client.requests_per_second.map(|n| n.get()),
            d.requests_per_second
        );
        assert_eq!(
            (client.max_in_flight, client.request_timeout),
            (d.max_in_flight, d.request_timeout)
        );
        let r = client.retry;
        assert_eq!(
            (r.max_attempts, r.max_elapsed, r.base_delay, r.max_delay),
            (
                d.retry_attempts,
                d.retry_within,
                d.retry_base_delay,
                d.retry_max_delay
            )
        );
        let files = [crate::rules::SourceFile {
            name: "events.yaml".into(),
            text: "identify: {}\n".into(),
        }];
        let loaded = crate::rules::compile_sources(&files, &crate::env::Env::empty(), 1)
            .expect("a rule set without settings compiles");
        assert_eq!(loaded.program.settings.delivery, d);
    }
}
