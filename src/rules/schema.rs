//! The shape of one rule file, as written by users (before validation).
//!
//! Every field is optional: a rule set is a directory of files that are merged, and each
//! top-level key may be defined in exactly one file. Values that need semantic checks
//! (durations, numbers that may come from `${ENV}`, JSONPaths) are kept as spanned raw
//! values here and checked in `compile.rs`, which names `file:line:col` for every error.
//!
//! The same types give the rule files' JSON Schema ([`super::json_schema`], `sfmc-relay
//! schema`): every type here derives `JsonSchema`, doc comments are the editor's hover
//! text, and `#[schemars(with = ...)]` says what a raw value may hold.

use super::json_schema::{
    CasingStyle, DataEntry, DurationText, EventType, Flag, NestedMode, NullsMode, WholeNumber,
};
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::borrow::Cow;

/// A value with where it was written (serde-saphyr's span), transparent in the JSON
/// Schema (a `Spanned<T>` is described as a `T`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Spanned<T> {
    pub value: T,
    pub referenced: serde_saphyr::Location,
    pub defined: serde_saphyr::Location,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<T>::deserialize(d)?;
        Ok(Spanned {
            value: s.value,
            referenced: s.referenced,
            defined: s.defined,
        })
    }
}

impl<T: JsonSchema> JsonSchema for Spanned<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(g)
    }
}

/// A spanned string.
pub type Str = Spanned<String>;
/// A spanned raw scalar or structure (numbers, booleans, durations, `${ENV}` strings).
pub type Raw = Spanned<Value>;

/// `value` or `[value, ...]`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// One rule file of sfmc-relay (every *.yaml in the rules directory; the files are merged
/// and each top-level key is defined in one file only). `sfmc-relay check` validates a
/// rule set; docs/rules.md describes every key.
#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "sfmc-relay rule file")]
pub struct RuleFile {
    /// Where to deliver: the tenant subdomain and business unit.
    pub sfmc: Option<Spanned<SfmcSection>>,
    /// How to deliver: batching, rate, concurrency, timeouts, retries.
    pub delivery: Option<Spanned<DeliverySection>>,
    /// How trait and property keys become data extension column names.
    pub casing: Option<Spanned<CasingSection>>,
    /// Nested objects and arrays: `drop` (default) or `flatten` (address.city -> Address City).
    #[schemars(with = "Option<NestedMode>")]
    pub nested: Option<Str>,
    /// Null values: `drop` (default) or `empty` (sent as "").
    #[schemars(with = "Option<NullsMode>")]
    pub nulls: Option<Str>,
    /// Columns normalised to ISO-8601 UTC; a value that is not a date rejects the event.
    pub dates: Option<Spanned<Vec<Str>>>,
    /// Event paths copied into every row as columns (`context.app.name: App Name`).
    pub context_columns: Option<Spanned<IndexMap<Str, Str>>>,
    /// Identify calls, and the Contact Key every event type uses.
    pub identify: Option<Spanned<IdentifySection>>,
    /// Mappings: which events become data extension rows and Journey Builder API events.
    /// Events without a mapping are skipped (counted).
    pub track: Option<Spanned<Vec<Spanned<MappingSection>>>>,
    /// Filters checked before any mapping: a matching event is skipped (counted).
    pub skip: Option<Spanned<Vec<Spanned<FilterSection>>>>,
    /// Filters checked before any mapping: a matching event is dead-lettered with the reason.
    pub reject: Option<Spanned<Vec<Spanned<FilterSection>>>>,
}

/// Where to deliver.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SfmcSection {
    /// Tenant subdomain (28 characters starting with `mc`): v2 endpoints. Empty: legacy v1.
    pub subdomain: Option<Str>,
    /// MID of a business unit (optional).
    pub account_id: Option<Str>,
}

/// How to deliver.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    /// Rows per rowset call (default 50).
    #[schemars(with = "Option<WholeNumber>")]
    pub batch_rows: Option<Raw>,
    /// Bytes per rowset call (default 4000000; SFMC's limit is 5 MB).
    #[schemars(with = "Option<WholeNumber>")]
    pub batch_bytes: Option<Raw>,
    /// How long a partial batch waits for more rows (default 200ms).
    #[schemars(with = "Option<DurationText>")]
    pub linger: Option<Raw>,
    /// SFMC requests per second (default 20; 0 = unlimited).
    #[schemars(with = "Option<WholeNumber>")]
    pub requests_per_second: Option<Raw>,
    /// Concurrent requests to SFMC (default 4).
    #[schemars(with = "Option<WholeNumber>")]
    pub max_in_flight: Option<Raw>,
    /// Timeout of one HTTP request (default 30s).
    #[schemars(with = "Option<DurationText>")]
    pub request_timeout: Option<Raw>,
    /// Contact Keys remembered as already created (default 100000).
    #[schemars(with = "Option<WholeNumber>")]
    pub contact_cache: Option<Raw>,
    /// Contact Keys per /contacts/v1/establish call (default 100; 1: one
    /// /contacts/v1/contacts call per key).
    #[schemars(with = "Option<WholeNumber>")]
    pub contact_batch: Option<Raw>,
    /// Journey entries per /interaction/v1/async/events call (default 100; at most 100).
    #[schemars(with = "Option<WholeNumber>")]
    pub journey_batch: Option<Raw>,
    /// Rows waiting in a lane that go through the asynchronous rows API (default 200;
    /// 0: never; only when the request rate is limited).
    #[schemars(with = "Option<WholeNumber>")]
    pub async_threshold: Option<Raw>,
    /// Rows per asynchronous rows request (default 5000; SFMC's limit is 32000).
    #[schemars(with = "Option<WholeNumber>")]
    pub async_batch_rows: Option<Raw>,
    /// `run` only: how long to wait for an unavailable SFMC before writing what is left
    /// as `undelivered` dead letters (default 4h; `never`: wait for ever).
    #[schemars(with = "Option<DurationText>")]
    pub give_up_after: Option<Raw>,
    /// Retries of a failed request.
    pub retry: Option<Spanned<RetrySection>>,
}

/// Retries of a failed request (exponential backoff with jitter; Retry-After honoured).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Attempts per request (default 8).
    #[schemars(with = "Option<WholeNumber>")]
    pub attempts: Option<Raw>,
    /// Total time budget per request (default 10m).
    #[schemars(with = "Option<DurationText>")]
    pub within: Option<Raw>,
    /// First backoff delay (default 200ms).
    #[schemars(with = "Option<DurationText>")]
    pub base_delay: Option<Raw>,
    /// Longest backoff delay (default 30s).
    #[schemars(with = "Option<DurationText>")]
    pub max_delay: Option<Raw>,
    pub blocked_pause: Option<Raw>,
}

/// How keys become column names.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CasingSection {
    /// `title` (default: firstName -> First Name), `none`, `snake`, `camel`, `pascal`.
    #[schemars(with = "Option<CasingStyle>")]
    pub style: Option<Str>,
    /// Exact column names where the style is wrong (`utm_campaign: UTM Campaign`).
    pub overrides: Option<Spanned<IndexMap<Str, Str>>>,
}

/// Identify calls, and the Contact Key of every event.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentifySection {
    /// Event paths tried in order for the Contact Key; the first present wins.
    pub contact_key: Option<Spanned<Vec<Str>>>,
    /// Characters removed from the Contact Key (default ":"; SFMC does not allow colons).
    pub remove_from_contact_key: Option<Str>,
    /// Longer Contact Keys reject the event (default 254).
    #[schemars(with = "Option<WholeNumber>")]
    pub max_contact_key_length: Option<Raw>,
    /// Create the contact for each identify (default true; Segment's "Do Not Create or
    /// Update Contacts", inverted).
    #[schemars(with = "Option<Flag>")]
    pub create_contacts: Option<Raw>,
    /// Identify data extension external key: one row per identify. Empty: no rows.
    pub data_extension: Option<Str>,
    /// Add the context columns to identify rows (default true).
    #[schemars(with = "Option<Flag>")]
    pub include_context: Option<Raw>,
}

/// One mapping: events it matches become a data extension row and/or a Journey Builder
/// API event.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MappingSection {
    /// `track` (default), `page`, `screen`, `group`, `alias`, `identify`.
    #[serde(rename = "type")]
    #[schemars(with = "Option<EventType>")]
    pub kind: Option<Str>,
    /// Event name(s) for track; page/screen name(s); absent = every event of the type.
    pub event: Option<Spanned<OneOrMany>>,
    /// Data extension external key: upsert one row per event.
    pub data_extension: Option<Str>,
    /// The row's key column(s): `Order Id, Contact Key` or a list (default Contact Key).
    pub primary_key: Option<Spanned<OneOrMany>>,
    /// true: one key `Uuid` = the event's messageId (default false).
    #[schemars(with = "Option<Flag>")]
    pub uuid_primary_key: Option<Raw>,
    /// Journey Builder event definition key: fire an API event.
    pub api_event: Option<Str>,
    /// The properties (traits) that go into the API event's `Data`, an allow-list: each
    /// entry a key (`plan`: the field is the key after casing) or a one-entry mapping
    /// `{key: Field Name}` (a rename, like `casing.overrides`). Absent = every property.
    #[schemars(with = "Option<Vec<DataEntry>>")]
    pub data: Option<Spanned<Vec<Raw>>>,
    /// Add the context columns to the row (default true).
    #[schemars(with = "Option<Flag>")]
    pub include_context: Option<Raw>,
    /// A condition the event must meet for this mapping to apply.
    pub when: Option<Spanned<ConditionSection>>,
}

/// A `skip` or `reject` filter.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterSection {
    /// The filter applies when this condition holds.
    pub when: Option<Spanned<ConditionSection>>,
    /// The filter applies when this condition does not hold.
    pub unless: Option<Spanned<ConditionSection>>,
    /// Shown in the outcome (default: the filter's place and condition).
    pub reason: Option<Str>,
}

/// One condition: a test on a path, or a combination of conditions.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConditionSection {
    /// Dotted path (context.traits.test) or JSONPath ($.properties.products[*].sku).
    pub path: Option<Str>,
    /// Some value found equals this.
    pub equals: Option<Raw>,
    /// No value found equals this (also true when the path is missing).
    pub not_equals: Option<Raw>,
    /// Some value found is in this list.
    #[serde(rename = "in")]
    pub in_: Option<Spanned<Vec<Value>>>,
    /// No value found is in this list (also true when the path is missing).
    pub not_in: Option<Spanned<Vec<Value>>>,
    /// Some value found matches this regular expression (unanchored).
    pub matches: Option<Str>,
    /// true: some non-null value is found; false: none is.
    #[schemars(with = "Option<Flag>")]
    pub exists: Option<Raw>,
    /// Every condition holds.
    pub all: Option<Vec<Spanned<ConditionSection>>>,
    /// At least one condition holds.
    pub any: Option<Vec<Spanned<ConditionSection>>>,
    /// The condition does not hold.
    pub not: Option<Box<Spanned<ConditionSection>>>,
}
