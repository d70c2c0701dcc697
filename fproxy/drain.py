"""Graceful stop: wait for in-flight requests (streams included), up to a deadline.

twisted.web's Site does not track requests; `ActiveRequests` does (add on arrival, remove
when the request finishes or its client leaves).  Listeners stop first (they are the last
children of the service), so nothing new arrives while we wait.
"""
from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError
from twisted.logger import Logger

from fproxy.ir.errors import GatewayError

log = Logger()


class ActiveRequests:
    def __init__(self) -> None:
        self._requests: set[Any] = set()
        self._idle_waiters: list[Deferred[None]] = []

    def __len__(self) -> int:
        return len(self._requests)

    def add(self, request: Any) -> None:
        self._requests.add(request)

    def remove(self, request: Any) -> None:
        self._requests.discard(request)
        if not self._requests:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def when_idle(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if not self._requests:
            d.callback(None)
        else:
            self._idle_waiters.append(d)
        return d

    def abort_all(self) -> None:
        """Past the deadline: end streams in-band, cut the rest."""
        for request in list(self._requests):
            pipe = getattr(request, "pipe", None)
            if pipe is not None:
                pipe.shutdown(GatewayError(503, "the gateway is shutting down", code="shutting_down"))
            elif request.channel is not None:
                if request.channel.transport is not None:  # HTTP/1.1: close the connection
                    request.channel.transport.loseConnection()
                elif hasattr(request.channel, "abortConnection"):  # an HTTP/2 stream (no transport): reset it
                    request.channel.abortConnection()


class DrainService(Service):
    def __init__(self, active: ActiveRequests, grace: float, clock: Any, site: Any = None) -> None:
        self._active = active
        self._grace = grace
        self._clock = clock
        self.site = site

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        if len(self._active):
            log.info("draining {n} in-flight request(s), up to {grace}s", n=len(self._active), grace=self._grace)
        try:
            await self._active.when_idle().addTimeout(self._grace, self._clock)
        except TimeoutError:
            log.warn("drain deadline reached with {n} request(s) still running: closing them", n=len(self._active))
            self._active.abort_all()
        if self.site is not None:
            # the last answers may still sit in transport buffers: flush them before the reactor stops
            try:
                await self.site.close_connections().addTimeout(2.0, self._clock)
            except TimeoutError:
                from fproxy.web.request import transport_of

                for proto in list(self.site.connections):
                    transport = transport_of(proto)
                    if transport is not None:
                        transport.abortConnection()
