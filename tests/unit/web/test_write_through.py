"""Write-through: an answer's first bytes leave at once, in one piece with its head.

`write_now` is checked on a real loopback TCP connection (the peer has the bytes before the
reactor turns again; bytes queued before it keep their order); the channel's head handling
with a transport that records each write call.
"""
from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from fproxy.netio import write_now
from fproxy.web.request import FproxySite, _Channel


class _Hold(Protocol):
    def connectionMade(self) -> None:
        self.factory.made.callback(self)  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_write_now_sends_before_the_reactor_turns(reactor: Any) -> None:
    f = Factory.forProtocol(_Hold)
    f.made = Deferred()  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, f, interface="127.0.0.1")
    peer = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        proto = await f.made  # type: ignore[attr-defined]
        peer.settimeout(2)
        write_now(proto.transport, b"now")
        assert peer.recv(100) == b"now"  # no reactor turn in between: it was sent in the call
        proto.transport.write(b"queued-")  # queued: the next write must not overtake it
        write_now(proto.transport, b"after")
        assert proto.transport._tempDataLen > 0
        got = b""
        while len(got) < len(b"queued-after"):
            d: Deferred[None] = Deferred()
            reactor.callLater(0.01, d.callback, None)
            await d
            peer.setblocking(False)
            try:
                got += peer.recv(100)
            except BlockingIOError:
                pass
        assert got == b"queued-after"
    finally:
        peer.close()
        proto.transport.loseConnection()
        await port.stopListening()


class _Recording(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.calls.append(data)
        super().write(data)

    def writeSequence(self, seq: Any) -> None:  # noqa: N802
        self.write(b"".join(seq))


def _channel(reactor: Any) -> tuple[_Channel, _Recording]:
    site = FproxySite(Resource(), reactor, 1024, ())
    ch = _Channel()
    ch.site = site
    ch.requestFactory = site.requestFactory
    t = _Recording()
    ch.makeConnection(t)
    return ch, t


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_head_leaves_with_the_first_body_bytes_or_at_the_end(reactor: Any, method: bytes) -> None:
    ch, t = _channel(reactor)
    from twisted.web.http import Request

    req = Request(ch)
    ch.requests.append(req)
    req.method, req.uri, req.path, req.clientproto = method, b"/x", b"/x", b"HTTP/1.1"
    req.setResponseCode(200)
    req.setHeader(b"content-length", b"9")
    req.write(b"first")
    req.write(b"-more")
    if method == b"GET":
        assert len(t.calls) == 2
        assert t.calls[0].startswith(b"HTTP/1.1 200 OK\r\n") and t.calls[0].endswith(b"\r\n\r\nfirst")
        assert t.calls[1] == b"-more"
    else:
        assert t.calls == []  # a HEAD answer has no body: its head waits for the end
    req.finish()
    assert t.calls and t.calls[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert t.value().count(b"HTTP/1.1 200 OK") == 1
    ch.connectionLost(None)


# ---------------------------------------------------------------- one-pass request heads
class _Seen(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render(self, request: Any) -> bytes:
        self.requests.append((request.method, request.uri, request.content.read(),
                              request.requestHeaders.getRawHeaders(b"x-a"), request.getHeader(b"host")))
        return b"ok"


def _served(reactor: Any, *reads: bytes) -> tuple[_Channel, _Recording, _Seen, list[bool]]:
    res = _Seen()
    site = FproxySite(res, reactor, 1024, ())
    site.root_ready = True
    ch = _Channel()
    ch.site = site
    ch.requestFactory = site.requestFactory
    t = _Recording()
    ch.makeConnection(t)
    fast: list[bool] = []
    whole = ch._whole_request

    def spy(data: bytes) -> bool:
        fast.append(whole(data))
        return fast[-1]

    ch._whole_request = spy  # type: ignore[method-assign]
    for r in reads:
        ch.dataReceived(r)
    return ch, t, res, fast


REQ = (b"POST /v1/x?q=1 HTTP/1.1\r\nHost: gw\r\nX-A: 1\r\nx-a:  2 \r\nContent-Length: 7\r\n"
       b"Content-Type: application/json\r\n\r\n{\"a\":1}")


def test_a_whole_request_in_one_read_is_read_in_one_pass(reactor: Any) -> None:
    ch, t, res, fast = _served(reactor, REQ)
    assert fast == [True]
    assert res.requests == [(b"POST", b"/v1/x?q=1", b'{"a":1}', [b"1", b"2"], b"gw")]
    assert t.value().startswith(b"HTTP/1.1 200 OK\r\n") and t.value().endswith(b"ok")
    ch.dataReceived(REQ)  # the connection is ready for the next request, read the same way
    assert fast == [True, True] and len(res.requests) == 2
    ch.connectionLost(None)


@pytest.mark.parametrize("reads", [
    (REQ[:30], REQ[30:]),  # a partial head
    (REQ[:-3], REQ[-3:]),  # a partial body
    (REQ + REQ,),  # pipelined
    (REQ.replace(b"Content-Length: 7", b"Transfer-Encoding: chunked")
     .replace(b'{"a":1}', b'7\r\n{"a":1}\r\n0\r\n\r\n'),),
    (REQ.replace(b"X-A: 1\r\n", b"Expect: 100-continue\r\n"),),
])
def test_anything_else_is_left_to_twisted_web(reactor: Any, reads: tuple[bytes, ...]) -> None:
    ch, t, res, fast = _served(reactor, *reads)
    assert fast[0] is False
    assert res.requests and res.requests[0][2] == b'{"a":1}'
    ch.connectionLost(None)


@pytest.mark.parametrize("bad", [b"Bad Header: x", b"X-A:\x00", b"Content-Length: 7x", b"Content-Length: 0"])
def test_headers_twisted_web_refuses_are_refused_by_it(reactor: Any, bad: bytes) -> None:
    ch, t, res, fast = _served(reactor, REQ.replace(b"X-A: 1", bad))
    assert fast == [False]
    assert res.requests == [] and t.value().startswith(b"HTTP/1.1 400")
