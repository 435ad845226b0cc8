//! Golden cases: input events + rules -> the exact SFMC calls, compared with a file.
//!
//! A cases directory holds one sub-directory per case:
//!
//! ```text
//! CASES_DIR/<case>/input.ndjson     events, as `transform` reads them
//! CASES_DIR/<case>/expected.ndjson  what `transform` must print for them
//! CASES_DIR/<case>/rules/           optional: this case's own rule set
//! CASES_DIR/<case>/env              optional: KEY=VALUE lines for ${ENV} in the rules
//! ```
//!
//! A case without `rules/` uses the rule set given on the command line (`--rules`).
//! Variables not in `env` fall back to the process environment.
//! Used by `sfmc-relay test` and by the project's own `tests/golden.rs`.

use crate::commands::transform;
use crate::env::Env;
use crate::rules::{self, SourceFile};
use crate::source::lines::LineReader;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug)]
pub struct CaseResult {
    pub name: String,
    pub outcome: CaseOutcome,
}

#[derive(Debug, PartialEq)]
pub enum CaseOutcome {
    Passed,
    /// Expected output rewritten (`--update`).
    Updated,
    /// Output differs: a unified diff, expected (-) vs actual (+).
    Failed(String),
    /// The case could not run (missing files, broken rules).
    Error(String),
}

#[derive(Debug, Default)]
pub struct Report {
    pub cases: Vec<CaseResult>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.count(|o| matches!(o, CaseOutcome::Passed | CaseOutcome::Updated))
    }
    pub fn failed(&self) -> usize {
        self.cases.len() - self.passed()
    }
    fn count(&self, f: impl Fn(&CaseOutcome) -> bool) -> usize {
        self.cases.iter().filter(|c| f(&c.outcome)).count()
    }
}

/// Run every case under `cases_dir` (sorted by name).
pub fn run_cases(
    default_rules: Option<&Path>,
    cases_dir: &Path,
    update: bool,
) -> std::io::Result<Report> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(cases_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("input.ndjson").is_file())
        .collect();
    dirs.sort();
    let mut report = Report::default();
    for dir in dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let outcome = run_case(default_rules, &dir, update);
        report.cases.push(CaseResult { name, outcome });
    }
    Ok(report)
}

fn read_env(dir: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(dir.join("env"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// What `transform` prints for this case's input.
pub fn actual_output(default_rules: Option<&Path>, dir: &Path) -> Result<String, String> {
    let own = dir.join("rules");
    let rules_dir: Option<&Path> = if own.is_dir() {
        Some(&own)
    } else {
        default_rules
    };
    let env = read_env(dir);
    let lookup = Env::process().with_overrides(env);
    let files: Vec<SourceFile> = match rules_dir {
        Some(d) => rules::read_dir(d).map_err(|e| e.to_string())?,
        None => rules::embedded_sources(),
    };
    let loaded = rules::compile_sources(&files, &lookup, 1).map_err(|e| e.to_string())?;
    let program = Arc::new(loaded.program);
    let input = std::fs::File::open(dir.join("input.ndjson")).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    transform::run(&mut LineReader::new(input), &mut out, &mut || {
        program.clone()
    })
    .map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

fn run_case(default_rules: Option<&Path>, dir: &Path, update: bool) -> CaseOutcome {
    let actual = match actual_output(default_rules, dir) {
        Ok(a) => a,
        Err(e) => return CaseOutcome::Error(e),
    };
    let expected_path = dir.join("expected.ndjson");
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    if expected == actual {
        return CaseOutcome::Passed;
    }
    if update {
        return match std::fs::write(&expected_path, &actual) {
            Ok(()) => CaseOutcome::Updated,
            Err(e) => CaseOutcome::Error(format!("cannot write {}: {e}", expected_path.display())),
        };
    }
    CaseOutcome::Failed(
        similar::TextDiff::from_lines(&expected, &actual)
            .unified_diff()
            .context_radius(2)
            .header("expected.ndjson", "actual")
            .to_string(),
    )
}
