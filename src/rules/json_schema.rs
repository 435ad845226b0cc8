//! The JSON Schema of a rule file, for editors (`sfmc-relay schema`).
//!
//! Generated from the rule types in [`super::schema`] with `schemars`, so it cannot drift
//! from what the loader reads: a field added there is in the schema (its doc comment is
//! the editor's hover text), and `deny_unknown_fields` becomes `additionalProperties:
//! false`. Values the loader checks after `${ENV}` interpolation (numbers, durations,
//! flags, the enumerated styles) accept an `${ENV}` string too. The schema is a help for
//! editing; `sfmc-relay check` stays the authority (spans, semantic checks: JSONPaths,
//! regexes, ranges, one definition per key across files).
//!
//! The types below only describe values in the schema; the loader never uses them.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use std::borrow::Cow;

/// Matches a string that holds an `${ENV}` reference.
const ENV_PATTERN: &str = r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}";

/// The JSON Schema of one rule file, as pretty-printed JSON. Draft 7: the draft every
/// editor's YAML support (yaml-language-server and others) understands.
pub fn rule_file_schema() -> String {
    let settings = schemars::generate::SchemaSettings::draft07();
    let schema = settings
        .into_generator()
        .into_root_schema_for::<super::schema::RuleFile>();
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serializes");
    text.push('\n');
    text
}

fn env_string() -> Schema {
    json_schema!({
        "type": "string",
        "pattern": ENV_PATTERN,
        "description": "an ${ENV} reference, checked after interpolation"
    })
}

macro_rules! hint {
    ($name:ident, $doc:literal, $schema:expr) => {
        #[doc = $doc]
        pub struct $name;
        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                $schema
            }
        }
    };
}

hint!(
    WholeNumber,
    "A whole number, or `${ENV}` text that becomes one.",
    json_schema!({
        "description": "a whole number (or an ${ENV} reference to one)",
        "anyOf": [
            {"type": "integer", "minimum": 0},
            {"type": "string", "pattern": r"^\s*[0-9][0-9_]*\s*$"},
            env_string()
        ]
    })
);

hint!(
    DurationText,
    "A duration such as `200ms`, `5s`, `10m`, `1h`, or `${ENV}` text that becomes one.",
    json_schema!({
        "description": "a duration: 200ms, 5s, 10m, 1h (or an ${ENV} reference to one)",
        "anyOf": [
            {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*(ms|s|m|min|h)\s*$"},
            env_string()
        ]
    })
);

hint!(
    Flag,
    "`true`/`false` (also `yes`/`no`, `on`/`off`), or `${ENV}` text that becomes one.",
    json_schema!({
        "description": "true or false (or an ${ENV} reference to one)",
        "anyOf": [
            {"type": "boolean"},
            {"enum": ["true", "false", "yes", "no", "on", "off"]},
            env_string()
        ]
    })
);

hint!(
    DataEntry,
    "One entry of an API event's `data:` allow-list.",
    json_schema!({
        "description": "a property key (`plan`), or a one-entry mapping that renames it (`{plan: Plan Name}`)",
        "anyOf": [
            {"type": "string"},
            {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "additionalProperties": {"type": "string"}
            }
        ]
    })
);

hint!(
    CasingStyle,
    "How keys become column names.",
    json_schema!({
        "description": "how keys become column names: title (First Name), none, snake (first_name), camel (firstName), pascal (FirstName)",
        "anyOf": [{"enum": ["title", "none", "snake", "camel", "pascal"]}, env_string()]
    })
);

hint!(
    NestedMode,
    "What happens to nested objects and arrays.",
    json_schema!({
        "description": "drop: nested objects and arrays are left out; flatten: address.city becomes Address City",
        "anyOf": [{"enum": ["drop", "flatten"]}, env_string()]
    })
);

hint!(
    NullsMode,
    "What happens to null values.",
    json_schema!({
        "description": "drop: null values are left out; empty: sent as \"\"",
        "anyOf": [{"enum": ["drop", "empty"]}, env_string()]
    })
);

hint!(
    EventType,
    "The event type a mapping applies to.",
    json_schema!({
        "description": "the event type this mapping applies to (default track)",
        "anyOf": [
            {"enum": ["track", "page", "screen", "group", "alias", "identify"]},
            env_string()
        ]
    })
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_json_with_the_top_level_sections() {
        let v: serde_json::Value = serde_json::from_str(&rule_file_schema()).unwrap();
        assert_eq!(v["additionalProperties"], false, "{v:#}");
        for key in [
            "sfmc", "delivery", "casing", "identify", "track", "skip", "reject",
        ] {
            assert!(v["properties"].get(key).is_some(), "no {key} in {v:#}");
        }
    }
}
