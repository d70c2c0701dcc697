"""A fake upstream mounted under a path prefix, like Factory's ``{base}/api/llm/a/v1/messages``.

    fake = await start_prefixed_fake(reactor, "/api/llm/a", dialect="anthropic", keys=["fk-1"])
    ...  # point the gateway at fake.base_url (the bare origin)
    assert fake.paths == ["/api/llm/a/v1/messages"]
    assert fake.upstream.requests[0].key == "fk-1"
    await fake.stop()

The requests are answered by an ordinary L{FakeUpstream} (same wire validation, scripts and
records) after the prefix is stripped; a path outside the prefix gets a bare 404.
"""
from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.web.server import Request

from tests.fakes.loopback import Leaf, TrackingSite
from tests.fakes.upstream import FakeUpstream

__all__ = ["PrefixedFake", "start_prefixed_fake"]


class PrefixedFake:
    """A L{FakeUpstream} reachable only under ``prefix``; ``paths`` lists every path asked for."""

    def __init__(self, reactor: Any, prefix: str, dialect: str, keys: list[str] | None,
                 models: list[str] | None) -> None:
        self.prefix = prefix.rstrip("/")
        self.upstream = FakeUpstream(reactor, dialect, keys, models)
        self.paths: list[str] = []  # the original (prefixed) request paths, in arrival order
        self.base_url = ""  # the bare origin, set by start_prefixed_fake
        self._inner = self.upstream.resource()

    def _render(self, request: Request) -> Any:
        uri = request.uri.decode("latin-1")
        path = uri.split("?", 1)[0]
        self.paths.append(path)
        prefix = self.prefix.encode("latin-1")
        if not (request.uri.startswith(prefix + b"/")):
            request.setResponseCode(404)
            request.setHeader("content-type", "text/plain")
            return b"not under " + prefix
        request.uri = request.uri[len(prefix):]
        request.path = request.path[len(prefix):]
        return self._inner.render(request)

    async def stop(self) -> None:
        await self.upstream.stop()


async def start_prefixed_fake(reactor: Any, prefix: str, dialect: str = "anthropic",
                              keys: list[str] | None = None, models: list[str] | None = None) -> PrefixedFake:
    """Listen on 127.0.0.1 (a free port); ``base_url`` is the bare origin.  Always ``await fake.stop()``."""
    fake = PrefixedFake(reactor, prefix, dialect, keys, models)
    up = fake.upstream
    # the FakeUpstream owns the listener so its stop() closes port, connections and answers
    up._site = TrackingSite(Leaf(fake._render), reactor)
    up._port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(up._site)
    up.port = up._port.getHost().port
    fake.base_url = up.base_url = f"http://127.0.0.1:{up.port}"
    return fake
