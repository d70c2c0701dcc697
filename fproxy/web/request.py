"""`LimitedRequest`: body cap, request id, CORS and the per-request log line, before any route runs."""
from __future__ import annotations

import random
import re
from typing import Any

import orjson
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol, _parseRequestLine, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.iweb import INonQueuedRequestFactory
from twisted.web.server import Request, Site
from twisted.web.server import version as server_version

from fproxy.netio import write_now

log = Logger(namespace="fproxy.access")

#: request ids need uniqueness, not secrecy: a generator seeded from os.urandom once per
#: process, not a getrandom() system call per request
_ids = random.Random()


_date: list[Any] = [0, b""]


def http_date(second: int) -> bytes:
    """The Date header's value, formatted once per second."""
    if _date[0] != second:
        _date[0], _date[1] = second, datetimeToString(second)
    return _date[1]  # type: ignore[no-any-return]


def error_dialect(path: bytes) -> str:
    return "anthropic" if path.startswith(b"/v1/messages") else "openai-chat"


def error_bytes(path: bytes, status: int, message: str, code: str | None = None) -> bytes:
    from fproxy.codecs.registry import inbound_codec
    from fproxy.ir.errors import GatewayError

    return orjson.dumps(inbound_codec(error_dialect(path)).error_body(GatewayError(status, message, code=code)))


class LimitedRequest(Request):
    """A request that refuses bodies over ``site.max_request_bytes`` without buffering them."""

    started: float = 0.0
    request_id: str = ""
    call: Any = None
    pipe: Any = None  # the StreamPipe of a streamed answer (set by the gateway)
    on_gone: Any = None  # called once if the client leaves before the answer is finished
    fast_lane = False  # served by `PublicAPI.render_fast`
    call_deferred: Any = None  # the fast lane's Deferred for the whole call (for /v1/cancel)
    too_large = False
    _site: Any = None
    _received = 0

    def gotLength(self, length: int | None) -> None:
        limit = self.channel.site.max_request_bytes  # type: ignore[union-attr]
        if length is not None and length > limit:
            self.too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        self._received += len(data)
        if self._received > self.channel.site.max_request_bytes:  # type: ignore[union-attr]
            self.too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        site: FproxySite = self.channel.site  # type: ignore[union-attr, assignment]
        self._site = site
        self.started = site.clock.seconds()
        # time first, then randomness: ids sort by arrival, and the ledger's primary-key index
        # grows at its end instead of at random pages (cheaper inserts)
        self.request_id = f"req_{int(self.started * 1_000_000):014x}{_ids.getrandbits(48):012x}"
        self.setHeader(b"x-request-id", self.request_id.encode())
        if site.debug_pid is not None:
            self.setHeader(b"x-fproxy-pid", site.debug_pid)
        active = site.active
        if active is not None:
            active.add(self)
        self.notifyFinish().addBoth(self._log_done).addErrback(
            lambda f: log.failure("request bookkeeping failed", f))
        if site.cors_origins:
            origin = self.getHeader(b"origin")
            if origin is not None and (b"*" in site.cors_origins or origin in site.cors_origins):
                self.setHeader(b"access-control-allow-origin", b"*" if b"*" in site.cors_origins else origin)
                self.setHeader(b"vary", b"Origin")
                self.setHeader(b"access-control-expose-headers", b"x-request-id, x-fproxy-overhead-ms")
                if self.method == b"OPTIONS":
                    self.setResponseCode(204)
                    self.setHeader(b"access-control-allow-methods", b"GET, POST, PATCH, DELETE, OPTIONS")
                    asked = self.getHeader(b"access-control-request-headers")
                    self.setHeader(b"access-control-allow-headers",
                                   asked if asked else b"authorization, content-type, x-api-key")
                    self.setHeader(b"access-control-max-age", b"600")
                    self.setHeader(b"x-fproxy-overhead-ms", b"0.00")
                    self.finish()
                    return
        if self.too_large:
            self.setResponseCode(413)
            self.setHeader(b"content-type", b"application/json")
            self.setHeader(b"x-fproxy-overhead-ms", b"0.00")
            self.write(error_bytes(self.path, 413, f"The request body exceeds the limit of {site.max_request_bytes} "
                                               "bytes.", "request_too_large"))
            self.finish()
            return
        if self.method == b"POST" and self.path in site.fast_paths:
            # server.Request.process without what a fixed route does not need (the resource-tree
            # walk, percent-decoding of each path segment, the Date header formatted anew)
            self.site = site
            self.setHeader(b"Server", server_version)
            self.setHeader(b"Date", http_date(int(self.started)))
            self.prepath = []
            self.postpath = self.path[1:].split(b"/")
            try:
                self.render(site.resource)
            except BaseException:  # noqa: BLE001 - as server.Request.process: answered 500, logged
                self.processingFailed(Failure())
            return
        super().process()

    def _log_done(self, result: object) -> None:
        self._log_line()
        gone = self.on_gone
        if gone is not None and isinstance(result, Failure):  # the client left before the answer
            self.on_gone = None
            gone()

    def _log_line(self) -> None:
        site: FproxySite | None = self._site
        elapsed = ((site.clock.seconds() if site else self.started) - self.started) * 1000.0
        call = self.call
        if self.pipe is not None and call is not None and call.outcome == "streaming":
            call.outcome = self.pipe.outcome  # the gateway settles it a moment after finish()
        method = self.method.decode("ascii", "replace") if self.method else "-"
        path = self.path.decode("utf-8", "replace") if self.path else "-"
        model, provider = getattr(call, "model", None), getattr(call, "provider", None)
        outcome = getattr(call, "outcome", None)
        # the line is built here (an f-string) and logged as one field: the observers' formatter
        # (string.Formatter, in Python) costs several times more per field than the line itself
        log.info(
            "{access}",
            access=f"{method} {path} {self.code} {elapsed:.1f}ms model={model} provider={provider} outcome={outcome}",
            method=method, path=path, status=self.code, ms=elapsed, request_id=self.request_id,
            model=model, provider=provider, outcome=outcome,
            key=getattr(getattr(call, "principal", None), "id", None),
            attempts=",".join(getattr(call, "attempts", []) or []) or None,
        )
        if site is not None:
            if site.active is not None:
                site.active.remove(self)
            if site.on_request_done is not None:
                site.on_request_done(self)


def transport_of(proto: Any) -> Any:
    """The transport of an HTTP channel (HTTP/1.1 and h2 channels wrap the real one differently)."""
    t = getattr(proto, "transport", None)
    if t is None:
        t = getattr(getattr(proto, "_channel", None), "transport", None)
    return t


class TrackedChannel(_GenericHTTPChannelProtocol):  # type: ignore[misc]
    """twisted.web's HTTP/1.1-or-HTTP/2 channel, telling its site when the connection is gone.

    A subclass rather than a patched ``connectionLost``: the generic channel forwards attribute
    writes to its backing HTTP/1.1 channel, which it replaces by an ``H2Connection`` when ALPN
    picked h2, so a patched method would never run for HTTP/2 connections.
    """

    def connectionLost(self, reason: Any) -> None:
        try:
            self._channel.connectionLost(reason)
        finally:
            site = self._factory
            if site is not None and hasattr(site, "connection_gone"):
                site.connection_gone(self)


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


class _Channel(HTTPChannel):
    """twisted.web's HTTP/1.1 channel with two per-request costs cut (local address, header writes)."""

    _host: Any = None
    _head: bytes | None = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if not self._whole_request(data):
            super().dataReceived(data)

    def _whole_request(self, data: bytes) -> bool:
        """One complete request in one read (what clients send for a chat call): its head read in
        one pass instead of twisted.web's line-by-line state machine, then the same steps
        (``allHeadersReceived``, ``allContentReceived``).  Anything else -- a partial or pipelined
        read, chunked bodies, ``Expect``, a header twisted.web would refuse -- returns False
        before any state changes, and twisted.web reads it as always."""
        if not (self.line_mode and not self._buffer and not self._handlingRequest and self.persistent
                and self._transferDecoder is None and not self.length and not self.requests
                and self._HTTPChannel__first_line == 1 and not self._HTTPChannel__header):  # type: ignore[attr-defined]
            return False
        end = data.find(b"\r\n\r\n")
        if end < 0 or end > self.totalHeadersSize:
            return False
        lines = data[:end].split(b"\r\n")
        try:
            command, path, version = _parseRequestLine(lines[0])
        except ValueError:
            return False
        if len(lines) - 1 > self.maxHeaders:
            return False
        headers = []
        length, has_length = 0, False
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.match(name):
                return False
            value = value.strip(b" \t")
            if b"\x00" in value or b"\r" in value or b"\n" in value:
                return False
            lname = name.lower()
            if lname == b"content-length":
                if has_length or not value.isdigit():
                    return False  # twisted.web refuses a second length (400)
                length, has_length = int(value), True
            elif lname in (b"transfer-encoding", b"expect"):
                return False
            headers.append((name, value))
        body = data[end + 4:]
        if len(body) != length:
            return False
        # -- the request is whole and valid: twisted.web's steps, in its order
        self.resetTimeout()
        if INonQueuedRequestFactory.providedBy(self.requestFactory):
            request = self.requestFactory(self)
        else:
            request = self.requestFactory(self, len(self.requests))
        self.requests.append(request)
        add = request.requestHeaders.addRawHeader
        for name, value in headers:
            add(name, value)
        request.parseCookies()
        self.persistent = self.checkPersistence(request, version)
        request.gotLength(length)
        if body:
            request.handleContentChunk(body)
        if self.timeOut:
            self._savedTimeOut = self.setTimeout(None)
        self._handlingRequest = True
        self.setRawMode()
        request.requestReceived(command, path, version)
        return True

    def getHost(self) -> Any:  # noqa: N802 - HTTPChannel's name
        if self._host is None:
            self._host = self.transport.getHost()
        return self._host

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:  # noqa: N802
        """The status line and headers as one string, held until the body's first bytes (or the
        request's end) so both leave in one send (twisted.web hands the transport ~40 pieces)."""
        if not isinstance(headers, Headers):
            return super().writeHeaders(version, code, reason, headers)  # type: ignore[no-any-return]
        parts = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        self._head = b"".join(parts)
        return None

    def write(self, data: bytes) -> None:
        """An answer's first bytes (with its head) leave at once (`write_now`): that is the time
        to first byte.  Later writes queue as usual, so the reactor sends what a turn produced
        in one go (a stream's frames, its end) after the call's bookkeeping has run."""
        head, self._head = self._head, None
        if head is not None:
            write_now(self.transport, head + data)
        else:
            self.transport.write(data)

    def writeSequence(self, iovec: Any) -> None:  # noqa: N802
        head, self._head = self._head, None
        if head is not None:
            write_now(self.transport, head + b"".join(iovec))
        else:
            self.transport.writeSequence(iovec)

    def requestDone(self, request: Any) -> None:  # noqa: N802
        if self._head is not None:  # an answer without body bytes (HEAD, 204, 304)
            self.write(b"")
        super().requestDone(request)


def _tracked_channel(factory: Any) -> TrackedChannel:
    return TrackedChannel(_Channel())


class FproxySite(Site):
    requestFactory = LimitedRequest
    protocol = _tracked_channel
    on_request_done: Any = None
    active: Any = None
    #: POST paths served by the resource's fast lane (set by the service; see `LimitedRequest.process`)
    fast_paths: frozenset[bytes] = frozenset()
    debug_pid: bytes | None = None  # set in --workers mode: which worker answered

    def __init__(self, resource: Any, clock: Any, max_request_bytes: int, cors_origins: tuple[str, ...]) -> None:
        super().__init__(resource)
        # The gateway parses multipart itself (it needs file names); skipping twisted.web's form
        # parsing also skips its email-based Content-Type parsing, ~13 % of a passthrough call.
        self._parsePOSTFormSubmission = False
        self.connections: set[Any] = set()
        self._closed_waiters: list[Deferred[None]] = []
        self.clock = clock
        self.max_request_bytes = max_request_bytes
        self.cors_origins = tuple(o.encode() for o in cors_origins)
        self.noisy = False

    def log(self, request: Any) -> None:
        """Access lines are written by LimitedRequest (structured, one per request)."""

    def buildProtocol(self, addr: Any) -> Any:
        """Track connections, so a stop can flush and close them (not cut them with data unsent)."""
        proto = super().buildProtocol(addr)
        if proto is None:
            return None
        self.connections.add(proto)
        return proto

    def connection_gone(self, proto: Any) -> None:
        """A connection of ours was lost (`TrackedChannel.connectionLost`)."""
        self.connections.discard(proto)
        if not self.connections:
            waiters, self._closed_waiters = self._closed_waiters, []
            for d in waiters:
                d.callback(None)

    def close_connections(self) -> Deferred[None]:
        """Close every connection once its buffered bytes are written; fires when all are gone."""
        d: Deferred[None] = Deferred()
        if not self.connections:
            d.callback(None)
            return d
        self._closed_waiters.append(d)
        for proto in list(self.connections):
            transport = transport_of(proto)
            if transport is not None:
                transport.loseConnection()
        return d
