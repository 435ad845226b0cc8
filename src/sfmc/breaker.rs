//! The client's circuit breaker: while SFMC is unavailable, requests wait instead of failing.
//!
//! One *global* circuit covers SFMC as a whole (throttling, 50200 blocks, rejected
//! credentials, 5xx storms, timeouts, connection errors), and one circuit per endpoint
//! pattern covers a missing permission (a 401 on a fresh token, a 403): rows keep flowing
//! while Journey events wait for the `journeys_execute` permission.
//!
//! A circuit is *closed* (requests go), *open* (requests wait until the next probe time)
//! or *half-open* (one probe request is in flight; the others wait for its outcome). A
//! probe that SFMC answers (any answer that is not an infrastructure failure) closes the
//! circuit; a failed probe re-opens it with a doubled delay (capped). A 50200 holds it
//! open for [`BreakerConfig::blocked_pause`] between probes; a 429's `Retry-After` is
//! honoured. Idempotent requests are preferred as probes: a Journey event only probes when
//! no idempotent request is waiting (a probe into a 5xx makes it uncertain). For the same
//! reason, while the breaker is still closed but the last request failed (an
//! infrastructure failure, no answer since), a non-idempotent request waits `probe_base`
//! after that failure: in that time other requests either get an answer (it goes) or fail
//! and open the breaker (it waits for a probe), instead of meeting the start of a storm.
//!
//! [`Breaker::stop`] (the client's give-up) makes every waiting and later request return at
//! once; `give_up_after` does it when the global circuit has been open that long.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Breaker tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive infrastructure failures (over all requests) that open the breaker
    /// (default 5). Throttling, 50200, token failures and missing permissions open it at
    /// once, and so does one request failing `retry.max_attempts` times in a row.
    pub open_after: u32,
    /// Delay before the first probe once open (default 1 s); doubles per failed probe.
    pub probe_base: Duration,
    /// Cap of the probe delay (default 60 s).
    pub probe_max: Duration,
    /// Pause between probes while SFMC answers 50200 "temporarily blocked" (default 2 min).
    pub blocked_pause: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            open_after: 5,
            probe_base: Duration::from_secs(1),
            probe_max: Duration::from_secs(60),
            blocked_pause: Duration::from_secs(120),
        }
    }
}

impl BreakerConfig {
    /// Delay before probe number `failed + 1` (equal jitter: between half and all of
    /// `min(probe_max, probe_base * 2^failed)`).
    pub fn probe_delay(&self, failed: u32) -> Duration {
        let ceiling = self
            .probe_base
            .checked_mul(1u32 << failed.min(30))
            .unwrap_or(self.probe_max)
            .min(self.probe_max);
        ceiling / 2 + (ceiling / 2).mul_f64(fastrand::f64())
    }
}

/// State of a circuit (or of the client as a whole in [`Health`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// 0 closed, 1 half-open, 2 open (for a Prometheus gauge).
    pub fn gauge(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// What the client knows about SFMC's availability ([`crate::sfmc::SfmcClient::health`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// Closed when everything flows; otherwise the state of the circuit holding requests
    /// back (the global one first, else the first endpoint lacking a permission).
    pub state: BreakerState,
    /// When that circuit opened.
    pub open_since: Option<SystemTime>,
    /// Why (one line, never a secret), e.g. `token endpoint: HTTP 401 invalid_client: …`.
    pub reason: Option<String>,
    /// When the next probe may be sent (`None` while closed or a probe is in flight).
    pub next_probe_at: Option<SystemTime>,
    /// The last time SFMC answered a request with something other than an infrastructure
    /// failure (a success, a data error, a 401 on an old token), token requests included.
    pub last_answer: Option<SystemTime>,
    /// Requests waiting for a circuit to close.
    pub waiting: u64,
    /// Endpoint patterns held back for a missing permission, with the reason.
    pub missing_permissions: Vec<(String, String)>,
    /// When the client will give up if SFMC stays unavailable (`give_up_after`).
    pub give_up_at: Option<SystemTime>,
    /// The client gave up: every request not yet sent returns `SendError::Undelivered`.
    pub given_up: bool,
}

impl Health {
    /// Whether anything is held back (for `/healthz`: `degraded`).
    pub fn is_degraded(&self) -> bool {
        self.state != BreakerState::Closed || self.given_up
    }

    /// Seconds since SFMC last answered (`None` if it never did).
    pub fn since_last_answer(&self) -> Option<Duration> {
        self.last_answer
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
    }

    /// Time until the next probe (zero if due).
    pub fn next_probe_in(&self) -> Option<Duration> {
        self.next_probe_at
            .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default())
    }

    /// One line for a progress display or a log: `SFMC unavailable since 12:00:01 UTC
    /// (reason); next probe in 8 s`.
    pub fn summary(&self) -> String {
        if self.given_up {
            return format!(
                "gave up waiting for SFMC{}",
                self.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            );
        }
        if self.state == BreakerState::Closed {
            return "SFMC available".into();
        }
        let mut s = String::from("SFMC unavailable");
        if let Some(since) = self.open_since {
            let since: chrono::DateTime<chrono::Utc> = since.into();
            s.push_str(&format!(" since {}", since.format("%H:%M:%S UTC")));
        }
        if let Some(r) = &self.reason {
            s.push_str(&format!(" ({r})"));
        }
        match (self.state, self.next_probe_in()) {
            (BreakerState::HalfOpen, _) => s.push_str("; probing"),
            (_, Some(d)) => s.push_str(&format!("; next probe in {} s", d.as_secs().max(1))),
            _ => {}
        }
        s
    }

    /// The health as JSON (times as RFC 3339 and seconds), for `/healthz` and the logs.
    pub fn to_json(&self) -> Value {
        let time = |t: Option<SystemTime>| {
            t.map(|t| {
                chrono::DateTime::<chrono::Utc>::from(t)
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            })
        };
        json!({
            "state": self.state.as_str(),
            "open_since": time(self.open_since),
            "reason": self.reason,
            "next_probe_at": time(self.next_probe_at),
            "last_answer": time(self.last_answer),
            "seconds_since_last_answer": self.since_last_answer().map(|d| d.as_secs_f64()),
            "waiting": self.waiting,
            "missing_permissions": self.missing_permissions.iter()
                .map(|(e, r)| json!({"endpoint": e, "reason": r}))
                .collect::<Vec<_>>(),
            "give_up_at": time(self.give_up_at),
            "given_up": self.given_up,
        })
    }
}

/// The request may go, possibly as the probe of a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    Go,
    /// Probe of circuit `n` (0 = global, 1 + endpoint index = that endpoint's permission),
    /// whose last failure was at `last_failure` (a permission probe needs a token fetched
    /// after it).
    Probe {
        circuit: usize,
        last_failure: Instant,
    },
}

/// The caller gave up (`SfmcClient::give_up` or `give_up_after`).
#[derive(Debug, Clone)]
pub(crate) struct Stopped(pub String);

#[derive(Debug)]
struct Open {
    since: Instant,
    last_failure: Instant,
    reason: String,
    next_probe: Instant,
    failed_probes: u32,
}

#[derive(Debug, Default)]
struct Circuit {
    open: Option<Open>,
    probe: bool,
    idem_waiters: usize,
}

#[derive(Debug)]
struct State {
    /// 0 = global, then one per endpoint pattern.
    circuits: Vec<Circuit>,
    consecutive: u32,
    /// When the last infrastructure failure happened (meaningful while `consecutive > 0`).
    last_failure: Option<Instant>,
    last_answer: Option<Instant>,
    opens: u64,
    waiting: usize,
    give_up_after: Option<Duration>,
    stopped: Option<String>,
}

/// How a failed attempt affects the breaker.
#[derive(Debug, Clone)]
pub(crate) struct Trip {
    pub reason: String,
    /// Open now, whatever the failure count.
    pub now: bool,
    /// When to probe (instead of the backoff).
    pub delay: Option<Duration>,
}

pub(crate) struct Breaker {
    config: BreakerConfig,
    names: &'static [&'static str],
    state: Mutex<State>,
    /// State changes waiters care about (a circuit closed, a probe ended, give-up);
    /// not every answer, so a closed breaker wakes nobody.
    changed: Notify,
    /// Only on give-up (requests waiting for a permit or the rate limiter listen).
    stop_notify: Notify,
    stopped: AtomicBool,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn to_system(at: Instant) -> SystemTime {
    let now = Instant::now();
    if at >= now {
        SystemTime::now() + (at - now)
    } else {
        SystemTime::now() - (now - at)
    }
}

impl Breaker {
    /// `names`: the endpoint patterns (one permission circuit each).
    pub fn new(
        config: BreakerConfig,
        names: &'static [&'static str],
        give_up_after: Option<Duration>,
    ) -> Self {
        Breaker {
            config,
            names,
            state: Mutex::new(State {
                circuits: (0..=names.len()).map(|_| Circuit::default()).collect(),
                consecutive: 0,
                last_failure: None,
                last_answer: None,
                opens: 0,
                waiting: 0,
                give_up_after,
                stopped: None,
            }),
            changed: Notify::new(),
            stop_notify: Notify::new(),
            stopped: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn circuit_name(&self, c: usize) -> &'static str {
        if c == 0 { "SFMC" } else { self.names[c - 1] }
    }

    /// Times the global circuit opened.
    pub fn opens(&self) -> u64 {
        self.lock().opens
    }

    pub fn set_give_up_after(&self, after: Option<Duration>) {
        self.lock().give_up_after = after;
        self.changed.notify_waiters();
    }

    /// Give up: every waiting and later [`Breaker::pass`] returns [`Stopped`].
    pub fn stop(&self, why: String) {
        {
            let mut s = self.lock();
            if s.stopped.is_some() {
                return;
            }
            tracing::warn!("SFMC delivery given up: {why}");
            s.stopped = Some(why);
        }
        self.stopped.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
        self.stop_notify.notify_waiters();
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    pub fn stopped_reason(&self) -> Option<String> {
        self.lock().stopped.clone()
    }

    /// Resolves once the client gave up.
    pub async fn until_stopped(&self) -> Stopped {
        loop {
            let notified = self.stop_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_stopped() {
                return Stopped(self.stopped_reason().unwrap_or_default());
            }
            notified.await;
        }
    }

    /// Wait until a request to `endpoint` may be sent. Err once the client gave up.
    pub async fn pass(&self, endpoint: usize, idempotent: bool) -> Result<Pass, Stopped> {
        let mut registered: Option<usize> = None;
        let result = loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !idempotent && let Some(at) = self.held_until(endpoint) {
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
                continue;
            }
            let deadline = {
                let mut s = self.lock();
                if let Some(why) = &s.stopped {
                    break Err(Stopped(why.clone()));
                }
                let blocking = if s.circuits[0].open.is_some() {
                    Some(0)
                } else if s.circuits[1 + endpoint].open.is_some() {
                    Some(1 + endpoint)
                } else {
                    None
                };
                let Some(c) = blocking else {
                    break Ok(Pass::Go);
                };
                if registered.is_some_and(|r| r != c) {
                    unregister(&mut s, registered.take(), idempotent);
                }
                let now = Instant::now();
                let (next_probe, since, last_failure) = {
                    let o = s.circuits[c]
                        .open
                        .as_ref()
                        .expect("blocking circuit is open");
                    (o.next_probe, o.since, o.last_failure)
                };
                // Give up after `give_up_after` of unavailability (of SFMC, or of an
                // endpoint for a missing permission).
                if let Some(after) = s.give_up_after
                    && now >= since + after
                {
                    let reason = s.circuits[c]
                        .open
                        .as_ref()
                        .map(|o| o.reason.clone())
                        .unwrap_or_default();
                    drop(s);
                    let what = if c == 0 {
                        "SFMC unavailable".to_string()
                    } else {
                        format!("SFMC {} requests refused", self.names[c - 1])
                    };
                    self.stop(format!(
                        "{what} for more than {} ({reason})",
                        humanize(after)
                    ));
                    continue;
                }
                let circuit = &s.circuits[c];
                let eligible = idempotent || circuit.idem_waiters == 0;
                if !circuit.probe && now >= next_probe && eligible {
                    unregister(&mut s, registered.take(), idempotent);
                    s.circuits[c].probe = true;
                    break Ok(Pass::Probe {
                        circuit: c,
                        last_failure,
                    });
                }
                if registered.is_none() {
                    registered = Some(c);
                    s.waiting += 1;
                    if idempotent {
                        s.circuits[c].idem_waiters += 1;
                    }
                }
                let mut deadline = if s.circuits[c].probe || now >= next_probe {
                    None
                } else {
                    Some(next_probe)
                };
                if let Some(after) = s.give_up_after {
                    let at = since + after;
                    deadline = Some(deadline.map_or(at, |d| d.min(at)));
                }
                deadline
            };
            match deadline {
                Some(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        };
        if registered.is_some() {
            let mut s = self.lock();
            unregister(&mut s, registered, idempotent);
            drop(s);
            // A waiter leaving can make a non-idempotent waiter eligible to probe.
            self.changed.notify_waiters();
        }
        result
    }

    /// Whether a request admitted with `pass` may still go (nothing opened since, and for
    /// a non-idempotent one, no failure it should wait out: see [`Breaker::held_until`]).
    pub fn still_open_for(&self, endpoint: usize, pass: Pass, idempotent: bool) -> bool {
        if !idempotent && pass == Pass::Go && self.held_until(endpoint).is_some() {
            return false;
        }
        let s = self.lock();
        if s.stopped.is_some() {
            return false;
        }
        match pass {
            Pass::Probe { .. } => true,
            Pass::Go => s.circuits[0].open.is_none() && s.circuits[1 + endpoint].open.is_none(),
        }
    }

    /// Until when a non-idempotent request to `endpoint` waits although its circuits are
    /// closed: `probe_base` after the last infrastructure failure, while nothing answered
    /// since. `None`: it may go (or an open circuit decides).
    fn held_until(&self, endpoint: usize) -> Option<Instant> {
        let s = self.lock();
        if s.consecutive == 0
            || s.stopped.is_some()
            || s.circuits[0].open.is_some()
            || s.circuits[1 + endpoint].open.is_some()
        {
            return None;
        }
        let at = s.last_failure? + self.config.probe_base;
        (Instant::now() < at).then_some(at)
    }

    /// A probe ended without an outcome (the request was cancelled or not sent).
    pub fn release(&self, pass: Pass) {
        if let Pass::Probe { circuit, .. } = pass {
            self.lock().circuits[circuit].probe = false;
            self.changed.notify_waiters();
        }
    }

    /// SFMC answered (success, data error, 401 on an old token): resets the failure count;
    /// a probe closes its circuit.
    pub fn answered(&self, pass: Pass) {
        let mut s = self.lock();
        let held = s.consecutive > 0;
        s.consecutive = 0;
        s.last_answer = Some(Instant::now());
        // A closed breaker has no waiters to wake, but for non-idempotent requests held
        // after a failure.
        let Pass::Probe { circuit, .. } = pass else {
            if held {
                drop(s);
                self.changed.notify_waiters();
            }
            return;
        };
        s.circuits[circuit].probe = false;
        if let Some(o) = s.circuits[circuit].open.take() {
            let name = self.circuit_name(circuit);
            tracing::warn!(
                "{name}: answering again after {} ({}); delivery resumed",
                humanize(o.since.elapsed()),
                o.reason
            );
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// A token was obtained: SFMC's token endpoint answered.
    pub fn token_answered(&self) {
        self.lock().last_answer = Some(Instant::now());
    }

    /// An infrastructure failure. Returns whether the global circuit is open afterwards.
    pub fn failed(&self, pass: Pass, trip: Trip) -> bool {
        let mut s = self.lock();
        s.consecutive = s.consecutive.saturating_add(1);
        let now = Instant::now();
        s.last_failure = Some(now);
        let probe_of_global = matches!(pass, Pass::Probe { circuit: 0, .. });
        if let Pass::Probe { circuit, .. } = pass {
            s.circuits[circuit].probe = false;
            if circuit != 0 {
                // The permission probe met an outage: that circuit stays as it is, and the
                // failure counts against the global one below.
                if let Some(o) = s.circuits[circuit].open.as_mut() {
                    o.next_probe = now + self.config.probe_delay(o.failed_probes);
                    o.last_failure = now;
                }
            }
        }
        let open_after = self.config.open_after.max(1);
        let config = &self.config;
        let consecutive = s.consecutive;
        let global = &mut s.circuits[0];
        let mut opened = false;
        match global.open.as_mut() {
            Some(o) if probe_of_global => {
                o.failed_probes = o.failed_probes.saturating_add(1);
                o.last_failure = now;
                o.next_probe = now
                    + trip
                        .delay
                        .unwrap_or_else(|| config.probe_delay(o.failed_probes));
                o.reason = trip.reason.clone();
            }
            Some(o) => {
                // A request that was in flight when the circuit opened.
                if let Some(d) = trip.delay
                    && now + d > o.next_probe
                {
                    o.next_probe = now + d;
                    o.reason = trip.reason.clone();
                }
            }
            None if trip.now || consecutive >= open_after => {
                let delay = trip.delay.unwrap_or_else(|| config.probe_delay(0));
                global.open = Some(Open {
                    since: now,
                    last_failure: now,
                    reason: trip.reason.clone(),
                    next_probe: now + delay,
                    failed_probes: 0,
                });
                opened = true;
            }
            None => {}
        }
        let open = s.circuits[0].open.is_some();
        if opened {
            s.opens += 1;
            let delay = s.circuits[0]
                .open
                .as_ref()
                .map(|o| o.next_probe - now)
                .unwrap_or_default();
            tracing::warn!(
                "SFMC unavailable: {}; delivery paused, next probe in {}",
                trip.reason,
                humanize(delay)
            );
        } else {
            tracing::debug!(reason = %trip.reason, consecutive, "SFMC infrastructure failure");
        }
        drop(s);
        if matches!(pass, Pass::Probe { .. }) {
            // The probe slot is free (waiters sleep until the next probe time themselves).
            self.changed.notify_waiters();
        }
        open
    }

    /// The token lacks the permission for `endpoint` (401 on a fresh token, 403): hold that
    /// endpoint's requests back. SFMC did answer, so a global probe closes the global circuit.
    pub fn permission_denied(&self, pass: Pass, endpoint: usize, reason: String) {
        let mut s = self.lock();
        s.consecutive = 0;
        let now = Instant::now();
        s.last_answer = Some(now);
        let c = 1 + endpoint;
        if let Pass::Probe { circuit, .. } = pass {
            s.circuits[circuit].probe = false;
            if circuit == 0 {
                s.circuits[0].open = None;
            }
        }
        let config = &self.config;
        let circuit = &mut s.circuits[c];
        match circuit.open.as_mut() {
            Some(o) => {
                if matches!(pass, Pass::Probe { circuit, .. } if circuit == c) {
                    o.failed_probes = o.failed_probes.saturating_add(1);
                }
                o.next_probe = now + config.probe_delay(o.failed_probes);
                o.last_failure = now;
                o.reason = reason;
            }
            None => {
                let delay = config.probe_delay(0);
                tracing::error!(
                    "{reason}; {} requests wait (next try with a new token in {})",
                    self.names[endpoint],
                    humanize(delay)
                );
                circuit.open = Some(Open {
                    since: now,
                    last_failure: now,
                    reason,
                    next_probe: now + delay,
                    failed_probes: 0,
                });
            }
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// Probe now instead of at the planned time (e.g. new credentials were loaded).
    pub fn probe_now(&self) {
        let mut s = self.lock();
        let now = Instant::now();
        if let Some(o) = s.circuits[0].open.as_mut() {
            o.next_probe = o.next_probe.min(now);
        }
        drop(s);
        self.changed.notify_waiters();
    }

    pub fn health(&self) -> Health {
        let s = self.lock();
        let missing_permissions: Vec<(String, String)> = s.circuits[1..]
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                c.open
                    .as_ref()
                    .map(|o| (self.names[i].to_string(), o.reason.clone()))
            })
            .collect();
        let blocking = s
            .circuits
            .iter()
            .enumerate()
            .find(|(_, c)| c.open.is_some());
        let (state, open_since, reason, next_probe_at) = match blocking {
            None => (BreakerState::Closed, None, None, None),
            Some((_, c)) => {
                let o = c.open.as_ref().expect("found open");
                if c.probe {
                    (
                        BreakerState::HalfOpen,
                        Some(to_system(o.since)),
                        Some(o.reason.clone()),
                        None,
                    )
                } else {
                    (
                        BreakerState::Open,
                        Some(to_system(o.since)),
                        Some(o.reason.clone()),
                        Some(to_system(o.next_probe)),
                    )
                }
            }
        };
        let earliest = s
            .circuits
            .iter()
            .filter_map(|c| c.open.as_ref().map(|o| o.since))
            .min();
        let give_up_at = match (earliest, s.give_up_after) {
            (Some(since), Some(after)) if s.stopped.is_none() => Some(to_system(since + after)),
            _ => None,
        };
        Health {
            state,
            open_since,
            reason: s.stopped.clone().or(reason),
            next_probe_at,
            last_answer: s.last_answer.map(to_system),
            waiting: s.waiting as u64,
            missing_permissions,
            give_up_at,
            given_up: s.stopped.is_some(),
        }
    }
}

fn unregister(s: &mut State, registered: Option<usize>, idempotent: bool) {
    if let Some(c) = registered {
        s.waiting = s.waiting.saturating_sub(1);
        if idempotent {
            s.circuits[c].idem_waiters = s.circuits[c].idem_waiters.saturating_sub(1);
        }
    }
}

/// `1h 5m`, `3m 20s`, `12 s`, `350 ms`.
pub fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        let m = (secs % 3600) / 60;
        if m == 0 {
            format!("{}h", secs / 3600)
        } else {
            format!("{}h {m}m", secs / 3600)
        }
    } else if secs >= 60 {
        let s = secs % 60;
        if s == 0 {
            format!("{}m", secs / 60)
        } else {
            format!("{}m {s}s", secs / 60)
        }
    } else if secs >= 1 {
        format!("{:.0} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &["rowset", "events"];

    fn config() -> BreakerConfig {
        BreakerConfig {
            open_after: 3,
            probe_base: Duration::from_millis(40),
            probe_max: Duration::from_millis(200),
            blocked_pause: Duration::from_millis(300),
        }
    }

    fn trip(now: bool) -> Trip {
        Trip {
            reason: "HTTP 503".into(),
            now,
            delay: None,
        }
    }

    /// A 50200: open for ten minutes.
    fn blocked() -> Trip {
        Trip {
            reason: "50200".into(),
            now: true,
            delay: Some(Duration::from_secs(600)),
        }
    }

    #[test]
    fn probe_delay_doubles_and_is_capped() {
        let c = config();
        for (n, ceiling) in [(0, 40), (1, 80), (2, 160), (3, 200), (30, 200), (40, 200)] {
            let d = c.probe_delay(n);
            let ceiling = Duration::from_millis(ceiling);
            assert!(d >= ceiling / 2 && d <= ceiling, "{n}: {d:?}");
        }
    }

    #[tokio::test]
    async fn opens_after_consecutive_failures_and_an_answer_resets_the_count() {
        let b = Breaker::new(config(), NAMES, None);
        assert!(!b.failed(Pass::Go, trip(false)));
        assert!(!b.failed(Pass::Go, trip(false)));
        b.answered(Pass::Go);
        assert!(!b.failed(Pass::Go, trip(false)));
        assert!(!b.failed(Pass::Go, trip(false)));
        assert_eq!(b.health().state, BreakerState::Closed);
        assert!(b.failed(Pass::Go, trip(false)));
        let h = b.health();
        assert_eq!(h.state, BreakerState::Open);
        assert_eq!(h.reason.as_deref(), Some("HTTP 503"));
        assert!(h.is_degraded());
        assert_eq!(b.opens(), 1);
    }

    #[tokio::test]
    async fn one_probe_at_a_time_and_its_answer_lets_everyone_go() {
        let b = std::sync::Arc::new(Breaker::new(config(), NAMES, None));
        b.failed(Pass::Go, trip(true));
        let t0 = Instant::now();
        let first = b.pass(0, true).await.unwrap();
        assert!(matches!(first, Pass::Probe { circuit: 0, .. }), "{first:?}");
        assert!(t0.elapsed() >= Duration::from_millis(19));
        assert_eq!(b.health().state, BreakerState::HalfOpen);
        // A second request waits while the probe is out.
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.pass(0, true).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished());
        assert_eq!(b.health().waiting, 1);
        b.answered(first);
        assert_eq!(waiter.await.unwrap().unwrap(), Pass::Go);
        assert_eq!(b.health().state, BreakerState::Closed);
        assert_eq!(b.health().waiting, 0);
    }

    #[tokio::test]
    async fn a_failed_probe_reopens_with_a_longer_delay() {
        let b = Breaker::new(config(), NAMES, None);
        b.failed(Pass::Go, trip(true));
        let p = b.pass(0, true).await.unwrap();
        b.failed(p, trip(false));
        let h = b.health();
        assert_eq!(h.state, BreakerState::Open);
        // Second delay: 40-80 ms.
        let wait = h.next_probe_in().unwrap();
        assert!(wait >= Duration::from_millis(30), "{wait:?}");
    }

    #[tokio::test]
    async fn non_idempotent_requests_leave_the_probe_to_idempotent_ones() {
        let b = std::sync::Arc::new(Breaker::new(config(), NAMES, None));
        b.failed(Pass::Go, trip(true));
        let b1 = b.clone();
        let event = tokio::spawn(async move { b1.pass(1, false).await });
        let b2 = b.clone();
        let row = tokio::spawn(async move { b2.pass(0, true).await });
        let p = row.await.unwrap().unwrap();
        assert!(matches!(p, Pass::Probe { .. }));
        assert!(!event.is_finished());
        b.answered(p);
        assert_eq!(event.await.unwrap().unwrap(), Pass::Go);

        // Alone, a non-idempotent request does probe.
        b.failed(Pass::Go, trip(true));
        let p = b.pass(1, false).await.unwrap();
        assert!(matches!(p, Pass::Probe { .. }));
    }

    #[tokio::test]
    async fn blocked_pause_and_stop() {
        let b = std::sync::Arc::new(Breaker::new(config(), NAMES, None));
        b.failed(Pass::Go, blocked());
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.pass(0, true).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        b.stop("caller gave up".into());
        let err = waiter.await.unwrap().unwrap_err();
        assert_eq!(err.0, "caller gave up");
        assert!(b.pass(0, true).await.is_err());
        assert!(b.health().given_up);
    }

    #[tokio::test]
    async fn gives_up_after_the_bound() {
        let b = Breaker::new(config(), NAMES, Some(Duration::from_millis(150)));
        b.failed(Pass::Go, blocked());
        assert!(b.health().give_up_at.is_some());
        let t0 = Instant::now();
        let err = b.pass(0, true).await.unwrap_err();
        assert!(t0.elapsed() >= Duration::from_millis(140));
        assert!(err.0.contains("50200"), "{}", err.0);
    }

    #[tokio::test]
    async fn missing_permission_holds_one_endpoint_only() {
        let b = Breaker::new(config(), NAMES, None);
        b.permission_denied(Pass::Go, 1, "events: journeys_execute".into());
        assert_eq!(b.pass(0, true).await.unwrap(), Pass::Go);
        let h = b.health();
        assert_eq!(h.state, BreakerState::Open);
        assert_eq!(
            h.missing_permissions,
            [("events".to_string(), "events: journeys_execute".to_string())]
        );
        let p = b.pass(1, false).await.unwrap();
        assert!(matches!(p, Pass::Probe { circuit: 2, .. }), "{p:?}");
        b.answered(p);
        assert_eq!(b.health().state, BreakerState::Closed);
    }

    #[test]
    fn humanized_durations() {
        assert_eq!(humanize(Duration::from_secs(4 * 3600)), "4h");
        assert_eq!(humanize(Duration::from_secs(3900)), "1h 5m");
        assert_eq!(humanize(Duration::from_secs(200)), "3m 20s");
        assert_eq!(humanize(Duration::from_secs(12)), "12 s");
        assert_eq!(humanize(Duration::from_millis(350)), "350 ms");
    }
}
