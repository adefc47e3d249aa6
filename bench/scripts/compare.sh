#!/usr/bin/env bash
# Side-by-side keep-alive reverse-proxy comparison on one machine (2+ cores):
# backend (nginx `return 200`, 1 worker) and wrk on CPU 1, the proxy (1 worker)
# on CPU 0. Reports requests/s and the proxy's CPU time per request
# (user+sys from /proc/PID/stat over requests served).
# Usage: bench/scripts/compare.sh [duration_s=10] [connections=64] [proxies="ringgate nginx haproxy"]
# RING_SETUP=defer_taskrun|coop_taskrun|plain sets ringgate's [server] io_uring_setup
# (default: the config default, auto). RINGGATE_ALT_BIN=path adds the proxy
# name `ringgate-alt` (another build, e.g. the commit before a change).
set -euo pipefail
DUR=${1:-10}; CONNS=${2:-64}; PROXIES=${3:-"ringgate nginx haproxy"}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=${RINGGATE_BIN:-$ROOT/target/release/ringgate}
W=$(mktemp -d /tmp/rgbench.XXXX)
BACKEND_PORT=19000; PROXY_PORT=18080
TICK=$(getconf CLK_TCK)
for tool in nginx wrk taskset; do command -v $tool >/dev/null || { echo "missing $tool: apt-get install nginx haproxy wrk" >&2; exit 1; }; done

source "$ROOT/bench/scripts/lib.sh"
backend_conf $W/backend.conf $W $BACKEND_PORT
ringgate_conf $W $PROXY_PORT $BACKEND_PORT "${RING_SETUP:+io_uring_setup = \"$RING_SETUP\"}" "pool = { max_idle_per_backend = 256 }"
http_proxy_confs $W $PROXY_PORT $BACKEND_PORT

taskset -c 1 nginx -c $W/backend.conf & BACKEND=$!
sleep 0.5
cleanup() { kill $BACKEND 2>/dev/null || true; [ -n "${PROXY:-}" ] && kill $PROXY 2>/dev/null || true; }
trap cleanup EXIT

printf "| proxy | requests/s | p50 | p99 | CPU µs/request |\n|---|---:|---:|---:|---:|\n" > $W/table.md
echo "backend alone:"
taskset -c 1 wrk -t1 -c$CONNS -d${DUR}s http://127.0.0.1:$BACKEND_PORT/ | grep -E "Requests/sec"
for p in $PROXIES; do
  start_proxy $p || continue
  sleep 1
  PIDS=$(pgrep -P $PROXY || true); PIDS="$PROXY $PIDS"
  taskset -c 1 wrk -t1 -c$CONNS -d2s http://127.0.0.1:$PROXY_PORT/ > /dev/null   # warm-up
  before=$(cpu_ticks $PIDS)
  out=$(taskset -c 1 wrk -t1 -c$CONNS -d${DUR}s --latency http://127.0.0.1:$PROXY_PORT/)
  after=$(cpu_ticks $PIDS)
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}'); p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  errs=$(echo "$out" | grep -E "Non-2xx|Socket errors" || true)
  cpu_us=$(python3 -c "print(f'{($after-$before)/$TICK*1e6/$reqs:.2f}')")
  echo "$p: $rps req/s, $cpu_us µs CPU/request, p50 $p50, p99 $p99 $errs"
  echo "| $p | $rps | $p50 | $p99 | $cpu_us |" >> $W/table.md
  kill $PROXY; wait $PROXY 2>/dev/null || true; PROXY=
  sleep 0.5
done
echo; cat $W/table.md
