//! The compiled rule set: what the interpreter runs for every event.
//!
//! Built once per (re)load by `compile.rs`; immutable afterwards and shared behind an
//! `Arc`, so an event is always processed by exactly one version.

use super::casing::Casing;
use super::condition::Condition;
use super::path::KeyPath;
use std::time::Duration;

#[derive(Debug)]
pub struct Program {
    /// Rule-set version id, e.g. `r1-3fa2c9e1` (reload counter + content hash).
    pub version: String,
    /// The files this version was built from, in load order.
    pub files: Vec<String>,
    pub settings: Settings,
    pub casing: Casing,
    pub nested: Nested,
    pub nulls: Nulls,
    /// Columns whose values are normalised to ISO-8601 UTC (matched case-insensitively).
    pub dates: Vec<String>,
    pub context_columns: Vec<ContextColumn>,
    /// The context columns' paths, compiled for one walk per event.
    pub context_paths: super::path::PathSet,
    pub identify: Identify,
    pub mappings: Vec<Mapping>,
    pub skip: Vec<Filter>,
    pub reject: Vec<Filter>,
}

#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// SFMC tenant subdomain (v2 endpoints); `None` = legacy v1 endpoints.
    pub subdomain: Option<String>,
    pub account_id: Option<String>,
    pub delivery: Delivery,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub batch_rows: usize,
    pub batch_bytes: usize,
    pub linger: Duration,
    /// `None` = no rate limit.
    pub requests_per_second: Option<u32>,
    pub max_in_flight: usize,
    pub request_timeout: Duration,
    pub contact_cache: usize,
    /// Contact Keys per `/contacts/v1/establish` call (1: one `/contacts/v1/contacts` call
    /// per key).
    pub contact_batch: usize,
    /// Rows waiting in a lane that switch it to the asynchronous rows API (0: never).
    pub async_threshold: usize,
    /// Rows per asynchronous rows request.
    pub async_batch_rows: usize,
    pub retry_attempts: u32,
    pub retry_within: Duration,
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
}

impl Default for Delivery {
    /// The defaults of [`crate::defaults`].
    fn default() -> Self {
        use crate::defaults as d;
        Delivery {
            batch_rows: d::BATCH_ROWS,
            batch_bytes: d::BATCH_BYTES,
            linger: d::LINGER,
            requests_per_second: Some(d::REQUESTS_PER_SECOND),
            max_in_flight: d::MAX_IN_FLIGHT,
            request_timeout: d::REQUEST_TIMEOUT,
            contact_cache: d::CONTACT_CACHE,
            contact_batch: d::CONTACT_BATCH,
            async_threshold: d::ASYNC_THRESHOLD,
            async_batch_rows: d::ASYNC_BATCH_ROWS,
            retry_attempts: d::RETRY_ATTEMPTS,
            retry_within: d::RETRY_WITHIN,
            retry_base_delay: d::RETRY_BASE_DELAY,
            retry_max_delay: d::RETRY_MAX_DELAY,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nested {
    Drop,
    Flatten,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nulls {
    Drop,
    /// Send `""` instead (SFMC treats empty strings as safe).
    Empty,
}

#[derive(Debug, Clone)]
pub struct ContextColumn {
    pub path: KeyPath,
    pub column: String,
}

#[derive(Debug, Clone)]
pub struct Identify {
    /// Where the Contact Key comes from; the first present, non-empty value wins.
    pub contact_key: Vec<KeyPath>,
    /// Characters removed from the Contact Key (`:` by default).
    pub scrub: Vec<char>,
    pub max_contact_key_length: usize,
    pub create_contacts: bool,
    pub data_extension: Option<String>,
    pub include_context: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Identify,
    Track,
    Page,
    Screen,
    Group,
    Alias,
}

impl EventKind {
    pub const NAMES: &'static str = "identify, track, page, screen, group, alias";

    pub fn parse(s: &str) -> Option<EventKind> {
        Some(match s {
            "identify" => EventKind::Identify,
            "track" => EventKind::Track,
            "page" => EventKind::Page,
            "screen" => EventKind::Screen,
            "group" => EventKind::Group,
            "alias" => EventKind::Alias,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            EventKind::Identify => "identify",
            EventKind::Track => "track",
            EventKind::Page => "page",
            EventKind::Screen => "screen",
            EventKind::Group => "group",
            EventKind::Alias => "alias",
        }
    }

    /// The event field that holds the name a mapping's `event:` matches.
    pub fn name_field(self) -> Option<&'static str> {
        match self {
            EventKind::Track => Some("event"),
            EventKind::Page | EventKind::Screen => Some("name"),
            _ => None,
        }
    }

    /// The event field whose object becomes the row values.
    pub fn data_field(self) -> &'static str {
        match self {
            EventKind::Identify | EventKind::Group => "traits",
            _ => "properties",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Mapping {
    pub kind: EventKind,
    /// Event names this mapping matches; empty = every event of `kind`.
    pub events: Vec<String>,
    pub data_extension: Option<String>,
    pub primary_key: PrimaryKey,
    pub api_event: Option<String>,
    /// The API event's `Data` allow-list, in order; `None` = every converted property.
    pub data: Option<Vec<DataField>>,
    pub include_context: bool,
    pub when: Option<Condition>,
    /// `file:line:col` of the mapping, for explain output and warnings.
    pub origin: String,
}

/// One entry of an API event's `data:` allow-list.
#[derive(Debug, Clone, PartialEq)]
pub struct DataField {
    /// The converted column it takes (the key after casing), matched case-insensitively.
    pub column: String,
    /// The `Data` field it becomes: `column`, or the rename.
    pub field: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PrimaryKey {
    /// One key `Uuid` = the event's `messageId`.
    Uuid,
    /// Column names; `Contact Key` is the Contact Key, others come from the converted data.
    Columns(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Filter {
    pub condition: Condition,
    pub reason: String,
    pub origin: String,
}
