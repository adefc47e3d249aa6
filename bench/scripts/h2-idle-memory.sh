#!/usr/bin/env bash
# Memory of idle HTTP/2 connections: N cleartext prior-knowledge clients
# each make one request and stay open; the proxy's RSS before and after,
# per connection, for ringgate and nginx (one worker each, keep-alive
# upstream to an nginx `return 200` backend).
# Usage: bench/scripts/h2-idle-memory.sh [connections=2000]
set -euo pipefail
N=${1:-2000}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=${RINGGATE_BIN:-$ROOT/target/release/ringgate}
W=$(mktemp -d /tmp/rgh2m.XXXX)
BACKEND_PORT=19000; PORT=18082
source "$ROOT/bench/scripts/lib.sh"
backend_conf $W/backend.conf $W $BACKEND_PORT
cat > $W/ringgate.toml <<EOC
[server]
workers = 1
[[listeners]]
name = "h2"
address = "127.0.0.1:$PORT"
http2 = true
[[routes]]
listener = "h2"
upstream = "b"
[[upstreams]]
name = "b"
backends = [{ address = "127.0.0.1:$BACKEND_PORT" }]
EOC
cat > $W/nginx-proxy.conf <<EOC
worker_processes 1; daemon off; pid $W/proxy.pid; error_log $W/proxy.err warn;
events { worker_connections 20000; }
http { access_log off;
  upstream b { server 127.0.0.1:$BACKEND_PORT; keepalive 64; }
  server { listen 127.0.0.1:$PORT http2;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOC
taskset -c 1 nginx -c $W/backend.conf & BACKEND=$!
cleanup() { kill $BACKEND 2>/dev/null || true; [ -n "${PROXY:-}" ] && kill $PROXY 2>/dev/null || true; }
trap cleanup EXIT
sleep 0.5
rss() { awk '/VmRSS/ {print $2}' /proc/$1/status; }
for p in ringgate nginx; do
  case $p in
    ringgate) taskset -c 0 "$RG" -c $W/ringgate.toml 2>$W/rg.err & PROXY=$! ;;
    nginx) taskset -c 0 nginx -c $W/nginx-proxy.conf & PROXY=$! ;;
  esac
  sleep 1
  PID=$(pgrep -P $PROXY | head -1 || true); [ -n "$PID" ] || PID=$PROXY
  python3 - $PORT $N $PID $W/$p.txt <<'PY'
import socket, struct, sys, time
port, n, pid, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
def rss():
    return int([l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1])
def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload
def lit(name, value):
    return b"\0" + bytes([len(name)]) + name + bytes([len(value)]) + value
block = lit(b":method", b"GET") + lit(b":scheme", b"http") + lit(b":authority", b"idle") + lit(b":path", b"/")
hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + frame(1, 5, 1, block)
time.sleep(0.5)
before = rss()
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(hello)
    socks.append(s)
for s in socks:
    s.settimeout(5)
    got = b""
    while b"\x01" not in got[3:4] and len(got) < 200:   # read until some frames arrived
        got += s.recv(4096)
        if len(got) > 60: break
    s.sendall(frame(4, 1, 0))   # ACK its SETTINGS
for wait in (2, 8):
    time.sleep(wait)
    after = rss()
    print(f"after {wait} s more: RSS {before} KiB -> {after} KiB over {n} idle connections: {(after - before) * 1024 / n:.0f} B each")
open(out, "w").write(f"{before} {after}\n")
PY
  kill $PROXY; wait $PROXY 2>/dev/null || true; PROXY=
  sleep 0.5
done
