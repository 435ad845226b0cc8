//! The shape of one rule file, as written by users (before validation).
//!
//! Every field is optional: a rule set is a directory of files that are merged, and each
//! top-level key may be defined in exactly one file. Values that need semantic checks
//! (durations, numbers that may come from `${ENV}`, JSONPaths) are kept as spanned raw
//! values here and checked in `compile.rs`, which names `file:line:col` for every error.

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::Value;
pub use serde_saphyr::Spanned;

/// A spanned string.
pub type Str = Spanned<String>;
/// A spanned raw scalar or structure (numbers, booleans, durations, `${ENV}` strings).
pub type Raw = Spanned<Value>;

/// `value` or `[value, ...]`.
#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub sfmc: Option<Spanned<SfmcSection>>,
    pub delivery: Option<Spanned<DeliverySection>>,
    pub casing: Option<Spanned<CasingSection>>,
    pub nested: Option<Str>,
    pub nulls: Option<Str>,
    pub dates: Option<Spanned<Vec<Str>>>,
    pub context_columns: Option<Spanned<IndexMap<Str, Str>>>,
    pub identify: Option<Spanned<IdentifySection>>,
    pub track: Option<Spanned<Vec<Spanned<MappingSection>>>>,
    pub skip: Option<Spanned<Vec<Spanned<FilterSection>>>>,
    pub reject: Option<Spanned<Vec<Spanned<FilterSection>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SfmcSection {
    pub subdomain: Option<Str>,
    pub account_id: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    pub batch_rows: Option<Raw>,
    pub batch_bytes: Option<Raw>,
    pub linger: Option<Raw>,
    pub requests_per_second: Option<Raw>,
    pub max_in_flight: Option<Raw>,
    pub request_timeout: Option<Raw>,
    pub contact_cache: Option<Raw>,
    pub contact_batch: Option<Raw>,
    pub journey_batch: Option<Raw>,
    pub async_threshold: Option<Raw>,
    pub async_batch_rows: Option<Raw>,
    pub give_up_after: Option<Raw>,
    pub retry: Option<Spanned<RetrySection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    pub attempts: Option<Raw>,
    pub within: Option<Raw>,
    pub base_delay: Option<Raw>,
    pub max_delay: Option<Raw>,
    pub blocked_pause: Option<Raw>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasingSection {
    pub style: Option<Str>,
    pub overrides: Option<Spanned<IndexMap<Str, Str>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentifySection {
    pub contact_key: Option<Spanned<Vec<Str>>>,
    pub remove_from_contact_key: Option<Str>,
    pub max_contact_key_length: Option<Raw>,
    pub create_contacts: Option<Raw>,
    pub data_extension: Option<Str>,
    pub include_context: Option<Raw>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingSection {
    /// `track` (default), `page`, `screen`, `group`, `alias`, `identify`.
    #[serde(rename = "type")]
    pub kind: Option<Str>,
    /// Event name(s) for track; page/screen name(s); absent = every event of the type.
    pub event: Option<Spanned<OneOrMany>>,
    pub data_extension: Option<Str>,
    pub primary_key: Option<Spanned<OneOrMany>>,
    pub uuid_primary_key: Option<Raw>,
    pub api_event: Option<Str>,
    /// The properties (traits) that go into the API event's `Data`, an allow-list: each
    /// entry a key (`plan`: the field is the key after casing) or a one-entry mapping
    /// `{key: Field Name}` (a rename, like `casing.overrides`). Absent = every property.
    pub data: Option<Spanned<Vec<Raw>>>,
    pub include_context: Option<Raw>,
    pub when: Option<Spanned<ConditionSection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSection {
    pub when: Option<Spanned<ConditionSection>>,
    pub unless: Option<Spanned<ConditionSection>>,
    pub reason: Option<Str>,
}

/// One condition: a test on a path, or a combination of conditions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSection {
    pub path: Option<Str>,
    pub equals: Option<Raw>,
    pub not_equals: Option<Raw>,
    #[serde(rename = "in")]
    pub in_: Option<Spanned<Vec<Value>>>,
    pub not_in: Option<Spanned<Vec<Value>>>,
    pub matches: Option<Str>,
    pub exists: Option<Raw>,
    pub all: Option<Vec<Spanned<ConditionSection>>>,
    pub any: Option<Vec<Spanned<ConditionSection>>>,
    pub not: Option<Box<Spanned<ConditionSection>>>,
}
