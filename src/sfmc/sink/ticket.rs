//! Tickets: one per event in flight, counting its outstanding calls; finalised exactly
//! once (delivered, or dead-lettered with the first failure), then its completion runs.

use super::Shared;
use crate::sfmc::deadletter::Failure;
use crate::source::Origin;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// How an event ended, reported to a [`Completion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    DeadLettered,
}

/// Called once when an event's last action finished (after any dead letter was written).
/// The HTTP ingest uses it to mark spool progress only once SFMC accepted the event.
pub type Completion = Box<dyn FnOnce(Delivery) + Send + Sync>;

/// One input event in flight.
pub struct Ticket {
    pub(super) completion: Mutex<Option<Completion>>,
    pub(super) origin: Origin,
    pub(super) version: Arc<str>,
    pub(super) event: EventRef,
    pub(super) remaining: AtomicUsize,
    pub(super) failure: Mutex<Option<Failure>>,
    pub(super) shared: Arc<Shared>,
    /// One of its Journey entries was entered (see [`Failure::journey_sent`]).
    pub(super) journey_sent: std::sync::atomic::AtomicBool,
}

impl Ticket {
    /// [`Ticket::done`] for one of its Journey entries: when it was entered, a dead letter
    /// of the event says so, and `replay` does not enter it again.
    pub(super) fn journey_done(self: &Arc<Self>, result: Result<(), Failure>) {
        if result.is_ok() {
            self.journey_sent.store(true, Ordering::Release);
        }
        self.done(result);
    }

    pub(super) fn done(self: &Arc<Self>, result: Result<(), Failure>) {
        if let Err(f) = result {
            let mut g = self.failure.lock().unwrap_or_else(|e| e.into_inner());
            if g.is_none() {
                *g = Some(f);
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let failure = self
                .failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let how = match failure {
                None => {
                    self.shared
                        .counters
                        .delivered
                        .fetch_add(1, Ordering::Relaxed);
                    Delivery::Delivered
                }
                Some(mut f) => {
                    f.journey_sent = self.journey_sent.load(Ordering::Acquire);
                    self.shared.dead_letter(
                        &self.origin,
                        &self.version,
                        &self.event.to_value(),
                        &f,
                    );
                    Delivery::DeadLettered
                }
            };
            let completion = self
                .completion
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(c) = completion {
                c(how);
            }
        }
    }
}

/// The event a ticket stands for, kept to write it to the dead-letter file if its
/// delivery fails. `Json` keeps the input text (one allocation, freed by whichever thread
/// finishes the event) instead of the parsed tree; it is parsed again only for a dead letter.
#[derive(Debug, Clone)]
pub enum EventRef {
    Value(Arc<Value>),
    /// The JSON text of the event.
    Json(String),
}

impl EventRef {
    /// The event as JSON (text that does not parse is kept as a string).
    pub fn to_value(&self) -> Value {
        match self {
            EventRef::Value(v) => (**v).clone(),
            EventRef::Json(s) => {
                serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
            }
        }
    }
}

impl From<Arc<Value>> for EventRef {
    fn from(v: Arc<Value>) -> Self {
        EventRef::Value(v)
    }
}

impl From<Value> for EventRef {
    fn from(v: Value) -> Self {
        EventRef::Value(Arc::new(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_events_are_parsed_back_for_dead_letters() {
        assert_eq!(
            EventRef::Json(r#"{"type":"track"}"#.into()).to_value(),
            json!({"type": "track"})
        );
        assert_eq!(EventRef::Json("nope".into()).to_value(), json!("nope"));
    }
}
