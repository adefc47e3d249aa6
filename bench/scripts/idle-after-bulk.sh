#!/usr/bin/env bash
# What a keep-alive connection holds once idle after large exchanges: the
# proxy's RSS with N fresh idle connections (one small request each), then
# after each of them has also made REQS requests for a 1 MiB response and
# gone idle again. Each figure is taken 5 s after the clients' last
# request; the difference per connection is what the bulk traffic left
# behind. One ringgate worker on CPU 0, the nginx backend and the Python
# clients on CPU 1.
# Usage: bench/scripts/idle-after-bulk.sh [connections=100] [requests=100]
set -euo pipefail
N=${1:-100}; REQS=${2:-100}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=${RINGGATE_BIN:-$ROOT/target/release/ringgate}
W=$(mktemp -d /tmp/rgbulkidle.XXXX)
BACKEND_PORT=19011; PROXY_PORT=18082
ulimit -n 20000
head -c 1048576 /dev/urandom > $W/1m
chmod 755 $W; chmod 644 $W/1m
cat > $W/backend.conf <<EOC
worker_processes 1; daemon off; pid $W/backend.pid; error_log $W/backend.err warn;
events { worker_connections 4096; }
http { access_log off; sendfile on; keepalive_requests 10000000;
  server { listen 127.0.0.1:$BACKEND_PORT; root $W; location = /ok { return 200 "hello\n"; } } }
EOC
source "$ROOT/bench/scripts/lib.sh"
ringgate_conf $W $PROXY_PORT $BACKEND_PORT
# Reads one response with a Content-Length body; the connection stays open.
cat > $W/clients.py <<'EOC'
import socket, sys
n, reqs, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def get(s, path):
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk: sys.exit("closed")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    got = len(rest)
    while got < length:
        chunk = s.recv(min(1 << 20, length - got))
        if not chunk: sys.exit("closed")
        got += len(chunk)
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
for s in socks: get(s, "/ok")
print("fresh", flush=True)
sys.stdin.readline()
for s in socks:
    for _ in range(reqs): get(s, "/1m")
print("bulk", flush=True)
sys.stdin.readline()
EOC
taskset -c 1 nginx -c $W/backend.conf & BACKEND=$!
sleep 0.5
taskset -c 0 "$RG" -c $W/ringgate.toml 2>$W/rg.err & PROXY=$!
cleanup() { kill $BACKEND $PROXY 2>/dev/null || true; }
trap cleanup EXIT
sleep 1
rss() { awk '/VmRSS/ {print $2}' /proc/$PROXY/status; }
curl -s -o /dev/null http://127.0.0.1:$PROXY_PORT/ok
base=$(rss)
mkfifo $W/in
taskset -c 1 python3 $W/clients.py $N $REQS $PROXY_PORT < $W/in > $W/out & CLIENTS=$!
exec 3>$W/in
while ! grep -q fresh $W/out; do sleep 0.2; done
sleep 5; fresh=$(rss)
echo >&3
while ! grep -q bulk $W/out; do sleep 0.5; kill -0 $CLIENTS || { echo "clients failed"; exit 1; }; done
sleep 5; bulk=$(rss)
echo >&3; wait $CLIENTS || true
python3 -c "print(f'{$N} idle connections: RSS {$base} KiB before, {$fresh} KiB fresh ({($fresh-$base)*1024/$N:.0f} bytes each), {$bulk} KiB after {$REQS} x 1 MiB each ({($bulk-$base)*1024/$N:.0f} bytes each; {($bulk-$fresh)*1024/$N:+.0f} bytes each left by the bulk traffic)')"
