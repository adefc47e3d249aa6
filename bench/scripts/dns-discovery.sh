#!/usr/bin/env bash
# DNS discovery under load: ringload --rate 5000 -c 32 for 10 s through
# ringgate (2 workers) to the backends of one host name whose A records
# (TTL 1 s) change from two addresses to three at 3 s, then to one at 6.5 s.
# The backends are one nginx listening on 127.0.0.11-13; a small DNS
# responder (python, below) serves the records. Per-backend counts are read
# from the proxy's /metrics every 100 ms (the workers' snapshot period).
# Prints per-second per-backend requests, the time from each record change
# to traffic moving, and ringload's errors.
# Usage: bench/scripts/dns-discovery.sh   (after cargo build --release -p ringgate -p ringgate-loadgen)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RG=$ROOT/target/release/ringgate; RL=$ROOT/target/release/ringload
W=$(mktemp -d /tmp/rgdns.XXXX)
BPORT=19401; PPORT=18401; APORT=18402; DPORT=18453
printf '127.0.0.11\n127.0.0.12\n' > $W/zone

cat > $W/dns.py <<'PY'
# A records for any name from the zone file (re-read per query), TTL 1 s;
# any other type: no records. Enough for one resolver asking one name.
import socket, struct, sys
zone, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", port))
while True:
    q, peer = s.recvfrom(512)
    i = 12
    while q[i]: i += q[i] + 1
    qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
    question = q[12:i + 5]
    ips = [l.strip() for l in open(zone) if l.strip()] if qtype == 1 else []
    head = q[:2] + struct.pack("!HHHHH", 0x8180, 1, len(ips), 0, 0)
    answers = b"".join(struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(ip) for ip in ips)
    s.sendto(head + question + answers, peer)
PY

cat > $W/nginx.conf <<EOC
worker_processes 1; daemon off; pid $W/nginx.pid; error_log $W/nginx.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  server { listen 127.0.0.11:$BPORT; listen 127.0.0.12:$BPORT; listen 127.0.0.13:$BPORT;
           location / { return 200 "hello\n"; } } }
EOC

cat > $W/rg.toml <<EOC
[server]
workers = 2
[dns]
nameservers = ["127.0.0.1:$DPORT"]
[admin]
address = "127.0.0.1:$APORT"
[[listeners]]
name = "web"
address = "127.0.0.1:$PPORT"
[[routes]]
listener = "web"
upstream = "api"
[[upstreams]]
name = "api"
backends = [{ address = "api.bench.test:$BPORT" }]
EOC

python3 $W/dns.py $W/zone $DPORT & D=$!
nginx -c $W/nginx.conf & N=$!
sleep 0.3
"$RG" -c $W/rg.toml 2>$W/rg.err & P=$!
trap 'kill $P $N $D 2>/dev/null || true' EXIT
sleep 1
"$RL" --rate 5000 -c 32 -d 10s http://127.0.0.1:$PPORT/ --json $W/out.json >$W/rl.out 2>&1 & L=$!

python3 - $W/zone $APORT $BPORT <<'PY'
import re, sys, time, urllib.request
zone, aport, bport = sys.argv[1], sys.argv[2], sys.argv[3]
names = [f"127.0.0.{h}:{bport}" for h in (11, 12, 13)]
pat = re.compile(r'ringgate_upstream_requests_total\{upstream="api",backend="([^"]+)",outcome="success"\} (\d+)')
def scrape():
    page = urllib.request.urlopen(f"http://127.0.0.1:{aport}/metrics", timeout=2).read().decode()
    got = {b: int(n) for b, n in pat.findall(page)}
    return [got.get(n, 0) for n in names]
t0 = time.monotonic()
samples = []          # (t, counts)
changes = {}          # label -> t
plan = [(3.0, "2->3", "127.0.0.11\n127.0.0.12\n127.0.0.13\n"), (6.5, "3->1", "127.0.0.13\n")]
while time.monotonic() - t0 < 10.5:
    t = time.monotonic() - t0
    if plan and t >= plan[0][0]:
        _, label, text = plan.pop(0)
        open(zone, "w").write(text)
        changes[label] = time.monotonic() - t0
    try:
        samples.append((t, scrape()))
    except OSError:
        pass
    time.sleep(0.1)
print("second | " + " | ".join(names))
# Each second from the last sample before it to the last sample in it.
for sec in range(10):
    before = [c for t, c in samples if t < sec]
    upto = [c for t, c in samples if t < sec + 1]
    if samples and upto:
        start = before[-1] if before else samples[0][1]
        d = [b - a for a, b in zip(start, upto[-1])]
        print(f"{sec:>6} | " + " | ".join(f"{x:>15}" for x in d))
def first_after(t_change, test):
    for (ta, a), (tb, b) in zip(samples, samples[1:]):
        if ta >= t_change and test(a, b):
            return tb - t_change
    return None
def last_gain(t_change, idx):
    last = None
    for (ta, a), (tb, b) in zip(samples, samples[1:]):
        if tb >= t_change and any(b[i] > a[i] for i in idx):
            last = tb - t_change
    return last
up = first_after(changes["2->3"], lambda a, b: b[2] > a[2])
down = last_gain(changes["3->1"], [0, 1])
print(f"2->3: first request to the new backend {up:.2f} s after the record changed" if up is not None else "2->3: the new backend got nothing")
print(f"3->1: last request to a removed backend {down:.2f} s after the record changed" if down is not None else "3->1: the removed backends got nothing after the change")
PY
wait $L || true
python3 - $W/out.json <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
n = r["requests"]; ok = r["status"].get("200", 0)
errors = sum(r["errors"].values())
print(f"ringload: {n} requests, {ok} 200s, {n - ok} not 200, {errors} errors, p99 {r['latency_us']['p99']/1000:.2f} ms")
PY
grep -c "addresses:" $W/rg.err | sed 's/^/ringgate logged address changes: /'
