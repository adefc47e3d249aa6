#!/usr/bin/env bash
# Layer-4 comparison: ringgate's `protocol = "tcp"` listener against HAProxy
# `mode tcp` and nginx `stream`, each one worker pinned to CPU 0, in front
# of an nginx backend (1 worker) that wrk drives, both on CPU 1. Every
# request is a new connection through the proxy (`Connection: close`):
#   MODE=bulk  (default) each connection fetches a 1 MiB file: requests/s
#              is MiB/s, CPU per request is the proxy's CPU per MiB relayed.
#   MODE=churn each connection fetches a 3-byte body: requests/s is
#              connections/s through the proxy.
# Rounds alternate the proxies; the summary is the medians of the per-round
# ratios (to nginx, then to HAProxy) and each proxy's medians.
# Usage: bench/scripts/l4-compare.sh [rounds=5] [duration_s=8] [connections=16] [proxies="ringgate nginx haproxy"]
# ringgate-alt in PROXIES runs RINGGATE_ALT_BIN (default: the same build)
# with RINGGATE_ALT_SERVER's lines added to its [server] table, e.g.
# RINGGATE_ALT_SERVER='io_uring_setup = "coop_taskrun"'.
# Needs nginx with its stream module (Debian: libnginx-mod-stream), haproxy, wrk.
set -euo pipefail
ROUNDS=${1:-5}; DUR=${2:-8}; CONNS=${3:-16}; PROXIES=${4:-"ringgate nginx haproxy"}
MODE=${MODE:-bulk}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=${RINGGATE_BIN:-$ROOT/target/release/ringgate}
W=$(mktemp -d /tmp/rgl4.XXXX)
BACKEND_PORT=19000; PROXY_PORT=18090
TICK=$(getconf CLK_TCK)
for tool in nginx haproxy wrk taskset python3; do command -v $tool >/dev/null || { echo "missing $tool: apt-get install nginx libnginx-mod-stream haproxy wrk" >&2; exit 1; }; done
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
[ -f $STREAM_MODULE ] || { echo "missing nginx's stream module: apt-get install libnginx-mod-stream" >&2; exit 1; }
[ -x "$RG" ] || { echo "build ringgate first: cargo build --release -p ringgate" >&2; exit 1; }

source "$ROOT/bench/scripts/lib.sh"
case $MODE in
  bulk) head -c 1048576 /dev/urandom > $W/1m; TARGET=/1m ;;
  churn) printf 'ok\n' > $W/small; TARGET=/small ;;
  *) echo "MODE must be bulk or churn" >&2; exit 1 ;;
esac
# nginx's workers run unprivileged: the files must be theirs to read.
chmod 755 $W; chmod 644 $W/$TARGET
# The backend serves the files with sendfile, so its CPU is not the limit.
cat > $W/backend.conf <<EOC
worker_processes 1; daemon off; pid $W/backend.pid; error_log $W/backend.err warn;
events { worker_connections 4096; }
http { access_log off; sendfile on; tcp_nopush on;
  server { listen 127.0.0.1:$BACKEND_PORT reuseport backlog=4096; root $W; } }
EOC
l4_ringgate_conf $W $PROXY_PORT $BACKEND_PORT
if [ -n "${RINGGATE_ALT_SERVER:-}" ]; then
  mkdir $W/alt && l4_ringgate_conf $W/alt $PROXY_PORT $BACKEND_PORT "$RINGGATE_ALT_SERVER"
  mv $W/alt/ringgate.toml $W/ringgate-alt.toml
fi
cat > $W/nginx-proxy.conf <<EOC
load_module $STREAM_MODULE;
worker_processes 1; daemon off; pid $W/proxy.pid; error_log $W/proxy.err warn;
events { worker_connections 4096; }
stream { server { listen 127.0.0.1:$PROXY_PORT reuseport backlog=4096; proxy_pass 127.0.0.1:$BACKEND_PORT; } }
EOC
cat > $W/haproxy.cfg <<EOC
global
  nbthread 1
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend f
  bind 127.0.0.1:$PROXY_PORT
  default_backend b
backend b
  server s1 127.0.0.1:$BACKEND_PORT
EOC

taskset -c 1 nginx -c $W/backend.conf & BACKEND=$!
sleep 0.5
cleanup() { kill $BACKEND 2>/dev/null || true; [ -n "${PROXY:-}" ] && kill $PROXY 2>/dev/null || true; }
trap cleanup EXIT

echo "mode $MODE, $ROUNDS rounds of ${DUR}s, $CONNS connections, a new connection per request"
echo "backend alone:"
taskset -c 1 wrk -t1 -c$CONNS -d2s -H "Connection: close" http://127.0.0.1:$BACKEND_PORT$TARGET | grep -E "Requests/sec|Transfer/sec"
: > $W/results
proxy_rounds "$ROUNDS" "$DUR" $W/results http://127.0.0.1:$PROXY_PORT$TARGET -t1 -c$CONNS -H "Connection: close"
[ "$MODE" = bulk ] && echo "(bulk: one request = one connection = 1 MiB, so req/s reads as MiB/s and µs CPU/request as µs CPU/MiB)"
round_ratios $W/results
round_ratios $W/results haproxy | grep "^ringgate"
