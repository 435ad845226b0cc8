//! The subcommands' bodies (the CLI in `main.rs` only parses flags and calls these).

pub mod run;
pub mod serve;
pub mod transform;
