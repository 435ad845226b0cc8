//! The subcommands' bodies (the CLI in `main.rs` only parses flags and calls these).

pub mod check;
#[cfg(feature = "kafka")]
pub mod consume;
pub mod explain;
#[cfg(feature = "kafka")]
pub mod produce;
pub mod run;
pub mod schema;
pub mod serve;
pub mod test;
pub mod transform;
