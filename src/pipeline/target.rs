//! The SFMC target a pipeline delivers to: the client for the rules' delivery settings and
//! the environment's credentials, or the built-in simulator when there are none.

use super::{Env, RunError};
use crate::rules::Program;
use crate::sfmc::sink::SinkConfig;
use crate::sfmc::{
    BreakerConfig, ClientConfig, CredentialSource, Credentials, Endpoints, RetryPolicy, SfmcClient,
};
use crate::sim::{self, SimHandle};
use std::num::NonZeroU32;
use std::sync::Arc;

/// Where events are delivered: SFMC, or the built-in simulator without credentials.
pub struct Target {
    pub client: SfmcClient,
    /// The built-in simulator, when no credentials were set.
    pub sim: Option<SimHandle>,
    /// A short stable name of the account (hosts, MID, client id; never the secret), for
    /// state kept across runs; `None` for the built-in simulator (fresh every run).
    pub tenant: Option<String>,
}

/// A short name for state files: FNV-1a over `parts`, stable across runs and versions.
pub(crate) fn stable_name(parts: &[String]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0u8]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The SFMC client for `program`'s delivery settings and the environment's credentials;
/// without credentials, starts the built-in simulator (and says so on stderr).
pub async fn target(
    program: &Program,
    env: &Env,
    requests_per_second: Option<u32>,
) -> Result<Target, RunError> {
    let env = |k: &str| env.get(k).filter(|v| !v.is_empty());
    let d = &program.settings.delivery;
    let rps = requests_per_second
        .or(Some(d.requests_per_second.unwrap_or(0)))
        .and_then(NonZeroU32::new);
    let config = ClientConfig {
        requests_per_second: rps,
        max_in_flight: d.max_in_flight,
        request_timeout: d.request_timeout,
        retry: RetryPolicy {
            max_attempts: d.retry_attempts,
            max_elapsed: d.retry_within,
            base_delay: d.retry_base_delay,
            max_delay: d.retry_max_delay,
        },
        // While SFMC is unavailable, probes back off like retries.
        breaker: BreakerConfig {
            probe_base: d.retry_base_delay,
            probe_max: d.retry_max_delay,
            blocked_pause: d.retry_blocked_pause,
            ..BreakerConfig::default()
        },
        ..ClientConfig::default()
    };
    let source = CredentialSource::from_vars(env).map_err(RunError::Config)?;
    let Some(source) = source else {
        let handle = sim::start(sim::SimConfig::default(), ([127, 0, 0, 1], 0).into())
            .await
            .map_err(|e| RunError::Io(format!("cannot start the built-in SFMC simulator: {e}")))?;
        eprintln!(
            "sfmc-relay: no SFMC credentials (SFMC_CLIENT_ID, SFMC_CLIENT_SECRET) in the environment: \
delivering to the built-in SFMC simulator at {} (nothing leaves this machine)",
            handle.base_url()
        );
        let endpoints = Endpoints::resolve(None, Some(handle.base_url()), Some(handle.base_url()))
            .map_err(|e| RunError::Config(e.to_string()))?;
        let creds = Credentials {
            client_id: "sfmc-relay-simulator".into(),
            client_secret: "simulator".into(),
            account_id: None,
        };
        let client = SfmcClient::new(endpoints, creds, config)
            .map_err(|e| RunError::Config(e.to_string()))?;
        return Ok(Target {
            client,
            sim: Some(handle),
            tenant: None,
        });
    };
    let subdomain = env("SFMC_SUBDOMAIN").or_else(|| program.settings.subdomain.clone());
    let endpoints = Endpoints::resolve(
        subdomain.as_deref(),
        env("SFMC_AUTH_URL").as_deref(),
        env("SFMC_REST_URL").as_deref(),
    )
    .map_err(|e| RunError::Config(e.to_string()))?;
    let tenant = stable_name(&[
        subdomain.clone().unwrap_or_default(),
        env("SFMC_AUTH_URL").unwrap_or_default(),
        env("SFMC_REST_URL").unwrap_or_default(),
        env("SFMC_ACCOUNT_ID")
            .or_else(|| program.settings.account_id.clone())
            .unwrap_or_default(),
        env("SFMC_CLIENT_ID").unwrap_or_default(),
    ]);
    let source = Arc::new(source.or_account_id(program.settings.account_id.clone()));
    let client = SfmcClient::with_credentials(endpoints, source, config)
        .map_err(|e| RunError::Config(e.to_string()))?;
    // SIGHUP re-reads SFMC_CLIENT_SECRET_FILE / SFMC_CLIENT_ID_FILE (secret rotation).
    #[cfg(unix)]
    if let Err(e) = client.reload_credentials_on_sighup() {
        tracing::warn!("cannot listen for SIGHUP (credential reload): {e}");
    }
    Ok(Target {
        client,
        sim: None,
        tenant: Some(tenant),
    })
}

/// The sink settings from the rules' `delivery:` section.
pub fn sink_config(program: &Program) -> SinkConfig {
    let d = &program.settings.delivery;
    SinkConfig {
        batch_rows: d.batch_rows,
        batch_bytes: d.batch_bytes,
        linger: d.linger,
        lanes: d.max_in_flight.max(1),
        contact_cache: d.contact_cache,
        contact_batch: d.contact_batch,
        journey_batch: d.journey_batch,
        async_threshold: d.async_threshold,
        async_batch_rows: d.async_batch_rows,
        request_timeout: d.request_timeout,
        contact_state: None,
        journey_journal: None,
    }
}
