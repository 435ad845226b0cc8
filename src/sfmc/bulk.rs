//! The client side of SFMC's bulk endpoints: request bodies and response parsers.
//!
//! Pure building blocks (no I/O, no clock) for the sink:
//!
//! - **Async rows** (`PUT /data/v1/async/dataextensions/key:{key}/rows`): build a body
//!   of flat rows within SFMC's limits ([`AsyncRowsBody`]); read the submit answer
//!   ([`parse_submitted`], [`refusal_message`]); poll the status ([`parse_status`],
//!   [`PollSchedule`]); read every results page ([`ResultsCollector`]) and find out which
//!   rows failed with SFMC's message and which lost a deadlock and should be sent again
//!   ([`RowOutcomes`]).
//! - **Establish** (`POST /contacts/v1/establish`): [`establish_body`],
//!   [`parse_establish`] (results matched to the request by index).
//! - **Async journey events** (`POST /interaction/v1/async/events`):
//!   [`async_events_body`], [`parse_async_events`] (a result per member, in order).
//!
//! The paths are in [`crate::action`] (`async_rows_path`, `async_status_path`,
//! `async_results_path`, `ESTABLISH_PATH`, `ASYNC_EVENTS_PATH`). Shapes follow
//! `docs/sfmc-api.md` ("Data extension rows, asynchronous (bulk)", "Contacts", "Journey
//! Builder API events"). Parsers match on structure (`status`, `requestStatus`,
//! `resultCode`, positions), never on message texts, except the one SFMC documents for
//! deadlocks ("Rerun the transaction.").
//!
//! Positions are the contract: row `i` of a body built here is item `i` of its results,
//! Contact Key `i` of an establish body is `requestItemIndex` `i`, member `i` of an
//! events body is member `i` of the answer. Every parser checks what it can (counts,
//! echoed keys) and returns a [`BulkError`] rather than guess when SFMC's answer does
//! not line up: a caller then treats the request's outcome as unknown.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::action::Fields;

/// Most rows in one async rows request (SFMC's hard limit).
pub const ASYNC_ROWS_MAX_ROWS: usize = 32_000;
/// Largest async rows body in bytes (SFMC's REST limit is 5 MB; Segment's async action
/// stays under 5,000,000 bytes).
pub const ASYNC_ROWS_MAX_BYTES: usize = 5_000_000;
/// `$pageSize` asked for when reading async results. SFMC does not document its maximum;
/// [`ResultsCollector`] follows the `pageSize` each answer reports, so a smaller cap only
/// costs more calls.
pub const RESULTS_PAGE_SIZE: usize = 2_500;
/// Default number of Contact Keys per establish call (SFMC documents no maximum).
pub const ESTABLISH_BATCH: usize = 100;
/// Most members in one async events request (SFMC: "Interaction Count Limit Exceeded"
/// above it).
pub const ASYNC_EVENTS_MAX_MEMBERS: usize = 100;

/// An SFMC answer the bulk parsers cannot use, or a body that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BulkError {
    /// The answer lacks something the parser needs, or has it in another type.
    #[error("unexpected SFMC answer: {0}")]
    Malformed(String),
    /// The answer has results for a different number of rows, keys or members.
    #[error("SFMC answered with {got} result(s) for {expected} sent")]
    CountMismatch { expected: usize, got: usize },
    /// A result names another Contact Key than the one sent at its position.
    #[error("SFMC's result {position} is for {got:?}, but {expected:?} was sent there")]
    OrderMismatch {
        position: usize,
        expected: String,
        got: String,
    },
    /// A request body would hold nothing, or more than the endpoint allows.
    #[error("{what}: {got} item(s), expected 1 to {limit}")]
    BadSize {
        what: &'static str,
        got: usize,
        limit: usize,
    },
}

fn malformed(what: impl Into<String>) -> BulkError {
    BulkError::Malformed(what.into())
}

/// At most 120 characters of a value, for error messages.
fn shown(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

// ----- async rows: the body -------------------------------------------------------------

/// One row in the async API's flat form: the key columns, then the value columns whose
/// names (compared case-insensitively, as SFMC does) are not already among the keys. The
/// relay keeps primary-key columns in `values` as well, with the same value, so nothing
/// is lost.
pub fn flat_row(keys: &Fields, values: &Fields) -> Fields {
    let mut row = Fields::with_capacity_and_hasher(keys.len() + values.len(), Default::default());
    for (k, v) in keys {
        row.insert(k.clone(), v.clone());
    }
    for (k, v) in values {
        if !keys.keys().any(|key| key.eq_ignore_ascii_case(k)) {
            row.insert(k.clone(), v.clone());
        }
    }
    row
}

/// [`flat_row`] of a rowset row given as text, `{"keys":{...},"values":{...}}` (the form
/// the sink keeps prepared rows in), serialised.
pub fn flatten_rowset_row(row_json: &str) -> Result<String, BulkError> {
    let row: Value = serde_json::from_str(row_json)
        .map_err(|e| malformed(format!("a rowset row is not JSON: {e}")))?;
    let part = |name: &str| -> Result<Fields, BulkError> {
        match row.get(name) {
            None | Some(Value::Null) => Ok(Fields::default()),
            Some(Value::Object(m)) => Ok(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            Some(other) => Err(malformed(format!(
                "the {name:?} of a rowset row is not an object: {}",
                shown(other)
            ))),
        }
    };
    let flat = flat_row(&part("keys")?, &part("values")?);
    serde_json::to_string(&flat).map_err(|e| malformed(e.to_string()))
}

/// Why [`AsyncRowsBody::push`] did not take a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The body is full (row or byte limit): send it and start another one.
    Full,
    /// This row alone is larger than a whole body may be; it can never be sent this way.
    RowTooLarge { bytes: usize },
}

/// The body of `PUT /data/v1/async/dataextensions/key:{key}/rows`,
/// `{"items":[{...},{...}]}`, built row by row within a row and a byte limit.
///
/// Row `i` pushed is item `i` of the request's results.
#[derive(Debug, Clone)]
pub struct AsyncRowsBody {
    buf: Vec<u8>,
    rows: usize,
    max_rows: usize,
    max_bytes: usize,
}

const ITEMS_OPEN: &[u8] = b"{\"items\":[";
const ITEMS_CLOSE: &[u8] = b"]}";

impl Default for AsyncRowsBody {
    fn default() -> Self {
        AsyncRowsBody::new()
    }
}

impl AsyncRowsBody {
    /// An empty body with SFMC's limits ([`ASYNC_ROWS_MAX_ROWS`], [`ASYNC_ROWS_MAX_BYTES`]).
    pub fn new() -> Self {
        AsyncRowsBody::with_limits(ASYNC_ROWS_MAX_ROWS, ASYNC_ROWS_MAX_BYTES)
    }

    /// An empty body with other limits (clamped to SFMC's).
    pub fn with_limits(max_rows: usize, max_bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(ITEMS_OPEN);
        AsyncRowsBody {
            buf,
            rows: 0,
            max_rows: max_rows.clamp(1, ASYNC_ROWS_MAX_ROWS),
            max_bytes: max_bytes.min(ASYNC_ROWS_MAX_BYTES),
        }
    }

    /// Add a row given as its keys and values (see [`flat_row`]).
    pub fn push(&mut self, keys: &Fields, values: &Fields) -> Result<(), PushError> {
        let text = serde_json::to_string(&flat_row(keys, values)).unwrap_or_default();
        self.push_json(&text)
    }

    /// Add a row already serialised as one flat JSON object (e.g. by
    /// [`flatten_rowset_row`]). The text is copied as it is.
    pub fn push_json(&mut self, flat_row: &str) -> Result<(), PushError> {
        let alone = ITEMS_OPEN.len() + flat_row.len() + ITEMS_CLOSE.len();
        if alone > self.max_bytes {
            return Err(PushError::RowTooLarge { bytes: alone });
        }
        let comma = usize::from(self.rows > 0);
        if self.rows >= self.max_rows
            || self.buf.len() + comma + flat_row.len() + ITEMS_CLOSE.len() > self.max_bytes
        {
            return Err(PushError::Full);
        }
        if comma == 1 {
            self.buf.push(b',');
        }
        self.buf.extend_from_slice(flat_row.as_bytes());
        self.rows += 1;
        Ok(())
    }

    /// Rows in the body.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Size of the finished body in bytes.
    pub fn bytes(&self) -> usize {
        self.buf.len() + ITEMS_CLOSE.len()
    }

    /// The finished body.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(ITEMS_CLOSE);
        self.buf
    }
}

// ----- async rows: submit and status ----------------------------------------------------

/// A request SFMC accepted (202): poll its status with `request_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub request_id: String,
}

/// Read the 2xx answer to an async rows submit, `{"requestId":"…","resultMessages":[]}`.
pub fn parse_submitted(body: &Value) -> Result<Submitted, BulkError> {
    match body.get("requestId") {
        Some(Value::String(id)) if !id.trim().is_empty() => Ok(Submitted {
            request_id: id.trim().to_string(),
        }),
        _ => Err(malformed(format!(
            "an accepted async request has no requestId: {}",
            shown(body)
        ))),
    }
}

/// SFMC's message for a request refused as a whole (a 4xx answer of any bulk endpoint):
/// the `message`s of `resultMessages` (with their `resultCode`), else `message`, else
/// the body itself (shortened). For the dead letters of every row of the request.
pub fn refusal_message(body: &Value) -> String {
    let from_messages: Vec<String> = body
        .get("resultMessages")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|m| {
                    let text = m
                        .get("message")
                        .or_else(|| m.get("resultMessage"))
                        .and_then(Value::as_str)?;
                    Some(match m.get("resultCode").and_then(Value::as_str) {
                        Some(code) => format!("{code}: {text}"),
                        None => text.to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    if !from_messages.is_empty() {
        return from_messages.join("; ");
    }
    match body.get("message").and_then(Value::as_str) {
        Some(m) => match body.get("errorcode") {
            Some(code) => format!("{m} (errorcode {code})"),
            None => m.to_string(),
        },
        None => shown(body),
    }
}

/// Where an async rows request is, from `GET /data/v1/async/{requestId}/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncStatus {
    /// No status yet (`AsyncRequestStatusNotFound`, normal right after submit and under
    /// load): ask again later.
    NotReady,
    /// Queued, not picked up yet.
    Pending,
    /// Being processed.
    Executing,
    /// Done. With `has_errors` ("Has Errors"), some rows failed: read the results.
    /// Without, every row was saved and the results need not be read.
    Complete { has_errors: bool },
    /// `requestStatus: Error`: the request failed as a whole. SFMC does not say whether
    /// any row was saved; upserts are idempotent, so sending the rows again is safe.
    Failed,
}

/// Read a status answer.
pub fn parse_status(body: &Value) -> Result<AsyncStatus, BulkError> {
    let Some(status) = body.get("status").filter(|s| !s.is_null()) else {
        // "200 without status": not ready (whatever the result message says).
        return Ok(AsyncStatus::NotReady);
    };
    let request_status = status
        .get("requestStatus")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed(format!("a status without requestStatus: {}", shown(body))))?;
    match request_status.to_ascii_lowercase().as_str() {
        "pending" => Ok(AsyncStatus::Pending),
        "executing" => Ok(AsyncStatus::Executing),
        "error" => Ok(AsyncStatus::Failed),
        "complete" => {
            let has_errors = status.get("hasErrors").and_then(Value::as_bool) == Some(true)
                || status
                    .get("resultStatus")
                    .and_then(Value::as_str)
                    .is_some_and(|r| !r.eq_ignore_ascii_case("OK"));
            Ok(AsyncStatus::Complete { has_errors })
        }
        other => Err(malformed(format!("unknown requestStatus {other:?}"))),
    }
}

/// When to poll a request's status: `first` after the submit, then twice as long each
/// time up to `max`. Async requests take from about a second to minutes, and every poll
/// is an API call the user pays for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollSchedule {
    pub first: Duration,
    pub max: Duration,
}

impl Default for PollSchedule {
    fn default() -> Self {
        PollSchedule {
            first: Duration::from_millis(500),
            max: Duration::from_secs(8),
        }
    }
}

impl PollSchedule {
    /// The wait before poll number `n` (0 = the first poll after the submit).
    pub fn delay(&self, n: u32) -> Duration {
        self.first
            .saturating_mul(2u32.saturating_pow(n.min(20)))
            .min(self.max)
    }
}

// ----- async rows: results --------------------------------------------------------------

/// One row's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowResult {
    /// Saved.
    Ok,
    /// Refused for its content: a data error, with SFMC's message (and the messages of
    /// its `errors`).
    Failed { message: String },
    /// Lost a SQL deadlock ("… Rerun the transaction."): not saved, send it again.
    Deadlock { message: String },
}

/// Whether an SFMC row message is a SQL deadlock (SFMC: the message ends "Rerun the
/// transaction.").
pub fn is_deadlock(message: &str) -> bool {
    let m = message.trim_end();
    m.to_ascii_lowercase().ends_with("rerun the transaction.")
}

fn row_result(item: &Value) -> Result<RowResult, BulkError> {
    let status = item
        .get("status")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed(format!("a result item without status: {}", shown(item))))?;
    if status.eq_ignore_ascii_case("OK") {
        return Ok(RowResult::Ok);
    }
    let mut message = item
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim()
        .to_string();
    let deadlock = is_deadlock(&message);
    if let Some(errors) = item.get("errors").and_then(Value::as_array) {
        for e in errors {
            if let Some(m) = e.get("errorMessage").and_then(Value::as_str)
                && !message.contains(m)
            {
                if message.is_empty() {
                    message = m.to_string();
                } else {
                    message = format!("{message} ({m})");
                }
            }
        }
    }
    if message.is_empty() {
        message = format!("SFMC refused the row: {}", shown(item));
    }
    Ok(if deadlock {
        RowResult::Deadlock { message }
    } else {
        RowResult::Failed { message }
    })
}

/// One page of `GET /data/v1/async/{requestId}/results`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultsPage {
    /// The page number SFMC answered for (from 1).
    pub page: usize,
    /// The page size SFMC used (it may be smaller than asked).
    pub page_size: usize,
    /// Rows in the whole request.
    pub count: usize,
    pub items: Vec<RowResult>,
}

fn usize_field(body: &Value, name: &str) -> Result<usize, BulkError> {
    body.get(name)
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| malformed(format!("a results page without a number {name:?}")))
}

/// Read a results page. `Ok(None)`: the answer has no `items` (results not there yet).
pub fn parse_results_page(body: &Value) -> Result<Option<ResultsPage>, BulkError> {
    let Some(items) = body.get("items") else {
        return Ok(None);
    };
    let items = items
        .as_array()
        .ok_or_else(|| malformed("the results' items are not a list"))?;
    Ok(Some(ResultsPage {
        page: usize_field(body, "page")?,
        page_size: usize_field(body, "pageSize")?,
        count: usize_field(body, "count")?,
        items: items.iter().map(row_result).collect::<Result<_, _>>()?,
    }))
}

/// Reads every results page of one request and puts each result at its row's position.
///
/// ```
/// # use sfmc_relay::sfmc::bulk::*;
/// let mut results = ResultsCollector::new(3, 2);
/// assert_eq!(results.next_page(), Some((1, 2)));
/// // ... GET async_results_path(id, 1, 2), then:
/// # let body = serde_json::json!({"page":1,"pageSize":2,"count":3,"items":[{"status":"OK"},{"status":"OK"}]});
/// results.add(parse_results_page(&body).unwrap().unwrap()).unwrap();
/// assert_eq!(results.next_page(), Some((2, 2)));
/// ```
#[derive(Debug, Clone)]
pub struct ResultsCollector {
    results: Vec<Option<RowResult>>,
    page_size: usize,
}

impl ResultsCollector {
    /// For a request of `rows` rows, asking `page_size` results per page (e.g.
    /// [`RESULTS_PAGE_SIZE`]).
    pub fn new(rows: usize, page_size: usize) -> Self {
        ResultsCollector {
            results: vec![None; rows],
            page_size: page_size.max(1),
        }
    }

    /// The next `(page, page_size)` to ask for, or `None` when every row has its result.
    /// Follows the page size of SFMC's last answer.
    pub fn next_page(&self) -> Option<(usize, usize)> {
        let first_missing = self.results.iter().position(Option::is_none)?;
        Some((first_missing / self.page_size + 1, self.page_size))
    }

    /// Take one page. Its items go to positions `(page - 1) * page_size ..`.
    pub fn add(&mut self, page: ResultsPage) -> Result<(), BulkError> {
        if page.count != self.results.len() {
            return Err(BulkError::CountMismatch {
                expected: self.results.len(),
                got: page.count,
            });
        }
        if page.page == 0 || page.page_size == 0 {
            return Err(malformed("a results page numbered 0 or of size 0"));
        }
        if page.items.len() > page.page_size {
            return Err(malformed(format!(
                "a results page of size {} with {} items",
                page.page_size,
                page.items.len()
            )));
        }
        let start = (page.page - 1).saturating_mul(page.page_size);
        let expected = self.results.len().saturating_sub(start).min(page.page_size);
        if page.items.len() != expected {
            return Err(malformed(format!(
                "results page {} holds {} items, expected {expected}",
                page.page,
                page.items.len()
            )));
        }
        for (i, r) in page.items.into_iter().enumerate() {
            self.results[start + i] = Some(r);
        }
        self.page_size = page.page_size;
        Ok(())
    }

    /// Every row's result, in submission order; an error if a row has none.
    pub fn finish(self) -> Result<Vec<RowResult>, BulkError> {
        let n = self.results.len();
        let got: Vec<RowResult> = self.results.into_iter().flatten().collect();
        if got.len() != n {
            return Err(BulkError::CountMismatch {
                expected: n,
                got: got.len(),
            });
        }
        Ok(got)
    }
}

/// What a finished request's results mean for its rows (by position; every row not
/// listed was saved).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowOutcomes {
    /// Rows refused for their content, with SFMC's message: dead-letter exactly these.
    pub failed: Vec<(usize, String)>,
    /// Rows that lost a deadlock: send exactly these again.
    pub deadlocked: Vec<usize>,
}

impl RowOutcomes {
    pub fn of(results: &[RowResult]) -> Self {
        let mut out = RowOutcomes::default();
        for (i, r) in results.iter().enumerate() {
            match r {
                RowResult::Ok => {}
                RowResult::Failed { message } => out.failed.push((i, message.clone())),
                RowResult::Deadlock { .. } => out.deadlocked.push(i),
            }
        }
        out
    }

    /// Rows saved.
    pub fn saved(&self, rows: usize) -> usize {
        rows - self.failed.len() - self.deadlocked.len()
    }
}

// ----- establish ------------------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EstablishBody<'a> {
    contact_keys: &'a [&'a str],
    include_new_contact_awareness: bool,
    correlate_response_item: bool,
    return_results: bool,
}

/// The body of `POST /contacts/v1/establish` for these Contact Keys (1 or more; keep
/// batches modest, e.g. [`ESTABLISH_BATCH`]): results asked in request order
/// (`correlateResponseItem`) and with `isNewContact`.
pub fn establish_body(contact_keys: &[&str]) -> Result<Vec<u8>, BulkError> {
    if contact_keys.is_empty() {
        return Err(BulkError::BadSize {
            what: "establish",
            got: 0,
            limit: usize::MAX,
        });
    }
    serde_json::to_vec(&EstablishBody {
        contact_keys,
        include_new_contact_awareness: true,
        correlate_response_item: true,
        return_results: true,
    })
    .map_err(|e| malformed(e.to_string()))
}

/// What establish did with one Contact Key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactOutcome {
    /// The contact exists now. `is_new`: created by this call (when SFMC says).
    Established {
        contact_id: Option<i64>,
        is_new: Option<bool>,
    },
    /// Refused, with SFMC's message (a data error for this key).
    Refused { message: String },
}

impl ContactOutcome {
    pub fn is_established(&self) -> bool {
        matches!(self, ContactOutcome::Established { .. })
    }
}

fn messages_text(list: Option<&Value>) -> Option<String> {
    let texts: Vec<String> = list?
        .as_array()?
        .iter()
        .filter(|m| {
            let class = m.get("resultClass").and_then(Value::as_str);
            let kind = m.get("resultType").and_then(Value::as_str);
            class.is_some_and(|c| c.eq_ignore_ascii_case("Error"))
                || kind.is_some_and(|t| t.eq_ignore_ascii_case("Error"))
        })
        .map(|m| {
            let text = m
                .get("message")
                .or_else(|| m.get("resultMessage"))
                .and_then(Value::as_str)
                .unwrap_or("error");
            match m.get("resultCode").and_then(Value::as_str) {
                Some(code) => format!("{code}: {text}"),
                None => text.to_string(),
            }
        })
        .collect();
    (!texts.is_empty()).then(|| texts.join("; "))
}

/// Read an establish answer for the keys sent (in the order sent). Items are placed by
/// `requestItemIndex` when SFMC gives it, else by position; each item's
/// `requestedContactKey` must be the key sent there.
pub fn parse_establish(body: &Value, sent: &[&str]) -> Result<Vec<ContactOutcome>, BulkError> {
    let items = body.get("items").and_then(Value::as_array).ok_or_else(|| {
        malformed(format!(
            "an establish answer without items: {}",
            shown(body)
        ))
    })?;
    if items.len() != sent.len() {
        return Err(BulkError::CountMismatch {
            expected: sent.len(),
            got: items.len(),
        });
    }
    let mut out: Vec<Option<ContactOutcome>> = vec![None; sent.len()];
    for (i, item) in items.iter().enumerate() {
        let value = item
            .get("value")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                malformed(format!("an establish item without value: {}", shown(item)))
            })?;
        let pos = match value.get("requestItemIndex") {
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .filter(|&n| n < sent.len())
                .ok_or_else(|| malformed(format!("requestItemIndex {v} out of range")))?,
            None => i,
        };
        if let Some(Value::String(k)) = value.get("requestedContactKey")
            && k != sent[pos]
        {
            return Err(BulkError::OrderMismatch {
                position: pos,
                expected: sent[pos].to_string(),
                got: k.clone(),
            });
        }
        if out[pos].is_some() {
            return Err(malformed(format!(
                "two establish results for position {pos}"
            )));
        }
        out[pos] = Some(contact_outcome(value));
    }
    Ok(out.into_iter().flatten().collect())
}

fn contact_outcome(value: &Map<String, Value>) -> ContactOutcome {
    match value.get("contactReference").filter(|r| r.is_object()) {
        Some(reference) => ContactOutcome::Established {
            contact_id: reference
                .get("contactID")
                .or_else(|| reference.get("contactId"))
                .and_then(Value::as_i64),
            is_new: value.get("isNewContact").and_then(Value::as_bool),
        },
        None => ContactOutcome::Refused {
            message: messages_text(value.get("resultMessages"))
                .unwrap_or_else(|| "SFMC did not establish the contact".to_string()),
        },
    }
}

// ----- async journey events -------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventsBody<'a> {
    event_definition_key: &'a str,
    members: Vec<MemberRef<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MemberRef<'a> {
    contact_key: &'a str,
    data: &'a Fields,
}

/// The body of `POST /interaction/v1/async/events`: one event definition, 1 to
/// [`ASYNC_EVENTS_MAX_MEMBERS`] members `(contact key, data)`.
pub fn async_events_body(
    event_definition_key: &str,
    members: &[(&str, &Fields)],
) -> Result<Vec<u8>, BulkError> {
    if members.is_empty() || members.len() > ASYNC_EVENTS_MAX_MEMBERS {
        return Err(BulkError::BadSize {
            what: "async journey events",
            got: members.len(),
            limit: ASYNC_EVENTS_MAX_MEMBERS,
        });
    }
    serde_json::to_vec(&EventsBody {
        event_definition_key,
        members: members
            .iter()
            .map(|(contact_key, data)| MemberRef { contact_key, data })
            .collect(),
    })
    .map_err(|e| malformed(e.to_string()))
}

/// What SFMC did with one journey member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberOutcome {
    /// Queued for the journey.
    Queued { event_instance_id: String },
    /// Refused, with SFMC's message: a data error for this member's event.
    Refused {
        errorcode: Option<i64>,
        message: String,
    },
}

/// Read a 2xx async events answer for the members sent (Contact Keys in the order sent).
/// Members come back in request order; each one's `contactKey` must be the one sent
/// there.
pub fn parse_async_events(body: &Value, sent: &[&str]) -> Result<Vec<MemberOutcome>, BulkError> {
    let members = body
        .get("members")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            malformed(format!(
                "an async events answer without members: {}",
                shown(body)
            ))
        })?;
    if members.len() != sent.len() {
        return Err(BulkError::CountMismatch {
            expected: sent.len(),
            got: members.len(),
        });
    }
    members
        .iter()
        .zip(sent)
        .enumerate()
        .map(|(i, (m, &key))| {
            if let Some(Value::String(k)) = m.get("contactKey")
                && k != key
            {
                return Err(BulkError::OrderMismatch {
                    position: i,
                    expected: key.to_string(),
                    got: k.clone(),
                });
            }
            if let Some(id) = m.get("eventInstanceId").and_then(Value::as_str) {
                return Ok(MemberOutcome::Queued {
                    event_instance_id: id.to_string(),
                });
            }
            let errorcode = m.get("errorcode").and_then(Value::as_i64);
            let message = m.get("message").and_then(Value::as_str);
            match (errorcode, message) {
                (None, None) => Err(malformed(format!(
                    "member {i} has neither an eventInstanceId nor an error: {}",
                    shown(m)
                ))),
                (code, msg) => Ok(MemberOutcome::Refused {
                    errorcode: code,
                    message: msg.unwrap_or("SFMC refused the journey entry").to_string(),
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Fields {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn flat_rows_put_keys_first_and_drop_repeated_key_columns() {
        let keys = fields(json!({"Order Id": "o-1", "Contact Key": "u-1"}));
        let values = fields(json!({"order id": "o-1", "Revenue": 9.5}));
        let flat = flat_row(&keys, &values);
        assert_eq!(
            serde_json::to_string(&flat).unwrap(),
            r#"{"Order Id":"o-1","Contact Key":"u-1","Revenue":9.5}"#
        );
        assert_eq!(
            flatten_rowset_row(r#"{"keys":{"Uuid":"m"},"values":{"A":1,"Uuid":"m"}}"#).unwrap(),
            r#"{"Uuid":"m","A":1}"#
        );
        assert!(flatten_rowset_row(r#"{"keys":[1]}"#).is_err());
        assert!(flatten_rowset_row("nope").is_err());
    }

    #[test]
    fn bodies_stay_within_both_limits() {
        let keys = fields(json!({"K": "v"}));
        let values = fields(json!({"A": 1}));
        let mut body = AsyncRowsBody::with_limits(2, 1000);
        assert!(body.is_empty());
        body.push(&keys, &values).unwrap();
        body.push(&keys, &values).unwrap();
        assert_eq!(body.push(&keys, &values), Err(PushError::Full));
        assert_eq!(body.len(), 2);
        let size = body.bytes();
        let bytes = body.finish();
        assert_eq!(bytes.len(), size);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            json!({"items": [{"K": "v", "A": 1}, {"K": "v", "A": 1}]})
        );

        // Bytes: exactly at the limit fits, one more does not.
        let row = r#"{"K":"0123456789"}"#;
        let one = ITEMS_OPEN.len() + row.len() + ITEMS_CLOSE.len();
        let mut body = AsyncRowsBody::with_limits(100, one + 1 + row.len());
        body.push_json(row).unwrap();
        body.push_json(row).unwrap();
        assert_eq!(body.bytes(), one + 1 + row.len());
        assert_eq!(body.push_json(row), Err(PushError::Full));
        let mut small = AsyncRowsBody::with_limits(100, one - 1);
        assert_eq!(
            small.push_json(row),
            Err(PushError::RowTooLarge { bytes: one })
        );
        // Limits never exceed SFMC's.
        let big = AsyncRowsBody::with_limits(usize::MAX, usize::MAX);
        assert_eq!(
            (big.max_rows, big.max_bytes),
            (ASYNC_ROWS_MAX_ROWS, ASYNC_ROWS_MAX_BYTES)
        );
    }

    #[test]
    fn submit_and_refusal() {
        assert_eq!(
            parse_submitted(&json!({"requestId": "abc", "resultMessages": []})).unwrap(),
            Submitted {
                request_id: "abc".into()
            }
        );
        assert!(parse_submitted(&json!({"resultMessages": []})).is_err());
        let refused = json!({"requestId": "x", "resultMessages": [{"resultType": "Validation", "resultClass": "Error", "resultCode": "CustomObjectNotFound", "message": "Failed to resolve the Custom Object"}]});
        assert_eq!(
            refusal_message(&refused),
            "CustomObjectNotFound: Failed to resolve the Custom Object"
        );
        assert_eq!(
            refusal_message(
                &json!({"message": "Interaction Count Limit Exceeded", "errorcode": 10000})
            ),
            "Interaction Count Limit Exceeded (errorcode 10000)"
        );
        assert_eq!(refusal_message(&json!([1])), "[1]");
    }

    #[test]
    fn statuses() {
        let st = |s: Value| parse_status(&json!({"status": s, "requestId": "r"})).unwrap();
        assert_eq!(
            parse_status(&json!({"requestId": "r", "resultMessages": [{"resultCode": "AsyncRequestStatusNotFound"}]})).unwrap(),
            AsyncStatus::NotReady
        );
        assert_eq!(
            st(json!({"requestStatus": "Pending"})),
            AsyncStatus::Pending
        );
        assert_eq!(
            st(json!({"requestStatus": "Executing"})),
            AsyncStatus::Executing
        );
        assert_eq!(
            st(json!({"requestStatus": "Complete", "resultStatus": "OK", "hasErrors": false})),
            AsyncStatus::Complete { has_errors: false }
        );
        assert_eq!(
            st(json!({"requestStatus": "Complete", "resultStatus": "Has Errors"})),
            AsyncStatus::Complete { has_errors: true }
        );
        assert_eq!(
            st(json!({"requestStatus": "Complete", "hasErrors": true})),
            AsyncStatus::Complete { has_errors: true }
        );
        assert_eq!(st(json!({"requestStatus": "Error"})), AsyncStatus::Failed);
        assert!(parse_status(&json!({"status": {"requestStatus": "Sleeping"}})).is_err());
        assert!(parse_status(&json!({"status": {}})).is_err());
    }

    #[test]
    fn poll_schedule_doubles_up_to_the_cap() {
        let p = PollSchedule::default();
        let d: Vec<u64> = (0..7).map(|n| p.delay(n).as_millis() as u64).collect();
        assert_eq!(d, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(p.delay(u32::MAX), Duration::from_secs(8));
        let odd = PollSchedule {
            first: Duration::from_secs(10),
            max: Duration::from_secs(1),
        };
        assert_eq!(odd.delay(0), Duration::from_secs(1));
    }

    fn page(page: usize, size: usize, count: usize, items: Vec<Value>) -> ResultsPage {
        parse_results_page(&json!({"page": page, "pageSize": size, "count": count, "items": items, "requestId": "r"}))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn results_follow_the_page_size_sfmc_used() {
        let ok = || json!({"status": "OK", "message": "Upserted DataExtensionObject"});
        let bad = json!({"status": "Error", "message": "Cannot locate the existing record. Required keys are missing.", "errorCode": 2,
            "errors": [{"errorMessage": "Column [contactkey] does not allow null value.", "name": "Contact Key", "errorCode": 70001}]});
        let dead = json!({"status": "Error", "message": "Transaction (Process ID 64) was deadlocked on lock resources with another process and has been chosen as the deadlock victim. Rerun the transaction.", "errorCode": 1205});
        // Asked for 100 per page; SFMC uses 2.
        let mut c = ResultsCollector::new(5, 100);
        assert_eq!(c.next_page(), Some((1, 100)));
        c.add(page(1, 2, 5, vec![ok(), bad.clone()])).unwrap();
        assert_eq!(c.next_page(), Some((2, 2)));
        c.add(page(2, 2, 5, vec![dead, ok()])).unwrap();
        assert_eq!(c.next_page(), Some((3, 2)));
        assert!(
            c.clone().add(page(3, 2, 5, vec![ok(), ok()])).is_err(),
            "the last page has one item"
        );
        c.add(page(3, 2, 5, vec![ok()])).unwrap();
        assert_eq!(c.next_page(), None);
        let results = c.finish().unwrap();
        let outcomes = RowOutcomes::of(&results);
        assert_eq!(
            outcomes.failed,
            vec![(1, "Cannot locate the existing record. Required keys are missing. (Column [contactkey] does not allow null value.)".to_string())]
        );
        assert_eq!(outcomes.deadlocked, vec![2]);
        assert_eq!(outcomes.saved(5), 3);

        // A count that is not the number of rows sent cannot be matched by position.
        let mut c = ResultsCollector::new(3, 50);
        assert_eq!(
            c.add(page(1, 50, 4, vec![ok(), ok(), ok(), ok()])),
            Err(BulkError::CountMismatch {
                expected: 3,
                got: 4
            })
        );
        assert!(ResultsCollector::new(2, 50).finish().is_err());
        assert_eq!(
            parse_results_page(&json!({"requestId": "r", "resultMessages": []})).unwrap(),
            None
        );
        assert!(
            parse_results_page(
                &json!({"items": [{"message": "x"}], "page": 1, "pageSize": 1, "count": 1})
            )
            .is_err()
        );
    }

    #[test]
    fn deadlocks_are_recognised_by_the_documented_ending() {
        assert!(is_deadlock(
            "... chosen as the deadlock victim. Rerun the transaction. "
        ));
        assert!(!is_deadlock("Rerun the transaction later, maybe"));
    }

    #[test]
    fn establish_matches_by_index_and_checks_keys() {
        let body: Value =
            serde_json::from_slice(&establish_body(&["u-1", "u-2"]).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"contactKeys": ["u-1", "u-2"], "includeNewContactAwareness": true, "correlateResponseItem": true, "returnResults": true})
        );
        assert!(establish_body(&[]).is_err());
        let item = |i: usize, k: &str| {
            json!({"value": {"requestedContactKey": k, "requestItemIndex": i, "isNewContact": i == 0,
            "contactReference": {"contactID": 100 + i, "contactType": "Default", "contactKey": k, "contactStatus": "Active"}}})
        };
        let refused = json!({"value": {"requestedContactKey": "", "requestItemIndex": 2, "resultMessages": [
            {"resultType": "Validation", "resultClass": "Error", "resultCode": "InvalidContactKey", "message": "contactKey must be a non-empty string."}]}});
        // Reversed order, placed by requestItemIndex.
        let answer = json!({"items": [refused, item(1, "u-2"), item(0, "u-1")]});
        let out = parse_establish(&answer, &["u-1", "u-2", ""]).unwrap();
        assert_eq!(
            out,
            vec![
                ContactOutcome::Established {
                    contact_id: Some(100),
                    is_new: Some(true)
                },
                ContactOutcome::Established {
                    contact_id: Some(101),
                    is_new: Some(false)
                },
                ContactOutcome::Refused {
                    message: "InvalidContactKey: contactKey must be a non-empty string.".into()
                },
            ]
        );
        // Without requestItemIndex: by position, and the echoed key must match.
        let answer = json!({"items": [{"value": {"requestedContactKey": "u-2", "contactReference": {"contactID": 1}}}, {"value": {"requestedContactKey": "u-1", "contactReference": {"contactID": 2}}}]});
        assert!(matches!(
            parse_establish(&answer, &["u-1", "u-2"]),
            Err(BulkError::OrderMismatch { position: 0, .. })
        ));
        assert!(matches!(
            parse_establish(&json!({"items": []}), &["u-1"]),
            Err(BulkError::CountMismatch { .. })
        ));
        let twice = json!({"items": [item(0, "u-1"), item(0, "u-1")]});
        assert!(parse_establish(&twice, &["u-1", "u-1"]).is_err());
    }

    #[test]
    fn async_events_by_position() {
        let data = fields(json!({"Plan": "pro"}));
        let empty = Fields::default();
        let body: Value = serde_json::from_slice(
            &async_events_body("signup", &[("u-1", &data), ("u-2", &empty)]).unwrap(),
        )
        .unwrap();
        assert_eq!(
            body,
            json!({"eventDefinitionKey": "signup", "members": [{"contactKey": "u-1", "data": {"Plan": "pro"}}, {"contactKey": "u-2", "data": {}}]})
        );
        let many: Vec<(&str, &Fields)> = (0..101).map(|_| ("u", &empty)).collect();
        assert!(async_events_body("e", &many).is_err());
        assert!(async_events_body("e", &many[..100]).is_ok());
        assert!(async_events_body("e", &[]).is_err());

        let answer = json!({"requestId": "r", "count": 2, "notQueuedCount": 1, "members": [
            {"contactKey": "u-1", "eventInstanceId": "e-1"},
            {"contactKey": "u-2", "errorcode": 30000, "message": "Data field(s) 'Bogus' do not exist"}]});
        assert_eq!(
            parse_async_events(&answer, &["u-1", "u-2"]).unwrap(),
            vec![
                MemberOutcome::Queued {
                    event_instance_id: "e-1".into()
                },
                MemberOutcome::Refused {
                    errorcode: Some(30000),
                    message: "Data field(s) 'Bogus' do not exist".into()
                }
            ]
        );
        assert!(matches!(
            parse_async_events(&answer, &["u-2", "u-1"]),
            Err(BulkError::OrderMismatch { .. })
        ));
        assert!(parse_async_events(&answer, &["u-1"]).is_err());
        assert!(parse_async_events(&json!({"members": [{"contactKey": "u"}]}), &["u"]).is_err());
    }
}
