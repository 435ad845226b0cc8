//! Event sources other than files: the HTTP ingest ([`http`]) and its [`metrics`].

pub mod http;
pub mod metrics;
