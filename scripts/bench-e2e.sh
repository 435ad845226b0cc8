#!/usr/bin/env bash
# End-to-end benchmark: `sfmc-relay run` over loopback against the simulator.
#
#   scripts/bench-e2e.sh [EVENTS] [USERS]      (defaults: 100000 events, EVENTS/50 users)
#
# Streams the seeded corpus (`sfmc-relay corpus`) through `run` with the example ecommerce
# rules and the rate limit off, against `sfmc-relay sim` on 127.0.0.1. Prints events/s,
# SFMC calls per 1,000 events (by endpoint) and the relay's peak RSS. USERS=EVENTS gives
# the worst case: every event from a new user, so one contact call per identify.
# BIN=path measures another build (e.g. a checkout of an older commit) with this tree's
# rules: relay and simulator both from BIN; nothing is built then.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
U=${2:-$((N / 50))}
PORT=${PORT:-19400}
if [ -z "${BIN:-}" ]; then
  BIN=target/release/sfmc-relay
  cargo build --release --quiet
fi
work=$(mktemp -d)
trap 'kill $SIM_PID 2>/dev/null || true; rm -rf "$work"' EXIT
# The simulator keeps its row log in memory: bound it so it does not dominate the machine.
printf 'log_limit: 1000\n' > "$work/sim.yaml"
$BIN sim --listen 127.0.0.1:$PORT --config "$work/sim.yaml" 2>"$work/sim.log" &
SIM_PID=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:$PORT/sim/stats >/dev/null && break; sleep 0.1; done
export SFMC_CLIENT_ID=bench SFMC_CLIENT_SECRET=bench-secret
export SFMC_AUTH_URL=http://127.0.0.1:$PORT SFMC_REST_URL=http://127.0.0.1:$PORT
# The corpus is written first (untimed): generating it costs about as much CPU as relaying it.
$BIN corpus -n "$N" --users "$U" > "$work/corpus.ndjson"
start=$(date +%s.%N)
/usr/bin/time -f '%M %U %S' -o "$work/rss" \
  $BIN run --rules ${RULES:-examples/ecommerce/rules} --requests-per-second 0 -q \
    --input "$work/corpus.ndjson" --dead-letter "$work/dead.ndjson" 2>"$work/run.log" \
  || { echo "run failed:" >&2; cat "$work/run.log" >&2; exit 1; }
end=$(date +%s.%N)
secs=$(echo "$end - $start" | bc -l)
read -r rss_kb relay_user relay_sys < "$work/rss"
sim_cpu=$(awk '{print ($14 + $15) / 100}' /proc/$SIM_PID/stat)
echo "events: $N, users: $U"
printf 'wall: %.2f s, %.0f events/s\n' "$secs" "$(echo "$N / $secs" | bc -l)"
echo "peak RSS (relay): $((rss_kb / 1024)) MB"
echo "CPU: relay ${relay_user} s user + ${relay_sys} s sys; simulator ${sim_cpu} s (whole life, with corpus time idle)"
printf 'busy cores (relay + simulator CPU / wall): %.2f\n' "$(echo "($relay_user + $relay_sys + $sim_cpu) / $secs" | bc -l)"
grep -E "events read|SFMC calls" "$work/run.log"
curl -s http://127.0.0.1:$PORT/sim/stats | python3 -c '
import json,sys
n=int(sys.argv[1]); s=json.load(sys.stdin)
calls=s["calls"]
def c(k): return sum(v["total"] for kk,v in calls.items() if k in kk.lower())
de, ev, ct, tok = c("rowset"), c("interaction"), c("contacts"), c("token")
print(f"per 1,000 events: data extension + API event calls {1000*(de+ev)/n:.1f}, contact calls {1000*ct/n:.1f}, token requests {tok}")
' "$N"
