//! Bad-row isolation: SFMC rejects a rowset from its first bad row on and does not say
//! which row was bad, so a rejected batch is split until each bad row is alone; the good
//! rows land and only the bad ones are dead-lettered (upserts are idempotent: resending
//! is safe).

use super::Shared;
use super::lanes::{Row, rowset_body};
use super::send::{body_value, failure_from};
use crate::sfmc::client::SendError;
use bytes::Bytes;
use reqwest::Method;
use serde_json::json;
use std::sync::atomic::Ordering;

/// Send rows as one rowset; on a permanent 400, split and resend the halves until each
/// bad row is alone (SFMC saves rows before the first bad one, rejects every row after,
/// and does not say which was bad; upserts are idempotent, so resending is safe).
pub(super) async fn send_rows(shared: &Shared, path: &str, rows: Vec<Row>) {
    let mut work: Vec<Vec<Row>> = vec![rows];
    while let Some(mut chunk) = work.pop() {
        if chunk.is_empty() {
            continue;
        }
        let bytes = Bytes::from(rowset_body(&chunk));
        match shared.client.send(Method::POST, path, bytes).await {
            Ok(_) => {
                for row in chunk {
                    for t in row.tickets {
                        t.done(Ok(()));
                    }
                }
            }
            Err(SendError::Permanent {
                status: 400,
                errorcode,
                ..
            }) if chunk.len() > 1 && errorcode != Some(10001) => {
                shared.counters.splits.fetch_add(1, Ordering::Relaxed);
                let second = chunk.split_off(chunk.len() / 2);
                work.push(second);
                work.push(chunk);
            }
            Err(e) => {
                for row in chunk {
                    let call = json!({"method": "POST", "path": path, "body": [body_value(&row.json.json)]});
                    let f = failure_from(&e, call);
                    for t in row.tickets {
                        t.done(Err(f.clone()));
                    }
                }
            }
        }
    }
}
