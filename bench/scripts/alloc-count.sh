#!/usr/bin/env bash
# Counts heap allocations of a running ringgate per request served, with
# uprobes on mimalloc's entry points (the Rust mimalloc crate calls only the
# *_aligned variants). Needs perf (linux-perf) and root.
# Usage: bench/scripts/alloc-count.sh BACKEND_ADDR [connections=16] [seconds=3]
# ACCESS_LOG=FILE in the environment turns the access log on (to FILE).
set -euo pipefail
BACKEND=${1:?backend address, e.g. 127.0.0.1:9000}; CONNS=${2:-16}; SECS=${3:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=${RINGGATE_BIN:-$ROOT/target/release/ringgate}
W=$(mktemp -d /tmp/rgalloc.XXXX); PORT=18090
cat > $W/rg.toml <<EOC
[server]
workers = 1
[[listeners]]
name = "web"
address = "127.0.0.1:$PORT"
[[routes]]
listener = "web"
upstream = "b"
[[upstreams]]
name = "b"
backends = [{ address = "$BACKEND" }]
EOC
if [ -n "${ACCESS_LOG:-}" ]; then printf '[access_log]\npath = "%s"\n' "$ACCESS_LOG" >> $W/rg.toml; fi
for f in mi_malloc_aligned mi_zalloc_aligned mi_realloc_aligned; do perf probe -q -x "$RG" --add $f 2>/dev/null || true; done
taskset -c 0 "$RG" -c $W/rg.toml 2>/dev/null & P=$!
trap 'kill $P 2>/dev/null; perf probe -q -d "probe_ringgate:*" 2>/dev/null || true' EXIT
sleep 0.5
taskset -c 1 wrk -t1 -c$CONNS -d1s http://127.0.0.1:$PORT/ >/dev/null   # connections and pools warm
perf stat -e 'probe_ringgate:*' -p $P -- sleep $((SECS + 1)) 2>$W/perf.txt & S=$!
sleep 0.3
taskset -c 1 wrk -t1 -c$CONNS -d${SECS}s http://127.0.0.1:$PORT/ | tee $W/wrk.txt | grep "requests in"
wait $S
grep probe_ringgate $W/perf.txt
allocs=$(awk '/probe_ringgate/ {gsub(",","",$1); s+=$1} END {print s}' $W/perf.txt)
reqs=$(awk '/requests in/ {print $1}' $W/wrk.txt)
python3 -c "print(f'allocations per request: {$allocs}/{$reqs} = {$allocs/$reqs:.5f} (new connections: $CONNS)')"
