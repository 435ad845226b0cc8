//! The `sfmc-relay` command line: parses flags and calls into the library.

use clap::{Parser, Subcommand};

/// mimalloc: the relay allocates many small, short-lived strings and maps per event;
/// glibc malloc was ~35% of the transform's instructions (callgrind), mimalloc far less.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use sfmc_relay::commands;
use sfmc_relay::commands::run::{InputKind, RunError, RunOptions};
use sfmc_relay::rules::live::LiveRules;
use sfmc_relay::rules::{self, RuleErrors};
use std::io::{BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Exit codes (documented in the README).
mod exit {
    pub const OK: u8 = 0;
    pub const IO: u8 = 1;
    pub const CONFIG: u8 = 2;
    pub const DEAD_LETTERS: u8 = 3;
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
    /// Deliver events to SFMC (or, without credentials, to the built-in simulator)
    #[command(after_help = RUN_HELP)]
    Run {
        /// Rules directory; default: the embedded default rules
        #[arg(long, value_name = "DIR")]
        rules: Option<PathBuf>,
        /// NDJSON events (one per line, or {"batch":[...]} envelopes); default: stdin
        #[arg(long, value_name = "FILE")]
        input: Option<PathBuf>,
        #[command(flatten)]
        delivery: DeliveryArgs,
    },
    /// Send the events of a dead-letter file again (after fixing the rules or the data extension)
    Replay {
        /// Rules directory; default: the embedded default rules
        #[arg(long, value_name = "DIR")]
        rules: Option<PathBuf>,
        /// The dead-letter file written by `run`
        #[arg(value_name = "DEADLETTER_FILE")]
        file: PathBuf,
        #[command(flatten)]
        delivery: DeliveryArgs,
    },
    /// Consume events from a Kafka topic as one member of a consumer group and deliver them
    ///
    /// Runs until SIGINT/SIGTERM. Start several (same --group) to scale out: each gets a
    /// share of the topic's partitions. See docs/kafka.md.
    #[cfg(feature = "kafka")]
    #[command(after_help = KAFKA_HELP)]
    Consume {
        /// Rules directory; default: the embedded default rules
        #[arg(long, value_name = "DIR")]
        rules: Option<PathBuf>,
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Consumer group (default: group.id from the settings file or environment)
        #[arg(long, value_name = "G")]
        group: Option<String>,
        /// How often completed offsets are committed
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        commit_interval_ms: u64,
        /// How long a rebalance waits for the revoked partitions' in-flight events
        #[arg(long, value_name = "MS", default_value_t = 10_000)]
        rebalance_flush_ms: u64,
        #[command(flatten)]
        flow: ConsumeFlowArgs,
        #[command(flatten)]
        delivery: DeliveryArgs,
    },
    /// Write NDJSON events to a Kafka topic, keyed by userId (else anonymousId)
    #[cfg(feature = "kafka")]
    #[command(after_help = KAFKA_HELP)]
    Produce {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// NDJSON events (one per line, or {"batch":[...]} envelopes, split into events); default: stdin
        #[arg(long, value_name = "FILE")]
        input: Option<PathBuf>,
    },
    /// Write a seeded benchmark corpus of Segment events (NDJSON) to stdout or --output
    Corpus {
        /// Number of events, default 100000 (also accepted as a plain argument: `corpus 1000000`)
        #[arg(long, short = 'n', value_name = "N")]
        events: Option<u64>,
        #[arg(value_name = "N", conflicts_with = "events", hide = true)]
        count: Option<u64>,
        /// Write to FILE instead of stdout
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        /// Distinct users the events come from (default: N / 50)
        #[arg(long)]
        users: Option<u64>,
        /// RNG seed (same seed, same corpus)
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Receive events over HTTP (Segment's tracking API), spool them durably, deliver to SFMC
    #[command(after_help = SERVE_HELP)]
    Serve(ServeArgs),
    /// Run the SFMC simulator standalone (a strict local SFMC for tests and demos)
    Sim {
        /// Address to listen on
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
        /// Simulator config (YAML: token lifetime, data extensions, faults); default: accept everything
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
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
    /// Print the JSON Schema of a rule file (for editors: yaml-language-server, VS Code, IntelliJ)
    ///
    /// Generated from the rule types, so it matches what the loader reads. `check` stays
    /// the authority: it also checks what a schema cannot (paths, regexes, ranges, keys
    /// defined in two files). The shipped rule files reference docs/rules.schema.json.
    Schema,
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

#[derive(clap::Args)]
struct DeliveryArgs {
    /// Where events that cannot be delivered are written (NDJSON)
    #[arg(
        long,
        value_name = "FILE",
        default_value = "sfmc-relay.deadletter.ndjson"
    )]
    dead_letter: PathBuf,
    /// Exit with status 3 when any event was dead-lettered
    #[arg(long)]
    strict: bool,
    /// Override the rules' delivery.requests_per_second (0 = unlimited)
    #[arg(long, value_name = "N")]
    requests_per_second: Option<u32>,
    /// No progress line on stderr
    #[arg(long, short)]
    quiet: bool,
    /// Do not watch the rules directory for changes (SIGHUP still reloads)
    #[arg(long)]
    no_watch: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Rules directory; default: the embedded default rules
    #[arg(long, value_name = "DIR")]
    rules: Option<PathBuf>,
    /// Do not watch the rules directory for changes (SIGHUP still reloads)
    #[arg(long)]
    no_watch: bool,
    /// Address to listen on (port 0: any free port; the address is printed)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Spool directory: accepted events are kept here until delivered (created if missing)
    #[arg(long, value_name = "DIR")]
    spool: PathBuf,
    /// Spool size bound in bytes (suffixes K, M, G, KiB, MiB, GiB); past it requests get 503
    #[arg(long, value_name = "BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    spool_max_bytes: u64,
    /// Where events that cannot be delivered are written (NDJSON)
    #[arg(
        long,
        value_name = "FILE",
        default_value = "sfmc-relay.deadletter.ndjson"
    )]
    dead_letter: PathBuf,
    /// Override the rules' delivery.requests_per_second (0 = unlimited)
    #[arg(long, value_name = "N")]
    requests_per_second: Option<u32>,
    /// On SIGTERM, wait at most this many seconds for deliveries in flight
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    drain_timeout: u64,
    /// Browser origins allowed to call the API (CORS): `*` (any, as Segment's API) or a
    /// comma-separated list such as `https://shop.example.com,https://*.example.com`
    #[arg(
        long,
        value_name = "ORIGINS",
        env = "SFMC_RELAY_CORS_ORIGINS",
        default_value = "*"
    )]
    cors_origins: sfmc_relay::source::cors::CorsOrigins,
}

/// `1048576`, `64K`, `512MiB`, `1G`... (K/M/G and KiB/MiB/GiB are all powers of 1024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("not a size: `{s}`"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown size unit in `{s}` (K, M, G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size too large: `{s}`"))
}

const SERVE_HELP: &str = "\
Environment:
  SFMC_RELAY_WRITE_KEYS               accepted write keys, comma-separated (required);
                                      clients send one as the HTTP Basic auth username
  SFMC_CLIENT_ID, SFMC_CLIENT_SECRET  as for `run` (without both: the built-in simulator)

See docs/serve.md for pointing Segment, RudderStack and the Segment SDKs at the relay.
Exit status: 0 stopped by SIGTERM/SIGINT, 1 I/O error, 2 configuration error.";
#[cfg(feature = "kafka")]
#[derive(clap::Args)]
struct KafkaArgs {
    /// Kafka bootstrap servers (default: bootstrap.servers from the settings file or environment)
    #[arg(long, value_name = "HOST:PORT[,...]")]
    brokers: Option<String>,
    /// Topic
    #[arg(long, value_name = "T")]
    topic: String,
    /// librdkafka settings file (property=value lines: security.protocol, sasl.*, ssl.*, ...)
    #[arg(long, value_name = "FILE", env = "SFMC_RELAY_KAFKA_CONFIG_FILE")]
    kafka_config: Option<PathBuf>,
}

#[cfg(feature = "kafka")]
#[derive(clap::Args)]
struct ConsumeFlowArgs {
    /// Pause the partitions at this many events in flight to SFMC (resume at half); not
    /// the rules' delivery.max_in_flight (concurrent requests)
    #[arg(long, value_name = "N", default_value_t = sfmc_relay::commands::consume::DEFAULT_MAX_IN_FLIGHT)]
    max_in_flight: usize,
    /// Also produce each dead-letter record to this Kafka topic (keyed like the event)
    #[arg(long, value_name = "T")]
    dead_letter_topic: Option<String>,
    /// Drop a Journey Builder API event whose messageId was among the last N (0 = off)
    #[arg(long, value_name = "N", default_value_t = sfmc_relay::commands::consume::DEFAULT_DEDUP_WINDOW)]
    dedup_window: usize,
}

#[cfg(feature = "kafka")]
const KAFKA_HELP: &str = "\
Kafka settings: SFMC_RELAY_KAFKA_<PROPERTY> sets the librdkafka property (lower-cased, `_` -> `.`,
`__` -> `_`), e.g. SFMC_RELAY_KAFKA_SECURITY_PROTOCOL=SASL_SSL, SFMC_RELAY_KAFKA_SASL_MECHANISMS=PLAIN,
SFMC_RELAY_KAFKA_SASL_USERNAME, SFMC_RELAY_KAFKA_SASL_PASSWORD. Order: defaults < --kafka-config file
< environment < flags. Values are never printed. See docs/kafka.md.";

const RUN_HELP: &str = "\
Environment:
  SFMC_CLIENT_ID, SFMC_CLIENT_SECRET  API integration credentials (never printed);
                                      without both, the built-in simulator is used
  SFMC_SUBDOMAIN                      tenant subdomain (v2 endpoints); unset: legacy v1
  SFMC_ACCOUNT_ID                     MID of the business unit (optional)
  SFMC_AUTH_URL, SFMC_REST_URL        override the base URLs (proxy, sandbox, simulator)

Exit status: 0 done (every event delivered, skipped or dead-lettered), 1 I/O error,
2 configuration error (rules, environment), 3 with --strict when anything was dead-lettered.";

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sfmc_relay=info")),
        )
        .init();
    match cli.command {
        Command::Run {
            rules,
            input,
            delivery,
        } => deliver(rules.as_deref(), input, InputKind::Events, delivery),
        Command::Replay {
            rules,
            file,
            delivery,
        } => deliver(
            rules.as_deref(),
            Some(file),
            InputKind::DeadLetters,
            delivery,
        ),
        Command::Serve(args) => serve(args),
        Command::Sim { listen, config } => simulator(listen, config.as_deref()),
        #[cfg(feature = "kafka")]
        Command::Consume {
            rules,
            kafka,
            group,
            commit_interval_ms,
            rebalance_flush_ms,
            flow,
            delivery,
        } => kafka_cli::consume(
            rules,
            kafka,
            group,
            std::time::Duration::from_millis(commit_interval_ms.max(1)),
            std::time::Duration::from_millis(rebalance_flush_ms),
            flow,
            delivery,
        ),
        #[cfg(feature = "kafka")]
        Command::Produce { kafka, input } => kafka_cli::produce(kafka, input),
        Command::Corpus {
            events,
            count,
            output,
            users,
            seed,
        } => {
            let events = events.or(count).unwrap_or(100_000);
            let cfg = sfmc_relay::corpus::CorpusConfig {
                events,
                users: users.unwrap_or((events / 50).max(1)).max(1),
                seed,
            };
            let sink: Box<dyn std::io::Write> = match &output {
                None => Box::new(std::io::stdout().lock()),
                Some(p) => match std::fs::File::create(p) {
                    Ok(f) => Box::new(f),
                    Err(e) => {
                        eprintln!("sfmc-relay corpus: cannot create {}: {e}", p.display());
                        return ExitCode::from(exit::IO);
                    }
                },
            };
            let mut out = std::io::BufWriter::with_capacity(256 * 1024, sink);
            match sfmc_relay::corpus::write(&cfg, &mut out).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::from(exit::OK),
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(exit::OK),
                Err(e) => {
                    eprintln!("sfmc-relay corpus: {e}");
                    ExitCode::from(exit::IO)
                }
            }
        }
        Command::Transform {
            rules,
            input,
            no_watch,
        } => transform(rules, input.as_deref(), !no_watch),
        Command::Check { rules, format } => check(rules.as_deref(), format),
        Command::Schema => match commands::schema::print(&mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::from(exit::OK),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(exit::OK),
            Err(e) => {
                eprintln!("sfmc-relay: {e}");
                ExitCode::from(exit::IO)
            }
        },
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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn deliver(
    rules_dir: Option<&Path>,
    input: Option<PathBuf>,
    kind: InputKind,
    args: DeliveryArgs,
) -> ExitCode {
    // Replays are one-off: no watching (SIGHUP still reloads).
    let watch = !args.no_watch && kind == InputKind::Events;
    let live = match LiveRules::start(rules_dir.map(Path::to_path_buf), watch) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let opts = RunOptions {
        input,
        input_kind: kind,
        dead_letter: args.dead_letter,
        requests_per_second: args.requests_per_second,
        progress: !args.quiet,
        env: Arc::new(|k: &str| std::env::var(k).ok()),
    };
    let source = live.clone();
    let result = runtime().block_on(commands::run::run(Arc::new(move || source.current()), opts));
    finish_delivery(result, Some(&live), args.strict, "lines")
}

fn serve(args: ServeArgs) -> ExitCode {
    let live = match LiveRules::start(args.rules.clone(), !args.no_watch) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let write_keys: Vec<String> = std::env::var("SFMC_RELAY_WRITE_KEYS")
        .unwrap_or_default()
        .split(',')
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    let opts = commands::serve::ServeOptions {
        listen: args.listen,
        spool: sfmc_relay::spool::SpoolConfig::new(args.spool, args.spool_max_bytes),
        dead_letter: args.dead_letter,
        requests_per_second: args.requests_per_second,
        write_keys,
        drain_timeout: std::time::Duration::from_secs(args.drain_timeout),
        env: Arc::new(|k: &str| std::env::var(k).ok()),
        reload_failures: Default::default(),
        cors_origins: args.cors_origins,
    };
    let rt = runtime();
    {
        // Feed reload failures to /metrics.
        let failures = opts.reload_failures.clone();
        let mut events = live.subscribe();
        rt.spawn(async move {
            while let Ok(ev) = events.recv().await {
                if matches!(ev, sfmc_relay::rules::live::ReloadEvent::Failed { .. }) {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    let source = live.clone();
    let rules: commands::run::RuleSource = Arc::new(move || source.current());
    finish_delivery(
        rt.block_on(commands::serve::serve(rules, opts)),
        None,
        false,
        "lines",
    )
}

/// The exit code (and message) for a run that could not start or finish.
fn run_error(e: RunError) -> ExitCode {
    let (RunError::Config(m) | RunError::Io(m)) = &e;
    eprintln!("sfmc-relay: {m}");
    ExitCode::from(match e {
        RunError::Config(_) => exit::CONFIG,
        RunError::Io(_) => exit::IO,
    })
}

/// Print a delivery command's end (what the built-in simulator received, the summary, the
/// rule reloads when `live` is given) and choose the exit code. `unit` names what the
/// input is made of (`lines`, `messages`).
fn finish_delivery(
    result: Result<commands::run::RunSummary, RunError>,
    live: Option<&LiveRules>,
    strict: bool,
    unit: &str,
) -> ExitCode {
    let mut summary = match result {
        Ok(s) => s,
        Err(e) => return run_error(e),
    };
    if let Some(live) = live
        && (live.reloads() > 0 || live.failures() > 0)
    {
        summary.rules_version = format!(
            "{} -> {} ({} reload(s), {} failed)",
            summary.rules_version,
            live.version(),
            live.reloads(),
            live.failures()
        );
    }
    if let Some(report) = &summary.simulator_report {
        eprintln!("{}", report.trim_end());
    }
    let text = summary
        .render()
        .replacen(" lines)", &format!(" {unit})"), 1);
    // The summary, with why events were dead-lettered before its last line (the rules).
    let (body, last) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    if !body.is_empty() {
        eprintln!("{body}");
    }
    if summary.dead_lettered > 0
        && let Ok(reasons) = sfmc_relay::sfmc::deadletter::last_reasons(
            &summary.dead_letter_path,
            summary.dead_lettered,
        )
    {
        let mut top: Vec<(String, u64)> = reasons.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let shown: Vec<String> = top
            .iter()
            .take(10)
            .map(|(r, n)| format!("{n} × {r}"))
            .collect();
        eprintln!("dead-lettered: {}", shown.join("\n               "));
    }
    eprintln!("{last}");
    if summary.simulator_report.is_some() {
        eprintln!(
            "(That was the built-in SFMC simulator. To deliver to your account, set SFMC_CLIENT_ID, SFMC_CLIENT_SECRET and SFMC_SUBDOMAIN: README, \"Your SFMC account\".)"
        );
    }
    if strict && summary.dead_lettered > 0 {
        ExitCode::from(exit::DEAD_LETTERS)
    } else {
        ExitCode::from(exit::OK)
    }
}

fn simulator(listen: std::net::SocketAddr, config: Option<&Path>) -> ExitCode {
    let config = match config {
        Some(p) => match sfmc_relay::sim::SimConfig::from_file(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("sfmc-relay sim: {e:#}");
                return ExitCode::from(exit::CONFIG);
            }
        },
        None => sfmc_relay::sim::SimConfig::default(),
    };
    match runtime().block_on(sfmc_relay::sim::serve(config, listen)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("sfmc-relay sim: {e:#}");
            ExitCode::from(exit::IO)
        }
    }
}

#[cfg(feature = "kafka")]
mod kafka_cli {
    use super::*;
    use sfmc_relay::commands::consume::{self, ConsumeOptions};
    use sfmc_relay::commands::produce::{self, ProduceOptions};
    use sfmc_relay::source::kafka;
    use std::time::Duration;

    fn config(
        args: &KafkaArgs,
        defaults: &[(&str, &str)],
        mut forced: Vec<(&'static str, String)>,
    ) -> Result<rdkafka::ClientConfig, String> {
        if let Some(b) = &args.brokers {
            forced.push(("bootstrap.servers", b.clone()));
        }
        let env = kafka::properties_from_env(std::env::vars());
        kafka::client_config(defaults, args.kafka_config.as_deref(), &env, &forced)
            .map_err(|e| format!("sfmc-relay: {e}"))
    }

    pub fn consume(
        rules_dir: Option<PathBuf>,
        args: KafkaArgs,
        group: Option<String>,
        commit_interval: Duration,
        flush_timeout: Duration,
        flow: ConsumeFlowArgs,
        delivery: DeliveryArgs,
    ) -> ExitCode {
        let forced = group.map(|g| ("group.id", g)).into_iter().collect();
        let config = match config(&args, consume::DEFAULTS, forced) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(exit::CONFIG);
            }
        };
        if config.get("group.id").is_none_or(str::is_empty) {
            eprintln!(
                "sfmc-relay: no consumer group: pass --group G (or set SFMC_RELAY_KAFKA_GROUP_ID)"
            );
            return ExitCode::from(exit::CONFIG);
        }
        let live = match LiveRules::start(rules_dir, !delivery.no_watch) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(exit::CONFIG);
            }
        };
        let opts = ConsumeOptions {
            topic: args.topic,
            kafka: config,
            dead_letter: delivery.dead_letter,
            dead_letter_topic: flow.dead_letter_topic,
            requests_per_second: delivery.requests_per_second,
            commit_interval,
            flush_timeout,
            max_in_flight: flow.max_in_flight,
            dedup_window: flow.dedup_window,
            env: Arc::new(|k: &str| std::env::var(k).ok()),
            shutdown: Box::pin(sfmc_relay::commands::run::wait_for_signal()),
            stats: Default::default(),
        };
        let source = live.clone();
        let result = runtime().block_on(consume::consume(Arc::new(move || source.current()), opts));
        finish_delivery(result, Some(&live), delivery.strict, "messages")
    }

    pub fn produce(args: KafkaArgs, input: Option<PathBuf>) -> ExitCode {
        let config = match config(&args, produce::DEFAULTS, Vec::new()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(exit::CONFIG);
            }
        };
        let topic = args.topic.clone();
        let opts = ProduceOptions {
            topic: args.topic,
            kafka: config,
            input,
        };
        match runtime().block_on(produce::produce(opts)) {
            Ok(summary) => {
                eprintln!("{}", summary.render(&topic));
                if summary.failed > 0 {
                    ExitCode::from(exit::IO)
                } else {
                    ExitCode::from(exit::OK)
                }
            }
            Err(e) => run_error(e),
        }
    }
}
