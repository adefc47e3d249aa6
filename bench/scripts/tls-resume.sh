#!/usr/bin/env bash
# Resumed TLS 1.3 handshakes: `openssl s_time -reuse` (one connection after
# another, each resuming the first one's session with a ticket, one GET each)
# against ringgate and nginx, one worker each on CPU 0, the client and an
# nginx `return 200` backend on CPU 1. Rounds alternate; each prints the
# connections/s s_time reached and the proxy's CPU time per connection, and
# the same with -new (full handshakes) for comparison.
# Usage: bench/scripts/tls-resume.sh [rounds=3] [seconds=6]
set -euo pipefail
ROUNDS=${1:-3}; SECS=${2:-6}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=${RINGGATE_BIN:-$ROOT/target/release/ringgate}
W=$(mktemp -d /tmp/rgresume.XXXX)
BACKEND_PORT=19003; PROXY_PORT=18448
TICK=$(getconf CLK_TCK)
source "$ROOT/bench/scripts/lib.sh"
make_cert $W
backend_conf $W/backend.conf $W $BACKEND_PORT
cat > $W/ringgate.toml <<EOC
[server]
workers = 1
[[listeners]]
name = "web"
address = "127.0.0.1:$PROXY_PORT"
tls = { certificates = [{ cert = "$W/cert.pem", key = "$W/key.pem" }] }
[[routes]]
listener = "web"
upstream = "b"
[[upstreams]]
name = "b"
backends = [{ address = "127.0.0.1:$BACKEND_PORT" }]
EOC
cat > $W/nginx-proxy.conf <<EOC
worker_processes 1; daemon off; pid $W/proxy.pid; error_log $W/proxy.err warn;
events { worker_connections 4096; }
http { access_log off;
  upstream b { server 127.0.0.1:$BACKEND_PORT; keepalive 64; }
  server { listen 127.0.0.1:$PROXY_PORT ssl; ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_tickets on;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOC
taskset -c 1 nginx -c $W/backend.conf & BACKEND=$!
cleanup() { kill $BACKEND 2>/dev/null || true; [ -n "${PROXY:-}" ] && kill $PROXY 2>/dev/null || true; }
trap cleanup EXIT
sleep 0.5
for round in $(seq 1 "$ROUNDS"); do
  for p in ringgate nginx; do
    case $p in
      ringgate) taskset -c 0 "$RG" -c $W/ringgate.toml 2>$W/rg.err & PROXY=$! ;;
      nginx) taskset -c 0 nginx -c $W/nginx-proxy.conf & PROXY=$! ;;
    esac
    sleep 1
    PIDS="$PROXY $(pgrep -P $PROXY || true)"
    for kind in reuse new; do
      before=$(cpu_ticks $PIDS)
      out=$(taskset -c 1 openssl s_time -connect 127.0.0.1:$PROXY_PORT -$kind -time $SECS -www / 2>/dev/null)
      after=$(cpu_ticks $PIDS)
      conns=$(echo "$out" | awk '/connections in/ {print $1; exit}')
      python3 -c "print(f'round $round $p -$kind: {$conns/$SECS:,.0f} connections/s, {($after-$before)/$TICK*1e6/max($conns,1):.1f} µs proxy CPU/connection')"
    done
    kill $PROXY; wait $PROXY 2>/dev/null || true; PROXY=
    sleep 0.5
  done
done
