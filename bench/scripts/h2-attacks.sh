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
# p99 to the median of the quiet windows (one before each attack), and the
# proxy's CPU share in each window: latency on a shared 2-core VM is noisy,
# the proxy's own work under an attack much less so.
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
# The proxy's user+sys clock ticks so far.
proxy_ticks() { awk '{print $14 + $15}' /proc/$PROXY/stat; }
# Prints the legitimate client's p99 and p99.9 (µs) and the proxy's CPU
# share over the window (percent of one core).
legit() {
  local t0 t1 start end
  t0=$(proxy_ticks); start=$(date +%s.%N)
  taskset -c 1 "$RL" http://127.0.0.1:$H1_PORT/ --rate $RATE -c 32 -d ${DUR}s --warmup 1s --cores 1 --no-pin -q --json $W/$1.json >/dev/null 2>&1 || true
  t1=$(proxy_ticks); end=$(date +%s.%N)
  local cpu; cpu=$(python3 -c "print(f'{100 * ($t1 - $t0) / $(getconf CLK_TCK) / ($end - $start):.1f}')")
  python3 -c "import json,sys; m=json.load(open('$W/$1.json')); l=m.get('latency_us') or m['runs'][0]['latency_us']; print(l['p99'], l['p999'], '$cpu')" 2>/dev/null || echo "- - $cpu"
}
: > $W/results
for round in $(seq 1 ${ROUNDS:-3}); do
for a in $ATTACKS; do
  read p99 p999 cpu < <(legit quiet-$a)
  echo "quiet before $a: p99 ${p99} µs, p99.9 ${p999} µs, proxy CPU ${cpu}%"
  echo "quiet $a $p99 $cpu" >> $W/results
  chrt --idle 0 taskset -c 1 python3 "$ROOT/bench/scripts/h2attack.py" $a $H2_PORT $((DUR + 1)) / ${ATTACK_RATE:-20} > $W/attack-$a.txt 2>&1 &
  ATT=$!
  read p99 p999 cpu < <(legit attack-$a)
  wait $ATT || true
  echo "under $a: p99 ${p99} µs, p99.9 ${p999} µs, proxy CPU ${cpu}%; $(cat $W/attack-$a.txt)"
  echo "attack $a $p99 $cpu" >> $W/results
  # The attack's connections (a zero window, a missing body) outlive it.
  sleep 6
done
done
echo "abuse counters: $(grep -c 'ENHANCE_YOUR_CALM' $W/rg.err) GOAWAY lines in the error log"
python3 - $W/results <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
quiet = [float(r[2]) for r in rows if r[0] == "quiet" and r[2] != "-"]
quiet_cpu = [float(r[3]) for r in rows if r[0] == "quiet"]
base, base_cpu = st.median(quiet), st.median(quiet_cpu)
print(f"quiet: p99 median {base:.0f} µs over {len(quiet)} windows ({min(quiet):.0f}-{max(quiet):.0f}), proxy CPU median {base_cpu:.1f}%")
attacks = {}
for r in rows:
    if r[0] == "attack":
        attacks.setdefault(r[1], []).append(r)
for a, rs in attacks.items():
    p99s = [float(r[2]) for r in rs if r[2] != "-"]
    cpus = [float(r[3]) for r in rs]
    m, c = st.median(p99s), st.median(cpus)
    print(f"{a}: p99 median {m:.0f} µs ({', '.join(f'{v:.0f}' for v in p99s)}) = {m / base:.2f}x quiet; "
          f"proxy CPU median {c:.1f}% = {c / base_cpu:.2f}x quiet")
PY
