//! SFMC HTTP client layer.
//!
//! - [`endpoints`]: where the token endpoint and REST API live (strict subdomain check).
//! - [`auth`]: credentials and the shared, single-flight access-token cache.
//! - [`retry`]: retry classification and backoff.
//! - [`client`]: [`SfmcClient`], rate-governed, bounded, retrying REST calls.
//! - [`bulk`]: bodies and answers of the bulk endpoints (async rows, establish, async
//!   journey events).

pub mod auth;
pub mod bulk;
pub mod client;
pub mod deadletter;
pub mod endpoints;
pub mod retry;
pub mod sink;

pub use auth::{AccessToken, AuthError, Credentials, Secret, TokenCache};
pub use client::{ClientConfig, ClientStats, SendError, SfmcClient, SfmcResponse};
pub use endpoints::{AuthVersion, ConfigError, Endpoints};
pub use retry::RetryPolicy;
