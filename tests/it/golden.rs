//! Golden-file regression tests: input events + rules -> the exact SFMC calls.
//!
//! Suites: `tests/golden/default` (the repository's `rules/`), `tests/golden/ecommerce`
//! (`examples/ecommerce/rules`), `tests/golden/custom` (each case has its own `rules/`).
//! `UPDATE_GOLDEN=1 cargo test --test it golden::` rewrites the expectations.

use sfmc_relay::golden::{CaseOutcome, run_cases};
use std::path::Path;
use std::sync::Once;

/// Be in the crate root. The working directory is one per process, shared by every test in
/// this binary, so it is changed at most once, and only when the binary was started
/// elsewhere: `cargo test` already runs test binaries in the package root, and no other
/// test depends on the working directory (they use absolute paths, or set a child's).
fn at_crate_root() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        if std::env::current_dir().ok().as_deref() != Some(root) {
            std::env::set_current_dir(root).expect("cd to the crate root");
        }
    });
}

fn suite(cases: &str, rules: Option<&str>) -> usize {
    // Rule file names appear in the output (a filter's default reason names its
    // `file:line:col`), so cases are read by paths relative to the crate root: the
    // expectations must not depend on where the repository is checked out.
    at_crate_root();
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
