//! The integration tests: one test binary (`cargo test --test it`), one module per area,
//! the shared helpers in `support`. A test's name starts with its module, so a module is
//! selected by its path: `cargo test --test it serve::`, `cargo test --test it golden::`,
//! `cargo test --features kafka --test it kafka::` (the broker tests; `kafka_mock::` the
//! mock-cluster ones).
//!
//! Adding tests: a new file `tests/it/NAME.rs` plus a `mod NAME;` line here (behind
//! `#[cfg(feature = "kafka")]` if it needs the feature); it starts with
//! `use crate::support::*;` and takes the simulator (`start_sim`, `sim_env`), the relay
//! process (`relay`, `output`, `signal`), rule directories and events from there rather
//! than defining its own. A file directly under `tests/` would become a binary of its own.
//!
//! All tests run in one process, on parallel threads: nothing may change process-wide
//! state (environment variables, the working directory); give a child process its
//! environment with `relay(args, env)` instead.

mod support;

mod cli_run;
mod delivery;
mod deploy;
mod golden;
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "kafka")]
mod kafka_mock;
mod live_rules;
mod outage;
mod outage_run;
mod properties;
mod readme;
mod rules_errors;
mod rules_schema;
mod security;
mod serve;
mod serve_browser;
mod serve_cors;
mod serve_crash;
mod serve_node;
mod serve_python;
mod sfmc_client;
mod sim;
mod sim_bulk;
mod sim_rows;
