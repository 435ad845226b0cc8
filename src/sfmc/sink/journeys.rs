//! The journey lanes: Journey Builder API events batched per event definition into
//! `POST /interaction/v1/async/events` calls of up to 100 members (what arrived within
//! `linger`), one call at a time per definition; each member's result (matched by
//! position) ends its event: queued = delivered, refused = a data dead letter with SFMC's
//! message.

use super::Shared;
use super::journal::{self, Stage};
use super::send::failure_from;
use super::ticket::Ticket;
use crate::action::{ASYNC_EVENTS_PATH, Fields};
use crate::sfmc::AttemptNote;
use crate::sfmc::bulk::{self, ASYNC_EVENTS_MAX_MEMBERS, MemberOutcome};
use crate::sfmc::deadletter::{Failure, Outcome};
use bytes::Bytes;
use reqwest::Method;
use serde_json::json;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// One journey entry for a lane.
pub(super) struct JourneyMsg {
    pub(super) contact_key: String,
    pub(super) data: Fields,
    pub(super) ticket: Arc<Ticket>,
}

/// The lane of one event definition.
pub(super) async fn journey_lane(
    shared: Arc<Shared>,
    definition: String,
    mut rx: mpsc::Receiver<JourneyMsg>,
) {
    let max = shared
        .config
        .journey_batch
        .clamp(1, ASYNC_EVENTS_MAX_MEMBERS);
    loop {
        let Some(first) = rx.recv().await else { break };
        let mut batch = vec![first];
        let deadline = Instant::now() + shared.config.linger;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => batch.push(m),
                Ok(None) | Err(_) => break,
            }
        }
        send_members(&shared, &definition, batch).await;
    }
}

async fn send_members(shared: &Shared, definition: &str, batch: Vec<JourneyMsg>) {
    let call = |m: &JourneyMsg| {
        json!({"method": "POST", "path": ASYNC_EVENTS_PATH, "body": {
            "eventDefinitionKey": definition,
            "members": [{"contactKey": m.contact_key, "data": m.data}]}})
    };
    // Entries of records a durable source delivers again (see `journal`): what was sent
    // before a restart is not sent again.
    let mut keys: Vec<String> = Vec::new();
    let batch: Vec<JourneyMsg> = match &shared.journal {
        None => batch,
        Some(j) => batch
            .into_iter()
            .filter_map(|m| {
                let Some(key) = journal::key(&m.ticket.origin, definition, &m.contact_key)
                else {
                    return Some(m);
                };
                match j.stage(&key) {
                    None | Some(Stage::Unsent) => {
                        keys.push(key);
                        Some(m)
                    }
                    Some(Stage::Ended) => {
                        tracing::info!(
                            "journey entry of {:?} ({definition}) already sent before a restart: not sent again",
                            m.contact_key
                        );
                        m.ticket.journey_done(Ok(()));
                        None
                    }
                    Some(Stage::Sending) => {
                        let f = Failure::uncertain(
                            format!(
                                "the relay stopped while this journey entry of {:?} ({definition}) was being sent (a crash or kill before SFMC's answer was recorded), so SFMC may have entered it; it was not sent again",
                                m.contact_key
                            ),
                            call(&m),
                            None,
                        );
                        m.ticket.done(Err(f));
                        None
                    }
                }
            })
            .collect(),
    };
    if batch.is_empty() {
        return;
    }
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    // Recorded (on disk) right before the request goes out, after every wait: a kill while
    // it waited for the rate limiter leaves the entries unsent, not `uncertain`.
    let went_out = std::sync::atomic::AtomicBool::new(false);
    let on_send = |note: AttemptNote| {
        let Some(j) = &shared.journal else { return };
        match note {
            AttemptNote::Sending => {
                went_out.store(true, std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = j.record(&keys, Stage::Sending, true) {
                    tracing::error!(
                        "journey journal {}: {e}: sending anyway (after a crash now, these entries could be sent again)",
                        j.path().display()
                    );
                }
            }
            // Answered without processing (429, 401, ...): not sent after all.
            AttemptNote::NotProcessed => {
                went_out.store(false, std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = j.record(&keys, Stage::Unsent, false) {
                    tracing::error!("journey journal {}: {e}", j.path().display());
                }
            }
        }
    };
    let members: Vec<(&str, &Fields)> = batch
        .iter()
        .map(|m| (m.contact_key.as_str(), &m.data))
        .collect();
    let body = match bulk::async_events_body(definition, &members) {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            for m in batch {
                m.ticket.done(Err(Failure::rejected(e.to_string())));
            }
            return;
        }
    };
    let sent: Vec<&str> = members.iter().map(|(ck, _)| *ck).collect();
    let result = shared
        .client
        .send_noting(Method::POST, ASYNC_EVENTS_PATH, body, &on_send)
        .await;
    let outcomes: Vec<Option<Failure>> = match &result {
        Ok(resp) => match bulk::parse_async_events(&resp.body, &sent) {
            Ok(items) => items
                .into_iter()
                .zip(&batch)
                .map(|(o, m)| match o {
                    MemberOutcome::Queued { .. } => None,
                    MemberOutcome::Refused { errorcode, message } => Some(Failure::failed(
                        format!(
                            "SFMC refused the journey entry of {:?} ({definition}): {message}",
                            m.contact_key
                        ),
                        call(m),
                        Some(resp.status),
                        errorcode,
                        None,
                    )),
                })
                .collect(),
            // SFMC took the request but its answer does not say which member entered: the
            // outcome is unknown, and a journey entry must not be sent again blindly.
            Err(e) => batch
                .iter()
                .map(|m| {
                    Some(Failure {
                        reason: format!(
                            "journey entry outcome unknown (SFMC's answer not understood: {e}); check with GET /interaction/v1/async/events/status before sending it again"
                        ),
                        call: Some(call(m)),
                        status: Some(resp.status),
                        errorcode: None,
                        attempts: None,
                        outcome: Outcome::Uncertain,
                        journey_sent: false,
                    })
                })
                .collect(),
        },
        Err(e) => batch.iter().map(|m| Some(failure_from(e, call(m)))).collect(),
    };
    drop(members);
    // Ended (entered, refused, or uncertain and dead-lettered), if the request went out:
    // before the tickets end and the source acknowledges the records. Not synced: lost in a crash, the entries count
    // as `uncertain` after the restart, never as unsent.
    if let Some(j) = &shared.journal
        && went_out.load(std::sync::atomic::Ordering::Relaxed)
        && let Err(e) = j.record(&keys, Stage::Ended, false)
    {
        tracing::error!("journey journal {}: {e}", j.path().display());
    }
    for (m, outcome) in batch.into_iter().zip(outcomes) {
        m.ticket.journey_done(outcome.map_or(Ok(()), Err));
    }
}
