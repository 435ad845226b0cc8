//! Rule validation: every mistake is reported with its exact message and `file:line:col`,
//! and every mistake in a rule set is reported, not only the first.

use sfmc_relay::rules::{Diagnostic, Severity, SourceFile, compile_sources};

fn env() -> sfmc_relay::env::Env {
    sfmc_relay::env::Env::from_map([("ORDERS_DE", "orders")])
}

fn sources(files: &[(&str, &str)]) -> Vec<SourceFile> {
    files
        .iter()
        .map(|(name, text)| SourceFile {
            name: name.to_string(),
            text: text.to_string(),
        })
        .collect()
}

/// Every diagnostic (errors and warnings) of a rule set that must fail to compile.
fn diagnostics(files: &[(&str, &str)]) -> Vec<Diagnostic> {
    match compile_sources(&sources(files), &env(), 1) {
        Ok(_) => panic!("rule set compiled, but errors were expected"),
        Err(e) => e.0,
    }
}

/// The `file:line:col: severity: message` lines of a rule set that must fail.
fn headlines(files: &[(&str, &str)]) -> Vec<String> {
    diagnostics(files)
        .iter()
        .map(Diagnostic::headline)
        .collect()
}

fn one_error(files: &[(&str, &str)]) -> String {
    let h = headlines(files);
    assert_eq!(h.len(), 1, "expected exactly one diagnostic, got {h:#?}");
    h.into_iter().next().unwrap()
}

#[test]
fn unknown_key_names_the_allowed_keys() {
    let text = "track:\n  - event: Order Completed\n    data_extension: orders\n    primry_key: Order Id\n";
    assert_eq!(
        one_error(&[("events.yaml", text)]),
        "events.yaml:4:5: error: unknown field `primry_key`, expected one of: type, event, data_extension, primary_key, uuid_primary_key, api_event, data, include_context, when"
    );
}

#[test]
fn unknown_top_level_section() {
    let h = one_error(&[("a.yaml", "casing:\n  style: title\ntrak: []\n")]);
    assert!(
        h.starts_with("a.yaml:3:1: error: unknown field `trak`, expected one of: "),
        "{h}"
    );
}

#[test]
fn wrong_type() {
    assert_eq!(
        one_error(&[("casing.yaml", "casing:\n  style: [1]\n")]),
        "casing.yaml:2:10: error: expected string scalar"
    );
}

#[test]
fn unknown_casing_style() {
    assert_eq!(
        one_error(&[("casing.yaml", "casing:\n  style: kebab\n")]),
        "casing.yaml:2:10: error: unknown casing style \"kebab\": expected one of title, none, snake, camel, pascal"
    );
}

#[test]
fn bad_jsonpath() {
    let h = one_error(&[(
        "filters.yaml",
        "skip:\n  - when: { path: \"$.a[?\", exists: true }\n",
    )]);
    assert!(
        h.starts_with("filters.yaml:2:19: error: invalid JSONPath \"$.a[?\": "),
        "{h}"
    );
}

#[test]
fn bad_regex() {
    assert_eq!(
        one_error(&[(
            "filters.yaml",
            "reject:\n  - when: { path: userId, matches: \"(unclosed\" }\n"
        )]),
        "filters.yaml:2:36: error: invalid regular expression \"(unclosed\": unclosed group"
    );
}

#[test]
fn duplicate_mapping_in_one_file() {
    let text = "track:\n  - event: Order Completed\n    data_extension: orders\n  - event: Order Completed\n    data_extension: orders\n";
    assert_eq!(
        one_error(&[("events.yaml", text)]),
        "events.yaml:4:5: error: duplicate mapping: track \"Order Completed\" already goes to data extension orders at events.yaml:2:5"
    );
}

#[test]
fn duplicate_mapping_across_files_names_both_places() {
    let a = "track:\n  - event: Order Completed\n    data_extension: orders\n";
    let b = "# more events\ntrack:\n  - event: Signed Up\n    api_event: signup\n  - event: [Cart Viewed, Order Completed]\n    data_extension: ${ORDERS_DE}\n";
    assert_eq!(
        one_error(&[("a.yaml", a), ("b.yaml", b)]),
        "b.yaml:5:5: error: duplicate mapping: track \"Order Completed\" already goes to data extension orders at a.yaml:2:5"
    );
}

#[test]
fn duplicate_api_event_mapping() {
    let text = "track:\n  - event: Signed Up\n    api_event: signup\n  - event: Signed Up\n    api_event: signup\n";
    assert_eq!(
        one_error(&[("events.yaml", text)]),
        "events.yaml:4:5: error: duplicate mapping: track \"Signed Up\" already goes to api event signup at events.yaml:2:5"
    );
}

#[test]
fn same_mapping_with_when_is_not_a_duplicate() {
    let text = "track:\n  - event: Order Completed\n    data_extension: orders\n  - event: Order Completed\n    data_extension: orders\n    when: { path: properties.total, exists: true }\n";
    assert!(compile_sources(&sources(&[("events.yaml", text)]), &env(), 1).is_ok());
}

#[test]
fn same_section_in_two_files() {
    assert_eq!(
        one_error(&[
            ("a.yaml", "casing:\n  style: title\n"),
            ("b.yaml", "nulls: drop\ncasing:\n  style: snake\n"),
        ]),
        "b.yaml:3:3: error: `casing` is already defined at a.yaml:2:3; define each section in one file only"
    );
}

#[test]
fn lists_concatenate_across_files() {
    let a = "skip:\n  - when: { path: userId, equals: a }\ntrack:\n  - event: A\n    data_extension: a\n";
    let b = "skip:\n  - when: { path: userId, equals: b }\ntrack:\n  - event: B\n    data_extension: b\nreject:\n  - when: { path: userId, equals: c }\n";
    let loaded = compile_sources(&sources(&[("a.yaml", a), ("b.yaml", b)]), &env(), 1).unwrap();
    assert_eq!(loaded.program.skip.len(), 2);
    assert_eq!(loaded.program.reject.len(), 1);
    assert_eq!(loaded.program.mappings.len(), 2);
}

#[test]
fn yaml_syntax_error() {
    assert_eq!(
        one_error(&[("events.yaml", "track:\n  - event: [Order Completed\n")]),
        "events.yaml:2:12: error: unclosed bracket '['"
    );
}

#[test]
fn duplicate_yaml_key() {
    assert_eq!(
        one_error(&[("casing.yaml", "nulls: drop\nnulls: empty\n")]),
        "casing.yaml:2:1: error: duplicate mapping key: nulls"
    );
}

#[test]
fn missing_env_var_without_default() {
    assert_eq!(
        one_error(&[(
            "identify.yaml",
            "identify:\n  data_extension: ${PEOPLE_DE}\n"
        )]),
        "identify.yaml:2:19: error: environment variable PEOPLE_DE is not set (write `${PEOPLE_DE:-default}` to give a default)"
    );
}

#[test]
fn env_var_with_default_and_set_var_compile() {
    let text = "identify:\n  data_extension: ${PEOPLE_DE:-people}\ntrack:\n  - event: Order Completed\n    data_extension: ${ORDERS_DE}\n";
    let loaded = compile_sources(&sources(&[("a.yaml", text)]), &env(), 1).unwrap();
    assert_eq!(
        loaded.program.identify.data_extension.as_deref(),
        Some("people")
    );
    assert_eq!(
        loaded.program.mappings[0].data_extension.as_deref(),
        Some("orders")
    );
}

#[test]
fn bad_duration() {
    assert_eq!(
        one_error(&[("settings.yaml", "delivery:\n  linger: 5 parsecs\n")]),
        "settings.yaml:2:11: error: expected a duration like 200ms, 5s, 10m or 1h, found \"5 parsecs\""
    );
}

#[test]
fn out_of_range_number() {
    assert_eq!(
        one_error(&[("settings.yaml", "delivery:\n  batch_rows: 20000\n")]),
        "settings.yaml:2:15: error: 20000 is out of range: expected 1 to 10000"
    );
}

#[test]
fn mapping_that_sends_nothing() {
    assert_eq!(
        headlines(&[(
            "events.yaml",
            "track:\n  - event: Order Completed\n    primary_key: Order Id\n"
        )]),
        vec![
            "events.yaml:2:5: error: mapping sends nothing: expected `data_extension:` (a data extension external key) and/or `api_event:` (an event definition key)",
            "events.yaml:3:18: warning: `primary_key` has no effect without `data_extension`",
        ]
    );
}

#[test]
fn track_mapping_without_event() {
    assert_eq!(
        one_error(&[("events.yaml", "track:\n  - data_extension: orders\n")]),
        "events.yaml:2:5: error: a track mapping needs `event:` (the event name, e.g. `event: Order Completed`)"
    );
}

#[test]
fn event_on_a_group_mapping() {
    assert_eq!(
        one_error(&[(
            "events.yaml",
            "track:\n  - type: group\n    event: Acme\n    data_extension: groups\n"
        )]),
        "events.yaml:3:12: error: `event:` cannot be used with type group: only track, page and screen events have names"
    );
}

#[test]
fn unknown_event_type() {
    assert_eq!(
        one_error(&[(
            "events.yaml",
            "track:\n  - type: pageview\n    data_extension: pages\n"
        )]),
        "events.yaml:2:11: error: unknown event type \"pageview\": expected one of identify, track, page, screen, group, alias"
    );
}

#[test]
fn condition_with_two_tests() {
    assert_eq!(
        one_error(&[(
            "filters.yaml",
            "skip:\n  - when: { path: userId, equals: a, matches: b }\n"
        )]),
        "filters.yaml:2:19: error: a `path:` condition needs exactly one test (equals, not_equals, in, not_in, matches, exists); found equals, matches"
    );
}

#[test]
fn condition_with_path_and_all() {
    assert_eq!(
        one_error(&[(
            "filters.yaml",
            "skip:\n  - when:\n      path: userId\n      all: []\n"
        )]),
        "filters.yaml:3:7: error: a condition needs exactly one of `path:` (with one of equals, not_equals, in, not_in, matches, exists), `all:`, `any:` or `not:`"
    );
}

#[test]
fn filter_without_condition() {
    assert_eq!(
        one_error(&[("filters.yaml", "reject:\n  - reason: no condition\n")]),
        "filters.yaml:2:5: error: `reject` entry needs `when:` or `unless:` (a condition such as `{ path: $.userId, equals: test }`)"
    );
}

#[test]
fn unknown_nested_and_nulls_values() {
    let mut h = headlines(&[("casing.yaml", "nested: keep\nnulls: zero\n")]);
    h.sort();
    assert_eq!(
        h,
        vec![
            "casing.yaml:1:9: error: unknown `nested` value \"keep\": expected drop or flatten",
            "casing.yaml:2:8: error: unknown `nulls` value \"zero\": expected drop or empty",
        ]
    );
}

#[test]
fn every_error_is_reported_not_only_the_first() {
    let settings = "casing:\n  style: kebab\ndelivery:\n  linger: soon\n  batch_rows: 0\n";
    let events = "track:\n  - event: A\n  - type: group\n    event: G\n    data_extension: groups\nskip:\n  - when: { path: userId }\n  - when: { path: userId, matches: \"[\" }\n";
    let mut got = headlines(&[("settings.yaml", settings), ("events.yaml", events)]);
    got.sort();
    let mut want = vec![
        "settings.yaml:2:10: error: unknown casing style \"kebab\": expected one of title, none, snake, camel, pascal",
        "settings.yaml:4:11: error: expected a duration like 200ms, 5s, 10m or 1h, found \"soon\"",
        "settings.yaml:5:15: error: 0 is out of range: expected 1 to 10000",
        "events.yaml:2:5: error: mapping sends nothing: expected `data_extension:` (a data extension external key) and/or `api_event:` (an event definition key)",
        "events.yaml:4:12: error: `event:` cannot be used with type group: only track, page and screen events have names",
        "events.yaml:7:19: error: a `path:` condition needs exactly one test (equals, not_equals, in, not_in, matches, exists); found none",
        "events.yaml:8:36: error: invalid regular expression \"[\": unclosed character class",
    ];
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn errors_in_several_files_are_all_reported() {
    // A syntax error in one file does not hide the mistakes in the others.
    let mut got = headlines(&[
        ("a.yaml", "track:\n  - event: [A\n"),
        ("b.yaml", "casing:\n  style: kebab\n"),
        ("c.yaml", "identify:\n  data_extension: ${NOPE}\n"),
    ]);
    got.sort();
    assert_eq!(
        got,
        vec![
            "a.yaml:2:12: error: unclosed bracket '['",
            "b.yaml:2:10: error: unknown casing style \"kebab\": expected one of title, none, snake, camel, pascal",
            "c.yaml:2:19: error: environment variable NOPE is not set (write `${NOPE:-default}` to give a default)",
        ]
    );
}

#[test]
fn diagnostic_shows_the_source_line_with_a_caret() {
    let d = diagnostics(&[("casing.yaml", "# casing\ncasing:\n  style: kebab\n")]);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].severity, Severity::Error);
    assert_eq!(
        (d[0].file.as_str(), d[0].line, d[0].column),
        ("casing.yaml", 3, 10)
    );
    assert_eq!(d[0].source_line.as_deref(), Some("  style: kebab"));
    assert_eq!(
        d[0].to_string(),
        "casing.yaml:3:10: error: unknown casing style \"kebab\": expected one of title, none, snake, camel, pascal\n  |\n3 |   style: kebab\n  |          ^"
    );
}
