#!/usr/bin/env bash
# Trickle benchmark: latency from writing an event to `sfmc-relay run`'s stdin to its row
# landing in the simulator, at a steady low rate.
#
#   scripts/bench-trickle.sh [EVENTS] [RATE]   (defaults: 600 events at 10 events/s)
#
# Streams the seeded corpus (`sfmc-relay corpus`, USERS=EVENTS/10 by default), one line at
# a time at RATE events/s, into `sfmc-relay run` (stdin) with the example ecommerce
# rules against `sfmc-relay sim` on 127.0.0.1, once per request rate in RPS (default
# "20 0": the shipped 20 requests/s, then unlimited). Each event carries a sequence
# number (a `bench_seq` trait or property, so its row has a "Bench Seq" column); the
# simulator's upsert log (`GET /sim/log`) says when each row landed (`landed_at`). An
# identify coalesced with a later one of the same user (one row for both) is timed to the
# row that carried it. Prints p50/p99/max latency, events, SFMC calls per 1,000 events.
# BIN=path measures another build (nothing is built then).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-600}
RATE=${2:-10}
U=${USERS:-$((N / 10 > 0 ? N / 10 : 1))}
PORT=${PORT:-19500}
RPS=${RPS:-"20 0"}
if [ -z "${BIN:-}" ]; then
  BIN=target/release/sfmc-relay
  cargo build --release --quiet
fi
work=$(mktemp -d)
SIM_PID=
trap '[ -n "$SIM_PID" ] && kill $SIM_PID 2>/dev/null; rm -rf "$work"' EXIT
$BIN corpus -n "$N" --users "$U" > "$work/corpus.ndjson"
export SFMC_CLIENT_ID=bench SFMC_CLIENT_SECRET=bench-secret
export SFMC_AUTH_URL=http://127.0.0.1:$PORT SFMC_REST_URL=http://127.0.0.1:$PORT
for rps in $RPS; do
  $BIN sim --listen 127.0.0.1:$PORT 2>"$work/sim.log" &
  SIM_PID=$!
  for _ in $(seq 50); do curl -sf http://127.0.0.1:$PORT/sim/stats >/dev/null && break; sleep 0.1; done
  echo "== $N events at $RATE events/s, requests_per_second $rps (${RULES:-examples/ecommerce/rules})"
  python3 - "$BIN" "$work" "$PORT" "$RATE" "$rps" "${RULES:-examples/ecommerce/rules}" <<'EOF'
import json, math, os, subprocess, sys, time, urllib.request
from datetime import datetime

bin_, work, port, rate, rps, rules = sys.argv[1:]
rate = float(rate)
events = []
with open(f"{work}/corpus.ndjson") as f:
    for i, line in enumerate(f):
        e = json.loads(line)
        (e.setdefault("traits", {}) if e["type"] == "identify" else e.setdefault("properties", {}))["bench_seq"] = i
        events.append(e)
os.makedirs(f"{work}/state-{rps}")  # a fresh contact state file: no key is known yet
relay = subprocess.Popen(
    [bin_, "run", "--rules", rules, "--requests-per-second", rps, "-q",
     "--dead-letter", f"{work}/dead-{rps}.ndjson", "--state-dir", f"{work}/state-{rps}"],
    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=open(f"{work}/run.log", "w"))
written = []
start = time.time() + 0.5  # let the relay start up
for i, e in enumerate(events):
    pause = start + i / rate - time.time()
    if pause > 0:
        time.sleep(pause)
    line = (json.dumps(e) + "\n").encode()
    written.append(time.time())  # before the write: the relay may read it at once
    relay.stdin.write(line)
    relay.stdin.flush()
relay.stdin.close()
rc = relay.wait()
base = f"http://127.0.0.1:{port}"
log = json.load(urllib.request.urlopen(f"{base}/sim/log"))
stats = json.load(urllib.request.urlopen(f"{base}/sim/stats"))
landed = {}
for entry in log:
    seq = entry["values"].get("Bench Seq")
    if seq is not None:
        t = datetime.fromisoformat(entry["landed_at"].replace("Z", "+00:00")).timestamp()
        landed.setdefault(int(seq), t)
# An event without its own row was coalesced into a later event's row of the same key
# (only identifies share keys: orders have an order id, product views a UUID).
lat, coalesced, missing = [], 0, 0
for i, e in enumerate(events):
    t = landed.get(i)
    if t is None and e["type"] == "identify":
        # The next identify of the same user that has a row of its own (rows coalesce
        # in chains: a, b, c of one user in one batch make one row with c's values).
        for j in range(i + 1, len(events)):
            if events[j]["type"] == "identify" and events[j].get("userId") == e.get("userId") and j in landed:
                t = landed[j]
                coalesced += 1
                break
    if t is None:
        missing += 1
        print(f"no row for event {i}: {json.dumps(e)[:300]}", file=sys.stderr)
        continue
    lat.append(t - written[i])
lat.sort()
def q(p):  # nearest rank
    return lat[max(0, math.ceil(p * len(lat)) - 1)] * 1000
n = len(events)
print(f"events: {n} ({len(lat)} timed, {coalesced} coalesced into a later row, {missing} without a row), relay exit {rc}")
if lat:
    print(f"latency write -> row landed: p50 {q(0.50):.0f} ms, p90 {q(0.90):.0f} ms, p99 {q(0.99):.0f} ms, max {lat[-1] * 1000:.0f} ms, min {lat[0] * 1000:.0f} ms")
calls = stats["calls"]
per = {k: v["total"] for k, v in calls.items()}
total = sum(per.values())
print(f"SFMC calls per 1,000 events: {1000 * total / n:.1f} (" + ", ".join(f"{k} {v}" for k, v in sorted(per.items())) + ")")
if missing or rc != 0:
    sys.exit(1)
EOF
  kill $SIM_PID; wait $SIM_PID 2>/dev/null || true; SIM_PID=
done
