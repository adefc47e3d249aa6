#!/usr/bin/env bash
# HTTP reverse-proxy comparison in alternating rounds: ringgate, nginx and
# HAProxy, each one worker pinned to CPU 0 with a keep-alive upstream pool,
# in front of an nginx backend (1 worker: `return 200` for small
# responses, a file with sendfile for 1 MiB ones) that wrk drives, both on
# CPU 1. Default configs apart from the pool.
#   MODE=keepalive (default) small responses over keep-alive connections.
#   MODE=churn  `Connection: close` on every request: each request is a
#               new client connection (the upstream pool stays warm).
#   MODE=bulk   1 MiB responses over keep-alive connections: requests/s
#               is MiB/s, CPU per request is the proxy's CPU per MiB.
# The summary is the medians of the per-round ratios (to nginx, then to
# HAProxy) and each proxy's medians.
# Usage: bench/scripts/http-compare.sh [rounds=5] [duration_s=8] [connections=64] [proxies="ringgate nginx haproxy"]
set -euo pipefail
ROUNDS=${1:-5}; DUR=${2:-8}; CONNS=${3:-64}; PROXIES=${4:-"ringgate nginx haproxy"}
MODE=${MODE:-keepalive}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=${RINGGATE_BIN:-$ROOT/target/release/ringgate}
W=$(mktemp -d /tmp/rghttp.XXXX)
BACKEND_PORT=19000; PROXY_PORT=18080
TICK=$(getconf CLK_TCK)
for tool in nginx haproxy wrk taskset python3; do command -v $tool >/dev/null || { echo "missing $tool: apt-get install nginx haproxy wrk" >&2; exit 1; }; done
[ -x "$RG" ] || { echo "build ringgate first: cargo build --release -p ringgate" >&2; exit 1; }
source "$ROOT/bench/scripts/lib.sh"

WRK=(-t1 -c"$CONNS")
case $MODE in
  keepalive) TARGET=/ok ;;
  churn) TARGET=/ok; WRK+=(-H "Connection: close") ;;
  bulk) TARGET=/1m ;;
  *) echo "MODE must be keepalive, churn or bulk" >&2; exit 1 ;;
esac
head -c 1048576 /dev/urandom > $W/1m
# nginx's workers run unprivileged: the file must be theirs to read.
chmod 755 $W; chmod 644 $W/1m
cat > $W/backend.conf <<EOC
worker_processes 1; daemon off; pid $W/backend.pid; error_log $W/backend.err warn;
events { worker_connections 4096; }
http { access_log off; sendfile on; tcp_nopush on; keepalive_requests 10000000;
  server { listen 127.0.0.1:$BACKEND_PORT reuseport backlog=4096; root $W;
    location = /ok { return 200 "hello from backend\n"; } } }
EOC
ringgate_conf $W $PROXY_PORT $BACKEND_PORT "backlog = 4096" "pool = { max_idle_per_backend = 256 }"
http_proxy_confs $W $PROXY_PORT $BACKEND_PORT backlog=4096

taskset -c 1 nginx -c $W/backend.conf & BACKEND=$!
sleep 0.5
cleanup() { kill $BACKEND 2>/dev/null || true; [ -n "${PROXY:-}" ] && kill $PROXY 2>/dev/null || true; }
trap cleanup EXIT

echo "mode $MODE, $ROUNDS rounds of ${DUR}s, $CONNS connections"
echo "backend alone:"
taskset -c 1 wrk "${WRK[@]}" -d2s http://127.0.0.1:$BACKEND_PORT$TARGET | grep -E "Requests/sec|Transfer/sec"
: > $W/results
proxy_rounds "$ROUNDS" "$DUR" $W/results http://127.0.0.1:$PROXY_PORT$TARGET "${WRK[@]}"
[ "$MODE" = bulk ] && echo "(bulk: one request = 1 MiB, so req/s reads as MiB/s and µs CPU/request as µs CPU/MiB)"
round_ratios $W/results
round_ratios $W/results haproxy | grep "^ringgate"
