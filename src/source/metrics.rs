//! Ingest and delivery counters, rendered as Prometheus text for `GET /metrics`.

use crate::pipeline::Outcomes;
use crate::sfmc::ClientStats;
use crate::spool::SpoolStats;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Segment event types (anything else counts as `other`).
pub const TYPES: [&str; 7] = [
    "identify", "track", "page", "screen", "group", "alias", "other",
];

/// Index of an event type in [`TYPES`].
pub fn type_index(t: Option<&str>) -> usize {
    t.and_then(|t| TYPES[..6].iter().position(|x| *x == t))
        .unwrap_or(6)
}

#[derive(Default)]
pub struct PerType([AtomicU64; 7]);

impl PerType {
    pub fn add(&self, ty: usize, n: u64) {
        self.0[ty.min(6)].fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self, ty: usize) -> u64 {
        self.0[ty].load(Ordering::Relaxed)
    }
    pub fn total(&self) -> u64 {
        (0..7).map(|i| self.get(i)).sum()
    }
}

/// Why a request was refused: the `reason` label of `sfmc_relay_requests_refused_total`,
/// and the `code` of the error body (`{"success":false,"code":...,"message":...}`).
pub const REFUSALS: [&str; 8] = [
    "unauthorized",
    "too_large",
    "bad_request",
    "spool_full",
    "error",
    "origin_not_allowed",
    "not_found",
    "method_not_allowed",
];

/// Index of each reason in [`REFUSALS`].
pub mod refusal {
    pub const UNAUTHORIZED: usize = 0;
    pub const TOO_LARGE: usize = 1;
    pub const BAD_REQUEST: usize = 2;
    pub const SPOOL_FULL: usize = 3;
    pub const ERROR: usize = 4;
    pub const ORIGIN_NOT_ALLOWED: usize = 5;
    pub const NOT_FOUND: usize = 6;
    pub const METHOD_NOT_ALLOWED: usize = 7;
}

/// Why one event of an accepted batch was not spooled but dead-lettered at once (as
/// Segment's batch endpoint answers 200 and rejects just that event).
pub const EVENT_REJECTIONS: [&str; 2] = ["too_large", "too_many_in_batch"];

#[derive(Default)]
pub struct Metrics {
    pub received: PerType,
    /// Delivered / skipped / dead-lettered, by type, and skip reasons: the pipeline's.
    pub outcomes: Arc<Outcomes>,
    pub refused: [AtomicU64; REFUSALS.len()],
    /// Events of accepted batches dead-lettered by the ingest, by [`EVENT_REJECTIONS`].
    pub events_rejected: [AtomicU64; EVENT_REJECTIONS.len()],
    /// CORS preflights (`OPTIONS /v1/...`) answered 204 / refused.
    pub preflights_allowed: AtomicU64,
    pub preflights_refused: AtomicU64,
    /// analytics.js usage-metric posts (`POST /v1/m`): counted, not delivered.
    pub client_metric_posts: AtomicU64,
    /// `GET /v1/projects/{writeKey}/settings` answered (analytics.js's `cdnURL`).
    pub settings_served: AtomicU64,
    /// Events not spooled because their `messageId` was accepted lately (client retries).
    pub duplicates: AtomicU64,
    /// Failed rule reloads (incremented by the hot-reload hook; 0 with fixed rules).
    pub reload_failures: Arc<AtomicU64>,
}

impl Metrics {
    pub fn refuse(&self, reason: usize) {
        self.refused[reason].fetch_add(1, Ordering::Relaxed);
    }
    pub fn reject_event(&self, reason: usize) {
        self.events_rejected[reason].fetch_add(1, Ordering::Relaxed);
    }
}

fn per_type(out: &mut String, name: &str, help: &str, v: &PerType) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (i, t) in TYPES.iter().enumerate() {
        let _ = writeln!(out, "{name}{{type=\"{t}\"}} {}", v.get(i));
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition format (version 0.0.4).
pub fn render(
    m: &Metrics,
    client: &ClientStats,
    spool: &SpoolStats,
    rules_version: &str,
) -> String {
    let mut o = String::with_capacity(4096);
    per_type(
        &mut o,
        "sfmc_relay_events_received_total",
        "Events accepted by the HTTP ingest (written to the spool).",
        &m.received,
    );
    per_type(
        &mut o,
        "sfmc_relay_events_delivered_total",
        "Events whose SFMC calls all succeeded.",
        &m.outcomes.delivered,
    );
    per_type(
        &mut o,
        "sfmc_relay_events_skipped_total",
        "Events the rules skip (nothing to send).",
        &m.outcomes.skipped,
    );
    per_type(
        &mut o,
        "sfmc_relay_events_dead_lettered_total",
        "Events written to the dead-letter file (rejected by the rules or failed in SFMC).",
        &m.outcomes.dead_lettered,
    );
    let reasons = m.outcomes.skip_reasons();
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_events_skipped_by_reason_total Events the rules skip, by reason (the {} most frequent by name, the rest as \"other\").\n# TYPE sfmc_relay_events_skipped_by_reason_total counter",
        crate::pipeline::SKIP_REASONS_KEPT
    );
    for (reason, n) in reasons.top() {
        let _ = writeln!(
            o,
            "sfmc_relay_events_skipped_by_reason_total{{reason=\"{}\"}} {n}",
            escape(reason)
        );
    }
    if reasons.other() > 0 {
        let _ = writeln!(
            o,
            "sfmc_relay_events_skipped_by_reason_total{{reason=\"other\"}} {}",
            reasons.other()
        );
    }
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_requests_refused_total Ingest requests answered with an error, by reason.\n# TYPE sfmc_relay_requests_refused_total counter"
    );
    for (i, r) in REFUSALS.iter().enumerate() {
        let _ = writeln!(
            o,
            "sfmc_relay_requests_refused_total{{reason=\"{r}\"}} {}",
            m.refused[i].load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_ingest_events_rejected_total Events of accepted batches that the ingest dead-lettered instead of spooling (Segment's per-event limits), by reason.\n# TYPE sfmc_relay_ingest_events_rejected_total counter"
    );
    for (i, r) in EVENT_REJECTIONS.iter().enumerate() {
        let _ = writeln!(
            o,
            "sfmc_relay_ingest_events_rejected_total{{reason=\"{r}\"}} {}",
            m.events_rejected[i].load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_events_duplicate_total Events answered 200 but not spooled again: their messageId was accepted lately (a client retrying a request whose answer it lost).\n# TYPE sfmc_relay_events_duplicate_total counter\nsfmc_relay_events_duplicate_total {}",
        m.duplicates.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_cors_preflights_total CORS preflight requests (OPTIONS) from browsers, by result (refused: origin not in --cors-origins).\n# TYPE sfmc_relay_cors_preflights_total counter\nsfmc_relay_cors_preflights_total{{result=\"allowed\"}} {}\nsfmc_relay_cors_preflights_total{{result=\"refused\"}} {}",
        m.preflights_allowed.load(Ordering::Relaxed),
        m.preflights_refused.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_client_metrics_posts_total Usage-metric posts from analytics.js (POST /v1/m): accepted and counted, not delivered.\n# TYPE sfmc_relay_client_metrics_posts_total counter\nsfmc_relay_client_metrics_posts_total {}",
        m.client_metric_posts.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_browser_settings_served_total analytics.js settings answered (GET /v1/projects/{{writeKey}}/settings).\n# TYPE sfmc_relay_browser_settings_served_total counter\nsfmc_relay_browser_settings_served_total {}",
        m.settings_served.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_sfmc_requests_total HTTP requests to SFMC (retries included) by endpoint.\n# TYPE sfmc_relay_sfmc_requests_total counter"
    );
    for (e, n) in &client.requests_per_endpoint {
        let _ = writeln!(
            o,
            "sfmc_relay_sfmc_requests_total{{endpoint=\"{}\"}} {n}",
            escape(e)
        );
    }
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_sfmc_responses_total SFMC REST responses by HTTP status.\n# TYPE sfmc_relay_sfmc_responses_total counter"
    );
    for (s, n) in &client.statuses {
        let _ = writeln!(o, "sfmc_relay_sfmc_responses_total{{status=\"{s}\"}} {n}");
    }
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_sfmc_endpoint_responses_total SFMC REST responses by endpoint and HTTP status.\n# TYPE sfmc_relay_sfmc_endpoint_responses_total counter"
    );
    for (e, by_status) in &client.responses {
        for (s, n) in by_status {
            let _ = writeln!(
                o,
                "sfmc_relay_sfmc_endpoint_responses_total{{endpoint=\"{}\",status=\"{s}\"}} {n}",
                escape(e)
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_sfmc_endpoint_retries_total SFMC REST retries by endpoint.\n# TYPE sfmc_relay_sfmc_endpoint_retries_total counter"
    );
    for (e, n) in &client.retries_per_endpoint {
        let _ = writeln!(
            o,
            "sfmc_relay_sfmc_endpoint_retries_total{{endpoint=\"{}\"}} {n}",
            escape(e)
        );
    }
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_sfmc_retries_total SFMC REST attempts beyond the first of each call.\n# TYPE sfmc_relay_sfmc_retries_total counter\nsfmc_relay_sfmc_retries_total {}",
        client.retries
    );
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_sfmc_token_requests_total OAuth token requests.\n# TYPE sfmc_relay_sfmc_token_requests_total counter\nsfmc_relay_sfmc_token_requests_total {}",
        client.token_requests
    );
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_queue_depth Events in the spool not yet delivered or dead-lettered.\n# TYPE sfmc_relay_queue_depth gauge\nsfmc_relay_queue_depth {}",
        spool.pending
    );
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_spool_bytes Bytes of live spool segment files.\n# TYPE sfmc_relay_spool_bytes gauge\nsfmc_relay_spool_bytes {}",
        spool.bytes
    );
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_spool_max_bytes The spool's size bound (--spool-max-bytes); past it ingest answers 503.\n# TYPE sfmc_relay_spool_max_bytes gauge\nsfmc_relay_spool_max_bytes {}",
        spool.max_bytes
    );
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_spool_segments Live spool segment files.\n# TYPE sfmc_relay_spool_segments gauge\nsfmc_relay_spool_segments {}",
        spool.segments
    );
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_rules_info The rule set in use (version label).\n# TYPE sfmc_relay_rules_info gauge\nsfmc_relay_rules_info{{version=\"{}\"}} 1",
        escape(rules_version)
    );
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_rules_reload_failures_total Rule reloads that failed (the previous rules stay in use).\n# TYPE sfmc_relay_rules_reload_failures_total counter\nsfmc_relay_rules_reload_failures_total {}",
        m.reload_failures.load(Ordering::Relaxed)
    );
    o
}

/// SFMC's availability (the client's circuit breaker) and failures by class.
pub fn render_health(o: &mut String, h: &crate::sfmc::breaker::Health, client: &ClientStats) {
    let gauge = |o: &mut String, name: &str, help: &str, v: f64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    gauge(
        o,
        "sfmc_relay_sfmc_breaker_state",
        "SFMC circuit breaker: 0 closed (delivering), 1 half-open (probing), 2 open (SFMC unavailable: delivery paused).",
        f64::from(h.state.gauge()),
    );
    gauge(
        o,
        "sfmc_relay_sfmc_seconds_since_last_answer",
        "Seconds since SFMC last answered a request (-1: never).",
        h.since_last_answer().map_or(-1.0, |d| d.as_secs_f64()),
    );
    gauge(
        o,
        "sfmc_relay_sfmc_requests_waiting",
        "Requests waiting for SFMC to be available again.",
        h.waiting as f64,
    );
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_sfmc_failures_total SFMC request failures by class (data, uncertain, infrastructure).\n# TYPE sfmc_relay_sfmc_failures_total counter"
    );
    for (class, n) in &client.failures {
        let _ = writeln!(
            o,
            "sfmc_relay_sfmc_failures_total{{class=\"{}\"}} {n}",
            escape(class)
        );
    }
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_sfmc_infrastructure_failures_total SFMC infrastructure failures by kind (never dead-lettered: delivery waits).\n# TYPE sfmc_relay_sfmc_infrastructure_failures_total counter"
    );
    for (kind, n) in &client.infrastructure {
        let _ = writeln!(
            o,
            "sfmc_relay_sfmc_infrastructure_failures_total{{kind=\"{}\"}} {n}",
            escape(kind)
        );
    }
    let _ = writeln!(
        o,
        "# HELP sfmc_relay_sfmc_breaker_opens_total Times the SFMC circuit breaker opened.\n# TYPE sfmc_relay_sfmc_breaker_opens_total counter\nsfmc_relay_sfmc_breaker_opens_total {}",
        client.breaker_opens
    );
}
