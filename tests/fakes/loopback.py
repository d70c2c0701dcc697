"""Loopback HTTP plumbing shared by the fakes: a Site that can close all its connections,
a one-function resource, a one-image server and a free-port helper."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class _Channel(HTTPChannel):
    """An HTTP/1.1 channel its site can find and abort when the fake stops."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.lost: Deferred[None] = Deferred()
        self.factory.channels.add(self)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.factory.channels.discard(self)
        self.lost.callback(None)


class TrackingSite(Site):
    """A quiet Site that tracks its open connections, so a test can close them all."""

    protocol = _Channel
    noisy = False

    def __init__(self, resource: Resource, reactor: Any) -> None:
        super().__init__(resource, reactor=reactor)
        self.channels: set[_Channel] = set()

    def log(self, request: Request) -> None:
        """No access log."""

    async def close_all(self) -> None:
        """Abort every open connection and wait until each is gone."""
        channels = list(self.channels)
        for channel in channels:
            channel.transport.abortConnection()
        await DeferredList([c.lost for c in channels])


class Leaf(Resource):
    """A resource answering every path with one render function."""

    isLeaf = True

    def __init__(self, render: Callable[[Request], Any]) -> None:
        super().__init__()
        self._render = render

    def render(self, request: Request) -> Any:
        return self._render(request)


class ImageServer:
    """Serves one image on loopback (any path); calling the object stops it."""

    def __init__(self, reactor: Any, data: bytes, content_type: str) -> None:
        self.requests: list[str] = []  # paths fetched
        self._data, self._type = data, content_type
        self._site = TrackingSite(Leaf(self._render), reactor)
        self._port = reactor.listenTCP(0, self._site, interface="127.0.0.1")
        ext = content_type.rsplit("/", 1)[-1].replace("jpeg", "jpg")
        self.url = f"http://127.0.0.1:{self._port.getHost().port}/image.{ext}"

    def _render(self, request: Request) -> bytes:
        self.requests.append(request.path.decode("latin-1"))
        request.setHeader("content-type", self._type)
        return self._data

    def __call__(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await self._port.stopListening()
        await self._site.close_all()


def start_image_server(reactor: Any, data: bytes, content_type: str = "image/png") -> tuple[str, ImageServer]:
    """Serve C{data} at a loopback URL; return (url, stop), where C{await stop()} shuts it.

    C{stop.requests} lists the paths fetched, to check that the gateway did fetch it.
    """
    server = ImageServer(reactor, data, content_type)
    return server.url, server


def free_port() -> int:
    """A loopback port nothing listens on right now (for connection-refused tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
