#!/usr/bin/env bash
# Whole-process transform benchmark: `sfmc-relay transform` against a plain serde_json floor.
#
#   scripts/bench-transform.sh [EVENTS] [RUNS]      (defaults: 200000 events, 5 runs)
#
# Writes the seeded corpus (`sfmc-relay corpus EVENTS`, untimed), then measures the CPU
# seconds (user + sys, /usr/bin/time) of
#   floor:     examples/json_floor.rs: each line parsed into serde_json::Value and written
#              back (mimalloc, like the relay);
#   transform: sfmc-relay transform --rules examples/ecommerce/rules --input FILE
# with stdout to /dev/null and to a pipe (`| cat > /dev/null`; only the left process is
# timed). Each run measures the floor and then every relay back to back, so the paired
# ratio floor/transform of one run compares figures taken under the same load. Prints
# medians (min-max) of the CPU seconds and of the paired ratios (>= 1: the transform costs
# less CPU than parsing and re-serialising its input).
#
# Environment:
#   RELAYS="label=path ..."  relay binaries to compare in the same run (default: this
#                            tree's target/release/sfmc-relay as "relay");
#   OUT="null pipe"          output modes (null, pipe, file);
#   CALLGRIND=EVENTS         also count instructions (valgrind) of the floor and every relay
#                            over a corpus of EVENTS events: immune to the machine's load.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
RUNS=${2:-5}
OUT=${OUT:-null pipe}
cargo build --release --quiet --bin sfmc-relay --example json_floor
FLOOR=target/release/examples/json_floor
RELAYS=${RELAYS:-relay=target/release/sfmc-relay}
RULES=examples/ecommerce/rules
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target/release/sfmc-relay corpus "$N" -o "$work/corpus.ndjson"

# cpu LABEL MODE CMD...: run CMD with stdout per MODE, append "LABEL MODE run seconds".
cpu() {
  local label=$1 mode=$2
  shift 2
  case $mode in
    null) /usr/bin/time -f '%U %S' -o "$work/t" "$@" >/dev/null 2>"$work/err" ;;
    pipe) /usr/bin/time -f '%U %S' -o "$work/t" "$@" 2>"$work/err" | cat >/dev/null ;;
    file) /usr/bin/time -f '%U %S' -o "$work/t" "$@" >"$work/out" 2>"$work/err"; rm -f "$work/out" ;;
    *) echo "unknown OUT mode $mode" >&2; exit 2 ;;
  esac
  echo "$label $mode $run $(awk '{print $1 + $2}' "$work/t")" >>"$work/times"
}

# With more than one relay: their outputs must be the same bytes (one untimed pass each).
if [ "$(echo "$RELAYS" | wc -w)" -gt 1 ]; then
  for r in $RELAYS; do
    echo "${r%%=*} output md5: $("${r#*=}" transform --rules $RULES --input "$work/corpus.ndjson" 2>/dev/null | md5sum | cut -d' ' -f1)"
  done
fi

: >"$work/times"
for run in $(seq "$RUNS"); do
  for mode in $OUT; do
    cpu floor "$mode" "$FLOOR" "$work/corpus.ndjson"
    for r in $RELAYS; do
      cpu "${r%%=*}" "$mode" "${r#*=}" transform --rules $RULES --input "$work/corpus.ndjson"
    done
  done
done
echo "events: $N, $RUNS runs, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$work/times" <<'EOF'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
t = {}
for label, mode, run, secs in rows:
    t.setdefault((label, mode), {})[run] = float(secs)
modes = list(dict.fromkeys(m for _, m, _, _ in rows))
labels = list(dict.fromkeys(l for l, _, _, _ in rows if l != "floor"))
def fmt(v):
    return f"{st.median(v):.2f} ({min(v):.2f}-{max(v):.2f})"
for mode in modes:
    floor = t[("floor", mode)]
    print(f"stdout to {mode}: floor {fmt(list(floor.values()))} CPU-s")
    for l in labels:
        mine = t[(l, mode)]
        ratios = [floor[r] / mine[r] for r in mine]
        print(f"  {l}: {fmt(list(mine.values()))} CPU-s; floor/transform paired {fmt(ratios)}")
EOF

if [ -n "${CALLGRIND:-}" ]; then
  target/release/sfmc-relay corpus "$CALLGRIND" -o "$work/small.ndjson"
  instr() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 >/dev/null \
      | awk '/Collected/ {print $4}'
  }
  f=$(instr "$FLOOR" "$work/small.ndjson")
  echo "instructions, $CALLGRIND events (callgrind): floor $f"
  for r in $RELAYS; do
    i=$(instr "${r#*=}" transform --rules $RULES --input "$work/small.ndjson")
    echo "  ${r%%=*}: $i; floor/transform $(echo "scale=3; $f / $i" | bc -l)"
  done
fi
