#!/usr/bin/env bash
# Keep-alive clients that each send a request only now and then, so every
# request finds its connection idle (past ringgate's 50 ms buffer grace):
# the cost of waking an idle connection, per request. ringload holds
# CONNS connections and sends RATE requests/s over them on a fixed
# schedule (each connection's gap is CONNS/RATE s). Each proxy has one
# worker on CPU 0, ringload and the nginx backend are on CPU 1; alternating
# rounds; CPU per request is the proxy's user+sys over the measured window
# divided by the responses.
# PROXIES may hold ringgate-alt (RINGGATE_ALT_BIN) to compare two builds.
# Usage: bench/scripts/sparse-clients.sh [rounds=5] [duration_s=8] [connections=1000] [rate=10000] [proxies="ringgate nginx"]
set -euo pipefail
ROUNDS=${1:-5}; DUR=${2:-8}; CONNS=${3:-1000}; RATE=${4:-10000}; PROXIES=${5:-"ringgate nginx"}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=${RINGGATE_BIN:-$ROOT/target/release/ringgate}
RL=${RINGLOAD_BIN:-$ROOT/target/release/ringload}
W=$(mktemp -d /tmp/rgsparse.XXXX)
BACKEND_PORT=19000; PROXY_PORT=18080
TICK=$(getconf CLK_TCK)
for tool in nginx taskset python3; do command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
[ -x "$RG" ] && [ -x "$RL" ] || { echo "build first: cargo build --release -p ringgate -p ringgate-loadgen" >&2; exit 1; }
source "$ROOT/bench/scripts/lib.sh"
ulimit -n 20000

backend_conf $W/backend.conf $W $BACKEND_PORT
ringgate_conf $W $PROXY_PORT $BACKEND_PORT "" "pool = { max_idle_per_backend = 256 }"
http_proxy_confs $W $PROXY_PORT $BACKEND_PORT
taskset -c 1 nginx -c $W/backend.conf & BACKEND=$!
sleep 0.5
cleanup() { kill $BACKEND 2>/dev/null || true; [ -n "${PROXY:-}" ] && kill $PROXY 2>/dev/null || true; }
trap cleanup EXIT

echo "$CONNS connections, $RATE requests/s in all (one per connection every $(python3 -c "print(f'{$CONNS/$RATE*1000:.0f}')") ms), $ROUNDS rounds of ${DUR}s"
: > $W/results
for round in $(seq 1 "$ROUNDS"); do
  for p in $PROXIES; do
    start_proxy $p || continue
    sleep 1
    pids="$PROXY $(pgrep -P $PROXY | tr '\n' ' ' || true)"
    # The CPU window is the run's: its 2 s warm-up (connections opening)
    # is counted at the rate it runs, so the window starts after it.
    taskset -c 1 "$RL" --cores 1 --no-pin -c "$CONNS" -r "$RATE" --warmup 2 -d "$DUR" \
      --json $W/run.json -q http://127.0.0.1:$PROXY_PORT/ > $W/run.out 2>&1 & LOAD=$!
    sleep 2.2
    before=$(cpu_ticks $pids)
    wait $LOAD
    after=$(cpu_ticks $pids)
    python3 - "$W/run.json" "$round" "$p" "$before" "$after" "$TICK" "$DUR" >> $W/results <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
rnd, p, before, after, tick, dur = sys.argv[2], sys.argv[3], *map(float, sys.argv[4:])
ok = run["requests"]
rps = ok / run["duration_s"]
cpu_us = (after - before) / tick * 1e6 / ok
print(rnd, p, f"{rps:.0f}", f"{cpu_us:.2f}")
sys.stderr.write(f"round {rnd} {p}: {rps:,.0f} req/s, {cpu_us:.2f} µs CPU/request, p99 {run['latency_us'].get('p99', '?')} µs, errors {run['errors']}\n")
PY
    kill $PROXY; wait $PROXY 2>/dev/null || true; PROXY=
    sleep 0.5
  done
done
round_ratios $W/results
