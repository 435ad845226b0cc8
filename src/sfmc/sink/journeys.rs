//! The journey lanes: Journey Builder API events batched per event definition into
//! `POST /interaction/v1/async/events` calls of up to 100 members (what arrived within
//! `linger`), one call at a time per definition; each member's result (matched by
//! position) ends its event: queued = delivered, refused = a data dead letter with SFMC's
//! message.

use super::Shared;
use super::send::failure_from;
use super::ticket::Ticket;
use crate::action::{ASYNC_EVENTS_PATH, Fields};
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
    let members: Vec<(&str, &Fields)> = batch
        .iter()
        .map(|m| (m.contact_key.as_str(), &m.data))
        .collect();
    let call = |m: &JourneyMsg| {
        json!({"method": "POST", "path": ASYNC_EVENTS_PATH, "body": {
            "eventDefinitionKey": definition,
            "members": [{"contactKey": m.contact_key, "data": m.data}]}})
    };
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
        .send(Method::POST, ASYNC_EVENTS_PATH, body)
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
                    })
                })
                .collect(),
        },
        Err(e) => batch.iter().map(|m| Some(failure_from(e, call(m)))).collect(),
    };
    drop(members);
    for (m, outcome) in batch.into_iter().zip(outcomes) {
        m.ticket.done(outcome.map_or(Ok(()), Err));
    }
}
