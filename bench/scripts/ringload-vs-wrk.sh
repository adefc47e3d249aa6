#!/usr/bin/env bash
# ringload's closed-loop maximum vs `wrk -t1` on one core, same server, same
# connections, in both placements: the client on CPU 0 with nginx `return 200`
# (1 worker) on CPU 1, then the client on CPU 1 with nginx on CPU 0. Within a
# placement the two clients run in alternating pairs (the first client of a
# pair alternates too, so neither always runs on a warmer machine). Prints each
# run's requests/s and CPU time per request (user+sys from /usr/bin/time over
# requests), then each placement's medians and the ratio of the medians.
# With OPEN=1, each placement then runs ringload open loop at 80% and 120% of
# wrk's median closed-loop rate and prints the achieved rate and warnings.
# Usage: bench/scripts/ringload-vs-wrk.sh [pairs=5] [duration_s=5] [connections=64] [placements="0 1"]
set -euo pipefail
PAIRS=${1:-5}; DUR=${2:-5}; CONNS=${3:-64}; PLACEMENTS=${4:-"0 1"}
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
SERVER=
trap '[ -n "$SERVER" ] && kill $SERVER 2>/dev/null || true' EXIT

run_ringload() { # cpu -> appends "rps cpu_us_per_req" to $W/rl.$1
  /usr/bin/time -f "%U %S" -o $W/rl.time taskset -c $1 "$RL" http://127.0.0.1:$PORT/ \
    --connections $CONNS --duration ${DUR}s --cores 1 --quiet --json $W/rl.json > /dev/null 2>&1
  python3 - "$W" "$DUR" <<'PY' >> $W/rl.$1
import json, sys
w, dur = sys.argv[1], float(sys.argv[2])
n = json.load(open(f"{w}/rl.json"))["requests"]
u, s = map(float, open(f"{w}/rl.time").read().split())
print(n / dur, (u + s) / n * 1e6)
PY
}
run_wrk() { # cpu -> appends "rps cpu_us_per_req" to $W/wrk.$1
  /usr/bin/time -f "%U %S" -o $W/wrk.time taskset -c $1 wrk -t1 -c$CONNS -d${DUR}s \
    http://127.0.0.1:$PORT/ > $W/wrk.out
  python3 - "$W" "$DUR" <<'PY' >> $W/wrk.$1
import sys
w, dur = sys.argv[1], float(sys.argv[2])
n = next(int(l.split()[0]) for l in open(f"{w}/wrk.out") if "requests in" in l)
u, s = map(float, open(f"{w}/wrk.time").read().split())
print(n / dur, (u + s) / n * 1e6)
PY
}

for CLIENT in $PLACEMENTS; do
  SRV=$((1 - CLIENT))
  taskset -c $SRV nginx -c $W/nginx.conf & SERVER=$!
  sleep 0.5
  : > $W/rl.$CLIENT; : > $W/wrk.$CLIENT
  for i in $(seq 1 "$PAIRS"); do
    if [ $((i % 2)) -eq 1 ]; then run_ringload $CLIENT; run_wrk $CLIENT; else run_wrk $CLIENT; run_ringload $CLIENT; fi
    python3 - "$W" "$CLIENT" "$i" <<'PY'
import sys
w, c, i = sys.argv[1], sys.argv[2], sys.argv[3]
rl = open(f"{w}/rl.{c}").read().split("\n")[-2].split()
wk = open(f"{w}/wrk.{c}").read().split("\n")[-2].split()
print(f"client CPU {c}, nginx CPU {1-int(c)}, pair {i}: ringload {float(rl[0]):,.0f}/s {float(rl[1]):.2f} us CPU/req"
      f" | wrk {float(wk[0]):,.0f}/s {float(wk[1]):.2f} us CPU/req | ratio {float(rl[0])/float(wk[0]):.3f}")
PY
  done
  python3 - "$W" "$CLIENT" <<'PY' | tee $W/median.$CLIENT
import statistics as st, sys
w, c = sys.argv[1], sys.argv[2]
rows = lambda f: [tuple(map(float, l.split())) for l in open(f) if l.strip()]
rl, wk = rows(f"{w}/rl.{c}"), rows(f"{w}/wrk.{c}")
m = lambda xs, k: st.median(x[k] for x in xs)
pairs = [a[0] / b[0] for a, b in zip(rl, wk)]
print(f"client CPU {c} medians of {len(rl)}: ringload {m(rl,0):,.0f}/s {m(rl,1):.2f} us CPU/req"
      f" | wrk {m(wk,0):,.0f}/s {m(wk,1):.2f} us CPU/req"
      f" | ratio of medians {m(rl,0)/m(wk,0):.3f}, median pair ratio {st.median(pairs):.3f} WRKMEDIAN={m(wk,0):.0f}")
PY
  if [ "${OPEN:-0}" = 1 ]; then
    WRKMAX=$(sed -n 's/.*WRKMEDIAN=\([0-9]*\).*/\1/p' $W/median.$CLIENT)
    for PCT in 80 120; do
      RATE=$((WRKMAX * PCT / 100))
      taskset -c $CLIENT "$RL" http://127.0.0.1:$PORT/ --rate $RATE --connections $CONNS \
        --duration ${DUR}s --cores 1 --quiet --json $W/open.json > /dev/null 2> $W/open.err || true
      python3 - "$W" "$CLIENT" "$PCT" "$RATE" <<'PY'
import json, sys
w, c, pct, rate = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
d = json.load(open(f"{w}/open.json"))
print(f"client CPU {c} open loop {pct}% = {rate:.0f}/s: achieved {d['rate_achieved']:.0f}/s "
      f"({100*d['rate_achieved']/rate:.2f}%), p99 {d['latency_us']['p99']} us, "
      f"generator delay p99 {d['generator_delay_us']['p99']} us, send lag p99 {d['send_lag_us']['p99']} us")
for x in d["warnings"]:
    print("   WARNING:", x)
if not d["warnings"]:
    print("   no warning")
PY
    done
  fi
  kill $SERVER; wait $SERVER 2>/dev/null || true; SERVER=
  sleep 0.3
done
