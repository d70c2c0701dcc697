"""Upstream HTTP plumbing: one pooled treq client per provider, bounded body reads."""
from __future__ import annotations

from typing import Any

from attrs import define
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    PotentialDataLoss,
    ResponseDone,
)
from twisted.web.iweb import IResponse

from fproxy.ir.errors import GatewayError
from fproxy.providers.pool import UpstreamPool


@define
class UpstreamClient:
    """``wire`` carries the model calls (`fproxy.providers.wire`: Agent's per-request machinery
    was a quarter of a passthrough call's CPU, measured in bench/RESULTS.md); ``http`` (treq over
    Twisted's own pool) serves the rare side calls such as OAuth refreshes."""

    http: HTTPClient
    pool: HTTPConnectionPool
    agent: Agent
    wire: UpstreamPool

    def close(self) -> Deferred[None]:
        return gatherResults([self.pool.closeCachedConnections(), self.wire.closeCachedConnections()]
                             ).addCallback(lambda _: None)


def make_client(reactor: Any, connect_timeout: float, max_connections: int = 64,
                ca_file: str | None = None) -> UpstreamClient:
    """A persistent pool (connections reused across requests) and a treq client over it."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max_connections
    pool.cachedConnectionTimeout = 110
    policy = BrowserLikePolicyForHTTPS()
    if ca_file:
        from twisted.internet.ssl import optionsForClientTLS

        root = trust_root(ca_file)

        class _Policy(BrowserLikePolicyForHTTPS):
            def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
                return optionsForClientTLS(hostname.decode("ascii"), trustRoot=root)

        policy = _Policy()
    agent = Agent(reactor, contextFactory=policy, connectTimeout=connect_timeout, pool=pool)
    wire = UpstreamPool(reactor, policy, connect_timeout, max_idle=max_connections)
    return UpstreamClient(HTTPClient(agent), pool, agent, wire)


def trust_root(ca_file: str) -> Any:
    """The certificates of a PEM file (one CA or a bundle) as a trust root for upstream TLS.

    Read once, when the provider is built (at start or on a reload), never on a request path.
    The upstream's name is then checked against its certificate by service-identity.

    @raise ConfigError: naming ``ca_file`` when the file is missing or holds no certificate.
    """
    import re

    from OpenSSL.crypto import Error as CryptoError
    from twisted.internet.ssl import Certificate, trustRootFromCertificates

    from fproxy.config import ConfigError

    try:
        with open(ca_file, "rb") as f:
            text = f.read()
        pems = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, flags=re.DOTALL)
        certs = [Certificate.loadPEM(p) for p in pems]
    except OSError as e:
        raise ConfigError(f'ca_file: cannot read "{ca_file}": {e.strerror}') from None
    except (CryptoError, ValueError) as e:
        raise ConfigError(f'ca_file: "{ca_file}" holds a broken certificate: {e}') from None
    if not certs:
        raise ConfigError(f'ca_file: "{ca_file}" holds no PEM certificate')
    return trustRootFromCertificates(certs)


class _Collector(Protocol):
    """Collects a body up to ``limit`` bytes into ``done``; its own timer bounds the wait."""

    def __init__(self, limit: int) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._limit = limit
        self.done: Deferred[bytes] = Deferred(self._cancel)
        self.timer: Any = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self.transport.stopProducing()
            self._settle(GatewayError(502, f"the upstream answer exceeded {self._limit} bytes"))
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # noqa: N802
        if self.done.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self._settle(b"".join(self._parts))
        else:
            self._settle(GatewayError(502, "the upstream connection dropped while sending its answer",
                                      retryable=True))

    def timed_out(self, timeout: float) -> None:
        self.timer = None
        if not self.done.called:
            if self.transport is not None:
                self.transport.stopProducing()
            self._settle(GatewayError(504, f"the upstream answer took longer than {timeout:g}s",
                                      code="upstream_timeout"))

    def _cancel(self, d: Deferred[bytes]) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.transport is not None:
            self.transport.stopProducing()

    def _settle(self, result: bytes | GatewayError) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if isinstance(result, GatewayError):
            self.done.errback(result)
        else:
            self.done.callback(result)


def read_body(response: IResponse, limit: int, clock: IReactorTime, timeout: float) -> Deferred[bytes]:
    """The whole body, at most ``limit`` bytes, within ``timeout``; cancelling closes the connection."""
    c = _Collector(limit)
    response.deliverBody(c)
    if not c.done.called:  # a small answer is often whole already: then no timer at all
        c.timer = clock.callLater(timeout, c.timed_out, timeout)
    return c.done
