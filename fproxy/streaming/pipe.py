"""The streaming pipe: upstream body protocol and downstream push producer in one object.

Flow control runs both ways with no buffer of ours in between: when the client stops
reading, twisted.web pauses us and we pause the upstream transport; when the client goes
away, we stop the upstream transport (closing that connection) at once.  Timers: ``idle``
(no upstream bytes), ``total`` (whole stream) and keep-alive frames while the upstream is
silent.  However the stream ends, the client gets a well-formed ending in its dialect and
`done` fires exactly once.
"""
from __future__ import annotations

from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone
from twisted.web.iweb import IRequest
from zope.interface import implementer

from fproxy.ir.errors import GatewayError


class Transcoder(TypingProtocol):
    """Upstream bytes -> client frames.  Implemented in `fproxy.streaming.transcode`."""

    terminal: bool  # the upstream's terminal event was seen

    def feed(self, data: bytes) -> list[bytes]: ...

    def close(self) -> list[bytes]:
        """The upstream body ended cleanly: the closing frames (an error if truncated)."""

    def error(self, err: GatewayError) -> list[bytes]: ...

    def keepalive(self) -> bytes: ...


@implementer(IPushProducer)
class StreamPipe(Protocol):
    """Relays one upstream stream to one client request."""

    def __init__(
        self,
        request: IRequest,
        transcoder: Transcoder,
        clock: IReactorTime,
        idle: float,
        total: float,
        keepalive: float,
    ) -> None:
        self._request: IRequest | None = request
        self._transcoder = transcoder
        self._clock = clock
        self._idle = idle
        self._keepalive = keepalive
        self._timers: list[IDelayedCall] = []
        self._idle_call: IDelayedCall | None = None
        self._ka_call: IDelayedCall | None = None
        self._total_call: IDelayedCall | None = clock.callLater(total, self._fail, GatewayError(
            504, f"the upstream stream exceeded the total timeout of {total:g}s", code="upstream_timeout"))
        self.outcome = "running"  # completed | error | client_closed
        self.error: GatewayError | None = None
        self.first_byte_at: float | None = None
        self.bytes_out = 0
        self.done: Deferred[None] = Deferred(lambda _: self.abort("cancelled"))
        self._paused = False

    # ------------------------------------------------------------ upstream side
    def connectionMade(self) -> None:
        if self._request is None:
            self.transport.stopProducing()
            return
        try:
            self._request.registerProducer(self, True)
        except (RuntimeError, AttributeError):
            # the client left before we started
            self.abort("client_closed")
            return
        self._idle_call = self._clock.callLater(self._idle, self._on_idle)
        if self._keepalive > 0:
            self._ka_call = self._clock.callLater(self._keepalive, self._on_keepalive)

    def dataReceived(self, data: bytes) -> None:
        if self._request is None:
            return
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(self._idle)
        try:
            frames = self._transcoder.feed(data)
        except ValueError as e:  # an oversize or undecodable event
            self._fail(GatewayError(502, f"the upstream sent a broken stream: {e}"))
            return
        if frames:
            self._write(frames)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._request is None:
            self._settle()
            return
        if reason is not None and reason.check(ResponseDone, PotentialDataLoss):
            frames = self._transcoder.close()
            if not self._transcoder.terminal:
                self.outcome = "error"
                self.error = GatewayError(502, "the upstream closed the stream before its end")
            self._write(frames)
        else:
            err = GatewayError(502, "the upstream connection dropped mid-stream")
            self._write(self._transcoder.error(err))
            self.outcome, self.error = "error", err
        self._finish_request()

    # ------------------------------------------------------------ client side (IPushProducer)
    def pauseProducing(self) -> None:
        self._paused = True
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self.transport is not None:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.abort("client_closed")

    # ------------------------------------------------------------ internals
    def _write(self, frames: list[bytes]) -> None:
        req = self._request
        if req is None:
            return
        if not frames:
            return
        if self.first_byte_at is None:
            self.first_byte_at = self._clock.seconds()
        data = frames[0] if len(frames) == 1 else b"".join(frames)  # one HTTP chunk per upstream read
        self.bytes_out += len(data)
        req.write(data)
        if self._ka_call is not None and self._ka_call.active():
            self._ka_call.reset(self._keepalive)

    def _on_idle(self) -> None:
        self._idle_call = None
        self._fail(GatewayError(504, f"the upstream was silent for {self._idle:g}s", code="upstream_timeout"))

    def _on_keepalive(self) -> None:
        self._ka_call = None
        if self._request is not None and not self._paused:
            self._request.write(self._transcoder.keepalive())
        if self._request is not None:
            self._ka_call = self._clock.callLater(self._keepalive, self._on_keepalive)

    def _fail(self, err: GatewayError) -> None:
        """End the stream in-band with ``err`` and drop the upstream connection."""
        if self._request is None:
            return
        self.outcome, self.error = "error", err
        self._write(self._transcoder.error(err))
        self._finish_request()
        if self.transport is not None:
            self.transport.stopProducing()

    def shutdown(self, err: GatewayError) -> None:
        """End the stream in-band because the gateway stops (the drain deadline passed)."""
        self._fail(err)

    def abort(self, outcome: str) -> None:
        """The client went away (or we were cancelled): close the upstream, end quietly."""
        if self._request is None:
            return
        req, self._request = self._request, None
        if self.outcome == "running":
            self.outcome = outcome
        try:
            req.unregisterProducer()
        except (RuntimeError, AttributeError):
            pass
        if self.transport is not None:
            self.transport.stopProducing()
        self._settle()

    def _finish_request(self) -> None:
        req, self._request = self._request, None
        if req is None:
            return
        if self.outcome == "running":
            self.outcome = "completed"
        try:
            req.unregisterProducer()
        except (RuntimeError, AttributeError):
            pass
        if not getattr(req, "_disconnected", False) and not getattr(req, "finished", False):
            req.finish()
        self._settle()

    def _settle(self) -> None:
        for name in ("_idle_call", "_ka_call", "_total_call"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)
        if not self.done.called:
            self.done.callback(None)

