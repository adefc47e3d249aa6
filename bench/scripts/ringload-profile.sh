#!/usr/bin/env bash
# Where a closed-loop client's CPU goes: nginx `return 200` (1 worker) on
# CPU 1, the client on CPU 0 (64 connections, one core), `perf record -e
# cpu-clock -C 0 -g` over the run, each sample put in one bucket by its stack:
#   tcp    the leaf is kernel code under the TCP/IP stack (tcp_*, ip_*, skb,
#          loopback, softirq net_rx), whoever called it (syscall or ring);
#   ring   other kernel code under io_uring (submission, completion, task work);
#   sched  other kernel code: syscall entry/exit, IRQ exit and reschedule IPIs,
#          scheduler, timers, clock;
#   user   the leaf is in user space (the client, libc, vDSO clock reads);
#   other  samples of other processes on CPU 0 (idle included).
# Usage: [RATE=req/s] bench/scripts/ringload-profile.sh CLIENT [duration_s=5]
#   RATE: ringload open loop at that rate instead of closed loop.
#   CLIENT: path to a ringload binary, or `wrk`.
set -euo pipefail
CLIENT=${1:?ringload binary or wrk}; DUR=${2:-5}
PORT=18081
for tool in nginx wrk taskset perf python3; do command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
W=$(mktemp -d /tmp/rlprof.XXXX)
cat > $W/nginx.conf <<EOC
worker_processes 1; daemon off; pid $W/nginx.pid; error_log $W/nginx.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  server { listen 127.0.0.1:$PORT reuseport; location / { return 200 "hello from backend\n"; } } }
EOC
taskset -c 1 nginx -c $W/nginx.conf & SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
sleep 0.5
if [ "$CLIENT" = wrk ]; then
  taskset -c 0 wrk -t1 -c64 -d$((DUR + 1))s http://127.0.0.1:$PORT/ > $W/client.out &
else
  taskset -c 0 "$CLIENT" http://127.0.0.1:$PORT/ -c 64 -d $((DUR + 1))s --cores 1 --quiet ${RATE:+--rate $RATE} > $W/client.out &
fi
CLIENT_PID=$!
sleep 0.5
perf record -q -e cpu-clock -C 0 -g -o $W/perf.data -- sleep "$DUR" 2>/dev/null
wait $CLIENT_PID
grep -E "requests in|req/s" $W/client.out | head -2
perf script -i $W/perf.data 2>/dev/null | python3 -c '
import re, sys
comm_of_client = None
buckets = {}
total = 0
tcp = re.compile(r"^(tcp_|__tcp|ip_|__ip|ipv4|skb|__skb|kfree_skb|loopback|__netif|netif_|net_rx|__napi|napi_|process_backlog|sock_|__sock|sk_|__sk_|inet_|__inet|dev_|__dev_|validate_xmit|__local_bh|do_softirq|__do_softirq|release_sock|lock_sock|csum|copy_|_copy_|__check_object|check_heap|__release_sock|raw_local|neigh|__neigh|nf_|fib|rt_|dst_)")
ring = re.compile(r"^(io_|__io_|tctx_|task_work|__do_sys_io_uring|__x64_sys_io_uring)")
def classify(comm, frames):
    if comm in ("swapper", "nginx") or not frames:
        return "other"
    leaf_sym, leaf_dso = frames[0]
    if "kernel" not in leaf_dso:
        return "user"
    syms = [s for s, _ in frames]
    if any(tcp.match(s) for s in syms):
        return "tcp"
    if any(ring.match(s) for s in syms):
        return "ring"
    return "sched"
comm, frames = None, []
def flush():
    global total
    if comm is None: return
    b = classify(comm, frames)
    buckets[b] = buckets.get(b, 0) + 1
    total += 1
for line in sys.stdin:
    if not line.strip():
        flush(); comm, frames = None, []
        continue
    if not line.startswith((" ", "\t")):
        comm = line.split()[0]
        continue
    parts = line.strip().split(None, 2)
    if len(parts) >= 2:
        sym = parts[1].split("+")[0]
        dso = parts[2] if len(parts) > 2 else ""
        frames.append((sym, dso))
flush()
busy = total - buckets.get("other", 0)
print(f"samples on CPU 0: {total}, client {busy}")
for b in ("user", "ring", "tcp", "sched", "other"):
    n = buckets.get(b, 0)
    print(f"  {b:6} {n:7}  {100*n/max(total,1):5.1f}% of CPU 0  {100*n/max(busy,1):5.1f}% of the client")
'
