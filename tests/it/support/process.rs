//! Running the `sfmc-relay` binary as a real process.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
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

/// A child's output read on a thread, line by line (see [`collect_lines`]).
pub struct Collected {
    text: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Collected {
    /// What the child has written so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Everything the child wrote: waits until the reader has seen the end of the stream
    /// (call after the child exited; a child's last lines may still be in the pipe then).
    pub fn wait_eof(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            reader.join().expect("output reader");
        }
        self.text()
    }
}

/// Read a child's output (`from`) on a thread into [`Collected`]; `each` also sees every
/// line as it comes.
pub fn collect_lines(
    from: impl Read + Send + 'static,
    mut each: impl FnMut(&str) + Send + 'static,
) -> Collected {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            each(&line);
            let mut t = sink.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
    Collected {
        text,
        reader: Some(reader),
    }
}
