//! Golden-file regression tests: input events + rules -> the exact SFMC calls.
//!
//! Suites: `tests/golden/default` (the repository's `rules/`), `tests/golden/ecommerce`
//! (`examples/ecommerce/rules`), `tests/golden/custom` (each case has its own `rules/`).
//! `UPDATE_GOLDEN=1 cargo test --test golden` rewrites the expectations.

use sfmc_relay::golden::{CaseOutcome, run_cases};
use std::path::Path;

fn suite(cases: &str, rules: Option<&str>) -> usize {
    // Rule file names appear in the output (a filter's default reason names its
    // `file:line:col`), so cases are read by paths relative to the crate root: the
    // expectations must not depend on where the repository is checked out.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(root).expect("cd to the crate root");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let rules = rules.map(Path::new);
    let report = run_cases(rules, Path::new(cases), update).expect("cases directory");
    let mut failures = Vec::new();
    for c in &report.cases {
        match &c.outcome {
            CaseOutcome::Passed => {}
            CaseOutcome::Updated => eprintln!("updated {cases}/{}", c.name),
            CaseOutcome::Failed(diff) => {
                failures.push(format!("--- case {cases}/{} differs:\n{diff}", c.name))
            }
            CaseOutcome::Error(e) => {
                failures.push(format!("--- case {cases}/{} could not run: {e}", c.name))
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden case(s) failed (UPDATE_GOLDEN=1 rewrites them):\n{}",
        failures.len(),
        failures.join("\n")
    );
    report.cases.len()
}

#[test]
fn golden_default_rules() {
    assert!(suite("tests/golden/default", Some("rules")) > 0);
}

#[test]
fn golden_ecommerce_rules() {
    assert!(suite("tests/golden/ecommerce", Some("examples/ecommerce/rules")) > 0);
}

#[test]
fn golden_custom_rules() {
    assert!(suite("tests/golden/custom", None) > 0);
}
