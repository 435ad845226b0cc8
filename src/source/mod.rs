//! Event sources other than NDJSON files and stdin: the HTTP ingest ([`http`]) and its
//! [`metrics`], and Kafka (feature `kafka`).

pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod metrics;
