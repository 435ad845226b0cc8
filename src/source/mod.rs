//! Event sources other than NDJSON files and stdin.

#[cfg(feature = "kafka")]
pub mod kafka;
