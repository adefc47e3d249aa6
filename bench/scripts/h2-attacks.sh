#!/usr/bin/env bash
# What HTTP/2 attacks cost other clients: one ringgate worker on CPU 0 with
# an HTTP/1.1 listener and a cleartext HTTP/2 listener (http2 = true), an
# nginx `return 200` backend and the load on CPU 1. A legitimate client
# (ringload, open loop at RATE requests/s on 32 keep-alive connections) runs
# for DUR seconds alone, then beside each attacker of bench/scripts/h2attack.py
# in turn, opening ATTACK_RATE new attacking connections a second (default
# 20; 0 = as fast as it can) for the whole window. The attacker runs under
# SCHED_IDLE on CPU 1: with two cores it must share one with the legitimate
# client and the backend, and what is measured is the proxy's response to
# the attack, not CPU 1 lent to the attacker. Prints the legitimate
# client's corrected p99 and p99.9 per window and the ratio of each attack's
# p99 to the median of the quiet windows (one before each attack).
# Each attack runs ROUNDS times (default 3), each time after a quiet window,
# and the ratio is the median attack p99 over the median quiet p99.
# Usage: bench/scripts/h2-attacks.sh [rate=5000] [duration_s=10] [attacks="rapid continuation hpack ping settings zerowindow nobody"]
set -euo pipefail
RATE=${1:-5000}; DUR=${2:-10}; ATTACKS=${3:-"rapid continuation hpack ping settings zerowindow nobody"}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=${RINGGATE_BIN:-$ROOT/target/release/ringgate}
RL=${RINGLOAD_BIN:-$ROOT/target/release/ringload}
W=$(mktemp -d /tmp/rgh2a.XXXX)
BACKEND_PORT=19000; H1_PORT=18080; H2_PORT=18082
for tool in nginx taskset python3; do command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
[ -x "$RG" ] && [ -x "$RL" ] || { echo "build first: cargo build --release" >&2; exit 1; }
source "$ROOT/bench/scripts/lib.sh"
backend_conf $W/backend.conf $W $BACKEND_PORT
cat > $W/ringgate.toml <<EOC
[server]
workers = 1
[limits]
send_timeout = "5s"
body_read_timeout = "5s"
[[listeners]]
name = "h1"
address = "127.0.0.1:$H1_PORT"
[[listeners]]
name = "h2"
address = "127.0.0.1:$H2_PORT"
http2 = true
[[routes]]
listener = "h1"
upstream = "b"
[[routes]]
listener = "h2"
upstream = "b"
[[upstreams]]
name = "b"
backends = [{ address = "127.0.0.1:$BACKEND_PORT" }]
pool = { max_idle_per_backend = 256 }
EOC
taskset -c 1 nginx -c $W/backend.conf & BACKEND=$!
taskset -c 0 "$RG" -c $W/ringgate.toml 2>$W/rg.err & PROXY=$!
cleanup() { kill $BACKEND $PROXY 2>/dev/null || true; }
trap cleanup EXIT
sleep 1
legit() {
  taskset -c 1 "$RL" http://127.0.0.1:$H1_PORT/ --rate $RATE -c 32 -d ${DUR}s --warmup 1s --cores 1 --no-pin -q --json $W/$1.json >/dev/null 2>&1 || true
  python3 -c "import json,sys; m=json.load(open('$W/$1.json')); l=m.get('latency_us') or m['runs'][0]['latency_us']; print(l['p99'], l['p999'])" 2>/dev/null || echo "- -"
}
: > $W/results
for round in $(seq 1 ${ROUNDS:-3}); do
for a in $ATTACKS; do
  read p99 p999 < <(legit quiet-$a)
  echo "quiet before $a: p99 ${p99} µs, p99.9 ${p999} µs"
  echo "quiet $a $p99" >> $W/results
  chrt --idle 0 taskset -c 1 python3 "$ROOT/bench/scripts/h2attack.py" $a $H2_PORT $((DUR + 1)) / ${ATTACK_RATE:-20} > $W/attack-$a.txt 2>&1 &
  ATT=$!
  read p99 p999 < <(legit attack-$a)
  wait $ATT || true
  echo "under $a: p99 ${p99} µs, p99.9 ${p999} µs; $(cat $W/attack-$a.txt)"
  echo "attack $a $p99" >> $W/results
  # The attack's connections (a zero window, a missing body) outlive it.
  sleep 6
done
done
echo "abuse counters: $(grep -c 'ENHANCE_YOUR_CALM' $W/rg.err) GOAWAY lines in the error log"
python3 - $W/results <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
quiet = [float(v) for k, a, v in rows if k == "quiet" and v != "-"]
base = st.median(quiet)
print(f"quiet p99 median {base:.0f} µs over {len(quiet)} windows")
attacks = {}
for k, a, v in rows:
    if k == "attack" and v != "-":
        attacks.setdefault(a, []).append(float(v))
for a, vs in attacks.items():
    m = st.median(vs)
    print(f"{a}: p99 median {m:.0f} µs over {len(vs)} windows ({', '.join(f'{v:.0f}' for v in vs)}) = {m / base:.2f}x quiet")
PY
