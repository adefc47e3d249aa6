#!/usr/bin/env bash
# Cross-checks the runner (ringload) against compare.sh (wrk): N alternating
# rounds of `compare.sh DUR 64` and `ringgate-bench compare --duration DURs
# --ladder 50`, then per-proxy medians of requests/s and CPU per request and
# the runner/compare.sh ratios. Single rounds on a noisy machine say little;
# the medians of alternating rounds are what to compare.
# Usage: bench/scripts/crosscheck.sh [rounds=5] [duration_s=8]
set -euo pipefail
ROUNDS=${1:-5}; DUR=${2:-8}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
W=$(mktemp -d /tmp/rgcross.XXXX)
cargo build --release -q -p ringgate -p ringgate-loadgen -p ringgate-bench
for i in $(seq 1 "$ROUNDS"); do
  bench/scripts/compare.sh "$DUR" 64 > "$W/sh.$i.txt" 2>&1
  cargo run -q -p ringgate-bench --release -- compare --duration "${DUR}s" --ladder 50 \
    --out "$W/run.$i" > "$W/run.$i.txt" 2>&1
  echo "round $i done"
done
python3 - "$W" "$ROUNDS" <<'PY'
import json, re, statistics as st, sys
w, rounds = sys.argv[1], int(sys.argv[2])
rows = {}
for i in range(1, rounds + 1):
    sh = open(f"{w}/sh.{i}.txt").read()
    run = {r["proxy"]: r["max"] for r in json.load(open(f"{w}/run.{i}/results.json"))["runs"]}
    for m in re.finditer(r"^(\w+): ([\d.]+) req/s, ([\d.]+) µs CPU/request", sh, re.M):
        p = m.group(1)
        if p in run:
            rows.setdefault(p, []).append((float(m.group(2)), run[p]["rps"],
                                           float(m.group(3)), run[p]["cpu_us_per_request"]))
for p, rs in rows.items():
    med = [st.median(r[k] for r in rs) for k in range(4)]
    print(f"{p}: median req/s compare.sh {med[0]:.0f} runner {med[1]:.0f} (ratio {med[1]/med[0]:.2f}); "
          f"median CPU us/req compare.sh {med[2]:.2f} runner {med[3]:.2f} (ratio {med[3]/med[2]:.2f})")
PY
echo "per-round files: $W"
