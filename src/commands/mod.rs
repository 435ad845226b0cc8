//! The subcommands' bodies (the CLI in `main.rs` only parses flags and calls these).

pub mod check;
pub mod explain;
pub mod run;
pub mod serve;
pub mod test;
pub mod transform;
