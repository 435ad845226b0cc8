//! `sfmc-relay test`: run users' golden cases (see [`crate::golden`]).

use crate::golden::{CaseOutcome, Report, run_cases};
use std::io::Write;
use std::path::Path;

/// Run the cases under `cases_dir` and print PASS/FAIL per case, the diff of each failing
/// case, and `N passed, M failed`. Returns whether every case passed (and there was one).
pub fn run(
    out: &mut dyn Write,
    rules: Option<&Path>,
    cases_dir: &Path,
    update: bool,
) -> std::io::Result<bool> {
    let report: Report = run_cases(rules, cases_dir, update).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot read cases directory {}: {e}", cases_dir.display()),
        )
    })?;
    for c in &report.cases {
        match &c.outcome {
            CaseOutcome::Passed => writeln!(out, "PASS {}", c.name)?,
            CaseOutcome::Updated => {
                writeln!(out, "UPDATED {} (expected.ndjson rewritten)", c.name)?
            }
            CaseOutcome::Failed(diff) => {
                writeln!(out, "FAIL {}", c.name)?;
                for line in diff.lines() {
                    writeln!(out, "    {line}")?;
                }
            }
            CaseOutcome::Error(e) => {
                writeln!(out, "FAIL {} (could not run)", c.name)?;
                for line in e.lines() {
                    writeln!(out, "    {line}")?;
                }
            }
        }
    }
    if report.cases.is_empty() {
        writeln!(
            out,
            "no cases under {} (a case is a directory with input.ndjson and expected.ndjson)",
            cases_dir.display()
        )?;
    }
    writeln!(
        out,
        "{} passed, {} failed",
        report.passed(),
        report.failed()
    )?;
    Ok(report.failed() == 0 && !report.cases.is_empty())
}
