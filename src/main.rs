//! The `sfmc-relay` command line: parses flags and calls into the library.

use clap::{Parser, Subcommand};
use sfmc_relay::commands;
use sfmc_relay::rules::live::LiveRules;
use sfmc_relay::rules::{self, RuleErrors};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit codes (documented in the README).
mod exit {
    pub const OK: u8 = 0;
    pub const IO: u8 = 1;
    pub const CONFIG: u8 = 2;
}

#[derive(Parser)]
#[command(
    name = "sfmc-relay",
    version,
    about = "Relay Segment-spec analytics events to Salesforce Marketing Cloud, driven by YAML rules",
    long_about = "Relay Segment-spec analytics events (identify, track, page, screen, group, alias) \
to Salesforce Marketing Cloud's REST API. What goes where is decided by YAML rule files \
(see docs/rules.md); without --rules the embedded default rules are used, which behave like \
Segment's classic SFMC destination.\n\nCredentials come from the environment only \
(SFMC_CLIENT_ID, SFMC_CLIENT_SECRET); they are never printed."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the SFMC calls each event causes (NDJSON, one line per call, unbatched); sends nothing
    Transform {
        /// Rules directory (every *.yaml/*.yml in it); default: the embedded default rules
        #[arg(long, value_name = "DIR")]
        rules: Option<PathBuf>,
        /// NDJSON events (one per line, or {"batch":[...]} envelopes); default: stdin
        #[arg(long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// Do not watch the rules directory for changes (SIGHUP still reloads)
        #[arg(long)]
        no_watch: bool,
    },
    /// Validate a rule set without running it: every error and likely mistake, with file:line:col
    ///
    /// Exit status: 0 valid (warnings allowed), 1 invalid.
    Check {
        /// Rules directory; default: the embedded default rules
        #[arg(long, value_name = "DIR")]
        rules: Option<PathBuf>,
        /// Output format: human (default) or json (for editors and CI)
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Show, for each event, which rules matched and why, every key renamed or value dropped, the primary key and the SFMC calls
    Explain {
        /// Rules directory; default: the embedded default rules
        #[arg(long, value_name = "DIR")]
        rules: Option<PathBuf>,
        /// NDJSON events; default: stdin
        #[arg(long, value_name = "FILE")]
        input: Option<PathBuf>,
    },
    /// Run golden cases (CASES_DIR/<case>/{input,expected}.ndjson, optional rules/ and env)
    ///
    /// Exit status: 0 if every case passed, 1 otherwise (or when there are no cases).
    Test {
        /// Rules for cases without their own rules/ directory; default: the embedded rules
        #[arg(long, value_name = "DIR")]
        rules: Option<PathBuf>,
        /// Directory holding one sub-directory per case
        #[arg(value_name = "CASES_DIR")]
        cases: PathBuf,
        /// Rewrite expected.ndjson of failing cases with the actual output
        #[arg(long)]
        update: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Human,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Transform {
            rules,
            input,
            no_watch,
        } => transform(rules, input.as_deref(), !no_watch),
        Command::Check { rules, format } => check(rules.as_deref(), format),
        Command::Explain { rules, input } => explain(rules.as_deref(), input.as_deref()),
        Command::Test {
            rules,
            cases,
            update,
        } => test(rules.as_deref(), &cases, update),
    }
}

fn check(rules_dir: Option<&Path>, format: Format) -> ExitCode {
    let report = commands::check::check(rules_dir, &rules::process_env);
    let what = rules_dir.map_or(rules::EMBEDDED_NAME.to_string(), |d| {
        d.display().to_string()
    });
    let mut out = std::io::stdout().lock();
    let printed = match format {
        Format::Human => commands::check::print_human(&mut out, &report, &what),
        Format::Json => commands::check::print_json(&mut out, &report),
    };
    if let Err(e) = printed {
        eprintln!("sfmc-relay: {e}");
        return ExitCode::from(exit::IO);
    }
    ExitCode::from(if report.valid { exit::OK } else { 1 })
}

fn explain(rules_dir: Option<&Path>, input: Option<&Path>) -> ExitCode {
    let program = match load_rules(rules_dir) {
        Ok(l) => l.program,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let mut reader = match open_input(input) {
        Ok(r) => BufReader::new(r),
        Err(e) => {
            eprintln!("sfmc-relay: {e}");
            return ExitCode::from(exit::IO);
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match commands::explain::run(&mut reader, &mut out, &program) {
        Ok(_) => ExitCode::from(exit::OK),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("sfmc-relay: {e}");
            ExitCode::from(exit::IO)
        }
    }
}

fn test(rules_dir: Option<&Path>, cases: &Path, update: bool) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match commands::test::run(&mut out, rules_dir, cases, update) {
        Ok(true) => ExitCode::from(exit::OK),
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sfmc-relay: {e}");
            ExitCode::from(exit::IO)
        }
    }
}

fn load_rules(dir: Option<&Path>) -> Result<rules::Loaded, RuleErrors> {
    let loaded = rules::load(dir, &rules::process_env, 1)?;
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
    Ok(loaded)
}

fn open_input(path: Option<&Path>) -> std::io::Result<Box<dyn Read>> {
    Ok(match path {
        Some(p) => Box::new(std::fs::File::open(p).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot open {}: {e}", p.display()))
        })?),
        None => Box::new(std::io::stdin()),
    })
}

fn transform(rules_dir: Option<PathBuf>, input: Option<&Path>, watch: bool) -> ExitCode {
    let live = match LiveRules::start(rules_dir, watch) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let mut reader = match open_input(input) {
        Ok(r) => BufReader::with_capacity(64 * 1024, r),
        Err(e) => {
            eprintln!("sfmc-relay: {e}");
            return ExitCode::from(exit::IO);
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    // Every version that processed at least one line, in order.
    let mut used: Vec<String> = Vec::new();
    let mut current = || {
        let p = live.current();
        if used.last() != Some(&p.version) {
            used.push(p.version.clone());
        }
        p
    };
    let result = commands::transform::run(&mut reader, &mut out, &mut current);
    if used.is_empty() {
        used.push(live.version());
    }
    match result {
        Ok(c) => {
            eprintln!(
                "transform: {} events from {} lines: {} calls, {} skipped, {} rejected (rules {}; {} reload(s), {} failed)",
                c.events,
                c.lines,
                c.calls,
                c.skipped,
                c.rejected,
                used.join(" -> "),
                live.reloads(),
                live.failures()
            );
            ExitCode::from(exit::OK)
        }
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("sfmc-relay: {e}");
            ExitCode::from(exit::IO)
        }
    }
}
