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
    pub retry_attempts: u32,
    pub retry_within: Duration,
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    /// Pause between probes while SFMC answers 50200 "temporarily blocked".
    pub retry_blocked_pause: Duration,
    /// `run` gives up when SFMC has been unavailable this long (`None`: `never`); the
    /// events not delivered go to the dead-letter file as `undelivered`. `serve` and
    /// `consume` never give up.
    pub give_up_after: Option<Duration>,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            batch_rows: 50,
            batch_bytes: 4 * 1024 * 1024,
            linger: Duration::from_millis(200),
            requests_per_second: Some(20),
            max_in_flight: 4,
            request_timeout: Duration::from_secs(30),
            contact_cache: 100_000,
            retry_attempts: 8,
            retry_within: Duration::from_secs(600),
            retry_base_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(30),
            retry_blocked_pause: Duration::from_secs(120),
            give_up_after: Some(Duration::from_secs(4 * 3600)),
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
    pub include_context: bool,
    pub when: Option<Condition>,
    /// `file:line:col` of the mapping, for explain output and warnings.
    pub origin: String,
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
