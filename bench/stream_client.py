"""The bench's streaming client: raw asyncio sockets, a minimal HTTP/1.1 reader, exact timings.

wrk measures throughput; this measures what wrk cannot see inside one stream:

* ``seq``  -- N streams one after the other on one keep-alive connection: time to the first
              body byte, time to the end, and how many separate reads the body arrived in
              (a relay that batches chunks shows fewer reads and a later first byte);
* ``many`` -- N concurrent streams (connects throttled): prints ``READY opened failed`` once
              every stream has its first byte, then either reads every stream to its end
              (``--read-all``) or holds them open and idle for ``--hold`` seconds;
* ``slow`` -- one stream read at ``--rate`` bytes per second for ``--seconds`` seconds with a
              small receive buffer: a slow client, to see whether the relay buffers for it.

Every mode is bounded in time (``--time-limit``) and prints one JSON line at the end.
The request comes from a spec file: {"host", "port", "method", "path", "headers", "body"}.

    python bench/stream_client.py seq --spec spec.json --count 50
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import statistics
import sys
import time
from typing import Any


def load_spec(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def request_bytes(spec: dict[str, Any], close: bool = False) -> bytes:
    body = spec.get("body", "").encode()
    head = [f"{spec.get('method', 'POST')} {spec['path']} HTTP/1.1", f"Host: {spec['host']}:{spec['port']}",
            f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in spec.get("headers", {}).items()]
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class StreamResult:
    __slots__ = ("status", "ttfb", "total", "nbytes", "reads", "keep_alive", "error")

    def __init__(self) -> None:
        self.status = 0
        self.ttfb: float | None = None
        self.total: float | None = None
        self.nbytes = 0
        self.reads = 0
        self.keep_alive = True
        self.error: str | None = None


async def read_response(reader: asyncio.StreamReader, t0: float, res: StreamResult) -> None:
    """Reads one response to its end, noting the first body byte's arrival and each read."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    res.status = int(lines[0].split(b" ")[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        k, sep, v = line.partition(b":")
        if sep:
            headers[k.strip().lower()] = v.strip().lower()
    res.keep_alive = headers.get(b"connection") != b"close"

    def got(n: int) -> None:
        if n and res.ttfb is None:
            res.ttfb = time.perf_counter() - t0
        res.nbytes += n
        res.reads += 1

    if headers.get(b"transfer-encoding") == b"chunked":
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            data = await reader.readexactly(size + 2)
            got(size)
            del data
    elif b"content-length" in headers:
        left = int(headers[b"content-length"])
        while left > 0:
            data = await reader.read(min(left, 1 << 16))
            if not data:
                raise ConnectionError("closed mid-body")
            got(len(data))
            left -= len(data)
    else:
        res.keep_alive = False
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            got(len(data))
    res.total = time.perf_counter() - t0


# ---------------------------------------------------------------- seq
async def run_seq(spec: dict[str, Any], count: int, time_limit: float) -> dict[str, Any]:
    req = request_bytes(spec)
    deadline = time.monotonic() + time_limit
    results: list[StreamResult] = []
    reader = writer = None
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        if writer is None:
            reader, writer = await asyncio.open_connection(spec["host"], spec["port"])
        res = StreamResult()
        t0 = time.perf_counter()
        writer.write(req)
        try:
            await asyncio.wait_for(read_response(reader, t0, res), max(1.0, deadline - time.monotonic()))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
            res.error = type(e).__name__
            res.keep_alive = False
        results.append(res)
        if not res.keep_alive:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()
    ok = [r for r in results if r.error is None and r.status == 200]
    return {
        "mode": "seq", "count": len(results), "ok": len(ok),
        "statuses": sorted({r.status for r in results}),
        "errors": [r.error for r in results if r.error][:5],
        "ttfb_ms": [round(r.ttfb * 1000, 3) for r in ok if r.ttfb is not None],
        "total_ms": [round(r.total * 1000, 3) for r in ok if r.total is not None],
        "reads": [r.reads for r in ok],
        "bytes": [r.nbytes for r in ok][:3],
    }


# ---------------------------------------------------------------- many
async def run_many(spec: dict[str, Any], n: int, connect_concurrency: int, hold: float, read_all: bool,
                   time_limit: float) -> dict[str, Any]:
    req = request_bytes(spec, close=True)
    deadline = time.monotonic() + time_limit
    gate = asyncio.Semaphore(connect_concurrency)
    first: list[asyncio.Future[bool]] = []
    release = asyncio.Event()
    loop = asyncio.get_running_loop()
    out = {"opened": 0, "failed": 0, "completed": 0, "errors": {}}
    totals: list[float] = []

    async def one(fut: asyncio.Future[bool]) -> None:
        writer = None
        try:
            async with gate:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(spec["host"], spec["port"]), max(0.5, deadline - time.monotonic()))
                t0 = time.perf_counter()
                writer.write(req)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), max(0.5, deadline - time.monotonic()))
                if b" 200 " not in head.split(b"\r\n", 1)[0]:
                    raise ValueError("status " + head.split(b"\r\n", 1)[0].decode(errors="replace"))
                data = await asyncio.wait_for(reader.read(1 << 16), max(0.5, deadline - time.monotonic()))
                if not data:
                    raise ConnectionError("closed before the first byte")
            out["opened"] += 1
            fut.set_result(True)
            if read_all:
                while True:
                    data = await asyncio.wait_for(reader.read(1 << 16), max(0.5, deadline - time.monotonic()))
                    if not data or data.endswith(b"0\r\n\r\n"):
                        break
                out["completed"] += 1
                totals.append(time.perf_counter() - t0)
            else:
                await release.wait()
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.TimeoutError, ValueError) as e:
            key = f"{type(e).__name__}: {e}"[:80]
            out["errors"][key] = out["errors"].get(key, 0) + 1
            if not fut.done():
                out["failed"] += 1
                fut.set_result(False)
        finally:
            if writer is not None:
                writer.close()

    tasks = []
    for _ in range(n):
        fut: asyncio.Future[bool] = loop.create_future()
        first.append(fut)
        tasks.append(asyncio.create_task(one(fut)))
    t_start = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*first), max(0.5, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        pass
    out["open_seconds"] = round(time.perf_counter() - t_start, 3)
    print(f"READY {out['opened']} {out['failed']}", flush=True)
    if not read_all:
        await asyncio.sleep(max(0.0, min(hold, deadline - time.monotonic())))
        release.set()
    done, pending = await asyncio.wait(tasks, timeout=max(0.5, deadline - time.monotonic()))
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)
    out["unfinished"] = len(pending)
    if totals:
        out["total_ms_median"] = round(statistics.median(totals) * 1000, 2)
        out["total_ms_max"] = round(max(totals) * 1000, 2)
    return {"mode": "many", "n": n, **out}


# ---------------------------------------------------------------- slow
def run_slow(spec: dict[str, Any], rate: int, seconds: float, rcvbuf: int) -> dict[str, Any]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
    effective = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    s.settimeout(10)
    s.connect((spec["host"], spec["port"]))
    s.sendall(request_bytes(spec, close=True))
    t0 = time.monotonic()
    got = 0
    first = s.recv(rate)
    got += len(first)
    print(f"READY {1 if first else 0} {0 if first else 1}", flush=True)
    step = 0.25  # read rate/4 bytes four times a second: smooth, same average
    per = max(1, rate // 4)
    next_t = t0
    closed = False
    while time.monotonic() - t0 < seconds:
        next_t += step
        time.sleep(max(0.0, next_t - time.monotonic()))
        want = per
        while want > 0:
            data = s.recv(want)
            if not data:
                closed = True
                break
            got += len(data)
            want -= len(data)
        if closed:
            break
    s.close()
    return {"mode": "slow", "bytes_read": got, "seconds": round(time.monotonic() - t0, 2),
            "rcvbuf": effective,
            "closed_early": closed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("seq")
    p.add_argument("--spec", required=True)
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--time-limit", type=float, default=60)
    p = sub.add_parser("many")
    p.add_argument("--spec", required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--connect-concurrency", type=int, default=100)
    p.add_argument("--hold", type=float, default=5)
    p.add_argument("--read-all", action="store_true")
    p.add_argument("--time-limit", type=float, default=120)
    p = sub.add_parser("slow")
    p.add_argument("--spec", required=True)
    p.add_argument("--rate", type=int, default=1024)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--rcvbuf", type=int, default=16384)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    spec = load_spec(a.spec)
    if a.mode == "seq":
        out = asyncio.run(run_seq(spec, a.count, a.time_limit))
    elif a.mode == "many":
        out = asyncio.run(run_many(spec, a.n, a.connect_concurrency, a.hold, a.read_all, a.time_limit))
    else:
        out = run_slow(spec, a.rate, a.seconds, a.rcvbuf)
    print("RESULT " + json.dumps(out), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
