#!/usr/bin/env bash
# Soak run: the relay under a steady paced stream against a faulty simulator.
#
#   scripts/soak.sh [SECONDS]        # default 600; RATE=events/s (default 500)
#
# Builds release, starts `sfmc-relay sim` with faults (429s, 500s, bare 10006s, slow
# answers, dropped connections), streams `sfmc-relay corpus` events paced at RATE/s into
# `sfmc-relay run` for SECONDS, revokes the simulator's tokens every REVOKE_EVERY seconds,
# samples the relay's RSS (VmRSS) and open fds every SAMPLE_EVERY seconds, and checks at
# the end:
#   - counts add up exactly: events read = sent = delivered + skipped + dead-lettered,
#     and the dead-letter file has one line per dead-lettered event;
#   - RSS is flat: after warm-up (the first 10% of samples), the last quarter's max is
#     within 20% of the first quarter's max;
#   - open fds do not grow (last quarter's max <= first quarter's max + 4).
# Prints the figures (a markdown table for BENCHMARKS.md) and exits non-zero on a failure.
# Loopback only. Not run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

DURATION="${1:-600}"
RATE="${RATE:-500}"
REVOKE_EVERY="${REVOKE_EVERY:-10}"
SAMPLE_EVERY="${SAMPLE_EVERY:-2}"
EVENTS=$((DURATION * RATE))

nice -n 10 cargo build --release --quiet
BIN="$PWD/target/release/sfmc-relay"
WORK="$(mktemp -d)"
SIM_PID=""
RUN_PID=""
cleanup() {
  [ -n "$RUN_PID" ] && kill "$RUN_PID" 2>/dev/null || true
  [ -n "$SIM_PID" ] && kill -INT "$SIM_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

cat >"$WORK/sim.yaml" <<YAML
clients: [{ client_id: soak-client, client_secret: soak-secret }]
faults:
  seed: 7
  rate_429: 0.02
  retry_after: 1
  rate_500: 0.02
  rate_bare_10006: 0.02
  rate_slow: 0.05
  slow_ms: 300
  rate_drop: 0.01
  drop_after_handling: true
YAML

mkdir -p "$WORK/rules"
cp examples/ecommerce/rules/*.yaml "$WORK/rules/"
cat >"$WORK/rules/settings.yaml" <<YAML
delivery:
  batch_rows: 50
  linger: 200ms
  requests_per_second: 0
  max_in_flight: 4
  request_timeout: 5s
  retry:
    attempts: 30
    within: 5m
    base_delay: 50ms
    max_delay: 2s
YAML

start_sim "$BIN" "$WORK/sim.yaml" "$WORK/sim.err"


echo "soak: ${DURATION}s at ${RATE} events/s (${EVENTS} events) against $BASE; work dir $WORK"
"$BIN" corpus -n "$EVENTS" --seed 42 | pace "$RATE" | \
  env -i PATH="$PATH" RUST_LOG=warn \
    SFMC_CLIENT_ID=soak-client SFMC_CLIENT_SECRET=soak-secret \
    SFMC_AUTH_URL="$BASE" SFMC_REST_URL="$BASE" \
    "$BIN" run --rules "$WORK/rules" --dead-letter "$WORK/dead.ndjson" -q --no-watch \
    2>"$WORK/run.err" &
RUN_PID=$!

: >"$WORK/samples.tsv"
started=$(date +%s)
last_revoke=$started
revokes=0
while kill -0 "$RUN_PID" 2>/dev/null; do
  now=$(date +%s)
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$RUN_PID/status" 2>/dev/null || true)
  fds=$(ls "/proc/$RUN_PID/fd" 2>/dev/null | wc -l || true)
  [ -n "$rss" ] && printf '%s\t%s\t%s\n' "$((now - started))" "$rss" "$fds" >>"$WORK/samples.tsv"
  if [ $((now - last_revoke)) -ge "$REVOKE_EVERY" ]; then
    curl -fsS -X POST "$BASE/sim/revoke-tokens" >/dev/null && revokes=$((revokes + 1))
    last_revoke=$now
  fi
  sleep "$SAMPLE_EVERY"
done
RUN_RC=0
wait "$RUN_PID" || RUN_RC=$?
RUN_PID=""
elapsed=$(($(date +%s) - started))
stats="$(curl -fsS "$BASE/sim/stats" || echo '{}')"

summary="$(grep -E 'events read' "$WORK/run.err" | tail -1)"
calls="$(grep -E '^SFMC calls' "$WORK/run.err" | tail -1)"
num() { grep -oE "[0-9]+ $1" <<<"$summary" | head -1 | awk '{print $1}'; }
read_n=$(grep -oE '^[0-9]+ events read' <<<"$summary" | awk '{print $1}')
delivered=$(num delivered)
skipped=$(num skipped)
dead=$(num dead-lettered)
dead_lines=$( [ -f "$WORK/dead.ndjson" ] && wc -l <"$WORK/dead.ndjson" || echo 0)
retries=$(grep -oE 'retries [0-9]+' <<<"$calls" | awk '{print $2}')
tokens=$(grep -oE 'token requests [0-9]+' <<<"$calls" | awk '{print $3}')

# RSS / fd figures: quarters of the samples after a 10% warm-up.
read -r rss_first rss_last fd_first fd_last samples <<<"$(awk -F'\t' '
  { t[NR]=$1; r[NR]=$2; f[NR]=$3 }
  END {
    w = int(NR / 10); n = NR - w; q = int(n / 4); if (q < 1) q = 1
    for (i = w + 1; i <= w + q; i++) { if (r[i] > r1) r1 = r[i]; if (f[i] > f1) f1 = f[i] }
    for (i = NR - q + 1; i <= NR; i++) { if (r[i] > r2) r2 = r[i]; if (f[i] > f2) f2 = f[i] }
    print r1+0, r2+0, f1+0, f2+0, NR
  }' "$WORK/samples.tsv")"
rss_max=$(awk -F'\t' '$2 > m {m = $2} END {print m+0}' "$WORK/samples.tsv")

fail=0
check() { if eval "$2"; then echo "  ok    $1"; else echo "  FAIL  $1"; fail=1; fi; }
echo
echo "relay: $summary"
echo "       $calls"
echo "simulator: $stats" | cut -c1-400
if [ -s "$WORK/dead.ndjson" ]; then
  echo "dead-letter reasons:"
  python3 -c '
import json, sys, collections
c = collections.Counter()
for l in open(sys.argv[1]):
    d = json.loads(l); c[(d.get("reason", "")[:160], d.get("status"), d.get("attempts"))] += 1
for (r, s, a), n in c.most_common(10): print(f"  {n} x status {s}, attempts {a}: {r}")
' "$WORK/dead.ndjson"
fi
echo
check "relay exited 0 (rc $RUN_RC)" '[ "$RUN_RC" -eq 0 ]'
check "events read ($read_n) = sent ($EVENTS)" '[ "${read_n:-0}" -eq "$EVENTS" ]'
check "read ($read_n) = delivered ($delivered) + skipped ($skipped) + dead-lettered ($dead)" \
  '[ "${read_n:-0}" -eq $(( ${delivered:-0} + ${skipped:-0} + ${dead:-0} )) ]'
check "dead-letter file lines ($dead_lines) = dead-lettered ($dead)" '[ "$dead_lines" -eq "${dead:-0}" ]'
check "RSS flat: last-quarter max ${rss_last} kB within 20% of first-quarter max ${rss_first} kB" \
  '[ "$rss_last" -le $(( rss_first * 120 / 100 )) ]'
check "fds not growing: last-quarter max ${fd_last} <= first-quarter max ${fd_first} + 4" \
  '[ "$fd_last" -le $(( fd_first + 4 )) ]'

cat <<MD

| figure | value |
|---|---|
| duration (input paced / total) | ${DURATION} s / ${elapsed} s |
| input rate | ${RATE} events/s |
| events read | ${read_n} |
| delivered / skipped / dead-lettered | ${delivered} / ${skipped} / ${dead} |
| retries | ${retries} |
| token requests (tokens revoked ${revokes} times) | ${tokens} |
| RSS first-quarter max / last-quarter max / overall max | ${rss_first} kB / ${rss_last} kB / ${rss_max} kB |
| open fds first-quarter max / last-quarter max | ${fd_first} / ${fd_last} |
| samples | ${samples} (every ${SAMPLE_EVERY} s) |
MD
[ "$fail" -eq 0 ] && echo "soak: PASS" || echo "soak: FAIL (work dir kept: $WORK)"
[ "$fail" -eq 0 ] && rm -rf "$WORK"
exit "$fail"
