//! Running `sfmc-relay serve` as a real process against an in-process SFMC simulator.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sfmc_relay::sim::SimHandle;

use super::{
    BIN, CLIENT_SECRET, Collected, collect_lines, only_client, signal, sim_env, start_sim,
};

pub const KEY: &str = "test-write-key";

/// Rules used by the serve tests: identify -> `people` rows, Order Completed -> `orders`
/// rows, Signed Up -> a Journey API event (not idempotent).
pub fn rules(dir: &Path, extra_delivery: &str) -> std::path::PathBuf {
    let d = dir.join("rules");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("rules.yaml"),
        format!(
            r#"
identify:
  data_extension: people
  create_contacts: false
delivery:
  linger: 20ms
  retry:
    base_delay: 50ms
    max_delay: 1s
{extra_delivery}
track:
  - event: Order Completed
    data_extension: orders
    primary_key: Order Id, Contact Key
  - event: Signed Up
    api_event: signup-journey
"#
        ),
    )
    .unwrap();
    d
}

/// The serve tests' simulator: it accepts only the credentials [`Relay::start`] gives.
pub async fn simulator() -> SimHandle {
    start_sim(&only_client(CLIENT_SECRET)).await
}

pub struct Relay {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Collected,
}

impl Relay {
    pub fn start(spool: &Path, rules: &Path, sim: &SimHandle, args: &[&str]) -> Relay {
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--rules")
            .arg(rules)
            .args(["--listen", "127.0.0.1:0", "--spool"])
            .arg(spool)
            .arg("--dead-letter")
            .arg(spool.with_extension("deadletter.ndjson"))
            .args(args)
            .env("SFMC_RELAY_WRITE_KEYS", format!("other-key, {KEY}"))
            .envs(sim_env(sim, &[]))
            .env_remove("SFMC_SUBDOMAIN")
            .env_remove("SFMC_ACCOUNT_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sfmc-relay serve");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = collect_lines(child.stderr.take().unwrap(), move |line| {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap().to_string();
                let _ = tx.send(addr);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!("serve did not start:\n{}", log.text());
            }
        };
        Relay { child, addr, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What serve has logged so far.
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// SIGTERM, then wait (at most `within`) for the exit status; [`Relay::log`] then
    /// holds everything serve wrote.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        signal(self.child.id(), "TERM");
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                self.log.wait_eof();
                return s;
            }
            if start.elapsed() > within {
                let _ = self.child.kill();
                panic!(
                    "serve did not exit within {within:?} of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (no chance to flush anything).
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rules for the client-library tests: every Segment call type lands somewhere.
/// identify -> `people` rows and contacts; Order Completed -> `orders`; Signed Up -> the
/// Journey API event `signup-journey`; page -> `page_views`; screen -> `screen_views`;
/// group -> `groups`; alias -> `aliases`; `context.userAgent` -> the column `User Agent`.
pub fn client_rules(dir: &Path) -> std::path::PathBuf {
    let d = dir.join("client-rules");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("rules.yaml"),
        r#"
identify:
  data_extension: people
context_columns:
  context.userAgent: User Agent
delivery:
  linger: 20ms
  retry:
    base_delay: 50ms
    max_delay: 1s
track:
  - event: Order Completed
    data_extension: orders
    primary_key: Order Id, Contact Key
  - event: Signed Up
    api_event: signup-journey
  - type: page
    data_extension: page_views
    uuid_primary_key: true
  - type: screen
    data_extension: screen_views
    uuid_primary_key: true
  - type: group
    data_extension: groups
  - type: alias
    data_extension: aliases
    uuid_primary_key: true
"#,
    )
    .unwrap();
    d
}

/// Whether a test dependency is usable: `Ok` to run; otherwise, when `CI` is set, panic
/// (CI must run every test), else print why the test is skipped and return `Err`.
pub fn require(test: &str, available: Result<(), String>) -> Result<(), ()> {
    match available {
        Ok(()) => Ok(()),
        Err(why) => {
            if std::env::var_os("CI").is_some() {
                panic!("CI is set, so {test} must run, but: {why} (see .ci/install-test-deps)");
            }
            println!("SKIPPED {test}: {why}");
            eprintln!("SKIPPED {test}: {why}");
            Err(())
        }
    }
}

/// The directory of the npm packages the client tests use (tests/js, installed by
/// `.ci/install-test-deps` with `npm ci`).
pub fn js_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// `Ok` when `node` runs and can load each of `packages` from tests/js/node_modules.
pub fn node_packages(packages: &[&str]) -> Result<(), String> {
    let mut script = String::new();
    for p in packages {
        script.push_str(&format!("require.resolve({p:?});"));
    }
    match Command::new("node")
        .current_dir(js_dir())
        .args(["-e", &script])
        .output()
    {
        Err(e) => Err(format!("node not runnable: {e}")),
        Ok(o) if !o.status.success() => Err(format!(
            "node cannot load {} (cd tests/js && npm ci): {}",
            packages.join(", "),
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .find(|l| l.contains("Cannot find"))
                .unwrap_or("")
                .trim()
        )),
        Ok(_) => Ok(()),
    }
}

impl Relay {
    /// `GET /metrics` (Prometheus text).
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `GET /metrics` once the spool is drained (completions follow SFMC's answers), or
    /// after 10 s.
    pub async fn metrics_when_idle(&self) -> String {
        let mut m = String::new();
        for _ in 0..200 {
            m = self.metrics().await;
            if m.contains("sfmc_relay_queue_depth 0") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        m
    }

    /// Fails with the file's contents when anything was dead-lettered (the dead-letter file
    /// is next to the spool, as [`Relay::start`] sets it).
    pub fn assert_nothing_dead_lettered(&self, spool: &Path) {
        let dead = spool.with_extension("deadletter.ndjson");
        assert!(
            !dead.exists(),
            "dead-lettered:\n{}",
            std::fs::read_to_string(&dead).unwrap_or_default()
        );
    }
}

/// What one run of a server library's test script leaves in the simulator (for
/// [`wait_for_landed`]): a person, two orders (one of them 32,700 bytes), a journey entry,
/// a page view, a screen view, a group and an alias row.
pub const SERVER_LIBRARY_CALLS: &[(&str, usize)] = &[
    ("people", 1),
    ("orders", 2),
    ("journey", 1),
    ("page_views", 1),
    ("screen_views", 1),
    ("groups", 1),
    ("aliases", 1),
];

/// Wait (30 s at most) until the simulator holds `n` of each: `(data extension, rows per
/// sender)`, or `("journey", events per sender)` for Journey API events. Fails with what
/// is there and the relay's log.
pub async fn wait_for_landed(
    sim: &SimHandle,
    relay: &Relay,
    what: &str,
    want: &[(&str, usize)],
    n: usize,
) {
    let counts = || -> Vec<usize> {
        want.iter()
            .map(|(de, per)| {
                let have = if *de == "journey" {
                    sim.api_events().len()
                } else {
                    sim.rows(de).len()
                };
                have / per
            })
            .collect()
    };
    let start = Instant::now();
    while counts().iter().any(|c| *c != n) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}: {:?} of {want:?}, want {n} each\n{}",
            counts(),
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the sample `series` (`name{labels}` as written in /metrics).
pub fn metric_value(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
}

/// Run a client-library process (off the async threads); it must succeed and print one
/// JSON line, which is returned. Fails with its output and the relay's log.
pub async fn run_client(mut cmd: Command, what: &str, relay: &Relay) -> serde_json::Value {
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: {}\n{}\nrelay:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        relay.log()
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not one JSON line ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The simulator's row of data extension `de` whose key `key` is `want`.
pub fn row(sim: &SimHandle, de: &str, key: &str, want: &str) -> serde_json::Value {
    sim.rows(de)
        .into_iter()
        .find(|r| r["keys"][key] == want)
        .unwrap_or_else(|| panic!("no {de} row with {key} = {want} in {:?}", sim.rows(de)))
}

/// What every client-library test sends, landed (see [`client_rules`]): the person
/// `{run}-1` with its email, the order `{run}-o1` of `{run}-1` with `revenue`, the big
/// order `big_order` (its note over 30,000 characters), the group row of `{run}-1`, and a
/// journey entry for `journey_contact`.
pub fn assert_client_calls_landed(
    sim: &SimHandle,
    run: &str,
    revenue: f64,
    big_order: &str,
    journey_contact: &str,
) {
    let person = row(sim, "people", "Contact Key", &format!("{run}-1"));
    assert_eq!(
        person["values"]["Email"],
        format!("{run}-1@example.com"),
        "{person}"
    );
    let order = row(sim, "orders", "Order Id", &format!("{run}-o1"));
    assert_eq!(order["keys"]["Contact Key"], format!("{run}-1"), "{order}");
    assert_eq!(order["values"]["Revenue"], revenue, "{order}");
    let big = row(sim, "orders", "Order Id", big_order);
    assert!(
        big["values"]["Note"].as_str().unwrap().len() > 30_000,
        "{run}: the big event"
    );
    let group = row(sim, "groups", "Contact Key", &format!("{run}-1"));
    assert_eq!(group["values"]["Name"], "Acme", "{group}");
    assert!(
        sim.api_events()
            .iter()
            .any(|e| e["ContactKey"] == journey_contact),
        "{run}: the Signed Up journey event for {journey_contact}: {:?}",
        sim.api_events()
    );
}
