#!/usr/bin/env bash
# RSS per idle WebSocket tunnel: N clients (python3-websockets) open a
# WebSocket through one ringgate worker (a route with upgrade =
# ["websocket"]) to an echo server, exchange one message, and stay
# connected, silent. Prints the proxy's RSS growth per tunnel, 2 and 10 s
# after the last one opened. Each tunnel holds two of the proxy's
# descriptors: under a 20 000 open-file limit N stays below 9 900.
# Usage: bench/scripts/ws-idle-memory.sh [tunnels=5000]
set -euo pipefail
N=${1:-5000}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=${RINGGATE_BIN:-$ROOT/target/release/ringgate}
W=$(mktemp -d /tmp/rgws.XXXX)
SERVER_PORT=19300; PROXY_PORT=18300
PY=/usr/bin/python3
cat > $W/ringgate.toml <<EOC
[server]
workers = 1
max_connections_per_worker = 20000
[[listeners]]
name = "web"
address = "127.0.0.1:$PROXY_PORT"
[[routes]]
listener = "web"
upstream = "ws"
upgrade = ["websocket"]
[[upstreams]]
name = "ws"
backends = [{ address = "127.0.0.1:$SERVER_PORT" }]
timeouts = { tunnel_idle = "10m", connect = "5s" }
pool = { max_idle_per_backend = 0 }
EOC
ulimit -n 20000 || true
taskset -c 1 $PY "$ROOT/tests/websocket/ws.py" serve $SERVER_PORT > $W/server.out & SERVER=$!
taskset -c 0 "$RG" -c $W/ringgate.toml 2>$W/rg.err & PROXY=$!
cleanup() { kill $SERVER $PROXY ${CLIENTS:-} 2>/dev/null || true; }
trap cleanup EXIT
sleep 1
rss() { awk '/VmRSS/ {print $2}' /proc/$PROXY/status; }
before=$(rss)
taskset -c 1 $PY - "$N" "$PROXY_PORT" > $W/clients.out 2>&1 <<'PY' &
import asyncio, sys, websockets
n, port = int(sys.argv[1]), sys.argv[2]
async def one(i, opened):
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/t{i}", ping_interval=None, open_timeout=60)
    await ws.send("hi"); await ws.recv()
    opened.append(ws)
async def main():
    opened = []
    for start in range(0, n, 50):
        await asyncio.gather(*(one(i, opened) for i in range(start, min(n, start + 50))))
    print(f"open {len(opened)}", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
PY
CLIENTS=$!
for _ in $(seq 1 240); do grep -q "^open" $W/clients.out 2>/dev/null && break; sleep 0.5; done
grep "^open" $W/clients.out || { echo "clients did not open: $(tail -3 $W/clients.out)"; exit 1; }
sleep 2; after2=$(rss)
sleep 8; after10=$(rss)
echo "ringgate: $N idle WebSocket tunnels: RSS +$(( (after2 - before) * 1024 / N )) B per tunnel after 2 s, +$(( (after10 - before) * 1024 / N )) B after 10 s (before ${before} KiB)"
