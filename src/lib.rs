//! sfmc-relay: Segment-spec events -> Salesforce Marketing Cloud, driven by YAML rules.
//!
//! See `docs/architecture.md` for what lives where.

pub mod sfmc;
pub mod sim;
