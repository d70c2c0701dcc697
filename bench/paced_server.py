"""The bench's timed upstream: streams whose timing matters (asyncio, standard library only).

nginx serves the static answers; this server serves what nginx cannot:

* ``POST /paced/N/MS/...``   an OpenAI chat stream of N chunks, one every MS milliseconds
                             (the first at once), then the usage chunk and ``[DONE]``;
* ``POST /big/BYTES/...``    an OpenAI chat stream of about BYTES bytes, written as fast as
                             the reader takes them (``drain()`` after every frame): the
                             slow-reader scenario, where backpressure must reach us;
* ``POST /idle/SECONDS/...`` one chunk at once, then silence for SECONDS (or until the peer
                             goes), then the end: the idle-streams scenario;
* ``GET /stats``             counters as JSON (bytes written by ``/big`` streams, open streams);
* ``GET /health``            ``ok``.

The trailing path (``/v1/chat/completions`` or anything else) is ignored, so a provider's
``base_url`` can be ``http://127.0.0.1:PORT/paced/50/20/v1``.  Every stream is bounded in time
(``MAX_STREAM_SECONDS``).  Loopback only.

    python bench/paced_server.py --port 18081
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fixtures  # noqa: E402

MAX_STREAM_SECONDS = 300.0
STATS = {"big_bytes": 0, "big_streams": 0, "open_streams": 0, "requests": 0}

SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def plain(status: str, body: bytes, ctype: bytes = b"application/json", close: bool = False) -> bytes:
    return (f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n".encode() + b"content-type: " + ctype
            + (b"\r\nconnection: close" if close else b"") + b"\r\n\r\n" + body)


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes, dict[bytes, bytes]] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) < 3:
        return None
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        k, sep, v = line.partition(b":")
        if sep:
            headers[k.strip().lower()] = v.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:  # a chunked request body: read and drop it
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        n = int(headers.get(b"content-length", b"0") or 0)
        if n:
            await reader.readexactly(n)
    return parts[0], parts[1], headers


async def paced(writer: asyncio.StreamWriter, n: int, interval: float) -> None:
    loop = asyncio.get_running_loop()
    frames = fixtures.openai_frames(n)
    writer.write(SSE_HEAD + b"\r\n" + chunk(frames[0]))
    t0 = loop.time()
    for i, frame in enumerate(frames[1:n], start=1):  # frames[n] (usage + [DONE]) goes with the last
        delay = t0 + i * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if i == n - 1:
            frame += frames[n]
        writer.write(chunk(frame))
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()


async def big(writer: asyncio.StreamWriter, total: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAX_STREAM_SECONDS
    text = "x" * 1000
    STATS["big_streams"] += 1
    STATS["big_bytes"] = 0
    writer.write(SSE_HEAD + b"\r\n" + chunk(fixtures.openai_chunk({"role": "assistant", "content": ""})))
    sent = 0
    frame = chunk(fixtures.openai_chunk({"content": text}))
    while sent < total and loop.time() < deadline:
        writer.write(frame)
        await writer.drain()
        sent += len(frame)
        STATS["big_bytes"] = sent
    writer.write(chunk(fixtures.openai_chunk({}, "stop") + fixtures.OPENAI_DONE) + b"0\r\n\r\n")
    await writer.drain()


async def idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: float) -> None:
    writer.write(SSE_HEAD + b"connection: close\r\n\r\n"
                 + chunk(fixtures.openai_chunk({"role": "assistant", "content": ""})))
    await writer.drain()
    try:
        await asyncio.wait_for(reader.read(1), min(hold, MAX_STREAM_SECONDS))  # b"" when the peer goes
        return
    except asyncio.TimeoutError:
        pass
    writer.write(chunk(fixtures.openai_chunk({}, "stop") + fixtures.OPENAI_DONE) + b"0\r\n\r\n")
    await writer.drain()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            req = await read_request(reader)
            if req is None:
                return
            method, target, headers = req
            STATS["requests"] += 1
            parts = target.split(b"?")[0].strip(b"/").split(b"/")
            kind = parts[0]
            if kind == b"paced" and len(parts) >= 3:
                STATS["open_streams"] += 1
                try:
                    await asyncio.wait_for(paced(writer, max(int(parts[1]), 2), int(parts[2]) / 1000.0),
                                           MAX_STREAM_SECONDS)
                finally:
                    STATS["open_streams"] -= 1
            elif kind == b"big" and len(parts) >= 2:
                STATS["open_streams"] += 1
                try:
                    await big(writer, int(parts[1]))
                finally:
                    STATS["open_streams"] -= 1
            elif kind == b"idle" and len(parts) >= 2:
                STATS["open_streams"] += 1
                try:
                    await idle(reader, writer, float(parts[1]))
                finally:
                    STATS["open_streams"] -= 1
                return  # idle streams close their connection
            elif kind == b"stats":
                writer.write(plain("200 OK", json.dumps(STATS).encode()))
            elif kind == b"health":
                writer.write(plain("200 OK", b"ok", b"text/plain"))
            else:
                writer.write(plain("404 Not Found", b'{"error":"unknown bench path"}', close=True))
                await writer.drain()
                return
            await writer.drain()
            if headers.get(b"connection", b"").lower() == b"close":
                return
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
        return
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096, limit=1 << 20)
    print(f"paced server on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        asyncio.run(main(args.port))
    except KeyboardInterrupt:
        pass
