# Shared by scripts/soak.sh and scripts/chaos.sh (sourced; not run on its own).

# start_sim BIN CONFIG LOG: `BIN sim` on a free loopback port with CONFIG, its stderr in
# LOG; sets SIM_PID and BASE (the simulator's URL), or exits when it does not start.
start_sim() {
  "$1" sim --listen 127.0.0.1:0 --config "$2" 2>"$3" &
  SIM_PID=$!
  for _ in $(seq 100); do
    grep -q "listening on" "$3" 2>/dev/null && break
    sleep 0.1
  done
  BASE="$(grep -o 'listening on http://[0-9.:]*' "$3" | head -1 | sed 's/listening on //')"
  [ -n "$BASE" ] || { echo "simulator did not start"; cat "$3"; exit 1; }
}

# pace RATE: copy stdin to stdout at RATE lines/s (may be fractional), in 10 slices a
# second; catches up after back-pressure.
pace() {
  python3 -u -c '
import sys, time
rate = float(sys.argv[1]); per = max(1, int(rate // 10)); start = time.monotonic(); n = 0
for line in sys.stdin:
    sys.stdout.write(line); n += 1
    if n % per == 0:
        sys.stdout.flush()
        ahead = n / rate - (time.monotonic() - start)
        if ahead > 0: time.sleep(ahead)
sys.stdout.flush()
' "$1"
}
