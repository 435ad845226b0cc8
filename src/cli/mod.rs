//! The `sfmc-relay` command line over the library: [`flags`] defines the flags (one struct
//! per subcommand) and turns them into the library's options; the functions here run one
//! subcommand each and say how it ended ([`ExitStatus`]). `main.rs` only parses the
//! flags and calls these.
//!
//! Every function prints its errors on standard error, as `sfmc-relay: ...` (rule errors
//! as `file:line:col: error: ...`), and maps them to the documented exit statuses.

pub mod flags;
pub mod summary;

pub use flags::{Cli, Command};
pub use summary::InputUnit;

use crate::commands::{self, run::RunError, run::RunSummary};
use crate::env::Env;
use crate::exit::ExitStatus;
use crate::rules::live::{LiveRules, ReloadEvent};
use crate::rules::{self, RuleErrors};
use crate::source::lines::{LineReader, open_input};
use flags::{
    CheckArgs, CorpusArgs, ExplainArgs, Format, ReplayArgs, RunArgs, ServeArgs, SimArgs, TestArgs,
    TransformArgs,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// `sfmc-relay transform`.
pub fn transform(args: TransformArgs) -> ExitStatus {
    let live = match start_rules(args.rules, !args.no_watch) {
        Ok(l) => l,
        Err(status) => return status,
    };
    let mut reader = match open_input(args.input.as_deref()) {
        Ok(r) => LineReader::new(r),
        Err(e) => return io_error(&e),
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
        Ok(counts) => {
            eprintln!("{}", summary::transform(&counts, &used, &live));
            ExitStatus::Success
        }
        Err(e) => output_error(&e),
    }
}

/// `sfmc-relay run`.
pub fn run(args: RunArgs, env: &Env) -> ExitStatus {
    let (opts, watch) = (args.run_options(env), args.watch());
    deliver(args.rules, watch, opts, args.delivery.strict)
}

/// `sfmc-relay replay`.
pub fn replay(args: ReplayArgs, env: &Env) -> ExitStatus {
    let (opts, watch) = (args.run_options(env), args.watch());
    deliver(args.rules, watch, opts, args.delivery.strict)
}

fn deliver(
    rules: Option<PathBuf>,
    watch: bool,
    opts: commands::run::RunOptions,
    strict: bool,
) -> ExitStatus {
    // The first run (no rules, no account: the built-in simulator) shows everything land.
    let demo = rules.is_none()
        && matches!(
            crate::sfmc::CredentialSource::from_vars(|k| opts.env.get(k)),
            Ok(None)
        );
    let mut rule_opts = rules::live::Options::new(rules, watch);
    if demo {
        eprintln!("{DEMO_NOTE}");
        rule_opts.demo = true;
    }
    let live = match start_rules_with(rule_opts) {
        Ok(l) => l,
        Err(status) => return status,
    };
    if opts.input.as_deref().is_none_or(|p| p == Path::new("-"))
        && std::io::IsTerminal::is_terminal(&std::io::stdin())
    {
        eprintln!(
            "sfmc-relay: reading NDJSON events from stdin (end with Ctrl-D; --input FILE reads a file)"
        );
    }
    let source = live.clone();
    let result = runtime().block_on(commands::run::run(Arc::new(move || source.current()), opts));
    finish_delivery(result, Some(&live), strict, InputUnit::Lines)
}

/// Said when `run`/`replay` use the embedded demo rules.
pub const DEMO_NOTE: &str = "sfmc-relay: no --rules and no SFMC credentials: using the embedded demo rules \
(examples/ecommerce/rules: the default rules plus identify -> data extension contacts, \
Order Completed -> orders, Product Viewed -> product_views, Signed Up -> journey signup-journey). \
With --rules DIR, or with credentials, your rules apply (without --rules: the embedded default rules).";

/// `sfmc-relay serve`.
pub fn serve(args: ServeArgs, env: &Env) -> ExitStatus {
    let live = match start_rules(args.rules.clone(), !args.no_watch) {
        Ok(l) => l,
        Err(status) => return status,
    };
    let opts = args.serve_options(env);
    let rt = runtime();
    {
        // Feed reload failures to /metrics.
        let failures = opts.reload_failures.clone();
        let mut events = live.subscribe();
        rt.spawn(async move {
            while let Ok(ev) = events.recv().await {
                if matches!(ev, ReloadEvent::Failed { .. }) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let source = live.clone();
    let rules: commands::run::RuleSource = Arc::new(move || source.current());
    // The rule reloads are not annotated: /metrics and the log show them.
    finish_delivery(
        rt.block_on(commands::serve::serve(rules, opts)),
        None,
        false,
        InputUnit::Lines,
    )
}

/// `sfmc-relay consume`.
#[cfg(feature = "kafka")]
pub fn consume(args: flags::ConsumeArgs, env: &Env) -> ExitStatus {
    let opts = match args.consume_options(env) {
        Ok(o) => o,
        Err(e) => return run_error(&e),
    };
    let live = match start_rules(args.rules, !args.delivery.no_watch) {
        Ok(l) => l,
        Err(status) => return status,
    };
    let source = live.clone();
    let result = runtime().block_on(commands::consume::consume(
        Arc::new(move || source.current()),
        opts,
    ));
    finish_delivery(
        result,
        Some(&live),
        args.delivery.strict,
        InputUnit::Messages,
    )
}

/// `sfmc-relay produce`.
#[cfg(feature = "kafka")]
pub fn produce(args: flags::ProduceArgs, env: &Env) -> ExitStatus {
    let opts = match args.produce_options(env) {
        Ok(o) => o,
        Err(e) => return run_error(&e),
    };
    match runtime().block_on(commands::produce::produce(opts)) {
        Ok(summary) => {
            eprintln!("{}", summary.render(&args.kafka.topic));
            if summary.failed > 0 {
                ExitStatus::Io
            } else {
                ExitStatus::Success
            }
        }
        Err(e) => run_error(&e),
    }
}

/// `sfmc-relay corpus`.
pub fn corpus(args: CorpusArgs) -> ExitStatus {
    match crate::corpus::write_to(&args.corpus_config(), args.output.as_deref()) {
        Ok(()) => ExitStatus::Success,
        Err(e) => {
            eprintln!("sfmc-relay corpus: {e}");
            ExitStatus::Io
        }
    }
}

/// `sfmc-relay sim`.
pub fn sim(args: SimArgs) -> ExitStatus {
    let config = match &args.config {
        Some(p) => match crate::sim::SimConfig::from_file(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("sfmc-relay sim: {e:#}");
                return ExitStatus::Config;
            }
        },
        None => crate::sim::SimConfig::default(),
    };
    match runtime().block_on(crate::sim::serve(config, args.listen)) {
        Ok(()) => ExitStatus::Success,
        Err(e) => {
            eprintln!("sfmc-relay sim: {e:#}");
            ExitStatus::Io
        }
    }
}

/// `sfmc-relay schema`.
pub fn schema() -> ExitStatus {
    match commands::schema::print(&mut std::io::stdout().lock()) {
        Ok(()) => ExitStatus::Success,
        Err(e) => output_error(&e),
    }
}

/// `sfmc-relay check`.
pub fn check(args: CheckArgs, env: &Env) -> ExitStatus {
    let dir = args.rules.as_deref();
    let report = commands::check::check(dir, env);
    let what = dir.map_or(rules::EMBEDDED_NAME.to_string(), |d| {
        d.display().to_string()
    });
    let mut out = std::io::stdout().lock();
    let printed = match args.format {
        Format::Human => commands::check::print_human(&mut out, &report, &what),
        Format::Json => commands::check::print_json(&mut out, &report),
    };
    if let Err(e) = printed {
        return io_error(&e);
    }
    if report.valid {
        ExitStatus::Success
    } else {
        ExitStatus::Failed
    }
}

/// `sfmc-relay explain`.
pub fn explain(args: ExplainArgs, env: &Env) -> ExitStatus {
    let program = match load_rules(args.rules.as_deref(), env) {
        Ok(l) => l.program,
        Err(e) => {
            eprintln!("{e}");
            return ExitStatus::Config;
        }
    };
    let mut reader = match open_input(args.input.as_deref()) {
        Ok(r) => LineReader::new(r),
        Err(e) => return io_error(&e),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match commands::explain::run(&mut reader, &mut out, &program) {
        Ok(_) => ExitStatus::Success,
        Err(e) => output_error(&e),
    }
}

/// `sfmc-relay test`.
pub fn test(args: TestArgs) -> ExitStatus {
    let mut out = std::io::stdout().lock();
    match commands::test::run(&mut out, args.rules.as_deref(), &args.cases, args.update) {
        Ok(true) => ExitStatus::Success,
        Ok(false) => ExitStatus::Failed,
        Err(e) => io_error(&e),
    }
}

/// A multi-threaded tokio runtime for the commands that need one.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Load the rules (`dir`, or the embedded defaults) and keep them current; on errors,
/// print them and return the exit status.
fn start_rules(dir: Option<PathBuf>, watch: bool) -> Result<LiveRules, ExitStatus> {
    start_rules_with(rules::live::Options::new(dir, watch))
}

/// [`start_rules`] with every option.
fn start_rules_with(opts: rules::live::Options) -> Result<LiveRules, ExitStatus> {
    LiveRules::start_with(opts).map_err(|e| {
        eprintln!("{e}");
        ExitStatus::Config
    })
}

/// Load the rules once, printing their warnings.
fn load_rules(dir: Option<&Path>, env: &Env) -> Result<rules::Loaded, RuleErrors> {
    let loaded = rules::load(dir, env, 1)?;
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
    Ok(loaded)
}

/// Print an I/O error; its exit status.
fn io_error(e: &std::io::Error) -> ExitStatus {
    eprintln!("sfmc-relay: {e}");
    ExitStatus::Io
}

/// An error writing the output: a closed pipe (`| head`) is a normal end.
fn output_error(e: &std::io::Error) -> ExitStatus {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        ExitStatus::Success
    } else {
        io_error(e)
    }
}

/// Print why a run could not start or finish; its exit status.
fn run_error(e: &RunError) -> ExitStatus {
    let (RunError::Config(m) | RunError::Io(m)) = e;
    eprintln!("sfmc-relay: {m}");
    ExitStatus::from(e)
}

/// Print a delivery command's end (see [`summary::delivery`]) and choose its exit status:
/// [`ExitStatus::Undelivered`] when events were left undelivered (gave up, or stopped);
/// else with `strict`, [`ExitStatus::DeadLettered`] when anything was dead-lettered.
fn finish_delivery(
    result: Result<RunSummary, RunError>,
    live: Option<&LiveRules>,
    strict: bool,
    unit: InputUnit,
) -> ExitStatus {
    let summary = match result {
        Ok(s) => s,
        Err(e) => return run_error(&e),
    };
    // Why this run's events were dead-lettered: the file's last records.
    let dead = if summary.dead_lettered > 0 {
        crate::sfmc::deadletter::last_reasons(&summary.dead_letter_path, summary.dead_lettered)
            .unwrap_or_default()
    } else {
        Default::default()
    };
    eprintln!("{}", summary::delivery(&summary, live, unit, &dead));
    if summary.undelivered > 0 {
        ExitStatus::Undelivered
    } else if strict && summary.dead_lettered > 0 {
        ExitStatus::DeadLettered
    } else {
        ExitStatus::Success
    }
}
