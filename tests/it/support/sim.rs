//! The SFMC simulator, started in-process on a free loopback port, and the environment
//! that points a relay (in-process or a process) at it.

use reqwest::{Client, StatusCode};
use sfmc_relay::sim::{self, SimConfig, SimHandle};
use std::collections::HashMap;

/// The credentials [`SimHandle::client_env`] (so [`sim_env`]) gives a relay.
pub const CLIENT_ID: &str = "sim-client";
pub const CLIENT_SECRET: &str = "sim-secret";

/// Simulator YAML: a `contacts` data extension whose `Email` column is an EmailAddress
/// (SFMC refuses rows with an invalid address).
pub const CONTACTS_WITH_EMAIL: &str = "data_extensions:\n  contacts:\n    primary_keys: [Contact Key]\n    columns: { Contact Key: Text(254), Email: EmailAddress }\n";

/// A simulator configured by YAML (`""`: the permissive default, any credentials).
pub async fn start_sim(yaml: &str) -> SimHandle {
    start_sim_with(SimConfig::from_yaml(yaml).expect("sim config")).await
}

/// A simulator with this configuration.
pub async fn start_sim_with(config: SimConfig) -> SimHandle {
    sim::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("sim start")
}

/// Simulator YAML accepting only [`CLIENT_ID`] with `secret`.
pub fn only_client(secret: &str) -> String {
    format!("clients: [{{ client_id: {CLIENT_ID}, client_secret: \"{secret}\" }}]\n")
}

/// The environment pointing a relay at `sim` (legacy v1 endpoints unless `extra` sets
/// `SFMC_SUBDOMAIN`), with `extra` set on top (e.g. another `SFMC_CLIENT_SECRET`).
/// For in-process options (`env.get(k)`) and processes (`relay(args, &env)`) alike.
pub fn sim_env(sim: &SimHandle, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env = sim.client_env();
    assert_eq!(env["SFMC_CLIENT_ID"], CLIENT_ID, "support::sim::CLIENT_ID");
    assert_eq!(env["SFMC_CLIENT_SECRET"], CLIENT_SECRET);
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

/// POST a body to the simulator's rowset endpoint of `key`: (status, response text).
pub async fn post_rowset(
    client: &Client,
    sim: &SimHandle,
    token: &str,
    key: &str,
    body: &str,
) -> (StatusCode, String) {
    let resp = client
        .post(format!(
            "{}/hub/v1/dataevents/key:{key}/rowset",
            sim.base_url()
        ))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.text().await.unwrap())
}
