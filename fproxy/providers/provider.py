"""A configured upstream at run time: endpoints, auth headers, keys, concurrency, client."""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urlencode

from attrs import define, frozen
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet import error as neterror
from twisted.web.client import ResponseFailed
from twisted.web._newclient import RequestTransmissionFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from fproxy.config import ProviderConfig
from fproxy.ir.errors import GatewayError
from fproxy.limits.concurrency import ConcurrencyLimiter
from fproxy.providers import mock
from fproxy.providers.http import UpstreamClient, make_client
from fproxy.providers.keypool import KeyPool, KeyState

ANTHROPIC_VERSION = "2023-06-01"
CONTEXT_1M_BETA = "context-1m-2025-08-07"
_BEDROCK_PREFIX = re.compile(r"^bedrock[-_:]?", re.I)
_VERTEX_PREFIX = re.compile(r"^vertex[-_:]?", re.I)


@frozen
class Endpoint:
    """Where and how one call goes: the upstream's dialect, URL, model name and extra headers."""

    dialect: str
    url: bytes
    model: str
    headers: tuple[tuple[bytes, bytes], ...] = ()


def _url(base: str, path: str, query: dict[str, str] | None) -> bytes:
    url = base + path
    if query:
        url += ("&" if "?" in url else "?") + urlencode(query)
    return url.encode("utf-8")


@define(eq=False)
class Provider:
    config: ProviderConfig
    pool: KeyPool
    limiter: ConcurrencyLimiter
    client: UpstreamClient | None
    clock: Any

    @classmethod
    def build(cls, reactor: Any, config: ProviderConfig) -> Provider:
        client = None if config.dialect == "mock" else make_client(
            reactor, config.timeouts.connect, config.max_connections, config.ca_file)
        return cls(config, KeyPool.of(reactor, config.keys), ConcurrencyLimiter(config.max_concurrency,
                   config.queue_size), client, reactor)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def needs_key(self) -> bool:
        return self.config.auth != "none" and bool(self.config.keys)

    # ------------------------------------------------------------ endpoints
    def endpoint(self, model: str) -> Endpoint:
        c = self.config
        q = dict(c.query)
        if c.preset == "factory":
            return self._factory(model)
        if c.dialect == "openai-chat" or c.dialect == "mock":
            if c.preset == "azure" and "/deployments/" not in c.base_url:
                base = c.base_url.removesuffix("/openai") + f"/openai/deployments/{quote(model, safe='')}"
                return Endpoint("openai-chat", _url(base, "/chat/completions", q), model)
            return Endpoint("openai-chat" if c.dialect != "mock" else "mock", _url(c.base_url, "/chat/completions", q),
                            model)
        if c.dialect == "openai-responses":
            return Endpoint("openai-responses", _url(c.base_url, "/responses", q), model)
        if c.dialect == "anthropic":
            return Endpoint("anthropic", _url(c.base_url, "/v1/messages", q), model)
        raise GatewayError(500, f"provider {c.name}: dialect {c.dialect} has no endpoint")

    def _factory(self, model: str) -> Endpoint:
        base = self.config.base_url
        low = model.lower()
        if "bedrock" in low or "vertex" in low:
            which = "bedrock" if "bedrock" in low else "vertex"
            rx = _BEDROCK_PREFIX if which == "bedrock" else _VERTEX_PREFIX
            upstream = rx.sub("", model, count=1)
            return Endpoint("anthropic", _url(base, "/api/llm/a/v1/messages", None), upstream,
                            ((b"x-api-provider", f"{which}_anthropic".encode()),))
        if low.startswith("claude"):
            return Endpoint("anthropic", _url(base, "/api/llm/a/v1/messages", None), model)
        if low.startswith(("gemini", "glm", "kimi")):
            return Endpoint("openai-chat", _url(base, "/api/llm/o/v1/chat/completions", None), model)
        return Endpoint("openai-responses", _url(base, "/api/llm/o/v1/responses", None), model)

    # ------------------------------------------------------------ headers
    def headers(self, endpoint: Endpoint, key: KeyState | None, client_headers: Headers | None) -> Headers:
        h = Headers({b"content-type": [b"application/json"], b"user-agent": [b"fproxy"]})
        if key is not None:
            auth = self.config.auth
            if auth == "bearer":
                h.setRawHeaders(b"authorization", [b"Bearer " + key.key.encode()])
            elif auth == "x-api-key":
                h.setRawHeaders(b"x-api-key", [key.key.encode()])
            elif auth == "api-key":
                h.setRawHeaders(b"api-key", [key.key.encode()])
        if endpoint.dialect == "anthropic":
            version = client_headers.getRawHeaders(b"anthropic-version") if client_headers else None
            h.setRawHeaders(b"anthropic-version", [version[0] if version else ANTHROPIC_VERSION.encode()])
            betas = list(client_headers.getRawHeaders(b"anthropic-beta", [])) if client_headers else []
            if betas:
                h.setRawHeaders(b"anthropic-beta", [b",".join(betas)])
        for name, value in endpoint.headers:
            h.setRawHeaders(name, [value])
        for name, value in self.config.headers.items():
            if name.lower() == "anthropic-beta" and h.hasHeader(b"anthropic-beta"):
                merged = h.getRawHeaders(b"anthropic-beta")[0] + b"," + value.encode()
                h.setRawHeaders(b"anthropic-beta", [merged])
            else:
                h.setRawHeaders(name.encode(), [value.encode()])
        return h

    # ------------------------------------------------------------ sending
    async def send(self, endpoint: Endpoint, key: KeyState | None, body: bytes,
                   client_headers: Headers | None, parsed: dict[str, Any], request_id: str) -> IResponse:
        """POST the body; the Deferred fires with the response once its headers are in."""
        if self.client is None:
            return mock.respond(self.clock, parsed, endpoint.model, self.config.mock_reply, self.config.mock_delay,
                                "chatcmpl-mock" + request_id[-12:])  # type: ignore[return-value]
        t = self.config.timeouts
        d: Deferred[IResponse] = self.client.http.request(
            "POST", endpoint.url, data=body, headers=self.headers(endpoint, key, client_headers),
            unbuffered=True, allow_redirects=False)
        timed_out: list[bool] = []

        def on_deadline() -> None:
            timed_out.append(True)
            d.cancel()  # before headers, cancelling aborts the connection

        deadline = self.clock.callLater(t.first_byte, on_deadline)
        try:
            return await d
        except Exception as e:
            if timed_out:
                raise GatewayError(504, f"upstream {self.name} did not answer within {t.first_byte:g}s",
                                   code="upstream_timeout", retryable=True) from None
            if isinstance(e, CancelledError):
                raise
            if isinstance(e, (neterror.ConnectError, neterror.DNSLookupError, neterror.TimeoutError,
                              neterror.ConnectingCancelledError)):
                raise GatewayError(502, f"could not connect to upstream {self.name}: {type(e).__name__}",
                                   code="upstream_unreachable", retryable=True) from None
            if isinstance(e, (ResponseFailed, ResponseNeverReceived, RequestTransmissionFailed)):
                raise GatewayError(502, f"upstream {self.name} closed the connection without an answer",
                                   code="upstream_error", retryable=True) from None
            raise
        finally:
            if deadline.active():
                deadline.cancel()

    def close(self) -> Deferred[None] | None:
        return self.client.close() if self.client is not None else None
