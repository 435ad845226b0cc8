//! The source layer: where events come from. Every source hands the pipeline
//! [`Record`]s (raw bytes, an [`Origin`], an [`Ack`] completed once the record's outcome is
//! final): NDJSON lines from stdin or files ([`lines`], [`file`]), `serve`'s spool
//! ([`spool`], fed by the HTTP ingest [`http`] with its [`cors`], [`dedup`] and
//! [`metrics`]), Kafka (feature `kafka`: [`kafka`] settings and offset tracking,
//! [`kafka_source`] the consumer loop).

pub mod cors;
pub mod dedup;
pub mod file;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "kafka")]
pub mod kafka_source;
pub mod lines;
pub mod metrics;
pub mod record;
pub mod spool;

pub use record::{Ack, Framing, Origin, OriginFields, Record};
