#!/usr/bin/env bash
# Run every fuzz target (cargo-fuzz / libFuzzer) for a fixed time budget each.
#
#   scripts/fuzz.sh                 # 60 s per target
#   FUZZ_SECONDS=600 scripts/fuzz.sh transform_line
#
# cargo-fuzz needs a nightly compiler for its -Z flags (sanitizer coverage). On a stable
# toolchain RUSTC_BOOTSTRAP=1 lets stable rustc accept them; this script sets it. The
# address sanitizer is left off (`-s none`): the targets are safe Rust, so what they find
# is panics (bugs in our code), and ASan would need a std rebuilt for it.
#
# Seed corpora are committed under fuzz/corpus/<target>/; new inputs that grow coverage
# go to fuzz/corpus-new/<target>/ (ignored by git) so the committed seeds stay small.
# A crash is saved under fuzz/artifacts/<target>/; add it as a regression test in tests/it/
# (e.g. security::fuzz_regressions).
# Not run by .ci/run (too slow).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

SECONDS_EACH="${FUZZ_SECONDS:-60}"
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(transform_line rules_load sim_body)
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1

status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus-new/$t" "artifacts/$t"
  log="artifacts/$t/last-run.log"
  echo "== $t: ${SECONDS_EACH}s"
  if cargo fuzz run -s none --debug-assertions "$t" "corpus-new/$t" "corpus/$t" -- \
      -max_total_time="$SECONDS_EACH" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=CRASH
    status=1
  fi
  execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  echo "   $result: ${execs:-?} executions; log: fuzz/$log"
  if [ "$result" = CRASH ]; then
    grep -E 'panicked at|Test unit written to' "$log" | head -5 || true
  fi
done
exit $status
