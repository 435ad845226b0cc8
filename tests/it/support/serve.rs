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
