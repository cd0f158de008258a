#!/usr/bin/env python3
"""Clients that hold a server's connections: each connects, finishes TLS, sends part of a
request's headers and then nothing. Used by the service-limits tests as the attacker a
real site may meet; the server must close them (header timeout, idle timeout, shedding at
its caps) while its real clients keep being served.

usage: hold.py HOST PORT COUNT HOLD_SECS [--rate PER_SEC]
prints one JSON object: attempts, connected (TCP), tls (handshakes finished), closed_by_server
(connections the server closed while we held them), still_open (at the end), refused."""
import asyncio, json, ssl, sys, time


async def one(host, port, hold, ctx, stats):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    except Exception:
        stats["refused"] += 1
        return
    stats["connected"] += 1
    try:
        await asyncio.wait_for(w.start_tls(ctx, server_hostname=None), 10)
        stats["tls"] += 1
        w.write(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        await w.drain()
    except Exception:
        stats["closed_by_server"] += 1
        w.close()
        return
    try:
        got = await asyncio.wait_for(r.read(1), hold)
        # EOF (or a response to a request that never finished): the server let go
        stats["closed_by_server"] += 1
    except asyncio.TimeoutError:
        stats["still_open"] += 1
    except Exception:
        stats["closed_by_server"] += 1
    w.close()


async def main():
    host, port, count, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    rate = float(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[5] == "--rate" else 200.0
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    stats = dict(attempts=count, connected=0, tls=0, closed_by_server=0, still_open=0, refused=0)
    tasks = []
    for _ in range(count):
        tasks.append(asyncio.create_task(one(host, port, hold, ctx, stats)))
        await asyncio.sleep(1.0 / rate)
    await asyncio.gather(*tasks)
    print(json.dumps(stats), flush=True)


asyncio.run(main())
