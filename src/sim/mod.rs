//! A strict local Salesforce Marketing Cloud over real HTTP.
//!
//! One server answers both the auth endpoints (`/v2/token`, `/v1/requestToken`) and the
//! REST endpoints the relay uses (data extension rowsets and single rows, contacts,
//! Journey Builder API events, and the bulk endpoints in `bulk.rs`: the asynchronous rows
//! API, `/contacts/v1/establish`, `/interaction/v1/async/events`), validating requests the way SFMC does (see
//! `docs/sfmc-api.md`): bearer tokens that expire, declared data extension schemas with
//! typed columns and primary keys, the 5 MB body limit, the "a bad row poisons the rest of
//! the batch" behaviour and SFMC's error bodies. Faults (429, 500, transient 10006, slow
//! answers, dropped connections, a requests-per-second cap) are injected from a seeded RNG.
//!
//! Inspection endpoints under `/sim/` (no auth) and methods on [`SimHandle`] /
//! [`SimState`] show what landed.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use sfmc_relay::sim::{self, SimConfig};
//! let handle = sim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
//! println!("auth at {}/v2/token", handle.base_url());
//! println!("{}", handle.summary_text());
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

mod bulk;
mod config;
mod rows;
mod server;
mod state;
mod validate;

pub use bulk::{BulkStats, DEADLOCK_MESSAGE};
pub use config::{
    AsyncEventsConfig, AsyncRowsConfig, ClientCredentials, ColumnType, DEFAULT_TEXT_LENGTH,
    DataExtensionConfig, EstablishConfig, EventDefinitionConfig, Faults, SimConfig,
    UnknownDataExtensions,
};
pub use server::{SimHandle, check_request_body, serve, start};
pub use state::{EndpointStats, LogEntry, SimState, SimStats};
