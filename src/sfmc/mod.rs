//! SFMC HTTP client layer.
//!
//! - [`endpoints`]: where the token endpoint and REST API live (strict subdomain check).
//! - [`auth`]: credentials (values or files re-read on rotation) and the shared,
//!   single-flight, backed-off access-token cache.
//! - [`classify`]: the one place that decides what a failure means (data, uncertain,
//!   infrastructure) and whether a call is idempotent.
//! - [`breaker`]: the circuit breaker that makes requests wait out an outage.
//! - [`retry`]: backoff and SFMC's retry hints.
//! - [`client`]: [`SfmcClient`], rate-governed, bounded, retrying REST calls.
//! - [`bulk`]: bodies and answers of the bulk endpoints (async rows, establish, async
//!   journey events).

pub mod auth;
pub mod breaker;
pub mod bulk;
pub mod classify;
pub mod client;
pub mod deadletter;
pub mod endpoints;
pub mod retry;
pub mod sink;

pub use auth::{AccessToken, AuthError, CredentialSource, Credentials, Secret, TokenCache};
pub use breaker::{BreakerConfig, BreakerState, Health};
pub use classify::{FailureClass, Idempotency};
pub use client::{AttemptNote, ClientConfig, ClientStats, SendError, SfmcClient, SfmcResponse};
pub use endpoints::{AuthVersion, ConfigError, Endpoints};
pub use retry::RetryPolicy;
