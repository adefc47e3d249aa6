#!/usr/bin/env bash
# Fleet-wide rate limits through Redis: three ringgate nodes (one worker
# each, on CPU 0) share one redis-server; a route the proxy answers itself
# is limited to 1000/s fleet-wide (burst 100) and offered 3000/s split
# 80/15/5 over the nodes by three ringloads (CPU 1).
#
#   accuracy [rounds=3] [intervals="10ms 50ms 200ms"]
#       10 s measured after a 2 s warm-up (which spends the buckets' burst),
#       per sync interval: the admitted rate and its error against 1000/s.
#   outage
#       50 ms syncs, 16 s of load; Redis is stopped 5 s in and started 5 s
#       later. Prints the admitted rate every 500 ms (from the nodes'
#       /metrics), the rate while Redis was away against the local share
#       (fleet_fallback = "local_share", nodes = 3: min(offered, 1000/3) per
#       node = 816/s), what the clients saw, and how long after Redis came
#       back each node synced again.
#   cost [rounds=5] [rate]
#       One node, 64 connections for 5 s (closed loop, or open loop at
#       `rate` requests/s with corrected latency), alternating: the
#       same route with a limit it never reaches (10M/s) in scope "node" and
#       in scope "fleet" (which goes first alternates). Requests/s and p99.
#       With CONTROL=1 both sides run scope "node": the same table then
#       shows how far two identical configs differ on this machine.
# Usage: bench/scripts/fleet.sh accuracy|outage|cost [args]
set -euo pipefail
MODE=${1:-accuracy}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=$ROOT/target/release/ringgate; RL=$ROOT/target/release/ringload
W=$(mktemp -d /tmp/rgfleet.XXXX)
REDIS_PORT=16390; PORT0=18400; ADMIN0=18410
OFFERED=(2400 450 150)
PIDS=()
. "$(dirname "$0")/lib.sh"
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; redis-cli -p $REDIS_PORT shutdown nosave >/dev/null 2>&1 || true; }
trap cleanup EXIT

start_redis() {
  taskset -c 1 redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize yes --logfile $W/redis.log
  until redis-cli -p $REDIS_PORT ping >/dev/null 2>&1; do sleep 0.05; done
}

# node N SYNC SCOPE RATE: writes and starts node N's config.
node() {
  local n=$1 sync=$2 scope=$3 rate=$4
  cat > $W/n$n.toml <<EOC
[server]
workers = 1
[fleet]
redis = "redis://127.0.0.1:$REDIS_PORT"
sync_interval = "$sync"
nodes = 3
[admin]
address = "127.0.0.1:$((ADMIN0 + n))"
[[listeners]]
name = "web"
address = "127.0.0.1:$((PORT0 + n))"
[[routes]]
listener = "web"
respond = { status = 200, body = "ok" }
rate_limit = { key = "route", rate = "$rate", burst = 100, scope = "$scope" }
[[upstreams]]
name = "unused"
backends = [{ address = "127.0.0.1:9" }]
EOC
  "$RG" -c $W/n$n.toml 2>$W/n$n.err & PIDS+=($!)
}

stop_nodes() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; PIDS=(); }

# load N DURATION WARMUP: ringload at node N's share of 3000/s.
load() {
  "$RL" http://127.0.0.1:$((PORT0 + $1))/ --rate ${OFFERED[$1]} --connections 8 --cores 1 \
    --duration "$2" --warmup "$3" --json $W/l$1.json >/dev/null 2>&1
}

ok_count() { curl -s http://127.0.0.1:$((ADMIN0 + $1))/metrics | awk '/^ringgate_responses_total\{class="2xx"\}/ {print $2}'; }

case $MODE in
accuracy)
  ROUNDS=${2:-3}; INTERVALS=${3:-"10ms 50ms 200ms"}
  echo "| sync interval | round | admitted/s | error vs 1000/s | node 1 (2400/s) | node 2 (450/s) | node 3 (150/s) |"
  echo "|---:|---:|---:|---:|---:|---:|---:|"
  for r in $(seq 1 $ROUNDS); do for sync in $INTERVALS; do
    start_redis
    for n in 0 1 2; do node $n $sync fleet 1000/s; done
    sleep 0.5
    LP=(); for n in 0 1 2; do load $n 10s 2s & LP+=($!); done; wait "${LP[@]}" || true
    stop_nodes
    redis-cli -p $REDIS_PORT shutdown nosave >/dev/null 2>&1 || true
    python3 - $W $sync $r <<'PY'
import json, sys
w, sync, r = sys.argv[1:]
per = []
for n in range(3):
    j = json.load(open(f"{w}/l{n}.json"))
    per.append(j["status"].get("200", 0) / j["duration_s"])
    bad = {k: v for k, v in j["status"].items() if k not in ("200", "429")}
    errs = sum(j["errors"].values())
    if bad or errs:
        print(f"node {n}: unexpected statuses {bad} errors {errs}", file=sys.stderr)
total = sum(per)
print(f"| {sync} | {r} | {total:.1f} | {100*(total-1000)/1000:+.2f}% | {per[0]:.1f} | {per[1]:.1f} | {per[2]:.1f} |")
PY
  done; done
  ;;
outage)
  start_redis
  for n in 0 1 2; do node $n 50ms fleet 1000/s; done
  sleep 0.5
  LP=(); for n in 0 1 2; do load $n 16s 0s & LP+=($!); done
  T0=$EPOCHREALTIME
  : > $W/samples
  stopped=""; started=""
  while kill -0 "${LP[0]}" 2>/dev/null; do
    sleep 0.5
    now=$EPOCHREALTIME
    el=$(awk -v a=$now -v b=$T0 'BEGIN { print a - b }')
    echo "$el $(( $(ok_count 0) + $(ok_count 1) + $(ok_count 2) ))" >> $W/samples
    if [ -z "$stopped" ] && awk -v e=$el 'BEGIN { exit !(e >= 5) }'; then
      redis-cli -p $REDIS_PORT shutdown nosave >/dev/null 2>&1 || true; stopped=$EPOCHREALTIME
    fi
    if [ -z "$started" ] && awk -v e=$el 'BEGIN { exit !(e >= 10) }'; then
      started=$EPOCHREALTIME; start_redis
    fi
  done
  wait "${LP[@]}" || true
  python3 - $W $T0 $stopped $started <<'PY'
import json, sys, re, datetime
w, t0, stopped, started = sys.argv[1], *map(float, sys.argv[2:])
rows = [tuple(map(float, l.split())) for l in open(f"{w}/samples")]
print("| t (s) | admitted/s over the last 0.5 s | Redis |")
print("|---:|---:|---|")
gap = []; fleet = []
for (ta, a), (tb, b) in zip(rows, rows[1:]):
    rate = (b - a) / (tb - ta)
    at = t0 + tb
    state = "up" if at < stopped or at > started else "stopped"
    print(f"| {tb:.1f} | {rate:.0f} | {state} |")
    # Whole windows well inside each phase.
    if t0 + ta > stopped + 0.3 and at < started: gap.append(rate)
    elif (t0 + ta > started + 0.5 or at < stopped) and ta > 1.0 and tb < 15.5: fleet.append(rate)
st = lambda xs: sorted(xs)[len(xs)//2] if xs else float("nan")
print(f"\nwith Redis: median {st(fleet):.0f}/s (limit 1000/s); without: median {st(gap):.0f}/s (local share: 816/s)")
for n in range(3):
    j = json.load(open(f"{w}/l{n}.json"))
    bad = {k: v for k, v in j["status"].items() if k not in ("200", "429")}
    print(f"node {n+1}: {j['requests']} requests, statuses {j['status']}, errors {sum(j['errors'].values())}" + (f" UNEXPECTED {bad}" if bad else ""))
    for line in open(f"{w}/n{n}.err"):
        m = re.match(r"(\S+)Z .*reachable again", line)
        if m:
            at = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
            print(f"  synced again {1000*(at-started):.0f} ms after redis-server was launched")
PY
  ;;
cost)
  ROUNDS=${2:-5}; RATE=${3:-}
  start_redis
  : > $W/cost
  for r in $(seq 1 $ROUNDS); do
    # Alternate which goes first.
    order="node fleet"; [ $((r % 2)) = 0 ] && order="fleet node"
    for scope in $order; do
    run_scope=$scope; [ -n "${CONTROL:-}" ] && run_scope=node
    node 0 50ms $run_scope 10000000/s
    sleep 0.5
    c0=$(cpu_ticks ${PIDS[0]})
    "$RL" http://127.0.0.1:$PORT0/ ${RATE:+--rate $RATE} --connections 64 --cores 1 --duration 5s --warmup 1s --json $W/c.json >/dev/null 2>&1 || true
    c1=$(cpu_ticks ${PIDS[0]})
    stop_nodes
    python3 - $W/c.json $scope $r $((c1 - c0)) $(getconf CLK_TCK) >> $W/cost <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
# CPU over warm-up and window, per request of the window plus warm-up's share.
cpu_us = int(sys.argv[4]) * 1e6 / int(sys.argv[5]) / (j["requests"] * 6 / 5)
print(sys.argv[3], sys.argv[2], j["requests"] / j["duration_s"], j["latency_us"]["p99"], cpu_us)
PY
  done; done
  python3 - $W/cost <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for r, scope, rps, p99, cpu in rows:
    by.setdefault(r, {})[scope] = (float(rps), float(p99), float(cpu))
print("| round | node req/s | fleet req/s | ratio | node p99 | fleet p99 | node CPU µs/req | fleet CPU µs/req |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
ratios = []; p99r = []; cpur = []
for r, v in sorted(by.items(), key=lambda kv: int(kv[0])):
    (nr, np, nc), (fr, fp, fc) = v["node"], v["fleet"]
    ratios.append(fr / nr); p99r.append(fp / np); cpur.append(fc / nc)
    print(f"| {r} | {nr:.0f} | {fr:.0f} | {fr/nr:.3f} | {np/1000:.2f} ms | {fp/1000:.2f} ms | {nc:.2f} | {fc:.2f} |")
print(f"\nmedian fleet/node: requests/s {st.median(ratios):.3f}, p99 {st.median(p99r):.3f}, CPU per request {st.median(cpur):.3f}")
PY
  ;;
*) echo "usage: $0 accuracy|outage|cost" >&2; exit 2 ;;
esac
