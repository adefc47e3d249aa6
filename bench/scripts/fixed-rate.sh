#!/usr/bin/env bash
# Tail latency at a fixed rate, side by side: ringgate, nginx and HAProxy,
# each one worker pinned to CPU 0 with a keep-alive upstream pool, in front
# of an nginx `return 200` backend on CPU 1. First nginx's closed-loop
# maximum (wrk -t1, the median of three 5 s runs); then alternating rounds
# of ringload on CPU 1 at FRACTION of that maximum, open loop on a constant
# schedule, corrected for coordinated omission. Each round starts one
# proxy further down the list.
# The summary is the medians of the per-round p99 ratios (to nginx, then
# to HAProxy) and each proxy's medians of p50, p99 and p99.9, with the
# achieved rate and the proxy's CPU per request.
# Usage: bench/scripts/fixed-rate.sh [rounds=5] [duration_s=10] [connections=64] [fraction=0.5] [proxies="ringgate nginx haproxy"]
#   MAX=N skips the measurement of nginx's maximum and uses N req/s.
set -euo pipefail
ROUNDS=${1:-5}; DUR=${2:-10}; CONNS=${3:-64}; FRACTION=${4:-0.5}; PROXIES=${5:-"ringgate nginx haproxy"}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=${RINGGATE_BIN:-$ROOT/target/release/ringgate}
RINGLOAD=$ROOT/target/release/ringload
W=$(mktemp -d /tmp/rgrate.XXXX)
BACKEND_PORT=19000; PROXY_PORT=18080
TICK=$(getconf CLK_TCK)
for tool in nginx haproxy wrk taskset python3; do command -v $tool >/dev/null || { echo "missing $tool: apt-get install nginx haproxy wrk" >&2; exit 1; }; done
[ -x "$RG" ] && [ -x "$RINGLOAD" ] || { echo "build first: cargo build --release -p ringgate -p ringgate-loadgen" >&2; exit 1; }
source "$ROOT/bench/scripts/lib.sh"

backend_conf $W/backend.conf $W $BACKEND_PORT
ringgate_conf $W $PROXY_PORT $BACKEND_PORT "" "pool = { max_idle_per_backend = 256 }"
http_proxy_confs $W $PROXY_PORT $BACKEND_PORT
URL=http://127.0.0.1:$PROXY_PORT/

taskset -c 1 nginx -c $W/backend.conf & BACKEND=$!
sleep 0.5
cleanup() { kill $BACKEND 2>/dev/null || true; [ -n "${PROXY:-}" ] && kill $PROXY 2>/dev/null || true; }
trap cleanup EXIT

if [ -z "${MAX:-}" ]; then
  start_proxy nginx; sleep 1
  taskset -c 1 wrk -t1 -c"$CONNS" -d2s $URL > /dev/null
  MAX=$(for i in 1 2 3; do taskset -c 1 wrk -t1 -c"$CONNS" -d5s $URL | awk '/Requests\/sec/ {print $2}'; done | sort -n | sed -n 2p)
  kill $PROXY; wait $PROXY 2>/dev/null || true; PROXY=
  sleep 0.5
fi
RATE=$(python3 -c "print(int(float('$MAX') * float('$FRACTION')))")
echo "nginx's closed-loop maximum $MAX req/s; $ROUNDS rounds of ${DUR}s at $RATE req/s ($FRACTION), $CONNS connections"

# One round's run of ringload against the proxy rotated_rounds started.
rate_round() {
  local round=$1 p=$2 before after
  taskset -c 1 "$RINGLOAD" $URL --rate $RATE -c "$CONNS" -d 2s --cores 1 -q > /dev/null   # warm-up
  before=$(cpu_ticks $PROXY_PIDS)
  taskset -c 1 "$RINGLOAD" $URL --rate $RATE -c "$CONNS" -d ${DUR}s --cores 1 -q --json $W/run.json > /dev/null
  after=$(cpu_ticks $PROXY_PIDS)
  python3 - $W/run.json $round $p $((after - before)) $TICK >> $W/results <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r["latency_us"]
errors = sum(r["errors"].values())
cpu_us = int(sys.argv[4]) / int(sys.argv[5]) * 1e6 / max(r["requests"], 1)
print(sys.argv[2], sys.argv[3], r["rate_achieved"], lat["p50"], lat["p99"], lat["p999"], f"{cpu_us:.2f}", errors, len(r["warnings"]))
PY
  tail -1 $W/results | awk '{printf "round %s %s: %.0f req/s achieved, corrected p50 %s µs, p99 %s µs, p99.9 %s µs, %s µs CPU/request, %s errors, %s warnings\n", $1, $2, $3, $4, $5, $6, $7, $8, $9}'
}

: > $W/results
rotated_rounds "$ROUNDS" rate_round

python3 - $W/results <<'PY'
import sys, statistics as st
by = {}
for line in open(sys.argv[1]):
    r, p, rate, p50, p99, p999, cpu, errors, warnings = line.split()
    by.setdefault(r, {})[p] = dict(rate=float(rate), p50=float(p50), p99=float(p99), p999=float(p999), cpu=float(cpu))
proxies = sorted({p for v in by.values() for p in v})
for base in ("nginx", "haproxy"):
    for other in proxies:
        if other == base:
            continue
        ratios = [(v[other]["p99"] / v[base]["p99"], v[other]["cpu"] / v[base]["cpu"]) for v in by.values() if other in v and base in v]
        if ratios and (base == "nginx" or other.startswith("ringgate")):
            print(f"{other}/{base} over {len(ratios)} rounds: p99 median {st.median(a for a, _ in ratios):.2f}x "
                  f"(min {min(a for a, _ in ratios):.2f}, max {max(a for a, _ in ratios):.2f}), "
                  f"CPU/request median {st.median(c for _, c in ratios):.2f}x")
for p in proxies:
    v = [by[r][p] for r in by if p in by[r]]
    m = lambda k: st.median(x[k] for x in v)
    print(f"{p}: median achieved {m('rate'):,.0f} req/s, p50 {m('p50'):,.0f} µs, p99 {m('p99'):,.0f} µs, "
          f"p99.9 {m('p999'):,.0f} µs, {m('cpu'):.2f} µs CPU/request")
PY
