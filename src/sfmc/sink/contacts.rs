//! Contacts: the cache of Contact Keys already created (each is created once, and with a
//! state file, once across restarts), and the contact lane that creates new ones in
//! batches through `/contacts/v1/establish`.

use super::Shared;
use super::send::failure_from;
use super::ticket::Ticket;
use crate::action::ESTABLISH_PATH;
use crate::sfmc::bulk::{self, ContactOutcome};
use crate::sfmc::deadletter::Failure;
use bytes::Bytes;
use reqwest::Method;
use serde_json::json;
use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Contact Keys already created (or being created), bounded, oldest forgotten first.
pub(super) struct ContactCache {
    cap: usize,
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl ContactCache {
    pub(super) fn new(cap: usize) -> Self {
        ContactCache {
            cap,
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }
}

impl ContactCache {
    /// True when `key` was not known (the caller must create it).
    pub(super) fn claim(&mut self, key: &str) -> bool {
        if self.cap == 0 {
            return true;
        }
        if self.set.contains(key) {
            return false;
        }
        if self.set.len() >= self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(key.to_string());
        self.order.push_back(key.to_string());
        true
    }
    pub(super) fn forget(&mut self, key: &str) {
        self.set.remove(key);
    }
}

/// One Contact Key to create, for the contact lane.
pub(super) struct ContactMsg {
    pub(super) key: String,
    pub(super) ticket: Arc<Ticket>,
}

/// The contact lane: Contact Keys gathered into `POST /contacts/v1/establish` calls of up to
/// `contact_batch` keys (or what arrived within `linger`), one call in flight per lane
/// batch; results are matched to keys by position (SFMC answers in request order).
pub(super) async fn contact_lane(shared: Arc<Shared>, mut rx: mpsc::Receiver<ContactMsg>) {
    let max = shared.config.contact_batch.max(1);
    let linger = shared.config.linger;
    let mut calls = JoinSet::new();
    loop {
        let Some(first) = rx.recv().await else { break };
        let mut batch = vec![first];
        let deadline = Instant::now() + linger;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => batch.push(m),
                Ok(None) | Err(_) => break,
            }
        }
        // Several calls may be in flight (the client and its rate bound them); each key is
        // in one. At least 4: while rate-limited the row lanes are one per data extension,
        // and a contact lane waiting on one call would hold up the events behind it.
        while calls.len() >= shared.config.lanes.max(4) {
            calls.join_next().await;
        }
        calls.spawn(establish(shared.clone(), batch));
    }
    while calls.join_next().await.is_some() {}
}

async fn establish(shared: Arc<Shared>, batch: Vec<ContactMsg>) {
    let keys: Vec<&str> = batch.iter().map(|m| m.key.as_str()).collect();
    let call = |key: &str| {
        json!({"method": "POST", "path": ESTABLISH_PATH,
            "body": {"contactKeys": [key], "includeNewContactAwareness": true}})
    };
    let body = match bulk::establish_body(&keys) {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            let reason = e.to_string();
            for m in batch {
                shared.forget_contact(&m.key);
                m.ticket.done(Err(Failure::rejected(reason.clone())));
            }
            return;
        }
    };
    let result = shared.client.send(Method::POST, ESTABLISH_PATH, body).await;
    // Per key: `None` when it went through, else the failure to dead-letter its event with.
    let outcomes: Vec<Option<Failure>> = match &result {
        Ok(resp) => {
            let failed = |reason: String, key| {
                Failure::failed(reason, call(key), Some(resp.status), None, None)
            };
            match bulk::parse_establish(&resp.body, &keys) {
                Ok(items) => items
                    .into_iter()
                    .zip(&keys)
                    .map(|(o, key)| match o {
                        ContactOutcome::Established { .. } => None,
                        ContactOutcome::Refused { message } => Some(failed(
                            format!("SFMC refused Contact Key {key:?}: {message}"),
                            key,
                        )),
                    })
                    .collect(),
                // An answer that does not line up with the keys sent: no key is known to
                // exist. Establish is idempotent, so the events can be replayed safely.
                Err(e) => keys
                    .iter()
                    .map(|key| Some(failed(format!("establish answer not understood: {e}"), key)))
                    .collect(),
            }
        }
        Err(e) => keys
            .iter()
            .map(|key| Some(failure_from(e, call(key))))
            .collect(),
    };
    let mut confirmed = Vec::with_capacity(batch.len());
    for (m, outcome) in batch.into_iter().zip(outcomes) {
        match outcome {
            None => {
                confirmed.push(m.key);
                m.ticket.done(Ok(()));
            }
            Some(f) => {
                shared.forget_contact(&m.key);
                m.ticket.done(Err(f));
            }
        }
    }
    if let Some(state) = &shared.contact_state {
        state.record(&confirmed);
    }
}

/// The contact cache's state file: Contact Keys known to exist, one JSON string per line,
/// appended as SFMC confirms them, so a restart does not create them again. Read at start
/// (the newest `cap` keys), rewritten when it holds more than twice that.
pub struct ContactState {
    path: PathBuf,
    out: Mutex<Option<std::io::BufWriter<File>>>,
}

impl ContactState {
    /// Open `path` and load its keys into `cache`.
    pub(super) fn open(path: &Path, cache: &mut ContactCache) -> std::io::Result<ContactState> {
        let mut keys: VecDeque<String> = VecDeque::new();
        let read = super::state_file::read_records(path, |k: String| {
            keys.push_back(k);
            if cache.cap > 0 && keys.len() > cache.cap {
                keys.pop_front();
            }
        })?;
        let mut torn = read.torn;
        if read.lines > 2 * keys.len().max(1) {
            super::state_file::rewrite(path, &keys)?;
            torn = false;
        }
        for k in &keys {
            cache.claim(k);
        }
        let f = super::state_file::open_append(path, torn)?;
        Ok(ContactState {
            path: path.to_path_buf(),
            out: Mutex::new(Some(std::io::BufWriter::new(f))),
        })
    }

    pub(super) fn record(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        let mut g = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let Some(w) = g.as_mut() else { return };
        let r = keys
            .iter()
            .try_for_each(|k| {
                serde_json::to_writer(&mut *w, k)?;
                w.write_all(b"\n")
            })
            .and_then(|()| w.flush());
        if let Err(e) = r {
            // The cache still works in memory; a restart may create these keys again.
            tracing::warn!(
                "contact state file {}: {e}; known contacts are no longer saved",
                self.path.display()
            );
            *g = None;
        }
    }
}
