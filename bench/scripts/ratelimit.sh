#!/usr/bin/env bash
# Node-wide rate-limit accuracy: a route limited to 1000/s (burst 100) offered
# 3000/s for 5 s by ringload (after a 1 s warm-up that spends the burst),
# for each worker count, gossip interval and connection count.
# Usage: bench/scripts/ratelimit.sh [workers="1 2"] [ticks="1ms 10ms 50ms"] [conns="1 64"]
set -euo pipefail
WORKERS=${1:-"1 2"}; TICKS=${2:-"1ms 10ms 50ms"}; CONNS=${3:-"1 64"}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=$ROOT/target/release/ringgate; RL=$ROOT/target/release/ringload
W=$(mktemp -d /tmp/rgrl.XXXX); BPORT=19200; PPORT=18200
cat > $W/backend.conf <<EOC
worker_processes 1; daemon off; pid $W/b.pid; error_log $W/b.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  server { listen 127.0.0.1:$BPORT reuseport; location / { return 200 "ok\n"; } } }
EOC
nginx -c $W/backend.conf & B=$!
trap 'kill $B 2>/dev/null || true' EXIT
sleep 0.5
echo "| workers | gossip tick | connections | admitted/s | error vs 1000/s | 429/s |"
echo "|---:|---:|---:|---:|---:|---:|"
for w in $WORKERS; do for t in $TICKS; do for c in $CONNS; do
  cat > $W/rg.toml <<EOC
[server]
workers = $w
gossip_interval = "$t"
[[listeners]]
name = "web"
address = "127.0.0.1:$PPORT"
[[routes]]
listener = "web"
upstream = "b"
rate_limit = { key = "route", rate = "1000/s", burst = 100 }
[[upstreams]]
name = "b"
backends = [{ address = "127.0.0.1:$BPORT" }]
EOC
  "$RG" -c $W/rg.toml 2>$W/rg.err & P=$!
  sleep 0.5
  "$RL" http://127.0.0.1:$PPORT/ --rate 3000 --connections $c --duration 5s --warmup 1s --json $W/out.json >/dev/null 2>&1 || true
  kill $P; wait $P 2>/dev/null || true
  python3 - "$W/out.json" $w $t $c <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); d = r["duration_s"]
ok = r["status"].get("200", 0) / d; limited = r["status"].get("429", 0) / d
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {ok:.1f} | {100*(ok-1000)/1000:+.2f}% | {limited:.0f} |")
PY
done; done; done
