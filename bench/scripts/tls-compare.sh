#!/usr/bin/env bash
# HTTPS termination side by side: ringgate (rustls), nginx and HAProxy
# (OpenSSL), one worker each on CPU 0, in front of an nginx `return 200`
# backend (plain HTTP, 1 worker) with wrk -t1 on CPU 1. Rounds alternate the
# proxies; each run reports requests/s and the proxy's CPU time per request
# (user+sys from /proc/PID/stat), and the end prints the medians of the
# per-round ratios to nginx.
#   MODE=keepalive (default): 64 keep-alive connections, small responses.
#   MODE=handshake: one request per connection (Connection: close), every
#     connection a full TLS 1.3 handshake: session tickets and caches are off
#     on all three servers, so nothing resumes.
# Certificate: ECDSA P-256, made fresh by openssl.
# Usage: bench/scripts/tls-compare.sh [rounds=5] [duration_s=8] [connections=64] [proxies="ringgate nginx haproxy"]
# RINGGATE_ALT_BIN=path adds the proxy name `ringgate-alt` (another build of
# ringgate, e.g. --features aws-lc-rs) for PROXIES to include.
set -euo pipefail
ROUNDS=${1:-5}; DUR=${2:-8}; CONNS=${3:-64}; PROXIES=${4:-"ringgate nginx haproxy"}
MODE=${MODE:-keepalive}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=${RINGGATE_BIN:-$ROOT/target/release/ringgate}
W=$(mktemp -d /tmp/rgtls.XXXX)
BACKEND_PORT=19000; PROXY_PORT=18443
TICK=$(getconf CLK_TCK)
for tool in nginx wrk taskset openssl python3; do command -v $tool >/dev/null || { echo "missing $tool: apt-get install nginx haproxy wrk openssl" >&2; exit 1; }; done
[ -x "$RG" ] || { echo "build ringgate first: cargo build --release -p ringgate" >&2; exit 1; }

source "$ROOT/bench/scripts/lib.sh"
make_cert $W
cat $W/cert.pem $W/key.pem > $W/haproxy.pem

if [ "$MODE" = handshake ]; then
  RG_RESUME=", session_tickets = false, session_cache = 0"
  NGINX_RESUME="ssl_session_cache off; ssl_session_tickets off;"
  HAPROXY_GLOBAL="  tune.ssl.cachesize 0"
  HAPROXY_BIND="no-tls-tickets"
  WRK_ARGS=(-H "Connection: close")
else
  RG_RESUME=""; NGINX_RESUME=""; HAPROXY_GLOBAL=""; HAPROXY_BIND=""; WRK_ARGS=()
fi

backend_conf $W/backend.conf $W $BACKEND_PORT
cat > $W/ringgate.toml <<EOC
[server]
workers = 1
[[listeners]]
name = "web"
address = "127.0.0.1:$PROXY_PORT"
tls = { certificates = [{ cert = "$W/cert.pem", key = "$W/key.pem" }]$RG_RESUME }
[[routes]]
listener = "web"
upstream = "b"
[[upstreams]]
name = "b"
backends = [{ address = "127.0.0.1:$BACKEND_PORT" }]
pool = { max_idle_per_backend = 256 }
EOC
cat > $W/nginx-proxy.conf <<EOC
worker_processes 1; daemon off; pid $W/proxy.pid; error_log $W/proxy.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  upstream b { server 127.0.0.1:$BACKEND_PORT; keepalive 256; keepalive_requests 10000000; }
  server { listen 127.0.0.1:$PROXY_PORT ssl reuseport;
    ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem; ssl_protocols TLSv1.2 TLSv1.3;
    $NGINX_RESUME
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOC
cat > $W/haproxy.cfg <<EOC
global
  nbthread 1
  maxconn 4096
$HAPROXY_GLOBAL
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
  option http-keep-alive
frontend f
  bind 127.0.0.1:$PROXY_PORT ssl crt $W/haproxy.pem alpn http/1.1 $HAPROXY_BIND
  default_backend b
backend b
  server s1 127.0.0.1:$BACKEND_PORT
EOC

taskset -c 1 nginx -c $W/backend.conf & BACKEND=$!
sleep 0.5
cleanup() { kill $BACKEND 2>/dev/null || true; [ -n "${PROXY:-}" ] && kill $PROXY 2>/dev/null || true; }
trap cleanup EXIT

echo "mode $MODE, $ROUNDS rounds of ${DUR}s, $CONNS connections"
: > $W/results
proxy_rounds "$ROUNDS" "$DUR" $W/results https://127.0.0.1:$PROXY_PORT/ -t1 -c$CONNS "${WRK_ARGS[@]}"
round_ratios $W/results
