//! One rule file's bytes -> `rules::compile_sources` (alone, and merged with the default
//! rules' other files). Errors are fine; panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfmc_relay::rules::{self, SourceFile};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| match name {
        "SFMC_IDENTIFY_DE" => Some("identify_rows".to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    let file = SourceFile {
        name: "fuzz.yaml".into(),
        text: text.to_string(),
    };
    let _ = rules::compile_sources(std::slice::from_ref(&file), &env, 1);
    // As one file of the default rule set (it replaces the file it would clash with least).
    let mut files = rules::embedded_sources();
    files.retain(|f| !f.name.ends_with("events.yaml"));
    files.push(file);
    if let Ok(loaded) = rules::compile_sources(&files, &env, 2) {
        // A program that compiled must run on a simple event.
        let ev = serde_json::json!({"type":"track","event":"E","userId":"u","properties":{"a":1}});
        let _ = sfmc_relay::transform::transform(
            &loaded.program,
            &ev,
            &mut sfmc_relay::transform::Trace::off(),
        );
    }
});
