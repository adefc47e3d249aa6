#!/usr/bin/env bash
# What route authentication costs: one ringgate worker on CPU 0 with two
# routes to the same nginx `return 200` backend (CPU 1), /open without auth
# and /jwt behind an ES256 JWT (a key made fresh here, the token signed by
# Python's `cryptography`); wrk -t1 on CPU 1 sends the same token on every
# request of 64 keep-alive connections. Rounds alternate the routes; prints
# each run's requests/s and the proxy's CPU per request, then the medians of
# the per-round ratios jwt/open. The per-worker cache of verified tokens
# makes every request after a connection's first a cache hit.
# Usage: bench/scripts/jwt-cost.sh [rounds=5] [duration_s=8] [connections=64]
set -euo pipefail
ROUNDS=${1:-5}; DUR=${2:-8}; CONNS=${3:-64}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=${RINGGATE_BIN:-$ROOT/target/release/ringgate}
W=$(mktemp -d /tmp/rgjwt.XXXX)
BACKEND_PORT=19000; PROXY_PORT=18080
TICK=$(getconf CLK_TCK)
for tool in nginx wrk taskset python3; do command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
source "$ROOT/bench/scripts/lib.sh"
backend_conf $W/backend.conf $W $BACKEND_PORT
python3 - "$W" <<'PY'
import base64, json, sys, time
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
w = sys.argv[1]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
key = ec.generate_private_key(ec.SECP256R1())
n = key.public_key().public_numbers()
jwk = {"kty": "EC", "crv": "P-256", "kid": "bench", "alg": "ES256",
       "x": b64(n.x.to_bytes(32, "big")), "y": b64(n.y.to_bytes(32, "big"))}
json.dump({"keys": [jwk]}, open(f"{w}/jwks.json", "w"))
head = b64(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "bench"}).encode())
body = b64(json.dumps({"sub": "bench", "iss": "https://id.test", "aud": "api",
                       "exp": int(time.time()) + 3600}).encode())
r, s = decode_dss_signature(key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256())))
open(f"{w}/token", "w").write(f"{head}.{body}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}")
PY
cat > $W/ringgate.toml <<EOC
[server]
workers = 1
[[listeners]]
name = "web"
address = "127.0.0.1:$PROXY_PORT"
[[routes]]
listener = "web"
match = { path_prefix = "/open" }
upstream = "b"
[[routes]]
listener = "web"
match = { path_prefix = "/jwt" }
upstream = "b"
auth = { jwt = { keys = "$W/jwks.json", issuer = "https://id.test", audiences = ["api"] }, consumer_header = "x-consumer" }
[[upstreams]]
name = "b"
backends = [{ address = "127.0.0.1:$BACKEND_PORT" }]
EOC
"$RG" check -c $W/ringgate.toml >/dev/null
taskset -c 1 nginx -c $W/backend.conf & BACKEND=$!
taskset -c 0 "$RG" -c $W/ringgate.toml 2>$W/rg.err & PROXY=$!
cleanup() { kill $BACKEND $PROXY 2>/dev/null || true; }
trap cleanup EXIT
sleep 1
TOKEN=$(cat $W/token)
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" http://127.0.0.1:$PROXY_PORT/jwt)
[ "$code" = 200 ] || { echo "the token was refused ($code)" >&2; cat $W/rg.err >&2; exit 1; }
ticks() { awk '{print $14 + $15}' /proc/$PROXY/stat; }
: > $W/results
for round in $(seq 1 $ROUNDS); do
  for route in open jwt; do
    t0=$(ticks)
    out=$(taskset -c 1 wrk -t1 -c$CONNS -d${DUR}s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:$PROXY_PORT/$route)
    t1=$(ticks)
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    cpu=$(python3 -c "print(f'{1e6 * ($t1 - $t0) / $TICK / $reqs:.2f}')")
    echo "round $round $route: $rps req/s, $cpu µs CPU/request${non2xx:+, $non2xx non-2xx}"
    echo "$route $rps $cpu" >> $W/results
  done
done
python3 - $W/results <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
opens = [r for r in rows if r[0] == "open"]; jwts = [r for r in rows if r[0] == "jwt"]
rps = [float(j[1]) / float(o[1]) for o, j in zip(opens, jwts)]
cpu = [float(j[2]) / float(o[2]) for o, j in zip(opens, jwts)]
print(f"jwt/open over {len(rps)} rounds: requests/s median {st.median(rps):.2f}x (min {min(rps):.2f}, max {max(rps):.2f}), CPU/request median {st.median(cpu):.2f}x")
PY
