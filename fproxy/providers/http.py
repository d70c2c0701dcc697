"""Upstream HTTP plumbing: one pooled treq client per provider, bounded body reads."""
from __future__ import annotations

from typing import Any

from attrs import define
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, TimeoutError, gatherResults
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
from fproxy.providers.wire import UpstreamPool


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
    def __init__(self, limit: int, done: Deferred[bytes]) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._limit = limit
        self._done = done

    def dataReceived(self, data: bytes) -> None:
        if self._done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self.transport.stopProducing()
            self._done.errback(GatewayError(502, f"the upstream answer exceeded {self._limit} bytes"))
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._done.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(b"".join(self._parts))
        else:
            self._done.errback(GatewayError(502, "the upstream connection dropped while sending its answer",
                                            retryable=True))


def read_body(response: IResponse, limit: int, clock: IReactorTime, timeout: float) -> Deferred[bytes]:
    """The whole body, at most ``limit`` bytes, within ``timeout``; cancelling closes the connection."""
    holder: list[_Collector] = []

    def cancel(d: Deferred[bytes]) -> None:
        if holder and holder[0].transport is not None:
            holder[0].transport.stopProducing()

    d: Deferred[bytes] = Deferred(cancel)
    c = _Collector(limit, d)
    holder.append(c)
    response.deliverBody(c)

    def on_timeout(f: Failure) -> Failure:
        if f.check(TimeoutError):
            raise GatewayError(504, f"the upstream answer took longer than {timeout:g}s", code="upstream_timeout")
        return f

    d.addTimeout(timeout, clock)
    d.addErrback(on_timeout)
    return d
