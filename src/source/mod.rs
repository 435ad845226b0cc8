//! Event sources other than files: the HTTP ingest ([`http`]).

pub mod http;
