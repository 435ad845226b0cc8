//! Lanes and batching: one task per (data extension, hash(primary key) % lanes). A lane
//! owns its pending batch, coalesces rows of one primary key, flushes on `batch_rows`,
//! `batch_bytes` or `linger`, and sends one batch at a time (per-key order).

use super::Shared;
use super::async_rows;
use super::isolate::send_rows;
use super::prepare::{RowText, merge_rows};
use super::ticket::Ticket;
use crate::action::rowset_path;
use indexmap::IndexMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub(super) struct RowMsg {
    pub(super) pk: Box<str>,
    pub(super) json: RowText,
    pub(super) ticket: Arc<Ticket>,
}

/// A row in a pending batch: possibly several events' rows coalesced.
pub(super) struct Row {
    pub(super) json: RowText,
    pub(super) tickets: Vec<Arc<Ticket>>,
}

pub(super) async fn lane_loop(shared: Arc<Shared>, de: String, mut rx: mpsc::Receiver<RowMsg>) {
    let path = rowset_path(&de);
    let cfg = shared.config.clone();
    let mut carry: Option<RowMsg> = None;
    // Rows per rowset now: starts at `batch_rows`, shrinks after slow answers (SFMC times
    // out on large rowsets), grows back when answers are fast.
    let mut size = cfg.batch_rows.max(1);
    loop {
        let first = match carry.take() {
            Some(m) => m,
            None => match rx.recv().await {
                Some(m) => m,
                None => break,
            },
        };
        // A backlog (rows queue up behind the request rate): one asynchronous request
        // takes what is waiting, up to `async_batch_rows`, instead of many rowsets.
        if cfg.async_threshold > 0 && rx.len() + 1 >= cfg.async_threshold {
            let rows = take_backlog(&shared, first, &mut rx, &mut carry);
            async_rows::send(&shared, &de, rows).await;
            continue;
        }
        let mut batch: IndexMap<Box<str>, Row> = IndexMap::with_capacity(cfg.batch_rows);
        // `[` and `]`, plus each row and its comma.
        let mut bytes = 2usize;
        let deadline = Instant::now() + cfg.linger;
        let mut next = Some(first);
        loop {
            if let Some(m) = next.take()
                && let Some(m) = add_row(&shared, &mut batch, &mut bytes, m, size, cfg.batch_bytes)
            {
                carry = Some(m);
                break;
            }
            if batch.len() >= size {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => next = Some(m),
                Ok(None) | Err(_) => break,
            }
        }
        let rows = batch.len();
        let started = std::time::Instant::now();
        send_rows(&shared, &path, batch.into_values().collect()).await;
        let next = adapt_batch_size(size, rows, started.elapsed(), &cfg);
        if next < size {
            shared
                .counters
                .batch_shrinks
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("rowsets of {de}: {size} -> {next} rows (slow answer)");
        }
        size = next;
    }
}

/// Add `m` to `batch` (coalesced into the row of its primary key if there is one), keeping
/// `bytes` (the body size) current; gives `m` back when the batch is full (`max_rows`
/// rows or `max_bytes`): it starts the next batch.
fn add_row(
    shared: &Shared,
    batch: &mut IndexMap<Box<str>, Row>,
    bytes: &mut usize,
    m: RowMsg,
    max_rows: usize,
    max_bytes: usize,
) -> Option<RowMsg> {
    if let Some(row) = batch.get_mut(&m.pk) {
        let merged = merge_rows(&row.json, &m.json);
        *bytes = *bytes + merged.len() - row.json.len();
        row.json = merged;
        row.tickets.push(m.ticket);
        shared
            .counters
            .rows_coalesced
            .fetch_add(1, Ordering::Relaxed);
        None
    } else if !batch.is_empty()
        && (batch.len() >= max_rows || *bytes + m.json.len() + 1 > max_bytes)
    {
        Some(m)
    } else {
        *bytes += m.json.len() + 1;
        batch.insert(
            m.pk,
            Row {
                json: m.json,
                tickets: vec![m.ticket],
            },
        );
        None
    }
}

/// The smallest adaptive rowset (Segment's destination fell back to 10 rows after SFMC
/// timed out on larger ones).
pub(super) const MIN_ADAPTIVE_ROWS: usize = 10;

/// The next rowset size after a call of `rows` rows took `elapsed` (retries included): a
/// slow answer (over a quarter of the request timeout) halves it, down to
/// [`MIN_ADAPTIVE_ROWS`]; a fast one (under a second, for a full batch) grows it by a
/// fifth, up to `batch_rows`.
pub(super) fn adapt_batch_size(
    size: usize,
    rows: usize,
    elapsed: std::time::Duration,
    cfg: &super::SinkConfig,
) -> usize {
    let max = cfg.batch_rows.max(1);
    let min = MIN_ADAPTIVE_ROWS.min(max);
    if elapsed > cfg.request_timeout / 4 {
        (size / 2).max(min)
    } else if rows >= size && elapsed < std::time::Duration::from_secs(1) {
        (size + size.div_ceil(5)).min(max)
    } else {
        size
    }
}

/// What a lane has waiting (without waiting for more), coalesced by primary key, up to
/// `async_batch_rows` rows and the async request's byte limit; a row that does not fit
/// is carried to the next batch.
fn take_backlog(
    shared: &Shared,
    first: RowMsg,
    rx: &mut mpsc::Receiver<RowMsg>,
    carry: &mut Option<RowMsg>,
) -> Vec<Row> {
    let cfg = &shared.config;
    let max_rows = cfg
        .async_batch_rows
        .clamp(1, crate::sfmc::bulk::ASYNC_ROWS_MAX_ROWS);
    // Flat rows are a little smaller than rowset rows: the rowset size bounds them.
    let max_bytes = crate::sfmc::bulk::ASYNC_ROWS_MAX_BYTES * 9 / 10;
    let mut batch: IndexMap<Box<str>, Row> = IndexMap::with_capacity(rx.len() + 1);
    let mut bytes = 2usize;
    let mut next = Some(first);
    while let Some(m) = next.take() {
        if let Some(m) = add_row(shared, &mut batch, &mut bytes, m, max_rows, max_bytes) {
            *carry = Some(m);
            break;
        }
        next = rx.try_recv().ok();
    }
    batch.into_values().collect()
}

/// A rowset body: the rows' JSON in an array.
pub(super) fn rowset_body(rows: &[Row]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + rows.iter().map(|r| r.json.len() + 1).sum::<usize>());
    out.push(b'[');
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&r.json.json);
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rowsets_shrink_after_slow_answers_and_grow_back() {
        let cfg = super::super::SinkConfig {
            batch_rows: 50,
            request_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        let slow = Duration::from_secs(9);
        let fast = Duration::from_millis(200);
        assert_eq!(adapt_batch_size(50, 50, slow, &cfg), 25);
        assert_eq!(adapt_batch_size(25, 25, slow, &cfg), 12);
        assert_eq!(adapt_batch_size(12, 12, slow, &cfg), 10);
        assert_eq!(adapt_batch_size(10, 10, slow, &cfg), 10);
        let mut s = 10;
        for _ in 0..20 {
            s = adapt_batch_size(s, s, fast, &cfg);
        }
        assert_eq!(s, 50);
        // A partial batch (a trickle) says nothing about larger ones.
        assert_eq!(adapt_batch_size(20, 3, fast, &cfg), 20);
        // Neither fast nor slow: unchanged.
        assert_eq!(adapt_batch_size(30, 30, Duration::from_secs(3), &cfg), 30);
    }
    use crate::action::Action;
    use serde_json::{Value, json};

    fn prepared_json(keys: Value, values: Value) -> RowText {
        super::super::prepare::row_text_of(Action::UpsertRow {
            data_extension: "De".into(),
            keys: keys.as_object().unwrap().clone().into_iter().collect(),
            values: values.as_object().unwrap().clone().into_iter().collect(),
        })
    }

    #[test]
    fn rowset_body_is_a_json_array_of_the_rows() {
        let rows: Vec<Row> = [json!({"A": 1}), json!({"B": "x"})]
            .into_iter()
            .map(|v| Row {
                json: prepared_json(json!({"K": "k"}), v),
                tickets: vec![],
            })
            .collect();
        assert_eq!(
            serde_json::from_slice::<Value>(&rowset_body(&rows)).unwrap(),
            json!([{"keys": {"K": "k"}, "values": {"A": 1}}, {"keys": {"K": "k"}, "values": {"B": "x"}}])
        );
        assert_eq!(rowset_body(&[]), b"[]");
    }
}
