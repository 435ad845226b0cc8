//! `sfmc-relay check`: validate a rule set without running it.
//!
//! Prints every error (not only the first) with `file:line:col`, the offending line and
//! what was expected, plus warnings about likely mistakes (see `rules::lint`). Valid means
//! no errors; warnings are allowed.

use crate::env::Env;
use crate::rules::{self, Diagnostic, Severity, SourceFile, lint};
use serde::Serialize;
use std::io::Write;
use std::path::Path;

/// The outcome of checking one rule set.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub valid: bool,
    /// The version id the rule set would get (`r1-<hash>`); `None` when the files could
    /// not be read.
    pub version: Option<String>,
    pub files: Vec<String>,
    pub errors: Vec<Entry>,
    pub warnings: Vec<Entry>,
}

/// One diagnostic, as in the JSON output.
#[derive(Debug, Serialize)]
pub struct Entry {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
    pub source_line: Option<String>,
    #[serde(skip)]
    pub rendered: String,
}

impl From<&Diagnostic> for Entry {
    fn from(d: &Diagnostic) -> Entry {
        Entry {
            file: d.file.clone(),
            line: d.line,
            column: d.column,
            message: d.message.clone(),
            source_line: d.source_line.clone(),
            rendered: d.to_string(),
        }
    }
}

/// Check `dir` (`None`: the embedded default rules) with `env` for `${ENV}` values.
pub fn check(dir: Option<&Path>, env: &Env) -> CheckReport {
    let files: Vec<SourceFile> = match dir {
        Some(d) => match rules::read_dir(d) {
            Ok(f) => f,
            Err(e) => {
                return CheckReport {
                    valid: false,
                    version: None,
                    files: Vec::new(),
                    errors: e.0.iter().map(Entry::from).collect(),
                    warnings: Vec::new(),
                };
            }
        },
        None => rules::embedded_sources(),
    };
    let names = files.iter().map(|f| f.name.clone()).collect();
    let version = Some(format!("r1-{}", rules::content_hash(&files)));
    let mut diags = match rules::compile_sources(&files, env, 1) {
        Ok(loaded) => {
            let mut d = loaded.warnings;
            d.extend(lint::lint(&files, &loaded.program));
            d
        }
        Err(e) => e.0,
    };
    // In file order (files are loaded sorted by name), then by position.
    let order = |d: &Diagnostic| files.iter().position(|f| f.name == d.file);
    diags.sort_by_key(|d| (order(d), d.line, d.column));
    let pick = |s: Severity| {
        diags
            .iter()
            .filter(|d| d.severity == s)
            .map(Entry::from)
            .collect::<Vec<_>>()
    };
    let errors = pick(Severity::Error);
    CheckReport {
        valid: errors.is_empty(),
        version,
        files: names,
        errors,
        warnings: pick(Severity::Warning),
    }
}

/// Print the report for people: every diagnostic, then one summary line.
pub fn print_human(out: &mut dyn Write, report: &CheckReport, what: &str) -> std::io::Result<()> {
    for e in report.errors.iter().chain(&report.warnings) {
        writeln!(out, "{}\n", e.rendered)?;
    }
    let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
    if report.valid {
        writeln!(
            out,
            "{what}: valid ({}, {}, version {}){}",
            plural(report.files.len(), "file"),
            plural(report.warnings.len(), "warning"),
            report.version.as_deref().unwrap_or("?"),
            if report.warnings.is_empty() {
                ""
            } else {
                "; warnings do not stop the rules from loading"
            }
        )
    } else {
        writeln!(
            out,
            "{what}: INVALID: {}, {}",
            plural(report.errors.len(), "error"),
            plural(report.warnings.len(), "warning")
        )
    }
}

/// Print the report as one JSON document.
pub fn print_json(out: &mut dyn Write, report: &CheckReport) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, report)?;
    writeln!(out)
}
