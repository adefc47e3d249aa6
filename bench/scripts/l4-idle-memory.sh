#!/usr/bin/env bash
# RSS per idle layer-4 (TCP) connection: N clients each open a connection
# through the proxy, make one keep-alive request to the backend over it and
# then stay connected, idle (as long-lived database, MQTT or gRPC
# connections behind an L4 balancer do). Reports the proxy's RSS growth per
# connection (VmRSS before, and 1 s and 5 s after the last client is idle)
# for ringgate's `protocol = "tcp"` listener, nginx `stream` and HAProxy
# `mode tcp`, each with one worker on CPU 0, the backend nginx on CPU 1.
# Every connection through an L4 proxy holds two sockets, so under the
# 20 000 open-file limit N stays below 9 900.
# Usage: bench/scripts/l4-idle-memory.sh [connections=5000] [proxies="ringgate nginx haproxy"]
# Needs nginx with its stream module (Debian: libnginx-mod-stream), haproxy.
set -euo pipefail
N=${1:-5000}; PROXIES=${2:-"ringgate nginx haproxy"}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=${RINGGATE_BIN:-$ROOT/target/release/ringgate}
W=$(mktemp -d /tmp/rgl4idle.XXXX)
BACKEND_PORT=19011; PROXY_PORT=18091
ulimit -n 20000
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
[ -f $STREAM_MODULE ] || { echo "missing nginx's stream module: apt-get install libnginx-mod-stream" >&2; exit 1; }
source "$ROOT/bench/scripts/lib.sh"
cat > $W/backend.conf <<EOC
worker_processes 1; worker_rlimit_nofile 20000; daemon off; pid $W/backend.pid; error_log $W/backend.err warn;
events { worker_connections 20000; }
http { access_log off; keepalive_timeout 300s; keepalive_requests 10000000;
  server { listen 127.0.0.1:$BACKEND_PORT backlog=4096; location / { return 200 "hello\n"; } } }
EOC
l4_ringgate_conf $W $PROXY_PORT $BACKEND_PORT "max_connections_per_worker = 20000" 'timeouts = { tunnel_idle = "10m" }'
cat > $W/nginx-proxy.conf <<EOC
load_module $STREAM_MODULE;
worker_processes 1; worker_rlimit_nofile 20000; daemon off; pid $W/proxy.pid; error_log $W/proxy.err warn;
events { worker_connections 20000; }
stream { server { listen 127.0.0.1:$PROXY_PORT backlog=4096; proxy_pass 127.0.0.1:$BACKEND_PORT; proxy_timeout 10m; } }
EOC
cat > $W/haproxy.cfg <<EOC
global
  nbthread 1
  maxconn 9900
defaults
  mode tcp
  timeout connect 5s
  timeout client 10m
  timeout server 10m
frontend f
  bind 127.0.0.1:$PROXY_PORT
  default_backend b
backend b
  server s1 127.0.0.1:$BACKEND_PORT
EOC
idle_clients_py $W
taskset -c 1 nginx -c $W/backend.conf & BACKEND=$!
sleep 0.5
cleanup() { kill $BACKEND 2>/dev/null || true; [ -n "${PROXY:-}" ] && kill $PROXY 2>/dev/null || true; [ -n "${CLIENTS:-}" ] && kill $CLIENTS 2>/dev/null || true; }
trap cleanup EXIT
idle_rss_runs $N $PROXY_PORT 0 http://127.0.0.1:$PROXY_PORT/ "idle L4 connections"
