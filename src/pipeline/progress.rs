//! The progress line on a terminal: events/s, delivered, skipped, dead letters.

use super::Outcomes;
use crate::sfmc::sink::Counters;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// While SFMC is unavailable the line says so: since when, why, next probe.
pub(crate) fn draw(
    started: Instant,
    events: u64,
    outcomes: &Outcomes,
    c: &Counters,
    client: &crate::sfmc::SfmcClient,
) {
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r\x1b[2K{} events ({:.0}/s), {} delivered, {} skipped, {} dead letters",
        events,
        events as f64 / secs,
        c.delivered.load(Ordering::Relaxed),
        outcomes.skipped.total(),
        c.dead_lettered.load(Ordering::Relaxed)
    );
    let health = client.health();
    if health.is_degraded() {
        let _ = write!(err, "; {}", health.summary());
    }
    let _ = err.flush();
}

/// Clear the progress line.
pub(crate) fn clear() {
    eprint!("\r\x1b[2K");
}
