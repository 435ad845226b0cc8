//! One NDJSON line -> `transform` with the default rules and the example e-commerce rules.
//! Invariants checked: no panic, one output line or more per event, every output line is
//! JSON, no Contact Key with a colon or empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sfmc_relay::commands::transform;
use sfmc_relay::rules::{self, Program};
use std::io::BufReader;
use std::sync::{Arc, OnceLock};

fn programs() -> &'static [Arc<Program>] {
    static P: OnceLock<Vec<Arc<Program>>> = OnceLock::new();
    P.get_or_init(|| {
        let env = |name: &str| (name == "SFMC_IDENTIFY_DE").then(|| "identify_rows".to_string());
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        vec![
            Arc::new(rules::load(None, &env, 1).expect("default rules").program),
            Arc::new(
                rules::load(Some(&root.join("examples/ecommerce/rules")), &env, 1)
                    .expect("example rules")
                    .program,
            ),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    // One line: a newline in the input would make it several.
    let line: Vec<u8> = data.iter().copied().filter(|b| *b != b'\n').collect();
    // Blank as `event::parse_line` sees it (`str::trim`: Unicode white space, so a lone
    // vertical tab is blank too — the first "crash" the fuzzer found was this check).
    let blank = std::str::from_utf8(&line).is_ok_and(|s| s.trim().is_empty());
    for p in programs() {
        let mut out = Vec::new();
        let mut reader = BufReader::new(&line[..]);
        let p2 = p.clone();
        let counts = transform::run(&mut reader, &mut out, &mut || p2.clone()).expect("transform");
        let text = std::str::from_utf8(&out).expect("UTF-8 output");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("output line is JSON"))
            .collect();
        if !blank {
            assert!(!lines.is_empty(), "no outcome for a non-blank line");
        }
        assert!(lines.len() as u64 >= counts.events);
        for l in &lines {
            let body = &l["body"];
            for ck in [
                &body["contactKey"],
                &body["ContactKey"],
                &body[0]["keys"]["Contact Key"],
            ] {
                if let Some(s) = ck.as_str() {
                    assert!(
                        !s.trim().is_empty() && !s.contains(':'),
                        "bad Contact Key: {l}"
                    );
                }
            }
        }
    }
});
