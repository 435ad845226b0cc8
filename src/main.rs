//! The `sfmc-relay` command line: parses the flags and hands them to the library
//! ([`sfmc_relay::cli`]: the flags, one function per subcommand, the exit statuses).

use clap::Parser;
use sfmc_relay::cli::{self, Cli, Command};
use sfmc_relay::env::Env;
use std::process::ExitCode;

/// mimalloc: the relay allocates many small, short-lived strings and maps per event;
/// glibc malloc was ~35% of the transform's instructions (callgrind), mimalloc far less.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sfmc_relay=info")),
        )
        .init();
    let env = Env::process();
    let status = match args.command {
        Command::Transform(a) => cli::transform(a),
        Command::Run(a) => cli::run(a, &env),
        Command::Replay(a) => cli::replay(a, &env),
        #[cfg(feature = "kafka")]
        Command::Consume(a) => cli::consume(a, &env),
        #[cfg(feature = "kafka")]
        Command::Produce(a) => cli::produce(a, &env),
        Command::Corpus(a) => cli::corpus(a),
        Command::Serve(a) => cli::serve(a, &env),
        Command::Sim(a) => cli::sim(a),
        Command::Check(a) => cli::check(a, &env),
        Command::Schema => cli::schema(),
        Command::Explain(a) => cli::explain(a, &env),
        Command::Test(a) => cli::test(a),
    };
    status.into()
}
