//! The command line's flags: one struct per subcommand (plus the groups several share),
//! the `--help` texts, and each struct's conversion into the library's options.
//!
//! Defaults come from [`crate::defaults`]; exit statuses are [`crate::exit::ExitStatus`].

use crate::commands::run::{InputKind, RunOptions};
use crate::commands::serve::ServeOptions;
use crate::corpus::CorpusConfig;
use crate::defaults;
use crate::env::Env;
use crate::spool::SpoolConfig;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "sfmc-relay",
    version,
    about = "Relay Segment-spec analytics events to Salesforce Marketing Cloud, driven by YAML rules",
    long_about = "Relay Segment-spec analytics events (identify, track, page, screen, group, alias) \
to Salesforce Marketing Cloud's REST API. What goes where is decided by YAML rule files \
(see docs/rules.md); without --rules the embedded default rules are used, which behave like \
Segment's classic SFMC destination (`run` and `replay` without SFMC credentials deliver to the \
built-in simulator with the embedded demo rules, examples/ecommerce/rules, so a first run shows \
rows, contacts and a journey entry land).\n\nCredentials come from the environment only \
(SFMC_CLIENT_ID, SFMC_CLIENT_SECRET); they are never printed."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Doc comments on the variants are the subcommands' help; the argument structs carry
// none (clap would use theirs instead).
#[derive(Subcommand)]
pub enum Command {
    /// Print the SFMC calls each event causes (NDJSON, one line per call, unbatched); sends nothing
    Transform(TransformArgs),
    /// Deliver events to SFMC (or, without credentials, to the built-in simulator)
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
    /// Send the events of a dead-letter file again (after fixing the rules or the data extension)
    #[command(after_help = RUN_HELP)]
    Replay(ReplayArgs),
    /// Consume events from a Kafka topic as one member of a consumer group and deliver them
    ///
    /// Runs until SIGINT/SIGTERM. Start several (same --group) to scale out: each gets a
    /// share of the topic's partitions. See docs/kafka.md.
    #[cfg(feature = "kafka")]
    #[command(after_help = KAFKA_HELP)]
    Consume(ConsumeArgs),
    /// Write NDJSON events to a Kafka topic, keyed by userId (else anonymousId)
    #[cfg(feature = "kafka")]
    #[command(after_help = KAFKA_HELP)]
    Produce(ProduceArgs),
    /// Write a seeded benchmark corpus of Segment events (NDJSON) to stdout or --output
    Corpus(CorpusArgs),
    /// Receive events over HTTP (Segment's tracking API), spool them durably, deliver to SFMC
    #[command(after_help = SERVE_HELP)]
    Serve(ServeArgs),
    /// Run the SFMC simulator standalone (a strict local SFMC for tests and demos)
    Sim(SimArgs),
    /// Validate a rule set without running it: every error and likely mistake, with file:line:col
    ///
    /// Exit status: 0 valid (warnings allowed), 1 invalid.
    Check(CheckArgs),
    /// Print the JSON Schema of a rule file (for editors: yaml-language-server, VS Code, IntelliJ)
    ///
    /// Generated from the rule types, so it matches what the loader reads. `check` stays
    /// the authority: it also checks what a schema cannot (paths, regexes, ranges, keys
    /// defined in two files). The shipped rule files reference docs/rules.schema.json.
    Schema,
    /// Show, for each event, which rules matched and why, every key renamed or value dropped, the primary key and the SFMC calls
    Explain(ExplainArgs),
    /// Run golden cases (CASES_DIR/<case>/{input,expected}.ndjson, optional rules/ and env)
    ///
    /// Exit status: 0 if every case passed, 1 otherwise (or when there are no cases).
    Test(TestArgs),
}

// `sfmc-relay transform`
#[derive(clap::Args)]
pub struct TransformArgs {
    /// Rules directory (every *.yaml/*.yml in it); default: the embedded default rules
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
    /// NDJSON events (one per line, or {"batch":[...]} envelopes); `-` or default: stdin
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Do not watch the rules directory for changes (SIGHUP still reloads)
    #[arg(long)]
    pub no_watch: bool,
}

// `sfmc-relay run`
#[derive(clap::Args)]
pub struct RunArgs {
    /// Rules directory; default: the embedded default rules (with no SFMC credentials: the embedded demo rules, examples/ecommerce/rules)
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
    /// NDJSON events (one per line, or {"batch":[...]} envelopes); `-` or default: stdin
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
}

impl RunArgs {
    pub fn run_options(&self, env: &Env) -> RunOptions {
        self.delivery
            .run_options(self.input.clone(), InputKind::Events, env)
    }

    /// Whether to watch the rules directory.
    pub fn watch(&self) -> bool {
        !self.delivery.no_watch
    }
}

// `sfmc-relay replay`
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Rules directory; default: the embedded default rules (with no SFMC credentials: the embedded demo rules, examples/ecommerce/rules)
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
    /// The dead-letter file written by `run` (what fails again goes to --dead-letter, or,
    /// when that is this file, to FILE's name with `.replay` before its extension)
    #[arg(value_name = "DEADLETTER_FILE")]
    pub file: PathBuf,
    /// Also send records with outcome `uncertain` (Journey entries SFMC may already have
    /// processed: check GET /interaction/v1/async/events/status first); without it they
    /// are skipped
    #[arg(long)]
    pub uncertain: bool,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
}

impl ReplayArgs {
    pub fn run_options(&self, env: &Env) -> RunOptions {
        let kind = if self.uncertain {
            InputKind::DeadLettersWithUncertain
        } else {
            InputKind::DeadLetters
        };
        let mut opts = self
            .delivery
            .run_options(Some(self.file.clone()), kind, env);
        // Never append to the file being read (its own records would be read again):
        // what fails again goes next to it.
        if same_file(&opts.dead_letter, &self.file) {
            opts.dead_letter = replay_dead_letter(&self.file);
        }
        opts
    }

    /// Replays are one-off: the rules are not watched (SIGHUP still reloads).
    pub fn watch(&self) -> bool {
        false
    }
}

// The delivery flags of `run`, `replay` and `consume`.
#[derive(clap::Args)]
pub struct DeliveryArgs {
    /// Where events that cannot be delivered are written (NDJSON)
    #[arg(long, value_name = "FILE", default_value = defaults::DEAD_LETTER_FILE)]
    pub dead_letter: PathBuf,
    /// Exit with status 3 when any event was dead-lettered
    #[arg(long)]
    pub strict: bool,
    /// Override the rules' delivery.requests_per_second (0 = unlimited)
    #[arg(long, value_name = "N")]
    pub requests_per_second: Option<u32>,
    /// No progress line on stderr
    #[arg(long, short)]
    pub quiet: bool,
    /// Do not watch the rules directory for changes (SIGHUP still reloads)
    #[arg(long)]
    pub no_watch: bool,
    /// Where state kept across runs lives (Contact Keys known to exist, so a restart does
    /// not create them again); default: the dead-letter file's directory
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Whether `a` and `b` name the same file (also through `..`, links or a relative path).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Where `replay FILE` writes what fails again when `--dead-letter` would be FILE itself:
/// `FILE`'s name with `.replay` before its extension (`dead.ndjson` -> `dead.replay.ndjson`).
pub fn replay_dead_letter(file: &std::path::Path) -> PathBuf {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match file.extension() {
        Some(ext) => format!("{stem}.replay.{}", ext.to_string_lossy()),
        None => format!("{stem}.replay"),
    };
    file.with_file_name(name)
}

impl DeliveryArgs {
    /// The options of a run reading `input` (stdin when `None`) as `input_kind`.
    pub fn run_options(
        &self,
        input: Option<PathBuf>,
        input_kind: InputKind,
        env: &Env,
    ) -> RunOptions {
        RunOptions {
            input,
            input_kind,
            dead_letter: self.dead_letter.clone(),
            requests_per_second: self.requests_per_second,
            progress: !self.quiet,
            env: env.clone(),
            state_dir: self.state_dir.clone(),
        }
    }
}

// `sfmc-relay serve`
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Rules directory; default: the embedded default rules
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
    /// Do not watch the rules directory for changes (SIGHUP still reloads)
    #[arg(long)]
    pub no_watch: bool,
    /// Address to listen on (port 0: any free port; the address is printed)
    #[arg(long, value_name = "ADDR", default_value = defaults::SERVE_LISTEN)]
    pub listen: SocketAddr,
    /// Spool directory: accepted events are kept here until delivered (created if missing)
    #[arg(long, value_name = "DIR")]
    pub spool: PathBuf,
    /// Spool size bound in bytes (suffixes K, M, G, KiB, MiB, GiB); past it requests get 503
    #[arg(long, value_name = "BYTES", default_value = defaults::SPOOL_MAX_BYTES, value_parser = parse_bytes)]
    pub spool_max_bytes: u64,
    /// Where events that cannot be delivered are written (NDJSON)
    #[arg(long, value_name = "FILE", default_value = defaults::DEAD_LETTER_FILE)]
    pub dead_letter: PathBuf,
    /// Override the rules' delivery.requests_per_second (0 = unlimited)
    #[arg(long, value_name = "N")]
    pub requests_per_second: Option<u32>,
    /// On SIGTERM, wait at most this many seconds for deliveries in flight
    #[arg(long, value_name = "SECS", default_value_t = defaults::DRAIN_TIMEOUT_SECS)]
    pub drain_timeout: u64,
    /// Browser origins allowed to call the API (CORS): `*` (any, as Segment's API) or a
    /// comma-separated list such as `https://shop.example.com,https://*.example.com`
    #[arg(
        long,
        value_name = "ORIGINS",
        env = "SFMC_RELAY_CORS_ORIGINS",
        default_value = "*"
    )]
    pub cors_origins: crate::source::cors::CorsOrigins,
}

impl ServeArgs {
    /// The options of `serve`; the write keys come from `SFMC_RELAY_WRITE_KEYS` in `env`.
    pub fn serve_options(&self, env: &Env) -> ServeOptions {
        ServeOptions {
            listen: self.listen,
            spool: SpoolConfig::new(self.spool.clone(), self.spool_max_bytes),
            dead_letter: self.dead_letter.clone(),
            requests_per_second: self.requests_per_second,
            write_keys: crate::source::http::write_keys(env),
            drain_timeout: Duration::from_secs(self.drain_timeout),
            env: env.clone(),
            reload_failures: Default::default(),
            cors_origins: self.cors_origins.clone(),
        }
    }
}

/// `1048576`, `64K`, `512MiB`, `1G`... (K/M/G and KiB/MiB/GiB are all powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
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

// `sfmc-relay corpus`
#[derive(clap::Args)]
pub struct CorpusArgs {
    /// Number of events, default 100000 (also accepted as a plain argument: `corpus 1000000`)
    #[arg(long, short = 'n', value_name = "N")]
    pub events: Option<u64>,
    #[arg(value_name = "N", conflicts_with = "events", hide = true)]
    pub count: Option<u64>,
    /// Write to FILE instead of stdout
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Distinct users the events come from (default: N / 50)
    #[arg(long)]
    pub users: Option<u64>,
    /// RNG seed (same seed, same corpus)
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl CorpusArgs {
    pub fn corpus_config(&self) -> CorpusConfig {
        let events = self
            .events
            .or(self.count)
            .unwrap_or(defaults::CORPUS_EVENTS);
        CorpusConfig {
            events,
            users: self.users.unwrap_or((events / 50).max(1)).max(1),
            seed: self.seed,
        }
    }
}

// `sfmc-relay sim`
#[derive(clap::Args)]
pub struct SimArgs {
    /// Address to listen on
    #[arg(long, value_name = "ADDR", default_value = defaults::SIM_LISTEN)]
    pub listen: SocketAddr,
    /// Simulator config (YAML: token lifetime, data extensions, faults); default: accept everything
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

// `sfmc-relay check`
#[derive(clap::Args)]
pub struct CheckArgs {
    /// Rules directory; default: the embedded default rules
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
    /// Output format: human (default) or json (for editors and CI)
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

/// `check --format`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
}

// `sfmc-relay explain`
#[derive(clap::Args)]
pub struct ExplainArgs {
    /// Rules directory; default: the embedded default rules
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
    /// NDJSON events; default: stdin
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
}

// `sfmc-relay test`
#[derive(clap::Args)]
pub struct TestArgs {
    /// Rules for cases without their own rules/ directory; default: the embedded rules
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
    /// Directory holding one sub-directory per case
    #[arg(value_name = "CASES_DIR")]
    pub cases: PathBuf,
    /// Rewrite expected.ndjson of failing cases with the actual output
    #[arg(long)]
    pub update: bool,
}

#[cfg(feature = "kafka")]
pub use self::kafka::{ConsumeArgs, ConsumeFlowArgs, KafkaArgs, ProduceArgs};

#[cfg(feature = "kafka")]
mod kafka {
    use super::DeliveryArgs;
    use crate::commands::consume::{self, ConsumeOptions};
    use crate::commands::produce::{self, ProduceOptions};
    use crate::commands::run::RunError;
    use crate::defaults;
    use crate::env::Env;
    use crate::source::kafka;
    use std::path::PathBuf;
    use std::time::Duration;

    // `sfmc-relay consume`
    #[derive(clap::Args)]
    pub struct ConsumeArgs {
        /// Rules directory; default: the embedded default rules
        #[arg(long, value_name = "DIR")]
        pub rules: Option<PathBuf>,
        #[command(flatten)]
        pub kafka: KafkaArgs,
        /// Consumer group (default: group.id from the settings file or environment)
        #[arg(long, value_name = "G")]
        pub group: Option<String>,
        /// How often completed offsets are committed
        #[arg(long, value_name = "MS", default_value_t = defaults::COMMIT_INTERVAL_MS)]
        pub commit_interval_ms: u64,
        /// How long a rebalance waits for the revoked partitions' in-flight events
        #[arg(long, value_name = "MS", default_value_t = defaults::REBALANCE_FLUSH_MS)]
        pub rebalance_flush_ms: u64,
        #[command(flatten)]
        pub flow: ConsumeFlowArgs,
        #[command(flatten)]
        pub delivery: DeliveryArgs,
    }

    impl ConsumeArgs {
        /// The options of `consume` (stopping on SIGINT/SIGTERM): Kafka settings merged as
        /// defaults < `--kafka-config` file < `SFMC_RELAY_KAFKA_*` in `env` < flags.
        pub fn consume_options(&self, env: &Env) -> Result<ConsumeOptions, RunError> {
            let forced = self.group.iter().map(|g| ("group.id", g.clone())).collect();
            let config = self.kafka.client_config(consume::DEFAULTS, forced, env)?;
            if config.get("group.id").is_none_or(str::is_empty) {
                return Err(RunError::Config(
                    "no consumer group: pass --group G (or set SFMC_RELAY_KAFKA_GROUP_ID)".into(),
                ));
            }
            Ok(ConsumeOptions {
                topic: self.kafka.topic.clone(),
                kafka: config,
                dead_letter: self.delivery.dead_letter.clone(),
                dead_letter_topic: self.flow.dead_letter_topic.clone(),
                requests_per_second: self.delivery.requests_per_second,
                commit_interval: Duration::from_millis(self.commit_interval_ms.max(1)),
                flush_timeout: Duration::from_millis(self.rebalance_flush_ms),
                max_in_flight: self.flow.max_in_flight,
                dedup_window: self.flow.dedup_window,
                env: env.clone(),
                state_dir: self.delivery.state_dir.clone(),
                shutdown: Box::pin(crate::commands::run::wait_for_signal()),
                stats: Default::default(),
            })
        }
    }

    // `sfmc-relay produce`
    #[derive(clap::Args)]
    pub struct ProduceArgs {
        #[command(flatten)]
        pub kafka: KafkaArgs,
        /// NDJSON events (one per line, or {"batch":[...]} envelopes, split into events); default: stdin
        #[arg(long, value_name = "FILE")]
        pub input: Option<PathBuf>,
    }

    impl ProduceArgs {
        /// The options of `produce` (Kafka settings merged as for `consume`).
        pub fn produce_options(&self, env: &Env) -> Result<ProduceOptions, RunError> {
            Ok(ProduceOptions {
                topic: self.kafka.topic.clone(),
                kafka: self
                    .kafka
                    .client_config(produce::DEFAULTS, Vec::new(), env)?,
                input: self.input.clone(),
            })
        }
    }

    // The Kafka connection flags of `consume` and `produce`.
    #[derive(clap::Args)]
    pub struct KafkaArgs {
        /// Kafka bootstrap servers (default: bootstrap.servers from the settings file or environment)
        #[arg(long, value_name = "HOST:PORT[,...]")]
        pub brokers: Option<String>,
        /// Topic
        #[arg(long, value_name = "T")]
        pub topic: String,
        /// librdkafka settings file (property=value lines: security.protocol, sasl.*, ssl.*, ...)
        #[arg(long, value_name = "FILE", env = kafka::ENV_CONFIG_FILE)]
        pub kafka_config: Option<PathBuf>,
    }

    impl KafkaArgs {
        /// librdkafka settings, later sources winning: `defaults`, the `--kafka-config`
        /// file, `SFMC_RELAY_KAFKA_*` in `env`, then `--brokers` and `forced`.
        pub fn client_config(
            &self,
            defaults: &[(&str, &str)],
            mut forced: Vec<(&'static str, String)>,
            env: &Env,
        ) -> Result<rdkafka::ClientConfig, RunError> {
            if let Some(b) = &self.brokers {
                forced.push(("bootstrap.servers", b.clone()));
            }
            let from_env = kafka::properties_from_env(env.vars());
            kafka::client_config(defaults, self.kafka_config.as_deref(), &from_env, &forced)
                .map_err(RunError::Config)
        }
    }

    // Flow control and dead letters of `consume`.
    #[derive(clap::Args)]
    pub struct ConsumeFlowArgs {
        /// Pause the partitions at this many events in flight to SFMC (resume at half); not
        /// the rules' delivery.max_in_flight (concurrent requests)
        #[arg(long, value_name = "N", default_value_t = defaults::CONSUME_MAX_IN_FLIGHT)]
        pub max_in_flight: usize,
        /// Also produce each dead-letter record to this Kafka topic (keyed like the event)
        #[arg(long, value_name = "T")]
        pub dead_letter_topic: Option<String>,
        /// Drop a Journey Builder API event whose messageId was among the last N (0 = off)
        #[arg(long, value_name = "N", default_value_t = defaults::DEDUP_WINDOW)]
        pub dedup_window: usize,
    }
}

const SERVE_HELP: &str = "\
Environment:
  SFMC_RELAY_WRITE_KEYS               accepted write keys, comma-separated (required);
                                      clients send one as the HTTP Basic auth username
  SFMC_CLIENT_ID, SFMC_CLIENT_SECRET  as for `run` (without both: the built-in simulator)

See docs/serve.md for pointing Segment, RudderStack and the Segment SDKs at the relay.
Exit status: 0 stopped by SIGTERM/SIGINT, 1 I/O error, 2 configuration error.";

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
2 configuration error (rules, environment), 3 with --strict when anything was dead-lettered,
4 stopped before every event was sent (gave up after delivery.give_up_after of SFMC
unavailability, or a signal): the events not sent are in the dead-letter file as
\"undelivered\", in input order; `sfmc-relay replay FILE` sends them.";

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert!(parse_bytes("1T").is_err());
        assert!(parse_bytes("x").is_err());
        assert!(parse_bytes("99999999999G").is_err());
    }

    #[test]
    fn run_flags_become_run_options() {
        let cli = Cli::try_parse_from([
            "sfmc-relay",
            "run",
            "--input",
            "in.ndjson",
            "--requests-per-second",
            "0",
            "-q",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let opts = args.run_options(&Env::from_map([("SFMC_CLIENT_ID", "id")]));
        assert_eq!(opts.input, Some(PathBuf::from("in.ndjson")));
        assert_eq!(opts.input_kind, InputKind::Events);
        assert_eq!(opts.dead_letter, PathBuf::from(defaults::DEAD_LETTER_FILE));
        assert_eq!(opts.requests_per_second, Some(0));
        assert!(!opts.progress);
        assert_eq!(opts.env.get("SFMC_CLIENT_ID").as_deref(), Some("id"));
        assert!(args.watch());
    }

    #[test]
    fn replay_never_appends_to_the_file_it_reads() {
        let cli =
            Cli::try_parse_from(["sfmc-relay", "replay", "sfmc-relay.deadletter.ndjson"]).unwrap();
        let Command::Replay(r) = cli.command else {
            panic!("not replay")
        };
        let opts = r.run_options(&Env::empty());
        assert_eq!(
            opts.dead_letter,
            PathBuf::from("sfmc-relay.deadletter.replay.ndjson")
        );
        let cli = Cli::try_parse_from([
            "sfmc-relay",
            "replay",
            "dir/dead.ndjson",
            "--dead-letter",
            "other.ndjson",
        ])
        .unwrap();
        let Command::Replay(r) = cli.command else {
            panic!("not replay")
        };
        assert_eq!(
            r.run_options(&Env::empty()).dead_letter,
            PathBuf::from("other.ndjson")
        );
    }

    #[test]
    fn replay_reads_its_file_as_dead_letters_without_watching() {
        let cli = Cli::try_parse_from(["sfmc-relay", "replay", "dead.ndjson"]).unwrap();
        let Command::Replay(args) = cli.command else {
            panic!("not replay")
        };
        let opts = args.run_options(&Env::empty());
        assert_eq!(opts.input, Some(PathBuf::from("dead.ndjson")));
        assert_eq!(opts.input_kind, InputKind::DeadLetters);
        assert!(opts.progress);
        assert!(!args.watch());
    }

    #[test]
    fn serve_flags_and_write_keys_become_serve_options() {
        let cli = Cli::try_parse_from([
            "sfmc-relay",
            "serve",
            "--spool",
            "sp",
            "--spool-max-bytes",
            "64M",
            "--drain-timeout",
            "5",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        let opts = args.serve_options(&Env::from_map([("SFMC_RELAY_WRITE_KEYS", " a, ,b ")]));
        assert_eq!(opts.listen, defaults::SERVE_LISTEN.parse().unwrap());
        assert_eq!(opts.spool.dir, PathBuf::from("sp"));
        assert_eq!(opts.spool.max_bytes, 64 << 20);
        assert_eq!(opts.drain_timeout, Duration::from_secs(5));
        assert_eq!(opts.write_keys, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn corpus_count_and_users() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(["sfmc-relay", "corpus"].iter().chain(args)).unwrap();
            let Command::Corpus(args) = cli.command else {
                panic!("not corpus")
            };
            let c = args.corpus_config();
            (c.events, c.users, c.seed)
        };
        assert_eq!(parse(&[]), (100_000, 2000, 1));
        assert_eq!(parse(&["1000"]), (1000, 20, 1));
        assert_eq!(parse(&["-n", "10", "--seed", "7"]), (10, 1, 7));
        assert_eq!(parse(&["10", "--users", "0"]), (10, 1, 1));
        assert!(Cli::try_parse_from(["sfmc-relay", "corpus", "-n", "1", "2"]).is_err());
    }
}
