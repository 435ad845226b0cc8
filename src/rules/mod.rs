//! The rule language: YAML files -> a compiled [`Program`].
//!
//! - `schema.rs`: the file shape (serde-saphyr, spans kept for errors)
//! - `compile.rs`: merging, validation, compilation (every error with `file:line:col`)
//! - `program.rs`: the compiled, immutable program the interpreter runs
//! - `casing.rs`, `path.rs`, `condition.rs`, `dates.rs`, `env.rs`: the pieces

pub mod casing;
pub mod compile;
pub mod condition;
pub mod dates;
pub mod diag;
pub mod env;
pub mod json_schema;
pub mod lint;
pub mod live;
pub mod path;
pub mod program;
pub mod schema;

pub use compile::SourceFile;
pub use diag::{Diagnostic, RuleErrors, Severity};
pub use program::Program;

use crate::env::Env;
use std::hash::{Hash, Hasher};
use std::path::Path;

/// The default rules (the repository's `rules/` directory), embedded in the binary.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("casing.yaml", include_str!("../../rules/casing.yaml")),
    ("context.yaml", include_str!("../../rules/context.yaml")),
    ("events.yaml", include_str!("../../rules/events.yaml")),
    ("filters.yaml", include_str!("../../rules/filters.yaml")),
    ("identify.yaml", include_str!("../../rules/identify.yaml")),
    ("settings.yaml", include_str!("../../rules/settings.yaml")),
];

/// Name shown for the embedded rule set.
pub const EMBEDDED_NAME: &str = "<embedded default rules>";

/// The embedded default rule files.
pub fn embedded_sources() -> Vec<SourceFile> {
    EMBEDDED
        .iter()
        .map(|(name, text)| SourceFile {
            name: format!("<embedded>/{name}"),
            text: text.to_string(),
        })
        .collect()
}

/// The demo rule set (the repository's `examples/ecommerce/rules`: the defaults with what
/// a shop configures on top), embedded for the first run: `run` and `replay` use it when
/// neither `--rules` nor SFMC credentials are given (the built-in simulator), so that a
/// newcomer sees rows, contacts and a journey entry land. Never used for a real account.
pub const DEMO: &[(&str, &str)] = &[
    (
        "casing.yaml",
        include_str!("../../examples/ecommerce/rules/casing.yaml"),
    ),
    (
        "context.yaml",
        include_str!("../../examples/ecommerce/rules/context.yaml"),
    ),
    (
        "events.yaml",
        include_str!("../../examples/ecommerce/rules/events.yaml"),
    ),
    (
        "filters.yaml",
        include_str!("../../examples/ecommerce/rules/filters.yaml"),
    ),
    (
        "identify.yaml",
        include_str!("../../examples/ecommerce/rules/identify.yaml"),
    ),
    (
        "settings.yaml",
        include_str!("../../examples/ecommerce/rules/settings.yaml"),
    ),
];

/// Name shown for the embedded demo rule set.
pub const DEMO_NAME: &str = "<embedded demo rules>";

/// The embedded demo rule files (see [`DEMO`]).
pub fn demo_sources() -> Vec<SourceFile> {
    DEMO.iter()
        .map(|(name, text)| SourceFile {
            name: format!("<embedded demo>/{name}"),
            text: text.to_string(),
        })
        .collect()
}

/// Whether a directory entry is a rule file (not an editor's temp or backup file).
pub fn is_rule_file(name: &str) -> bool {
    (name.ends_with(".yaml") || name.ends_with(".yml"))
        && !name.starts_with('.')
        && !name.starts_with('#')
        && !name.ends_with('~')
}

/// Read every `*.yaml`/`*.yml` file of `dir` (not recursive), sorted by name.
pub fn read_dir(dir: &Path) -> Result<Vec<SourceFile>, RuleErrors> {
    let fail = |message: String| {
        RuleErrors(vec![Diagnostic {
            severity: Severity::Error,
            file: dir.display().to_string(),
            line: 0,
            column: 0,
            message,
            source_line: None,
        }])
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| fail(format!("cannot read rules directory: {e}")))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| fail(format!("cannot read rules directory: {e}")))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_rule_file(&name) && entry.path().is_file() {
            names.push(name);
        }
    }
    names.sort();
    if names.is_empty() {
        return Err(fail(
            "no rule files (*.yaml, *.yml) in this directory".to_string(),
        ));
    }
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(&name);
        let bytes = std::fs::read(&path)
            .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
        let text = String::from_utf8(bytes)
            .map_err(|e| fail(format!("{} is not UTF-8 text: {e}", path.display())))?;
        files.push(SourceFile {
            name: path.display().to_string(),
            text,
        });
    }
    Ok(files)
}

/// A short content hash of a rule set (file names and texts).
pub fn content_hash(files: &[SourceFile]) -> String {
    // FNV-1a: stable across runs and platforms (std's hasher is not guaranteed to be).
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    for f in files {
        let base = f.name.rsplit(['/', '\\']).next().unwrap_or(&f.name);
        base.hash(&mut h);
        f.text.hash(&mut h);
    }
    format!("{:08x}", h.finish() as u32)
}

/// A loaded rule set: the program plus warnings.
pub struct Loaded {
    pub program: Program,
    pub warnings: Vec<Diagnostic>,
}

/// Compile `files` as version number `counter`.
pub fn compile_sources(
    files: &[SourceFile],
    env: &Env,
    counter: u64,
) -> Result<Loaded, RuleErrors> {
    let version = format!("r{counter}-{}", content_hash(files));
    compile::compile(files, env, version)
        .map(|(program, warnings)| Loaded { program, warnings })
        .map_err(RuleErrors)
}

/// Load a rule set: a directory, or the embedded defaults when `dir` is `None`.
pub fn load(dir: Option<&Path>, env: &Env, counter: u64) -> Result<Loaded, RuleErrors> {
    let files = match dir {
        Some(d) => read_dir(d)?,
        None => embedded_sources(),
    };
    compile_sources(&files, env, counter)
}
