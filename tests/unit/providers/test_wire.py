"""The lean upstream HTTP/1.1 client (`wire`, `pool`, `codecs.http1`) against a scripted server on loopback.

The server answers each request with the next scripted byte string, so every framing the
client must read (Content-Length, chunked with extensions and trailers, until-close, 1xx
before the answer) and every way a connection ends is produced for real over TCP.  Parsing
across arbitrary splits is checked with a fake transport fed one byte at a time.
"""
from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import (
    BrowserLikePolicyForHTTPS,
    PotentialDataLoss,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers

from fproxy.codecs.http1 import ProtocolError, RawHeaders
from fproxy.codecs.http1 import parse_head as _parse_head
from fproxy.providers.pool import UpstreamPool
from fproxy.providers.wire import Pending, _Connection

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}"
CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n")


class _Scripted(Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.buf = b""

    def connectionMade(self) -> None:
        self.server.connections += 1
        self.server.open.append(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.server.open.remove(self)
        self.server.closed.append(reason)

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode()
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            self.server.requests.append((head, self.buf[end + 4:end + 4 + length]))
            self.buf = self.buf[end + 4 + length:]
            action = self.server.script.pop(0)
            if action is None:  # hold: never answer
                continue
            answer, close = action
            if answer:
                self.transport.write(answer)
            if close:
                self.transport.loseConnection()


class Server(Factory):
    def __init__(self) -> None:
        self.script: list[tuple[bytes, bool] | None] = []
        self.requests: list[tuple[str, bytes]] = []
        self.connections = 0
        self.open: list[_Scripted] = []
        self.closed: list[Any] = []

    def buildProtocol(self, addr: Any) -> _Scripted:
        return _Scripted(self)


class Body(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done: Deferred[list[Failure]] = Deferred()  # a list: a bare Failure would errback

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback([reason])


@pytest.fixture
def server(reactor: Any) -> Any:
    s = Server()
    port = reactor.listenTCP(0, s, interface="127.0.0.1")
    s.url = f"http://127.0.0.1:{port.getHost().port}/v1/chat?x=1".encode()
    yield s
    for p in list(s.open):
        p.transport.abortConnection()
    port.stopListening()


@pytest.fixture
def pool(reactor: Any) -> Any:
    p = UpstreamPool(reactor, BrowserLikePolicyForHTTPS(), 5.0)
    yield p
    pytest_twisted.blockon(p.closeCachedConnections())


async def _call(pool: UpstreamPool, server: Server, body: bytes = b'{"q":1}',
                headers: Headers | None = None) -> tuple[Any, Body, Failure]:
    response = await pool.request(b"POST", server.url, headers or Headers({b"x-k": [b"v"]}), body)
    b = Body()
    response.deliverBody(b)
    (reason,) = await b.done
    return response, b, reason


@pytest_twisted.ensureDeferred
async def test_content_length_answer_and_the_request_written(pool: UpstreamPool, server: Server) -> None:
    server.script = [(OK, False)]
    response, body, reason = await _call(pool, server, body=b'{"q":"\xc3\xa9"}')
    assert response.code == 200 and response.length == 7
    assert response.headers.getRawHeaders(b"Content-Type") == [b"application/json"]
    assert body.data == b'{"a":1}' and reason.check(ResponseDone)
    head, sent = server.requests[0]
    lines = head.split("\r\n")
    assert lines[0] == "POST /v1/chat?x=1 HTTP/1.1"
    port = server.url.split(b":")[2].split(b"/")[0].decode()
    assert f"Host: 127.0.0.1:{port}" in lines and "X-K: v" in lines
    assert f"content-length: {len(sent)}" in lines and sent == b'{"q":"\xc3\xa9"}'


@pytest_twisted.ensureDeferred
async def test_connection_is_reused_and_the_head_cached(pool: UpstreamPool, server: Server) -> None:
    server.script = [(OK, False), (CHUNKED, False), (OK, False)]
    h = Headers({b"authorization": [b"Bearer k"]})
    for _ in range(3):
        await _call(pool, server, headers=h)
    assert server.connections == 1
    assert len(server.requests) == 3
    assert server.requests[0][0] == server.requests[2][0]
    assert pool.idle_count() == 1


@pytest_twisted.ensureDeferred
async def test_chunked_with_extensions_and_trailers(pool: UpstreamPool, server: Server) -> None:
    server.script = [(CHUNKED, False), (OK, False)]
    response, body, reason = await _call(pool, server)
    assert body.data == b"hello world" and reason.check(ResponseDone)
    assert response.length is None
    await _call(pool, server)  # the trailer was consumed: the next answer parses
    assert server.connections == 1


@pytest_twisted.ensureDeferred
async def test_until_close_body_is_potential_data_loss_and_not_reused(pool: UpstreamPool, server: Server) -> None:
    server.script = [(b"HTTP/1.1 200 OK\r\n\r\nall of it", True), (OK, False)]
    _, body, reason = await _call(pool, server)
    assert body.data == b"all of it" and reason.check(PotentialDataLoss)
    await _call(pool, server)
    assert server.connections == 2


@pytest_twisted.ensureDeferred
async def test_connection_close_header_is_honoured(pool: UpstreamPool, server: Server) -> None:
    server.script = [(OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1), False), (OK, False)]
    await _call(pool, server)
    assert pool.idle_count() == 0
    await _call(pool, server)
    assert server.connections == 2


@pytest_twisted.ensureDeferred
async def test_a_kept_connection_closed_by_the_upstream_is_retried_once(pool: UpstreamPool, server: Server) -> None:
    # the upstream answers, then closes the kept-alive connection without saying so
    server.script = [(OK, True), (OK, False)]
    await _call(pool, server)
    _, body, reason = await _call(pool, server)
    assert body.data == b'{"a":1}' and reason.check(ResponseDone)
    assert server.connections == 2


@pytest_twisted.ensureDeferred
async def test_a_close_without_answer_on_a_new_connection_fails(pool: UpstreamPool, server: Server) -> None:
    server.script = [(b"", True)]
    with pytest.raises(ResponseNeverReceived):
        await _call(pool, server)
    assert server.connections == 1  # a fresh connection is not retried


@pytest_twisted.ensureDeferred
async def test_continue_then_answer(pool: UpstreamPool, server: Server) -> None:
    server.script = [(b"HTTP/1.1 100 Continue\r\n\r\n" + OK, False)]
    response, body, _ = await _call(pool, server)
    assert response.code == 200 and body.data == b'{"a":1}'


@pytest_twisted.ensureDeferred
async def test_no_body_status(pool: UpstreamPool, server: Server) -> None:
    server.script = [(b"HTTP/1.1 204 No Content\r\n\r\n", False), (OK, False)]
    response, body, reason = await _call(pool, server)
    assert response.code == 204 and body.data == b"" and reason.check(ResponseDone)
    await _call(pool, server)
    assert server.connections == 1


@pytest_twisted.ensureDeferred
async def test_truncated_body_fails(pool: UpstreamPool, server: Server) -> None:
    server.script = [(OK[:-3], True)]
    _, body, reason = await _call(pool, server)
    assert body.data == OK[-7:-3] and reason.check(ResponseFailed)


@pytest_twisted.ensureDeferred
async def test_broken_head_fails_and_drops_the_connection(pool: UpstreamPool, server: Server) -> None:
    server.script = [(b"SPDY/3 200 OK\r\n\r\n", False)]
    with pytest.raises(ResponseNeverReceived) as e:
        await _call(pool, server)
    assert e.value.reasons[0].check(ProtocolError)
    assert pool.idle_count() == 0


@pytest_twisted.ensureDeferred
async def test_cancel_before_the_head_closes_the_connection(reactor: Any, pool: UpstreamPool,
                                                             server: Server) -> None:
    server.script = [None]
    d = pool.request(b"POST", server.url, Headers(), b"{}")
    while not server.requests:
        await _sleep(reactor, 0.01)
    d.cancel()
    with pytest.raises(CancelledError):
        await d
    for _ in range(200):
        if server.closed:
            break
        await _sleep(reactor, 0.01)
    assert len(server.closed) == 1 and pool.idle_count() == 0


@pytest_twisted.ensureDeferred
async def test_consumer_stop_aborts_and_a_late_stop_is_inert(reactor: Any, pool: UpstreamPool,
                                                             server: Server) -> None:
    server.script = [(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npart", False), (OK, False), (OK, False)]
    response = await pool.request(b"POST", server.url, Headers(), b"{}")
    b = Body()
    response.deliverBody(b)
    while not b.data:
        await _sleep(reactor, 0.01)
    b.transport.stopProducing()
    (reason,) = await b.done
    assert reason.check(ResponseFailed)
    # a whole answer, then its consumer's late stop must not touch the reused connection
    response, body, _ = await _call(pool, server)
    body.transport.stopProducing()
    await _call(pool, server)
    assert server.connections == 2


@pytest_twisted.ensureDeferred
async def test_connect_failure_is_the_endpoint_error(reactor: Any, pool: UpstreamPool) -> None:
    from twisted.internet.error import ConnectError

    with pytest.raises(ConnectError):
        await pool.request(b"POST", b"http://127.0.0.1:9/x", Headers(), b"{}")


@pytest.mark.parametrize("answer", [OK, CHUNKED, b"HTTP/1.1 100 Continue\r\n\r\n" + OK])
def test_any_split_of_the_answer_parses_the_same(answer: bytes) -> None:
    pool = _FakePool()
    conn = _Connection(pool, (b"http", b"h", 80))  # type: ignore[arg-type]
    conn.makeConnection(StringTransport())
    pending = Pending()
    conn.send(b"req", pending, None)
    got: list[Any] = []
    pending.d.addCallback(got.append)
    body = Body()
    for i in range(len(answer)):
        conn.dataReceived(answer[i:i + 1])
        if got and body.transport is None:
            got[0].deliverBody(body)
    assert body.done.called
    assert body.data in (b'{"a":1}', b"hello world")
    assert pool.released == [conn]


def test_head_parsing_rejects_what_it_cannot_read() -> None:
    code, phrase, headers, keep = _parse_head(b"HTTP/1.1 404 Not Found\r\nA: 1\r\na: 2\r\nConnection: close")
    assert (code, phrase, keep) == (404, b"Not Found", False)
    assert headers.getRawHeaders("a") == [b"1", b"2"] and headers.getRawHeaders(b"b", "d") == "d"
    assert _parse_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive")[3] is True
    assert _parse_head(b"HTTP/1.0 200 OK")[3] is False
    for bad in (b"HTTP/1.1 abc OK", b"ICY 200 OK", b"HTTP/1.1 200 OK\r\nno colon", b"HTTP/1.1 200 OK\r\n fold: x"):
        with pytest.raises(ProtocolError):
            _parse_head(bad)
    assert isinstance(headers, RawHeaders) and headers.hasHeader(b"A")


class _FakePool:
    def __init__(self) -> None:
        self.released: list[Any] = []

    def release(self, conn: Any) -> None:
        self.released.append(conn)

    def forget(self, conn: Any) -> None:
        pass


def _sleep(reactor: Any, seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d
