#!/usr/bin/env bash
# HTTP/2 termination side by side: ringgate, nginx and HAProxy, each with a
# TLS listener that offers h2 in ALPN, one worker on CPU 0, in front of an
# nginx `return 200` backend (HTTP/1.1 keep-alive, 1 worker) on CPU 1, with
# h2load -t1 on CPU 1: CONNS connections x STREAMS concurrent streams,
# small responses. Rounds alternate the proxies; each run reports
# requests/s and the proxy's CPU time per request (user+sys from
# /proc/PID/stat), and the end prints the medians of the per-round ratios
# to nginx. Certificate: ECDSA P-256, made fresh by openssl.
# Usage: bench/scripts/h2-compare.sh [rounds=5] [duration_s=8] [connections=64] [streams=10] [proxies="ringgate nginx haproxy"]
set -euo pipefail
ROUNDS=${1:-5}; DUR=${2:-8}; CONNS=${3:-64}; STREAMS=${4:-10}; PROXIES=${5:-"ringgate nginx haproxy"}
# Idle upstream connections each proxy keeps: every stream in flight may
# hold one, so the pools cover them all and no proxy churns connections.
POOL=$((CONNS * STREAMS + 64))
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=${RINGGATE_BIN:-$ROOT/target/release/ringgate}
W=$(mktemp -d /tmp/rgh2.XXXX)
BACKEND_PORT=19000; PROXY_PORT=18443
TICK=$(getconf CLK_TCK)
for tool in nginx h2load taskset openssl python3; do command -v $tool >/dev/null || { echo "missing $tool: apt-get install nginx haproxy nghttp2-client openssl" >&2; exit 1; }; done
[ -x "$RG" ] || { echo "build ringgate first: cargo build --release -p ringgate" >&2; exit 1; }

source "$ROOT/bench/scripts/lib.sh"
make_cert $W
cat $W/cert.pem $W/key.pem > $W/haproxy.pem

backend_conf $W/backend.conf $W $BACKEND_PORT
cat > $W/ringgate.toml <<EOC
[server]
workers = 1
[[listeners]]
name = "web"
address = "127.0.0.1:$PROXY_PORT"
tls = { certificates = [{ cert = "$W/cert.pem", key = "$W/key.pem" }]}
[[routes]]
listener = "web"
upstream = "b"
[[upstreams]]
name = "b"
backends = [{ address = "127.0.0.1:$BACKEND_PORT" }]
pool = { max_idle_per_backend = $POOL }
EOC
cat > $W/nginx-proxy.conf <<EOC
worker_processes 1; daemon off; pid $W/proxy.pid; error_log $W/proxy.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  upstream b { server 127.0.0.1:$BACKEND_PORT; keepalive $POOL; keepalive_requests 10000000; }
  server { listen 127.0.0.1:$PROXY_PORT ssl http2 reuseport;
    ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem; ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOC
cat > $W/haproxy.cfg <<EOC
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
  option http-keep-alive
frontend f
  bind 127.0.0.1:$PROXY_PORT ssl crt $W/haproxy.pem alpn h2,http/1.1
  default_backend b
backend b
  server s1 127.0.0.1:$BACKEND_PORT
EOC

taskset -c 1 nginx -c $W/backend.conf & BACKEND=$!
sleep 0.5
cleanup() { kill $BACKEND 2>/dev/null || true; [ -n "${PROXY:-}" ] && kill $PROXY 2>/dev/null || true; }
trap cleanup EXIT

echo "$ROUNDS rounds of ${DUR}s, $CONNS connections x $STREAMS streams"
: > $W/results
for round in $(seq 1 "$ROUNDS"); do
  for p in $PROXIES; do
    start_proxy $p || continue
    sleep 1
    PIDS=$(pgrep -P $PROXY || true); PIDS="$PROXY $PIDS"
    taskset -c 1 h2load -t1 -c$CONNS -m$STREAMS -D 2 https://127.0.0.1:$PROXY_PORT/ > /dev/null   # warm-up
    before=$(cpu_ticks $PIDS)
    out=$(taskset -c 1 h2load -t1 -c$CONNS -m$STREAMS -D $DUR https://127.0.0.1:$PROXY_PORT/)
    after=$(cpu_ticks $PIDS)
    reqs=$(echo "$out" | awk '/^requests:/ {print $8}')
    rps=$(echo "$out" | awk '/^finished in/ {print $4}')
    errs=$(echo "$out" | awk '/^requests:/ {if ($10+$12+$14 > 0) print "failed " $10 " errored " $12 " timeout " $14}; /^status codes:/ {if ($5+$7+$9 > 0) print "non-2xx " $5+$7+$9}')
    proto=$(echo "$out" | awk '/Application protocol/ {print $3}')
    [ "$proto" = h2 ] || errs="$errs protocol=$proto"
    cpu_us=$(python3 -c "print(f'{($after-$before)/$TICK*1e6/$reqs:.2f}')")
    echo "round $round $p: $rps req/s, $cpu_us µs CPU/request $errs"
    echo "$round $p $rps $cpu_us" >> $W/results
    kill $PROXY; wait $PROXY 2>/dev/null || true; PROXY=
    sleep 0.5
  done
done
round_ratios $W/results
