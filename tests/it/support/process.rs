//! Running the `sfmc-relay` binary as a real process.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::Command;

/// The relay binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_sfmc-relay");

/// The relay with `args` and a clean environment: only `env`, nothing inherited from the
/// test runner. Stdin is null (set another before spawning to feed it); killed on drop.
pub fn relay<K, V>(args: &[&str], env: impl IntoIterator<Item = (K, V)>) -> Command
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut c = Command::new(BIN);
    c.args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// No environment at all, for [`relay`].
pub const NO_ENV: [(&str, &str); 0] = [];

/// Run to the end (at most 60 s) and collect its output.
pub async fn output(mut c: Command) -> Output {
    tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .expect("relay finished in time")
        .expect("relay started")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Send `signal` (`TERM`, `INT`, `HUP`, `KILL`) to process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// Read a child's output on a thread, line by line, into the returned text (what it
/// wrote so far); `each` also sees every line as it comes.
pub fn collect_lines(
    from: impl Read + Send + 'static,
    mut each: impl FnMut(&str) + Send + 'static,
) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            each(&line);
            let mut t = sink.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
    text
}
