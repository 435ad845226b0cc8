//! Event sources other than NDJSON files and stdin: the HTTP ingest ([`http`], with its
//! [`cors`] and [`metrics`]), and Kafka (feature `kafka`).

pub mod cors;
pub mod dedup;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod metrics;
