"""A lean HTTP/1.1 client for upstream calls: one connection's protocol (the pool: `fproxy.providers.pool`).

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

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone, ResponseFailed, ResponseNeverReceived

from fproxy.codecs.http1 import ProtocolError, RawHeaders, parse_head
from fproxy.netio import write_now

if TYPE_CHECKING:
    from fproxy.providers.pool import UpstreamPool, _Target

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


class Pending:
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


class _Connection(Protocol):
    """One upstream connection: a request written, its answer parsed, then back to the pool."""

    def __init__(self, pool: UpstreamPool, key: tuple[bytes, bytes, int]) -> None:
        self.pool = pool
        self.key = key
        self.state = _IDLE
        self.idle_since = 0.0
        self.reused = False
        self.lost = False
        self._pending: Pending | None = None
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
    def send(self, data: bytes, pending: Pending, retry: _Target | None) -> None:
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
                code, phrase, headers, keep = parse_head(buf[:end])
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
                self.pool.start(retry, self._data, pending, retry=False)
            else:
                pending.d.errback(ResponseNeverReceived([reason]))
        elif response is not None:
            if self._framing == _CLOSE and reason.check(ConnectionDone):
                response._finish(_UNFRAMED_END)
            else:
                response._finish(Failure(ResponseFailed([reason])))
        for w in waiters:
            w.callback(None)


__all__ = ["Pending", "ProtocolError", "RawHeaders", "Response"]
