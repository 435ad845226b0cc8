//! One SFMC call from the sink, and a failed call as a dead-letter [`Failure`].

use super::Shared;
use crate::sfmc::client::SendError;
use crate::sfmc::deadletter::Failure;
use bytes::Bytes;
use reqwest::Method;
use serde_json::{Value, json};

pub(super) fn failure_from(e: &SendError, call: Value) -> Failure {
    let (status, errorcode, attempts) = match e {
        SendError::Permanent {
            status,
            errorcode,
            attempts,
            ..
        } => (Some(*status), *errorcode, Some(*attempts)),
        SendError::Exhausted { attempts, .. } => (None, None, Some(*attempts)),
        SendError::Auth(_) => (Some(401), None, None),
    };
    Failure {
        reason: e.to_string(),
        call: Some(call),
        status,
        errorcode,
        attempts,
    }
}

/// The body as JSON for a dead-letter record (text that does not parse is kept as a string).
pub(super) fn body_value(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

pub(super) async fn send_one(shared: &Shared, path: &str, body: Bytes) -> Result<(), Failure> {
    match shared.client.send(Method::POST, path, body.clone()).await {
        Ok(_) => Ok(()),
        Err(e) => Err(failure_from(
            &e,
            json!({"method": "POST", "path": path, "body": body_value(&body)}),
        )),
    }
}
