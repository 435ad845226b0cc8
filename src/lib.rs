//! sfmc-relay: Segment-spec events -> Salesforce Marketing Cloud, driven by YAML rules.
//!
//! See `docs/architecture.md` for what lives where.

pub mod action;
pub mod cli;
pub mod commands;
pub mod corpus;
pub mod defaults;
pub mod env;
pub mod event;
pub mod exit;
pub mod golden;
pub mod pipeline;
pub mod rules;
pub mod sfmc;
pub mod sim;
pub mod source;
pub mod spool;
pub mod transform;
pub mod view;
