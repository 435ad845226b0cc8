//! Data extension rows through SFMC's asynchronous API, for backlogs: one
//! `PUT /data/v1/async/dataextensions/key:{key}/rows` of up to `async_batch_rows` rows,
//! then its status polled with backoff ("not found" right after the submit means not ready)
//! and, when it completed with errors, every results page read so exactly the failed rows
//! are dead-lettered with SFMC's message. Deadlocked rows ("Rerun the transaction.") and
//! rows of a request that failed as a whole are sent again as rowsets (upserts are
//! idempotent). The lane waits for the request to finish, so two requests touching one
//! primary key are never in flight at once (SFMC does not say in which order it applies
//! them).

use super::Shared;
use super::isolate::send_rows;
use super::lanes::Row;
use super::send::failure_from;
use crate::action::{async_results_path, async_rows_path, async_status_path, rowset_path};
use crate::sfmc::bulk::{
    self, AsyncRowsBody, AsyncStatus, PollSchedule, RESULTS_PAGE_SIZE, ResultsCollector,
    RowOutcomes,
};
use crate::sfmc::client::SendError;
use crate::sfmc::deadletter::Failure;
use bytes::Bytes;
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

/// How long a request may stay unfinished before its rows are sent again as rowsets.
const MAX_WAIT: Duration = Duration::from_secs(30 * 60);

/// Send `rows` of data extension `de` as one asynchronous request and finish their tickets.
pub(super) async fn send(shared: &Shared, de: &str, rows: Vec<Row>) {
    if rows.is_empty() {
        return;
    }
    let mut body = AsyncRowsBody::new();
    for r in &rows {
        let flat = std::str::from_utf8(&r.json.json)
            .map_err(|e| e.to_string())
            .and_then(|t| bulk::flatten_rowset_row(t).map_err(|e| e.to_string()));
        let pushed = flat.map(|f| body.push_json(&f).is_ok());
        if pushed != Ok(true) {
            // Cannot happen (rows are JSON, the batch is sized to fit); the rowset path
            // handles any row.
            return send_rows(shared, &rowset_path(de), rows).await;
        }
    }
    shared
        .counters
        .async_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = async_rows_path(de);
    let call = |r: &Row| {
        json!({"method": "PUT", "path": path, "body": {"items": [
            bulk::flatten_rowset_row(std::str::from_utf8(&r.json.json).unwrap_or("{}"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        ]}})
    };
    let submitted = shared
        .client
        .send(Method::PUT, &path, Bytes::from(body.finish()))
        .await;
    let request_id = match submitted {
        Ok(resp) => match bulk::parse_submitted(&resp.body) {
            Ok(s) => s.request_id,
            // Accepted without a request id: its outcome cannot be followed; upserts are
            // idempotent, so the rows go again as rowsets.
            Err(e) => {
                tracing::warn!("async rows for {de}: {e}; sending the rows as rowsets");
                return send_rows(shared, &rowset_path(de), rows).await;
            }
        },
        Err(SendError::Permanent { status, body, .. }) if (400..500).contains(&status) => {
            let reason = format!(
                "SFMC refused the asynchronous rows request: {}",
                bulk::refusal_message(&body)
            );
            for r in rows {
                let f = Failure::failed(reason.clone(), call(&r), Some(status), None, None);
                for t in r.tickets {
                    t.done(Err(f.clone()));
                }
            }
            return;
        }
        Err(e) => {
            for r in rows {
                let f = failure_from(&e, call(&r));
                for t in r.tickets {
                    t.done(Err(f.clone()));
                }
            }
            return;
        }
    };
    match wait(shared, &request_id).await {
        Some(AsyncStatus::Complete { has_errors: false }) => {
            for r in rows {
                for t in r.tickets {
                    t.done(Ok(()));
                }
            }
        }
        Some(AsyncStatus::Complete { has_errors: true }) => {
            let outcomes = match results(shared, &request_id, rows.len()).await {
                Some(o) => o,
                None => {
                    // Results unreadable: which rows failed is unknown; send them again.
                    return send_rows(shared, &rowset_path(de), rows).await;
                }
            };
            let mut failed: std::collections::HashMap<usize, String> =
                outcomes.failed.into_iter().collect();
            let deadlocked: std::collections::HashSet<usize> =
                outcomes.deadlocked.into_iter().collect();
            let mut again = Vec::new();
            for (i, r) in rows.into_iter().enumerate() {
                if let Some(message) = failed.remove(&i) {
                    let f = Failure::failed(
                        format!("SFMC refused the row: {message}"),
                        call(&r),
                        None,
                        None,
                        None,
                    );
                    for t in r.tickets {
                        t.done(Err(f.clone()));
                    }
                } else if deadlocked.contains(&i) {
                    again.push(r);
                } else {
                    for t in r.tickets {
                        t.done(Ok(()));
                    }
                }
            }
            if !again.is_empty() {
                send_rows(shared, &rowset_path(de), again).await;
            }
        }
        // Failed as a whole (SFMC does not say whether any row was saved), or never
        // finished: send the rows again as rowsets (idempotent).
        _ => send_rows(shared, &rowset_path(de), rows).await,
    }
}

/// Poll the status until the request finished (or [`MAX_WAIT`] passed: `None`).
async fn wait(shared: &Shared, request_id: &str) -> Option<AsyncStatus> {
    let schedule = PollSchedule::default();
    let started = tokio::time::Instant::now();
    let mut n = 0u32;
    let mut errors = 0u32;
    loop {
        tokio::time::sleep(schedule.delay(n)).await;
        n += 1;
        let answer = shared
            .client
            .send(Method::GET, &async_status_path(request_id), Bytes::new())
            .await;
        match answer.map(|r| bulk::parse_status(&r.body)) {
            Ok(Ok(s @ (AsyncStatus::Complete { .. } | AsyncStatus::Failed))) => return Some(s),
            Ok(Ok(_)) => {}
            Ok(Err(e)) if errors < 5 => {
                errors += 1;
                tracing::warn!("async rows request {request_id}: status: {e}");
            }
            Err(e) if errors < 5 => {
                errors += 1;
                tracing::warn!("async rows request {request_id}: status: {e}");
            }
            _ => return None,
        }
        if started.elapsed() > MAX_WAIT {
            tracing::warn!(
                "async rows request {request_id} unfinished after {MAX_WAIT:?}: sending its rows again as rowsets"
            );
            return None;
        }
    }
}

/// Every results page of a request that completed with errors.
async fn results(shared: &Shared, request_id: &str, rows: usize) -> Option<RowOutcomes> {
    let mut collector = ResultsCollector::new(rows, RESULTS_PAGE_SIZE);
    while let Some((page, size)) = collector.next_page() {
        let resp = shared
            .client
            .send(
                Method::GET,
                &async_results_path(request_id, page, size),
                Bytes::new(),
            )
            .await
            .ok()?;
        let page = bulk::parse_results_page(&resp.body).ok()??;
        collector.add(page).ok()?;
    }
    let results = collector.finish().ok()?;
    Some(RowOutcomes::of(&results))
}
