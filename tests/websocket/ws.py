"""A WebSocket echo server and clients (Debian's python3-websockets) for
ringgate's Upgrade tunnel tests.

    ws.py serve PORT                 echo; "close-me" makes the server close; prints "ready"
    ws.py echo URL COUNT             COUNT messages of mixed sizes, text and binary, checked
    ws.py idle URL KEEP_S QUIET_S    pings for KEEP_S, then silence for QUIET_S
    ws.py server-close URL           asks the server to close, reports the close code
Each client prints one JSON line.
"""
import asyncio
import json
import random
import sys

import websockets


async def echo(ws, path=None):
    try:
        async for message in ws:
            if message == "close-me":
                await ws.close(code=4001, reason="asked")
                return
            await ws.send(message)
    except websockets.ConnectionClosed:
        pass


async def serve(port):
    async with websockets.serve(echo, "127.0.0.1", port, max_size=None, ping_interval=None):
        print("ready", flush=True)
        await asyncio.Future()


async def echo_client(url, count):
    rng = random.Random(7)
    sizes = [0, 1, 125, 126, 127, 65535, 65536, 70000]
    ok = 0
    sent_bytes = 0
    async with websockets.connect(url, max_size=None, ping_interval=None) as ws:
        for i in range(count):
            n = sizes[i % len(sizes)] if i % 3 == 0 else rng.randrange(0, 4096)
            if i % 2:
                msg = bytes(rng.getrandbits(8) for _ in range(min(n, 512))) * (n // 512 + 1)
                msg = msg[:n]
            else:
                msg = "".join(chr(97 + (i + k) % 26) for k in range(n))
            await ws.send(msg)
            sent_bytes += len(msg)
            back = await ws.recv()
            ok += back == msg
        await ws.close()
        code = ws.close_code
    print(json.dumps({"sent": count, "echoed": ok, "bytes": sent_bytes, "close_code": code}), flush=True)


async def idle_client(url, keep, quiet):
    result = {}
    async with websockets.connect(url, ping_interval=None) as ws:
        loop = asyncio.get_running_loop()
        end = loop.time() + keep
        pongs = 0
        while loop.time() < end:
            waiter = await ws.ping()
            await asyncio.wait_for(waiter, 5)
            pongs += 1
            await asyncio.sleep(0.2)
        result["pongs"] = pongs
        await ws.send("still here")
        result["alive_after_pings"] = (await ws.recv()) == "still here"
        try:
            await asyncio.wait_for(ws.recv(), quiet)
            result["closed_when_quiet"] = False
        except websockets.ConnectionClosed:
            result["closed_when_quiet"] = True
        except asyncio.TimeoutError:
            result["closed_when_quiet"] = False
    print(json.dumps(result), flush=True)


async def server_close(url):
    async with websockets.connect(url, ping_interval=None) as ws:
        await ws.send("close-me")
        try:
            await asyncio.wait_for(ws.recv(), 5)
        except websockets.ConnectionClosed:
            pass
        print(json.dumps({"close_code": ws.close_code, "reason": ws.close_reason}), flush=True)


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "serve":
        asyncio.run(serve(int(sys.argv[2])))
    elif what == "echo":
        asyncio.run(echo_client(sys.argv[2], int(sys.argv[3])))
    elif what == "idle":
        asyncio.run(idle_client(sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
    else:
        asyncio.run(server_close(sys.argv[2]))
