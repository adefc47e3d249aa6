#!/usr/bin/env bash
# RSS per idle keep-alive client connection: N clients each make one
# request through the proxy and then stay connected, idle. Reports the
# proxy's RSS growth per connection (VmRSS before, and 1 s and 5 s after the
# last client is idle: a burst's transient memory is gone by the second), for ringgate
# and nginx (and HAProxy when installed), each with one worker on CPU 0,
# the backend nginx on CPU 1.
# Usage: bench/scripts/idle-memory.sh [connections=5000] [proxies="ringgate nginx haproxy"]
# TLS=1: the clients connect over TLS 1.3 (an ECDSA P-256 certificate) and
# stay idle after their request, as an edge node's HTTPS clients do.
# HAProxy reserves two descriptors per connection: under a 20 000 open-file
# limit its maxconn stays below 10 000, so it takes part up to 9 900.
set -euo pipefail
N=${1:-5000}; PROXIES=${2:-"ringgate nginx haproxy"}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=${RINGGATE_BIN:-$ROOT/target/release/ringgate}
W=$(mktemp -d /tmp/rgidle.XXXX)
BACKEND_PORT=19010; PROXY_PORT=18081
ulimit -n 20000
cat > $W/backend.conf <<EOC
worker_processes 1; daemon off; pid $W/backend.pid; error_log $W/backend.err warn;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$BACKEND_PORT; location / { return 200 "hello\n"; } } }
EOC
source "$ROOT/bench/scripts/lib.sh"
ringgate_conf $W $PROXY_PORT $BACKEND_PORT "max_connections_per_worker = 20000"
TLS=${TLS:-0}
NGINX_TLS=""; HAPROXY_TLS=""; SCHEME=http
if [ "$TLS" = 1 ]; then
  make_cert $W
  cat $W/cert.pem $W/key.pem > $W/combined.pem
  sed -i "s|^address = .*|&\ntls = { certificates = [{ cert = \"$W/cert.pem\", key = \"$W/key.pem\" }] }|" $W/ringgate.toml
  NGINX_TLS=" ssl; ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem; ssl_protocols TLSv1.2 TLSv1.3"
  HAPROXY_TLS=" ssl crt $W/combined.pem"
  SCHEME=https
fi
cat > $W/nginx-proxy.conf <<EOC
worker_processes 1; worker_rlimit_nofile 20000; daemon off; pid $W/proxy.pid; error_log $W/proxy.err warn;
events { worker_connections 20000; }
http { access_log off; keepalive_timeout 300s; keepalive_requests 10000000;
  upstream b { server 127.0.0.1:$BACKEND_PORT; keepalive 64; }
  server { listen 127.0.0.1:$PROXY_PORT$NGINX_TLS;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOC
cat > $W/haproxy.cfg <<EOC
global
  nbthread 1
  maxconn 9900
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 60s
  timeout http-keep-alive 300s
  http-reuse always
  option http-keep-alive
frontend f
  bind 127.0.0.1:$PROXY_PORT$HAPROXY_TLS
  default_backend b
backend b
  server s1 127.0.0.1:$BACKEND_PORT
EOC
idle_clients_py $W
taskset -c 1 nginx -c $W/backend.conf & BACKEND=$!
sleep 0.5
idle_rss_runs $N $PROXY_PORT $TLS $SCHEME://127.0.0.1:$PROXY_PORT/ "idle connections"
kill $BACKEND
