# Pieces the comparison scripts share; sourced, not run.

# An nginx `return 200` backend with one worker, for `nginx -c FILE`:
# backend_conf FILE WORKDIR PORT
backend_conf() {
  cat > "$1" <<EOC
worker_processes 1; daemon off; pid $2/backend.pid; error_log $2/backend.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  server { listen 127.0.0.1:$3 reuseport; location / { return 200 "hello from backend\n"; } } }
EOC
}

# ringgate as a one-worker HTTP reverse proxy to the backend, for
# `ringgate -c $W/ringgate.toml`: SERVER_LINES go under [server],
# UPSTREAM_LINES under the upstream (either may be empty).
# ringgate_conf W PROXY_PORT BACKEND_PORT [SERVER_LINES] [UPSTREAM_LINES]
ringgate_conf() {
  cat > "$1/ringgate.toml" <<EOC
[server]
workers = 1
${4:-}
[[listeners]]
name = "web"
address = "127.0.0.1:$2"
[[routes]]
listener = "web"
upstream = "b"
[[upstreams]]
name = "b"
backends = [{ address = "127.0.0.1:$3" }]
${5:-}
EOC
}

# ringgate as a one-worker L4 (`protocol = "tcp"`) proxy to the backend,
# for `ringgate -c $W/ringgate.toml`; extra lines as for ringgate_conf.
# l4_ringgate_conf W PROXY_PORT BACKEND_PORT [SERVER_LINES] [UPSTREAM_LINES]
l4_ringgate_conf() {
  cat > "$1/ringgate.toml" <<EOC
[server]
workers = 1
backlog = 4096
${4:-}
[[listeners]]
name = "l4"
address = "127.0.0.1:$2"
protocol = "tcp"
upstream = "b"
[[upstreams]]
name = "b"
backends = [{ address = "127.0.0.1:$3" }]
${5:-}
EOC
}

# nginx and HAProxy as HTTP reverse proxies with a keep-alive upstream pool
# (one worker or thread each): $W/nginx-proxy.conf and $W/haproxy.cfg.
# LISTEN_OPTS goes after nginx's `listen ... reuseport`.
# http_proxy_confs W PROXY_PORT BACKEND_PORT [LISTEN_OPTS]
http_proxy_confs() {
  cat > "$1/nginx-proxy.conf" <<EOC
worker_processes 1; daemon off; pid $1/proxy.pid; error_log $1/proxy.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  upstream b { server 127.0.0.1:$3; keepalive 256; keepalive_requests 10000000; }
  server { listen 127.0.0.1:$2 reuseport${4:+ $4};
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering on; } } }
EOC
  cat > "$1/haproxy.cfg" <<EOC
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
  option http-keep-alive
frontend f
  bind 127.0.0.1:$2
  default_backend b
backend b
  server s1 127.0.0.1:$3
EOC
}

# A fresh ECDSA P-256 certificate for bench.test: DIR/cert.pem, DIR/key.pem.
make_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -keyout "$1/key.pem" -out "$1/cert.pem" -subj /CN=bench.test -addext subjectAltName=DNS:bench.test 2>/dev/null
}

# user+sys of processes (and their waited-for children), in clock ticks; a
# short-lived child may be gone by now and is skipped.
cpu_ticks() {
  local total=0
  for p in "$@"; do
    read -r -a f 2>/dev/null < /proc/$p/stat || continue
    total=$((total + f[13] + f[14] + f[15] + f[16]))
  done
  echo $total
}

# The medians of the per-round ratios to nginx (or to BASE), and each
# proxy's medians, from a file of "round proxy requests_per_s
# cpu_us_per_request" lines: round_ratios FILE [BASE]
round_ratios() {
python3 - "$1" "${2:-nginx}" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
base = sys.argv[2]
by = {}
for r, p, rps, cpu in rows:
    by.setdefault(r, {})[p] = (float(rps), float(cpu))
for other in sorted({p for v in by.values() for p in v} - {base}):
    ratios = [(v[other][0] / v[base][0], v[other][1] / v[base][1]) for v in by.values() if other in v and base in v]
    if ratios:
        print(f"{other}/{base} over {len(ratios)} rounds: requests/s median {st.median(r for r, _ in ratios):.2f}x "
              f"(min {min(r for r, _ in ratios):.2f}, max {max(r for r, _ in ratios):.2f}), "
              f"CPU/request median {st.median(c for _, c in ratios):.2f}x")
for p in sorted({p for v in by.values() for p in v}):
    v = [by[r][p] for r in by if p in by[r]]
    if v:
        print(f"{p}: median {st.median(x for x, _ in v):,.0f} req/s, {st.median(c for _, c in v):.2f} µs CPU/request")
PY
}

# Starts proxy NAME (ringgate, ringgate-alt, nginx or haproxy) pinned to
# CPU 0 with the configs in $W, its pid in PROXY; returns 1, saying why,
# for one that is not there to run. Needs RG and W. ringgate-alt runs
# RINGGATE_ALT_BIN (default RG) with $W/ringgate-alt.toml where a script
# wrote one (default $W/ringgate.toml).
# start_proxy NAME
start_proxy() {
  case $1 in
    ringgate) [ -x "$RG" ] || { echo "skip ringgate: build it first (cargo build --release -p ringgate)" >&2; return 1; }
              taskset -c 0 "$RG" -c $W/ringgate.toml 2>$W/rg.err & PROXY=$! ;;
    ringgate-alt) local conf=$W/ringgate.toml; [ -f $W/ringgate-alt.toml ] && conf=$W/ringgate-alt.toml
                  taskset -c 0 "${RINGGATE_ALT_BIN:-$RG}" -c $conf 2>$W/rg.err & PROXY=$! ;;
    nginx)    taskset -c 0 nginx -c $W/nginx-proxy.conf & PROXY=$! ;;
    haproxy)  command -v haproxy >/dev/null || { echo "skip haproxy: apt-get install haproxy" >&2; return 1; }
              taskset -c 0 haproxy -f $W/haproxy.cfg -db 2>$W/haproxy.err & PROXY=$! ;;
  esac
}

# Calls FN ROUND PROXY once per proxy in PROXIES (HAProxy skipped when not
# installed) in each of ROUNDS rounds, with that proxy started pinned to
# CPU 0 (its process and workers in PROXY_PIDS) and stopped after. Each
# round starts one proxy further down the list, so a drift of the machine
# over the run (connection churn fills the TIME_WAIT tables and slows every
# later round) favours no proxy by its place in the list.
# rotated_rounds ROUNDS FN
rotated_rounds() {
  local rounds=$1 fn=$2 round p i
  local list=($PROXIES)
  for round in $(seq 1 "$rounds"); do
    for ((i = 0; i < ${#list[@]}; i++)); do
      p=${list[$(( (i + round - 1) % ${#list[@]} ))]}
      start_proxy $p || continue
      sleep 1
      PROXY_PIDS=$(pgrep -P $PROXY || true); PROXY_PIDS="$PROXY $PROXY_PIDS"
      "$fn" "$round" "$p"
      kill $PROXY; wait $PROXY 2>/dev/null || true; PROXY=
      sleep 0.5
    done
  done
}

# Alternating rounds of wrk (on CPU 1) against each proxy in PROXIES
# (rotated_rounds): a 2 s warm-up, then DUR s measured; one line "round
# proxy requests_per_s cpu_us_per_request" per run appended to RESULTS.
# Needs RG, W, TICK and the configs $W/ringgate.toml, $W/nginx-proxy.conf,
# $W/haproxy.cfg.
# proxy_rounds ROUNDS DUR RESULTS URL [wrk options...]
proxy_rounds() {
  local rounds=$1 dur=$2 results=$3 url=$4; shift 4
  local wrk_args=("$@")
  rotated_rounds "$rounds" wrk_round
}

# One proxy_rounds run; reads its caller's dur, results, url and wrk_args.
wrk_round() {
  local round=$1 p=$2 before after out reqs rps xfer p99 errs cpu_us
  taskset -c 1 wrk "${wrk_args[@]}" -d2s "$url" > /dev/null   # warm-up
  before=$(cpu_ticks $PROXY_PIDS)
  out=$(taskset -c 1 wrk "${wrk_args[@]}" -d${dur}s --latency "$url")
  after=$(cpu_ticks $PROXY_PIDS)
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  xfer=$(echo "$out" | awk '/Transfer\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  errs=$(echo "$out" | grep -E "Non-2xx|Socket errors" | tr '\n' ' ' || true)
  cpu_us=$(python3 -c "print(f'{($after-$before)/$TICK*1e6/$reqs:.2f}')")
  echo "round $round $p: $rps req/s ($xfer), $cpu_us µs CPU/request, p99 $p99 $errs"
  echo "$round $p $rps $cpu_us" >> "$results"
}

# $W/clients.py N PORT TLS: N clients, each opens a connection to PORT
# (TLS=1: over TLS 1.3, certificate not checked), makes one `GET /` on it,
# reads up to the backend's "hello\n" and stays connected, idle; prints
# "ready" once all are.
# idle_clients_py W
idle_clients_py() {
  cat > "$1/clients.py" <<'EOC'
import socket, ssl, sys, time
n, port, tls = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    if tls:
        s = ctx.wrap_socket(s, server_hostname="bench.test")
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while b"hello\n" not in got:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit(f"connection {i} closed")
        got += chunk
    socks.append(s)
print("ready", flush=True)
time.sleep(3600)
EOC
}

# For each proxy of PROXIES: starts it (start_proxy), makes one warm-up
# request to URL so that lazily built state exists before the baseline,
# opens N idle clients ($W/clients.py, see idle_clients_py) on CPU 1, and
# prints the proxy's RSS growth per connection 1 s and 5 s after the last
# is idle (a burst's transient memory is gone by the second), as
# "PROXY: N WHAT, ...".
# idle_rss_runs N PORT TLS URL WHAT
idle_rss_runs() {
  local n=$1 port=$2 tls=$3 url=$4 what=$5 p pids before after settled
  rss_kib() { local t=0 v q; for q in "$@"; do v=$(awk '/VmRSS/ {print $2}' /proc/$q/status 2>/dev/null || echo 0); t=$((t + v)); done; echo $t; }
  for p in $PROXIES; do
    start_proxy $p || continue
    sleep 1
    pids="$PROXY $(pgrep -P $PROXY | tr "\n" " " || true)"
    curl -sk -o /dev/null "$url"
    before=$(rss_kib $pids)
    taskset -c 1 python3 $W/clients.py $n $port $tls > $W/clients.out & CLIENTS=$!
    while ! grep -q ready $W/clients.out 2>/dev/null; do sleep 0.2; kill -0 $CLIENTS || { echo "clients failed"; exit 1; }; done
    sleep 1
    after=$(rss_kib $pids)
    sleep 4
    settled=$(rss_kib $pids)
    python3 -c "print(f'$p: {$n} $what, RSS {$before} -> {$after} KiB after 1 s ({($after-$before)*1024/$n:.0f} bytes per connection), {$settled} KiB after 5 s ({($settled-$before)*1024/$n:.0f} bytes per connection)')"
    kill $CLIENTS; wait $CLIENTS 2>/dev/null || true
    kill $PROXY; wait $PROXY 2>/dev/null || true
    sleep 0.5
  done
}
