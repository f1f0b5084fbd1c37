"""A TCP relay that delays every byte by a fixed one-way time, and probes that measure what a path gives.

This kernel has no ``netem``, so ``dgan bench wan`` puts one relay on each
node's path: the node dials the relay on its own host, the relay dials the
broker.  Each direction is a delay line: a chunk read at t is written at
t + delay, in order, so a round trip gains 2 x delay while the bandwidth stays
that of the (``tbf``-shaped) link.  What it does not model: TCP on the far
side sees a short path, so its window dynamics over a long fat link (slow
start, loss recovery at 150 ms) are not reproduced; ``probe`` measures the RTT
and bandwidth the path really gives.

    python -m benchmarks.delay_relay relay --listen 127.0.0.1:5555 --to 10.0.0.1:5555 --delay-ms 20
    python -m benchmarks.delay_relay echo --listen 0.0.0.0:7000
    python -m benchmarks.delay_relay probe --to 127.0.0.1:7000        # prints JSON: rtt_ms, mbit
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import threading
import time

CHUNK = 256 * 1024
MAX_QUEUED = 64 * 1024 * 1024  # bytes a direction holds before it stops reading (TCP back-pressure)


def _split(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host, int(port)


async def _delay_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    queued = 0
    room = asyncio.Event()
    room.set()

    closed = asyncio.Event()

    async def pump() -> None:
        nonlocal queued
        while not closed.is_set():
            await room.wait()
            if closed.is_set():
                return
            try:
                data = await reader.read(CHUNK)
            except (ConnectionError, OSError):
                data = b""
            queue.put_nowait((loop.time() + delay, data))
            queued += len(data)
            if queued > MAX_QUEUED:
                room.clear()
            if not data:
                return

    async def release() -> None:
        nonlocal queued
        try:
            while True:
                due, data = await queue.get()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                queued -= len(data)
                if queued <= MAX_QUEUED:
                    room.set()
                try:
                    writer.write(data)
                    await writer.drain()
                except (ConnectionError, OSError):
                    break
        finally:
            closed.set()
            room.set()  # a pump waiting for room must not wait forever once nothing drains the queue
            with contextlib.suppress(ConnectionError, OSError):
                writer.close()

    await asyncio.gather(pump(), release())


async def _relay(listen: str, to: str, delay: float) -> None:
    target = _split(to)

    async def serve(down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*target)
        except OSError:
            down_w.close()
            return
        for w in (down_w, up_w):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(_delay_line(down_r, up_w, delay), _delay_line(up_r, down_w, delay))

    server = await asyncio.start_server(serve, *_split(listen))
    async with server:
        await server.serve_forever()


async def _echo(listen: str) -> None:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(ConnectionError, OSError):
            while data := await r.read(CHUNK):
                w.write(data)
                await w.drain()
        w.close()

    server = await asyncio.start_server(serve, *_split(listen))
    async with server:
        await server.serve_forever()


def probe(to: str, pings: int = 20, bulk_bytes: int = 4 * 1024 * 1024) -> dict[str, float]:
    """Median RTT of 1 KiB ping-pongs, and the rate of a bulk echo (the same bytes each way at once)."""
    with socket.create_connection(_split(to), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        msg = b"x" * 1024
        for _ in range(pings):
            t0 = time.perf_counter()
            s.sendall(msg)
            got = 0
            while got < len(msg):
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("the path closed during the ping-pong")
                got += len(chunk)
            rtts.append(time.perf_counter() - t0)
        block = bytes(range(256)) * (bulk_bytes // 256) + b"z" * (bulk_bytes % 256)
        t0 = time.perf_counter()
        # the echo sends it back while it arrives: the path carries it both ways at once
        sender = threading.Thread(target=s.sendall, args=(block,), daemon=True)
        sender.start()
        back = bytearray()
        while len(back) < len(block):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            back += chunk
        elapsed = time.perf_counter() - t0
        if bytes(back) != block:
            raise ConnectionError(f"the path changed or lost bytes: {len(back)} of {len(block)} came back")
        sender.join()
    rtt = statistics.median(rtts)  # the last bytes come back one round trip after they were sent
    return {"rtt_ms": rtt * 1e3, "mbit": bulk_bytes * 8 / 1e6 / max(1e-9, elapsed - rtt)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("relay")
    r.add_argument("--listen", required=True)
    r.add_argument("--to", required=True)
    r.add_argument("--delay-ms", type=float, required=True)
    e = sub.add_parser("echo")
    e.add_argument("--listen", required=True)
    p = sub.add_parser("probe")
    p.add_argument("--to", required=True)
    p.add_argument("--bulk-mib", type=float, default=4.0)
    args = ap.parse_args()
    if args.cmd == "relay":
        asyncio.run(_relay(args.listen, args.to, args.delay_ms / 1e3))
    elif args.cmd == "echo":
        asyncio.run(_echo(args.listen))
    else:
        print(json.dumps(probe(args.to, bulk_bytes=int(args.bulk_mib * 1024 * 1024))))


if __name__ == "__main__":
    main()
