#!/usr/bin/env bash
# ringload's closed-loop maximum vs `wrk -t1` on one core, same server, same
# connections: nginx `return 200` (1 worker) alone on CPU 0, the two clients
# alternating on CPU 1. Prints each pair's req/s and each client's CPU time
# per request (user+sys from /usr/bin/time over requests).
# Usage: bench/scripts/ringload-vs-wrk.sh [pairs=5] [duration_s=5] [connections=64]
set -euo pipefail
PAIRS=${1:-5}; DUR=${2:-5}; CONNS=${3:-64}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RL=${RINGLOAD_BIN:-$ROOT/target/release/ringload}
PORT=18080
for tool in nginx wrk taskset /usr/bin/time python3; do command -v $tool >/dev/null || { echo "missing $tool: apt-get install nginx wrk time python3" >&2; exit 1; }; done
[ -x "$RL" ] || { echo "build ringload first: cargo build --release -p ringgate-loadgen" >&2; exit 1; }
W=$(mktemp -d /tmp/rlwrk.XXXX)
cat > $W/nginx.conf <<EOC
worker_processes 1; daemon off; pid $W/nginx.pid; error_log $W/nginx.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  server { listen 127.0.0.1:$PORT reuseport; location / { return 200 "hello from backend\n"; } } }
EOC
taskset -c 0 nginx -c $W/nginx.conf & SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
sleep 0.5
for i in $(seq 1 "$PAIRS"); do
  /usr/bin/time -f "%U %S" -o $W/rl.time taskset -c 1 "$RL" http://127.0.0.1:$PORT/ \
    --connections $CONNS --duration ${DUR}s --cores 1 --json $W/rl.json > /dev/null 2>&1
  /usr/bin/time -f "%U %S" -o $W/wrk.time taskset -c 1 wrk -t1 -c$CONNS -d${DUR}s \
    http://127.0.0.1:$PORT/ > $W/wrk.out
  python3 - "$W" "$i" "$DUR" <<'PY'
import json, sys
w, i, dur = sys.argv[1], sys.argv[2], float(sys.argv[3])
rl = json.load(open(f"{w}/rl.json"))["requests"]
wrk = next(int(l.split()[0]) for l in open(f"{w}/wrk.out") if "requests in" in l)
ru, rs = map(float, open(f"{w}/rl.time").read().split())
wu, ws = map(float, open(f"{w}/wrk.time").read().split())
print(f"pair {i}: ringload {rl/dur:,.0f}/s ({(ru+rs)/rl*1e6:.2f} us CPU/req, user {ru:.2f} s)"
      f" | wrk {wrk/dur:,.0f}/s ({(wu+ws)/wrk*1e6:.2f} us CPU/req, user {wu:.2f} s)"
      f" | ratio {rl/wrk:.3f}")
PY
done
