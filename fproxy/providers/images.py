"""Fetching ``http(s)`` image URLs for upstreams that need inline images.

The guard is applied at connect time, to the address actually dialled (so a DNS answer that
changes between a check and the connection cannot slip through): private, loopback,
link-local, multicast and reserved addresses are refused unless ``images.allow_private``.
Bodies are capped (``images.max_bytes``) and timed (``images.timeout``); only ``image/*``
answers are accepted.
"""
from __future__ import annotations

import base64
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import attrs
from treq.client import HTTPClient
from twisted.internet import threads
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from fproxy.config import ImagesConfig
from fproxy.ir.errors import GatewayError
from fproxy.ir.request import ChatRequest, ImagePart, Message, ToolResultPart
from fproxy.providers.http import read_body


class ImageRefused(Exception):
    """The image URL points somewhere the gateway will not fetch from."""


def address_allowed(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return not (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
                or addr.is_reserved or addr.is_unspecified)


class _GuardedEndpoint:
    def __init__(self, reactor: Any, host: str, port: int, tls: bool, allow_private: bool, timeout: float) -> None:
        self._reactor, self._host, self._port, self._tls = reactor, host, port, tls
        self._allow_private, self._timeout = allow_private, timeout

    def connect(self, factory: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._connect(factory))

    async def _connect(self, factory: Any) -> Any:
        infos = await threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), socket.getaddrinfo,
                                                self._host, self._port, 0, socket.SOCK_STREAM)
        candidates = [info[4][0] for info in infos]
        allowed = [ip for ip in candidates if self._allow_private or address_allowed(ip)]
        if not allowed:
            raise ImageRefused(f"image host {self._host} resolves to a private or local address")
        ip = allowed[0]
        cls = TCP6ClientEndpoint if ":" in ip else TCP4ClientEndpoint
        ep: Any = cls(self._reactor, ip, self._port, timeout=self._timeout)
        if self._tls:
            ep = wrapClientTLS(optionsForClientTLS(self._host), ep)
        return await ep.connect(factory)


@implementer(IAgentEndpointFactory)
class _GuardedEndpointFactory:
    def __init__(self, reactor: Any, cfg: ImagesConfig) -> None:
        self._reactor, self._cfg = reactor, cfg

    def endpointForURI(self, uri: Any) -> Any:
        host = uri.host.decode("idna")
        return _GuardedEndpoint(self._reactor, host, uri.port, uri.scheme == b"https", self._cfg.allow_private,
                                self._cfg.timeout)


class ImageFetcher:
    def __init__(self, reactor: Any, cfg: ImagesConfig) -> None:
        self._reactor = reactor
        self._cfg = cfg
        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent.usingEndpointFactory(reactor, _GuardedEndpointFactory(reactor, cfg), pool=pool)
        self._http = HTTPClient(agent)

    async def fetch(self, url: str) -> tuple[str, str]:
        """(media type, base64 data) of the image at ``url``; GatewayError 400 when refused or broken."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise GatewayError(400, f"image URL {url[:100]!r}: only http(s) URLs can be fetched", code="invalid_image_url")
        d = self._http.get(url, unbuffered=True, allow_redirects=False)
        d.addTimeout(self._cfg.timeout, self._reactor)
        try:
            response = await d
        except ImageRefused as e:
            raise GatewayError(400, f"image URL {url[:100]!r} refused: {e}", code="image_url_refused") from None
        except Exception as e:  # connection refused, DNS failure, timeout: the client's URL is unusable
            if isinstance(e, GatewayError):
                raise
            raise GatewayError(400, f"image URL {url[:100]!r} could not be fetched ({type(e).__name__})",
                               code="image_fetch_failed") from None
        if response.code != 200:
            await read_body(response, 64 * 1024, self._reactor, self._cfg.timeout).addErrback(lambda _: b"")
            raise GatewayError(400, f"image URL {url[:100]!r} answered {response.code}", code="image_fetch_failed")
        ctype = (response.headers.getRawHeaders(b"content-type") or [b""])[0].split(b";")[0].strip().decode()
        if not ctype.startswith("image/"):
            response.deliverBody(_Discard())
            raise GatewayError(400, f"image URL {url[:100]!r} is not an image ({ctype or 'no type'})",
                               code="image_fetch_failed")
        try:
            data = await read_body(response, self._cfg.max_bytes, self._reactor, self._cfg.timeout)
        except GatewayError as e:
            raise GatewayError(400, f"image URL {url[:100]!r}: {e.message}", code="image_fetch_failed") from None
        return ctype, base64.b64encode(data).decode()

    async def inline(self, req: ChatRequest) -> ChatRequest:
        """The request with every http(s) image URL replaced by its fetched bytes."""
        urls = sorted({p.url for p in _images(req) if p.url and p.url.startswith(("http://", "https://"))})
        if not urls:
            return req
        fetched = await gatherResults([Deferred.fromCoroutine(self.fetch(u)) for u in urls], consumeErrors=True) \
            .addErrback(lambda f: f.value.subFailure.raiseException())
        by_url = dict(zip(urls, fetched, strict=True))

        def swap(p: Any) -> Any:
            if isinstance(p, ImagePart) and p.url in by_url:
                mt, data = by_url[p.url]
                return attrs.evolve(p, media_type=mt, data=data, url=None)
            if isinstance(p, ToolResultPart):
                return attrs.evolve(p, content=tuple(swap(c) for c in p.content))
            return p

        msgs = tuple(Message(m.role, tuple(swap(p) for p in m.parts)) for m in req.messages)
        return attrs.evolve(req, messages=msgs)


def _images(req: ChatRequest) -> list[ImagePart]:
    out: list[ImagePart] = []
    for m in req.messages:
        for p in m.parts:
            if isinstance(p, ImagePart):
                out.append(p)
            elif isinstance(p, ToolResultPart):
                out.extend(c for c in p.content if isinstance(c, ImagePart))
    return out


class _Discard:
    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass

