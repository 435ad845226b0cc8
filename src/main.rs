//! The `sfmc-relay` command line: parses flags and calls into the library.

use clap::{Parser, Subcommand};
use sfmc_relay::commands;
use sfmc_relay::rules::{self, RuleErrors};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Transform { rules, input } => transform(rules.as_deref(), input.as_deref()),
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

fn transform(rules_dir: Option<&Path>, input: Option<&Path>) -> ExitCode {
    let program = match load_rules(rules_dir) {
        Ok(l) => Arc::new(l.program),
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
    let version = program.version.clone();
    match commands::transform::run(&mut reader, &mut out, &mut || program.clone()) {
        Ok(c) => {
            eprintln!(
                "transform: {} events from {} lines: {} calls, {} skipped, {} rejected (rules {version})",
                c.events, c.lines, c.calls, c.skipped, c.rejected
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
