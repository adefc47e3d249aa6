#!/usr/bin/env bash
# Retries against a backend that fails 30% of its connections (closed right
# after accept), ringload --rate 5000 for 10 s, pooling off so every request
# opens a new upstream connection (the harshest case).
# Usage: bench/scripts/retries.sh  (prints one table row per configuration)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=$ROOT/target/release/ringgate; RL=$ROOT/target/release/ringload; BK=$ROOT/target/release/examples/backend
[ -x "$BK" ] || cargo build -q --release -p ringgate-tests --example backend
W=$(mktemp -d /tmp/rgretry.XXXX); PPORT=18300
"$BK" 127.0.0.1:19301 3/10 close 2>/dev/null & F=$!
"$BK" 127.0.0.1:19302 2>/dev/null & H=$!
trap 'kill $F $H 2>/dev/null || true' EXIT
sleep 0.5
echo "| backends | retries | requests | failed | failed % | p99 |"
echo "|---|---|---:|---:|---:|---:|"
run() { # label backends retries_line
  cat > $W/rg.toml <<EOC
[server]
workers = 2
[[listeners]]
name = "web"
address = "127.0.0.1:$PPORT"
[[routes]]
listener = "web"
upstream = "b"
[[upstreams]]
name = "b"
backends = [$2]
pool = { max_idle_per_backend = 0 }
$3
EOC
  "$RG" -c $W/rg.toml 2>$W/rg.err & P=$!
  sleep 0.5
  "$RL" http://127.0.0.1:$PPORT/ --rate 5000 --connections 64 --duration 10s --json $W/out.json >/dev/null 2>&1 || true
  kill $P; wait $P 2>/dev/null || true
  python3 - "$W/out.json" "$1" "$4" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
n = r["requests"]; ok = r["status"].get("200", 0); failed = n - ok + sum(r["errors"].values())
print(f"| {sys.argv[2]} | {sys.argv[3]} | {n} | {failed} | {100*failed/max(n,1):.3f}% | {r['latency_us']['p99']/1000:.2f} ms |")
PY
}
run "flaky only" '{ address = "127.0.0.1:19301" }' 'retries = { attempts = 2, on = ["connect_failure", "reset"], budget = "100%" }' "2 attempts, 100% budget"
run "flaky only" '{ address = "127.0.0.1:19301" }' 'retries = { attempts = 5, on = ["connect_failure", "reset"], budget = "100%" }' "5 attempts, 100% budget"
run "flaky only" '{ address = "127.0.0.1:19301" }' '' "none"
run "flaky + healthy" '{ address = "127.0.0.1:19301" }, { address = "127.0.0.1:19302" }' 'retries = { attempts = 2, on = ["connect_failure", "reset"] }' "2 attempts, 20% budget"
run "flaky + healthy" '{ address = "127.0.0.1:19301" }, { address = "127.0.0.1:19302" }' '' "none"
