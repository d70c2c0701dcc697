"""A lean HTTP/1.1 client for upstream calls: persistent connections, one write per request.

Why not ``twisted.web.client.Agent``: its per-request path (URI parsing, endpoint objects,
the request/response state machines, a line parser per header line, a Deferred chain per
phase) was a quarter of fproxy's CPU per passthrough call in the bench's profile
(bench/RESULTS.md).  Upstream calls are a narrow case: a POST whose body is in memory, an
answer framed by Content-Length, chunked encoding or the connection's close.  This module
does that case with the request head built once per (url, headers), the answer's head parsed
in one pass, and the body handed to the same ``IProtocol`` consumers Agent feeds (``deliverBody``,
``ResponseDone`` / ``PotentialDataLoss`` / ``ResponseFailed``), so the pipe and the collector
are unchanged.  Connections are made through Twisted's endpoints (``HostnameEndpoint``, TLS by
``wrapClientTLS`` with the same ``BrowserLikePolicyForHTTPS`` trust as before).
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone, ResponseFailed, ResponseNeverReceived

from fproxy.netio import write_now

log = Logger()

MAX_HEAD = 64 * 1024  # an answer's status line and headers together
MAX_CHUNK_LINE = 4096
_NO_BODY = (204, 304)

# connection states
_IDLE, _HEAD, _BODY, _DEAD = 0, 1, 2, 3
# body framings
_LENGTH, _CHUNKED, _CLOSE = 0, 1, 2
# chunked decoder states
_SIZE, _DATA, _DATA_END, _TRAILER = 0, 1, 2, 3


#: how every body ends, made once: a Failure costs a traceback walk and class lookups to build,
#: and the consumers only ``check()`` it
_DONE = Failure(ResponseDone("Response body fully received"))
_UNFRAMED_END = Failure(PotentialDataLoss())


class ProtocolError(Exception):
    """The upstream's bytes are not HTTP/1.1 we can read."""


class RawHeaders:
    """An answer's headers, with the part of ``twisted.web.http_headers.Headers`` we read."""

    __slots__ = ("_items", "_map")

    def __init__(self, items: list[tuple[bytes, bytes]]) -> None:
        self._items = items  # (lower-case name, value) in arrival order
        self._map: dict[bytes, list[bytes]] | None = None

    def _index(self) -> dict[bytes, list[bytes]]:
        if self._map is None:
            m: dict[bytes, list[bytes]] = {}
            for k, v in self._items:
                m.setdefault(k, []).append(v)
            self._map = m
        return self._map

    def getRawHeaders(self, name: bytes | str, default: Any = None) -> Any:  # noqa: N802 - Headers' name
        if isinstance(name, str):
            name = name.encode("ascii")
        values = self._index().get(name.lower())
        return list(values) if values else default

    def hasHeader(self, name: bytes | str) -> bool:  # noqa: N802
        return self.getRawHeaders(name) is not None

    def getAllRawHeaders(self) -> Any:  # noqa: N802
        return iter(self._index().items())


class _BodyTransport:
    """What a body consumer sees as its transport; inert once its answer is over, so a late
    ``stopProducing`` cannot touch the next request on a reused connection."""

    __slots__ = ("conn",)

    def __init__(self, conn: _Connection) -> None:
        self.conn: _Connection | None = conn

    def pauseProducing(self) -> None:  # noqa: N802
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort_body()

    def loseConnection(self) -> None:  # noqa: N802
        self.stopProducing()


class Response:
    """An upstream answer whose head is in; the body follows through ``deliverBody``."""

    __slots__ = ("code", "phrase", "headers", "version", "length", "_consumer", "_pending", "_end", "_transport")

    def __init__(self, code: int, phrase: bytes, headers: RawHeaders, length: int | None,
                 transport: _BodyTransport) -> None:
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.version = (b"HTTP", 1, 1)
        self.length = length
        self._consumer: Any = None
        self._pending: list[bytes] = []
        self._end: Failure | None = None
        self._transport = transport

    def deliverBody(self, protocol: Any) -> None:  # noqa: N802 - IResponse
        if self._consumer is not None:
            raise RuntimeError("the body was already delivered")
        self._consumer = protocol
        protocol.makeConnection(self._transport)
        pending, self._pending = self._pending, []
        for part in pending:
            protocol.dataReceived(part)
        if self._end is not None:
            protocol.connectionLost(self._end)

    # called by the connection
    def _data(self, data: bytes) -> None:
        if self._consumer is not None:
            self._consumer.dataReceived(data)
        else:
            self._pending.append(data)

    def _finish(self, reason: Failure) -> None:
        self._transport.conn = None
        if self._end is not None:
            return
        self._end = reason
        if self._consumer is not None:
            self._consumer.connectionLost(reason)


class _Connection(Protocol):
    """One upstream connection: a request written, its answer parsed, then back to the pool."""

    def __init__(self, pool: UpstreamPool, key: tuple[bytes, bytes, int]) -> None:
        self.pool = pool
        self.key = key
        self.state = _IDLE
        self.idle_since = 0.0
        self.reused = False
        self.lost = False
        self._pending: _Pending | None = None
        self._retry: _Target | None = None
        self._data = b""
        self.waiters: list[Deferred[None]] = []
        self._buf = b""
        self._got_bytes = False
        self._response: Response | None = None
        self._framing = _LENGTH
        self._remaining = 0
        self._chunk_state = _SIZE
        self._keep = True

    # ------------------------------------------------------------ requests
    def send(self, data: bytes, pending: _Pending, retry: _Target | None) -> None:
        self.state = _HEAD
        pending.conn = self
        self._pending = pending
        self._retry = retry
        self._data = data if retry is not None else b""
        self._buf = b""
        self._got_bytes = False
        self._keep = True
        write_now(self.transport, data)

    def cancel(self) -> None:
        """The caller gave up before the answer's head: drop the connection."""
        self._pending = None
        self._kill()

    def abort_body(self) -> None:
        """The body's consumer stopped: close at once (the upstream sees the disconnect)."""
        self._kill()

    def _kill(self) -> None:
        self._keep = False
        if self.state != _DEAD:
            self.state = _DEAD
            self.pool.forget(self)
            if not self.lost:
                self.transport.abortConnection()

    # ------------------------------------------------------------ bytes in
    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self._got_bytes = True
        state = self.state
        if state == _BODY:
            self._body(data)
            return
        if state != _HEAD:
            if state == _IDLE:  # bytes while idle (a 408, garbage): no longer usable
                self._kill()
            return
        buf = self._buf + data if self._buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._fail_head(ProtocolError("the answer's head exceeded 64 KiB"))
                else:
                    self._buf = buf
                return
            try:
                code, phrase, headers, keep = _parse_head(buf[:end])
            except ProtocolError as e:
                self._fail_head(e)
                return
            buf = buf[end + 4:]
            if 100 <= code < 200:  # 100 Continue and friends: the real answer follows
                continue
            break
        self._buf = b""
        self._keep = keep
        length: int | None = None
        if code in _NO_BODY:
            self._framing, self._remaining, length = _LENGTH, 0, 0
        else:
            te = headers.getRawHeaders(b"transfer-encoding")
            cl = headers.getRawHeaders(b"content-length")
            if te is not None and b"chunked" in b",".join(te).lower():
                self._framing, self._chunk_state = _CHUNKED, _SIZE
            elif cl is not None:
                try:
                    length = int(cl[0])
                    if length < 0 or any(v != cl[0] for v in cl):
                        raise ValueError
                except ValueError:
                    self._fail_head(ProtocolError(f"bad content-length {cl!r}"))
                    return
                self._framing, self._remaining = _LENGTH, length
            else:
                self._framing, self._keep = _CLOSE, False
        self.state = _BODY
        response = Response(code, phrase, headers, length, _BodyTransport(self))
        self._response = response
        pending, self._pending = self._pending, None
        self._data = b""
        if self._framing == _LENGTH and self._remaining == 0:
            if buf:  # bytes after a complete answer: not HTTP we trust
                self._keep = False
            self._done()
        if pending is not None:
            pending.conn = None
            pending.d.callback(response)
        if buf and self.state == _BODY and self._response is response:
            self._body(buf)

    def _body(self, data: bytes) -> None:
        framing = self._framing
        response = self._response
        assert response is not None
        if framing == _CLOSE:
            response._data(data)
        elif framing == _LENGTH:
            n = len(data)
            if n < self._remaining:
                self._remaining -= n
                response._data(data)
            else:
                extra = n > self._remaining
                if extra:
                    data = data[:self._remaining]
                    self._keep = False
                self._remaining = 0
                if data:
                    response._data(data)
                if self._response is response:
                    self._done()
        else:
            self._chunked(data)

    def _chunked(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        self._buf = b""
        pos, n = 0, len(buf)
        response = self._response
        while pos < n and self._response is response and self.state == _BODY:
            st = self._chunk_state
            if st == _DATA:
                take = min(self._remaining, n - pos)
                part = buf[pos:pos + take]
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._chunk_state = _DATA_END
                assert response is not None
                response._data(part)
                continue
            end = buf.find(b"\r\n", pos)
            if end < 0:
                rest = buf[pos:]
                if len(rest) > MAX_CHUNK_LINE:
                    self._fail_body(ProtocolError("a chunk header line is too long"))
                else:
                    self._buf = rest
                return
            line = buf[pos:end]
            pos = end + 2
            if st == _SIZE:
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                    if size < 0:
                        raise ValueError
                except ValueError:
                    self._fail_body(ProtocolError(f"bad chunk size {line[:40]!r}"))
                    return
                if size == 0:
                    self._chunk_state = _TRAILER
                else:
                    self._chunk_state, self._remaining = _DATA, size
            elif st == _DATA_END:
                if line:
                    self._fail_body(ProtocolError("chunk data longer than its size"))
                    return
                self._chunk_state = _SIZE
            else:  # trailers until an empty line
                if not line:
                    if pos < n:
                        self._keep = False  # bytes after the answer
                    self._done()
                    return

    # ------------------------------------------------------------ endings
    def _done(self) -> None:
        """The answer's body is complete: the connection goes back to the pool, then the
        consumer hears ``ResponseDone`` (so a call it starts at once may reuse it)."""
        response, self._response = self._response, None
        self.state = _IDLE
        if self._keep and not self.lost:
            self.reused = True
            self.pool.release(self)
        elif not self.lost:
            self.transport.loseConnection()
        if response is not None:
            response._finish(_DONE)

    def _fail_head(self, err: Exception) -> None:
        pending, self._pending = self._pending, None
        self._kill()
        if pending is not None:
            pending.conn = None
            pending.d.errback(ResponseNeverReceived([Failure(err)]))

    def _fail_body(self, err: Exception) -> None:
        response, self._response = self._response, None
        self._kill()
        if response is not None:
            response._finish(Failure(ResponseFailed([Failure(err)])))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # noqa: N802
        self.lost = True
        self.state = _DEAD
        self.pool.forget(self)
        waiters, self.waiters = self.waiters, []
        pending, self._pending = self._pending, None
        response, self._response = self._response, None
        if pending is not None:
            pending.conn = None
            retry = self._retry
            if retry is not None and self.reused and not self._got_bytes and reason.check(ConnectionDone):
                # the upstream closed a kept-alive connection as we reused it: once more, on a new one
                self.pool._start(retry, self._data, pending, retry=False)
            else:
                pending.d.errback(ResponseNeverReceived([reason]))
        elif response is not None:
            if self._framing == _CLOSE and reason.check(ConnectionDone):
                response._finish(_UNFRAMED_END)
            else:
                response._finish(Failure(ResponseFailed([reason])))
        for w in waiters:
            w.callback(None)


def _parse_head(head: bytes) -> tuple[int, bytes, RawHeaders, bool]:
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 2)
    if len(status) < 2 or not status[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"bad status line {lines[0][:60]!r}")
    try:
        code = int(status[1])
    except ValueError:
        raise ProtocolError(f"bad status line {lines[0][:60]!r}") from None
    if not 100 <= code <= 999:
        raise ProtocolError(f"bad status code {code}")
    items: list[tuple[bytes, bytes]] = []
    keep = status[0] == b"HTTP/1.1"
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            raise ProtocolError(f"bad header line {line[:60]!r}")
        name = name.lower()
        value = value.strip()
        if name == b"connection":
            tokens = value.lower()
            if b"close" in tokens:
                keep = False
            elif b"keep-alive" in tokens and status[0] == b"HTTP/1.0":
                keep = True
        items.append((name, value))
    return code, status[2] if len(status) > 2 else b"", RawHeaders(items), keep


class _Target:
    """Where one URL's requests go, and the head written before each body (built once)."""

    __slots__ = ("key", "host", "port", "tls", "path")

    def __init__(self, url: bytes) -> None:
        parts = urlsplit(url.decode("ascii"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url[:100]!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        self.path = path.encode("ascii")
        self.key = (b"https" if self.tls else b"http", self.host.encode("idna"), self.port)


class _Pending:
    """One request waiting for its answer's head: where it is, so cancelling can stop it."""

    __slots__ = ("d", "conn", "connecting", "cancelled")

    def __init__(self) -> None:
        self.d: Deferred[Response] = Deferred(self._cancel)
        self.conn: _Connection | None = None
        self.connecting: Deferred[Any] | None = None
        self.cancelled = False

    def _cancel(self, d: Deferred[Response]) -> None:
        self.cancelled = True
        if self.connecting is not None:
            self.connecting.cancel()
        if self.conn is not None:
            self.conn.cancel()
            self.conn = None


class _ConnectionFactory(Factory):
    def __init__(self, pool: UpstreamPool, key: tuple[bytes, bytes, int]) -> None:
        self.pool, self.key = pool, key

    def buildProtocol(self, addr: Any) -> _Connection:  # noqa: N802
        return _Connection(self.pool, self.key)


class UpstreamPool:
    """Persistent upstream connections, per (scheme, host, port), reused last-in first-out.

    Idle connections are kept at most ``max_idle`` per host and ``idle_timeout`` seconds
    (checked when one is taken and by a sweep while any are idle): upstreams close idle
    connections themselves, and a request sent on one they just closed is retried once on a
    fresh connection when the close came before any byte of the answer.
    """

    def __init__(self, reactor: Any, tls_policy: Any, connect_timeout: float, max_idle: int = 64,
                 idle_timeout: float = 110.0) -> None:
        self._reactor = reactor
        self._policy = tls_policy
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._idle: dict[tuple[bytes, bytes, int], list[_Connection]] = {}
        self._targets: dict[bytes, _Target] = {}
        self._heads: dict[tuple[bytes, bytes, int], tuple[Any, bytes]] = {}
        self._sweep: Any = None

    # ------------------------------------------------------------ requests
    def request(self, method: bytes, url: bytes, headers: Any, body: bytes) -> Deferred[Response]:
        """Send ``body``; the Deferred fires with the `Response` once its head is in.

        ``headers`` is a ``twisted.web.http_headers.Headers`` (``Host`` is added when absent);
        the same object passed again reuses the head built from it.
        """
        target = self._targets.get(url)
        if target is None:
            target = _Target(url)
            if len(self._targets) > 1024:
                self._targets.clear()
            self._targets[url] = target
        hk = (method, url, id(headers))
        cached = self._heads.get(hk)
        if cached is not None and cached[0] is headers:
            head = cached[1]
        else:
            head = _build_head(method, target, headers)
            if len(self._heads) > 1024:
                self._heads.clear()
            self._heads[hk] = (headers, head)
        data = head + b"content-length: %d\r\n\r\n" % len(body) + body
        pending = _Pending()
        self._start(target, data, pending, retry=True)
        return pending.d

    def _start(self, target: _Target, data: bytes, pending: _Pending, retry: bool) -> None:
        idle = self._idle.get(target.key)
        if idle:
            now = self._reactor.seconds()
            while idle:
                conn = idle.pop()
                if conn.lost or conn.state != _IDLE:
                    continue
                if now - conn.idle_since > self._idle_timeout:
                    conn.transport.loseConnection()
                    continue
                conn.send(data, pending, target if retry else None)
                return
        endpoint: Any = HostnameEndpoint(self._reactor, target.host, target.port, timeout=self._connect_timeout)
        if target.tls:
            endpoint = wrapClientTLS(self._policy.creatorForNetloc(target.key[1], target.port), endpoint)
        connecting = endpoint.connect(_ConnectionFactory(self, target.key))
        pending.connecting = connecting

        def connected(conn: _Connection) -> None:
            pending.connecting = None
            if pending.cancelled:
                conn.transport.loseConnection()
                return
            conn.send(data, pending, None)

        def failed(f: Failure) -> None:
            pending.connecting = None
            if not pending.cancelled and not pending.d.called:
                pending.d.errback(f)

        connecting.addCallbacks(connected, failed)

    # ------------------------------------------------------------ the pool
    def release(self, conn: _Connection) -> None:
        conn.idle_since = self._reactor.seconds()
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self._max_idle:
            conn.transport.loseConnection()
            return
        idle.append(conn)
        if self._sweep is None:
            self._sweep = self._reactor.callLater(self._idle_timeout / 4, self._run_sweep)

    def forget(self, conn: _Connection) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def _run_sweep(self) -> None:
        self._sweep = None
        now = self._reactor.seconds()
        left = False
        for idle in list(self._idle.values()):
            for conn in list(idle):
                if now - conn.idle_since > self._idle_timeout:
                    idle.remove(conn)
                    conn.transport.loseConnection()
                else:
                    left = True
        if left:
            self._sweep = self._reactor.callLater(self._idle_timeout / 4, self._run_sweep)

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def closeCachedConnections(self) -> Deferred[None]:  # noqa: N802 - HTTPConnectionPool's name
        """Close the idle connections (calls in flight finish on theirs); fires when they are gone."""
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        idle = [c for v in self._idle.values() for c in v]
        self._idle.clear()
        if not idle:
            return succeed(None)
        waits = []
        for conn in idle:
            if conn.lost:
                continue
            w: Deferred[None] = Deferred()
            conn.waiters.append(w)
            waits.append(w)
            conn.transport.loseConnection()
        return DeferredList(waits).addCallback(lambda _: None)


def _build_head(method: bytes, target: _Target, headers: Any) -> bytes:
    lines = [method + b" " + target.path + b" HTTP/1.1\r\n"]
    has_host = False
    for name, values in headers.getAllRawHeaders():
        lname = name.lower()
        if lname == b"host":
            has_host = True
        elif lname in (b"content-length", b"transfer-encoding", b"connection"):
            continue
        for v in values:
            lines.append(name + b": " + v + b"\r\n")
    if not has_host:
        host = target.key[1]
        if target.port != (443 if target.tls else 80):
            host += b":%d" % target.port
        lines.insert(1, b"Host: " + host + b"\r\n")
    return b"".join(lines)


__all__ = ["CancelledError", "ProtocolError", "RawHeaders", "Response", "UpstreamPool"]
