"""Persistent upstream connections: `UpstreamPool`, what the provider's calls go through.

A request is matched to an idle connection of its (scheme, host, port) or a new one made
through Twisted's endpoints (``HostnameEndpoint``, TLS by ``wrapClientTLS`` with the trust
policy the pool was given); `fproxy.providers.wire` speaks HTTP/1.1 on it.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from fproxy.codecs.http1 import build_head
from fproxy.providers.wire import _IDLE, Pending, Response, _Connection


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
            head = build_head(method, target.path, target.key[1], target.port, target.tls, headers)
            if len(self._heads) > 1024:
                self._heads.clear()
            self._heads[hk] = (headers, head)
        data = head + b"content-length: %d\r\n\r\n" % len(body) + body
        pending = Pending()
        self.start(target, data, pending, retry=True)
        return pending.d

    def start(self, target: _Target, data: bytes, pending: Pending, retry: bool) -> None:
        """Send ``data`` on an idle connection to ``target`` or a new one; ``retry``: once more on a
        fresh connection if a reused one turns out closed (`wire._Connection.connectionLost`)."""
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


