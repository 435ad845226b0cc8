//! The integration tests: one test binary (`cargo test --test it`), one module per area,
//! helpers in `support`. Select an area with its module path, e.g.
//! `cargo test --test it serve::` or `cargo test --features kafka --test it kafka::`.

mod support;

mod cli_run;
mod delivery;
mod golden;
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "kafka")]
mod kafka_mock;
mod live_rules;
mod properties;
mod rules_errors;
mod security;
mod serve;
mod serve_python;
mod sfmc_client;
mod sim;
mod sim_rows;
