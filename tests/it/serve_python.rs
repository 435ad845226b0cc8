//! Segment's own Python library (segment-analytics-python, unmodified) against `serve`:
//! identify, track, page, screen, group and alias calls, plain and gzip'd, and one event of
//! exactly 32,700 bytes as the library sends it; every one lands in the simulator.
//!
//! Installed by `.ci/install-test-deps`. Skipped, with a message, only when python3 or
//! the package is missing *and* `CI` is not set; in CI it must run.

use crate::support::serve::{
    KEY, Relay, assert_client_calls_landed, client_rules, require, run_client, simulator,
    wait_for_landed,
};
use std::process::Command;
use std::time::Duration;

const BIG: usize = 32_700;

fn python_client_available() -> Result<(), String> {
    match Command::new("python3")
        .args(["-c", "import segment.analytics"])
        .output()
    {
        Err(e) => Err(format!("python3 not runnable: {e}")),
        Ok(o) if !o.status.success() => Err(format!(
            "python3 cannot import segment.analytics (pip install segment-analytics-python): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => Ok(()),
    }
}

/// argv: host, write key, plain|gzip, run id, big-event bytes. The exact size is found with
/// a probe: the library first sends the event to a local capture server, and the padding
/// is adjusted until the event's JSON in the captured batch has the wanted length.
const SCRIPT: &str = r#"
import json, sys, threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from segment.analytics.client import Client

host, key, mode, run, big = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
errors = []

def client(url):
    # sync_mode: each call is sent (and answered) before it returns.
    return Client(key, host=url, sync_mode=True, gzip=mode == "gzip", max_retries=2,
                  on_error=lambda e, batch: errors.append(e))

bodies = []
class Capture(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            import gzip
            body = gzip.decompress(body)
        bodies.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"success":true}')
    def log_message(self, *a):
        pass

def big_event(pad):
    return dict(user_id=run + "-big", event="Order Completed",
                properties={"order_id": run + "-big", "note": "x" * pad})

def probe(pad):
    server = HTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    del bodies[:]
    client("http://127.0.0.1:%d" % server.server_address[1]).track(**big_event(pad))
    server.shutdown()
    for b in bodies:
        for ev in json.loads(b)["batch"]:
            if ev.get("properties", {}).get("order_id") == run + "-big":
                # The library serialises with json.dumps' defaults; so does this.
                return len(json.dumps(ev).encode())
    sys.exit("probe: the big event was not sent")

pad = big - 1000
for _ in range(5):
    pad += big - probe(pad)
    if probe(pad) == big:
        break
else:
    sys.exit("could not size the event")
if errors:
    sys.exit("probe errors: %r" % errors)

analytics = client(host)
analytics.identify(run + "-1", {"email": run + "-1@example.com", "name": "Py One"})
analytics.track(run + "-1", "Order Completed", {"order_id": run + "-o1", "revenue": 42.5})
analytics.track(run + "-2", "Signed Up", {"plan": "free"})
analytics.page(run + "-1", "Docs", "Home", {"url": "https://example.com/"})
analytics.screen(run + "-1", "App", "Settings")
analytics.group(run + "-1", run + "-g1", {"name": "Acme"})
analytics.alias(run + "-anon", run + "-1")
analytics.track(**big_event(pad))
analytics.flush()
if errors:
    print("errors:", errors, file=sys.stderr)
    sys.exit(1)
print(json.dumps({"big_event_bytes": big}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_python_library_delivers_through_serve() {
    if require(
        "segment_python_library_delivers_through_serve",
        python_client_available(),
    )
    .is_err()
    {
        return;
    }
    let sim = simulator().await;
    let tmp = tempfile::tempdir().unwrap();
    let rules = client_rules(tmp.path());
    let mut relay = Relay::start(&tmp.path().join("spool"), &rules, &sim, &[]);
    let script = tmp.path().join("send.py");
    std::fs::write(&script, SCRIPT).unwrap();
    for (i, mode) in ["plain", "gzip"].into_iter().enumerate() {
        let run = format!("py-{mode}");
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .args([&relay.url(""), KEY, mode, &run, &BIG.to_string()]);
        let said = run_client(cmd, mode, &relay).await;
        assert_eq!(said["big_event_bytes"], BIG, "{said}");
        wait_for_landed(
            &sim,
            &relay,
            mode,
            crate::support::serve::SERVER_LIBRARY_CALLS,
            i + 1,
        )
        .await;
        assert_client_calls_landed(&sim, &run, 42.5, &format!("{run}-big"), &format!("{run}-2"));
    }
    relay.assert_nothing_dead_lettered(&tmp.path().join("spool"));

    // A wrong write key is refused; the library reports Segment's error code and message
    // (not "Unknown error").
    let bad = Command::new("python3")
        .arg(&script)
        .args([
            &relay.url(""),
            "wrong-key",
            "plain",
            "py-bad",
            &BIG.to_string(),
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success(), "a wrong key must not be accepted");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("unauthorized")
            && err.contains("invalid write key")
            && !err.contains("Unknown error"),
        "{err}"
    );
    assert!(relay.terminate(Duration::from_secs(20)).success());
}
