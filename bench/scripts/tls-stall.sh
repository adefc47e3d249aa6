#!/usr/bin/env bash
# A legitimate HTTPS client's latency while 1 000 other connections open a TLS
# handshake and never finish it (each sends the first bytes of a ClientHello
# record, then nothing). They are opened 1.5 s before the measured window,
# which ends before the default tls_handshake_timeout (10 s) closes them.
# ringgate (1 worker, CPU 0) in front of an nginx `return 200` backend; the
# legitimate client (ringload, open loop at a fixed rate, corrected latency)
# and the stalling connections on CPU 1. Rounds alternate without and with the
# stalling connections; the end prints the medians of p99 and their ratio.
# UNDER_TEST=nginx runs the same test against nginx terminating TLS.
# CONTROL=1 adds a third run to each round: the same 1 000 connections, but
# to a listener on CPU 1 that accepts them and never reads (they never reach
# the proxy), which shows how far this machine moves the client's p99 for
# 1 000 idle connections that the proxy has no part in.
# Usage: bench/scripts/tls-stall.sh [rounds=5] [duration_s=6] [rate=2000] [stallers=1000]
# HANDSHAKE_TIMEOUT (default 10s, the config default) sets [limits]
# tls_handshake_timeout; a longer window than 8 s needs it longer.
set -euo pipefail
ROUNDS=${1:-5}; DUR=${2:-6}; RATE=${3:-2000}; STALLERS=${4:-1000}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=${RINGGATE_BIN:-$ROOT/target/release/ringgate}
RL=${RINGLOAD_BIN:-$ROOT/target/release/ringload}
W=$(mktemp -d /tmp/rgstall.XXXX)
BACKEND_PORT=19001; PROXY_PORT=18444
for tool in nginx taskset openssl python3; do command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
[ -x "$RG" ] && [ -x "$RL" ] || { echo "build first: cargo build --release" >&2; exit 1; }
source "$ROOT/bench/scripts/lib.sh"
make_cert $W
backend_conf $W/backend.conf $W $BACKEND_PORT
cat > $W/ringgate.toml <<EOC
[server]
workers = 1
[limits]
tls_handshake_timeout = "${HANDSHAKE_TIMEOUT:-10s}"
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
cat > $W/stall.py <<'PY'
# Opens the connections, then sleeps: nothing of this process runs during
# the measured window (it shares CPU 1 with the legitimate client).
import socket, sys, time
port, n, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(bytes([22, 3, 1, 0, 200]))  # a ClientHello record header, no body
    socks.append(s)
time.sleep(secs)
closed = 0
for s in socks:
    s.setblocking(False)
    try:
        closed += s.recv(1) == b""
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
print(f"stallers: {n} opened, {closed} closed by the proxy while held", file=sys.stderr)
PY
CONTROL_PORT=19556
MODES="clean stalled"
if [ "${CONTROL:-0}" = 1 ]; then
  MODES="clean stalled control"
  # A listener that accepts and never reads; it holds one round's
  # connections (the oldest go as the next round's arrive).
  taskset -c 1 python3 -c "
import collections, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', $CONTROL_PORT)); s.listen(4096)
held = collections.deque()
while True:
    c, _ = s.accept()
    if len(held) >= $STALLERS:
        held.popleft().close()
    held.append(c)" & CONTROL_LISTENER=$!
fi
taskset -c 1 nginx -c $W/backend.conf & BACKEND=$!
if [ "${UNDER_TEST:-ringgate}" = nginx ]; then
  # The same test against nginx terminating TLS (OpenSSL), for comparison.
  cat > $W/nginx-proxy.conf <<EOC
worker_processes 1; daemon off; pid $W/proxy.pid; error_log $W/proxy.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  upstream b { server 127.0.0.1:$BACKEND_PORT; keepalive 64; }
  server { listen 127.0.0.1:$PROXY_PORT ssl reuseport;
    ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem; ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOC
  taskset -c 0 nginx -c $W/nginx-proxy.conf & PROXY=$!
else
  taskset -c 0 "$RG" -c $W/ringgate.toml 2>$W/rg.err & PROXY=$!
fi
cleanup() { kill $BACKEND $PROXY ${CONTROL_LISTENER:-} 2>/dev/null || true; }
trap cleanup EXIT
sleep 1
: > $W/results
for round in $(seq 1 "$ROUNDS"); do
  for mode in $MODES; do
    if [ $mode != clean ]; then
      port=$PROXY_PORT; [ $mode = control ] && port=$CONTROL_PORT
      taskset -c 1 python3 $W/stall.py $port $STALLERS $((DUR + 2)) & STALL=$!
      sleep 1.5
    fi
    taskset -c 1 "$RL" -k https://127.0.0.1:$PROXY_PORT/ --rate $RATE -c 16 -d ${DUR}s --warmup 1s \
      --cores 1 -q --json $W/rl.json > /dev/null 2>$W/rl.err || true
    [ $mode != clean ] && { wait $STALL 2>/dev/null || true; }
    python3 - $W/rl.json $round $mode >> $W/results <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(sys.argv[2], sys.argv[3], r["latency_us"]["p99"], r["rate_achieved"], sum(r["errors"].values()))
PY
    tail -1 $W/results | awk '{printf "round %s %-7s p99 %s us, %.0f req/s, %s errors\n", $1, $2, $3, $4, $5}'
  done
done
python3 - $W/results <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
p = {m: [float(r[2]) for r in rows if r[1] == m] for m in ("clean", "stalled", "control")}
ratios = [s / c for c, s in zip(p["clean"], p["stalled"])]
print(f"p99 median: clean {st.median(p['clean']):.0f} us, with stalled handshakes {st.median(p['stalled']):.0f} us; "
      f"median ratio {st.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f})")
if p["control"]:
    ctl = [s / c for c, s in zip(p["control"], p["stalled"])]
    base = [c / k for k, c in zip(p["clean"], p["control"])]
    print(f"control (the connections to a listener that never reads): p99 median {st.median(p['control']):.0f} us, "
          f"{st.median(base):.2f}x clean; stalled / control median {st.median(ctl):.2f}x (min {min(ctl):.2f}, max {max(ctl):.2f})")
PY
