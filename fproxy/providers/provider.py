"""A configured upstream at run time: endpoints, auth headers, keys, concurrency, client."""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urlencode

import attrs
from attrs import define, field, frozen
from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred
from twisted.web._newclient import RequestTransmissionFailed, ResponseNeverReceived
from twisted.web.client import URI, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from fproxy import catalogue
from fproxy.codecs.anthropic import MIN_THINKING_BUDGET, THINKING_ANSWER_ROOM
from fproxy.config import ConfigError, ProviderConfig
from fproxy.ir.errors import GatewayError
from fproxy.limits.concurrency import ConcurrencyLimiter
from fproxy.providers import mock
from fproxy.providers.credentials import (
    CredentialSource,
    OAuthSource,
    build_source,
    chatgpt_account_id,
    looks_like_source,
)
from fproxy.providers.http import UpstreamClient, make_client
from fproxy.providers.keypool import KeyPool, KeyState
from fproxy.providers.presets import AUTO_STRIP, AZURE_API_VERSION

ANTHROPIC_VERSION = "2023-06-01"
CONTEXT_1M_BETA = catalogue.CONTEXT_1M_BETA
VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
#: the body field(s) that cap the answer's length, per upstream dialect
MAX_TOKENS_FIELDS = {
    "openai-chat": ("max_tokens", "max_completion_tokens"),
    "mock": ("max_tokens", "max_completion_tokens"),
    "anthropic": ("max_tokens",),
    "openai-responses": ("max_output_tokens",),
}
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
    _header_cache: dict[Any, Headers] = field(factory=dict)

    @classmethod
    def build(cls, reactor: Any, config: ProviderConfig) -> Provider:
        """@raise ConfigError: naming the provider, when its ``ca_file`` cannot be used."""
        try:
            client = None if config.dialect == "mock" else make_client(
                reactor, config.timeouts.connect, config.max_connections, config.ca_file)
        except ConfigError as e:
            raise ConfigError(f'provider "{config.name}": {e}') from None
        return cls(config, _key_pool(reactor, config, client), ConcurrencyLimiter(config.max_concurrency,
                   config.queue_size), client, reactor)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def needs_key(self) -> bool:
        return self.config.auth != "none" and bool(self.pool.keys)

    async def resolve_key(self, key: KeyState) -> None:
        """Put the current value of a credential-source key into ``key`` (fetched when stale).

        Static keys are left alone.  @raise GatewayError: 503 naming the provider when the source fails.
        """
        if key.source is not None:
            cred = await key.source.get()
            key.key, key.extra_headers = cred.token, cred.headers

    # ------------------------------------------------------------ endpoints
    def endpoint(self, model: str) -> Endpoint:
        c = self.config
        q = dict(c.query)
        if c.preset == "factory":
            return self._factory(model)
        if c.dialect == "openai-chat" or c.dialect == "mock":
            if c.preset == "azure":
                return self._azure(model, q)
            return Endpoint("openai-chat" if c.dialect != "mock" else "mock", _url(c.base_url, "/chat/completions", q),
                            model)
        if c.dialect == "openai-responses":
            return Endpoint("openai-responses", _url(c.base_url, "/responses", q), model)
        if c.dialect == "anthropic":
            if c.preset == "vertex-anthropic":
                return Endpoint("anthropic", _url(c.base_url, f"/{quote(model, safe='@.')}:rawPredict", q), model)
            return Endpoint("anthropic", _url(c.base_url, "/v1/messages", q), model)
        raise GatewayError(500, f"provider {c.name}: dialect {c.dialect} has no endpoint")

    def _azure(self, deployment: str, query: dict[str, str]) -> Endpoint:
        """``{resource}/openai/deployments/{deployment}/chat/completions?api-version=...``.

        ``base_url`` is the resource endpoint (or already a deployment URL, kept as is); the
        route's upstream model is the deployment name.
        """
        base = self.config.base_url
        if "/deployments/" not in base:
            base = base.removesuffix("/openai") + f"/openai/deployments/{quote(deployment, safe='')}"
        q = {"api-version": self.config.api_version or AZURE_API_VERSION, **query}
        return Endpoint("openai-chat", _url(base, "/chat/completions", q), deployment)

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
            if self.config.context_1m and catalogue.supports_1m(endpoint.model) \
                    and not any(CONTEXT_1M_BETA.encode() in b for b in betas):
                betas.append(CONTEXT_1M_BETA.encode())
            if betas:
                h.setRawHeaders(b"anthropic-beta", [b",".join(betas)])
        if key is not None:
            for name, value in key.extra_headers:  # headers that came with a credential (e.g. GitLab's)
                h.setRawHeaders(name.encode(), [value.encode()])
            if self.config.preset == "chatgpt-codex" and not h.hasHeader(b"chatgpt-account-id") \
                    and not any(n.lower() == "chatgpt-account-id" for n in self.config.headers):
                account = chatgpt_account_id(key.key)
                if account:
                    h.setRawHeaders(b"chatgpt-account-id", [account.encode()])
        for name, value in endpoint.headers:
            h.setRawHeaders(name, [value])
        for name, value in self.config.headers.items():
            if name.lower() == "anthropic-beta" and h.hasHeader(b"anthropic-beta"):
                merged = h.getRawHeaders(b"anthropic-beta")[0] + b"," + value.encode()
                h.setRawHeaders(b"anthropic-beta", [merged])
            else:
                h.setRawHeaders(name.encode(), [value.encode()])
        return h

    def _cached_headers(self, endpoint: Endpoint, key: KeyState | None, client_headers: Headers | None) -> Headers:
        """`headers()`, built once per distinct input and reused (Agent does not mutate them).

        They include ``Host``, so Agent does not copy them to add it.
        """
        ant: tuple[Any, ...] = ()
        if endpoint.dialect == "anthropic" and client_headers is not None:
            ant = (tuple(client_headers.getRawHeaders(b"anthropic-version", ())),
                   tuple(client_headers.getRawHeaders(b"anthropic-beta", ())))
        ck = (endpoint.url, endpoint.model, endpoint.headers, key.key if key else None,
              key.extra_headers if key else None, ant)
        h = self._header_cache.get(ck)
        if h is None:
            h = self.headers(endpoint, key, client_headers)
            if not h.hasHeader(b"host"):
                h.setRawHeaders(b"host", [_host_header(endpoint.url)])
            if len(self._header_cache) > 512:
                self._header_cache.clear()
            self._header_cache[ck] = h
        return h

    # ------------------------------------------------------------ last touches
    def finish_request(self, endpoint: Endpoint, body: dict[str, Any]) -> Endpoint:
        """Provider-specific last changes to an upstream body (in place); returns the endpoint to use.

        Runs after passthrough preparation or translation alike: an upstream that only streams
        is asked for a stream (`_whole` collects it for a non-stream client); ``max_tokens`` is
        clamped to the model's known output limit; a preset's own ``"auto"`` strips; Vertex
        wants the model in the URL, ``anthropic_version`` in the body and ``:streamRawPredict``
        for streams.
        """
        c = self.config
        if c.stream_only and not body.get("stream"):
            body["stream"] = True
            if endpoint.dialect == "openai-chat":
                body["stream_options"] = {"include_usage": True}
        clamp_max_tokens(endpoint.dialect, body, catalogue.max_output_for(endpoint.model))
        if c.strip_params == "auto":
            for name in AUTO_STRIP.get(c.preset or "", ()):
                body.pop(name, None)
        if c.preset == "vertex-anthropic" and endpoint.dialect == "anthropic":
            body.pop("model", None)
            body.setdefault("anthropic_version", VERTEX_ANTHROPIC_VERSION)
            if body.get("stream"):
                endpoint = attrs.evolve(endpoint, url=endpoint.url.replace(b":rawPredict", b":streamRawPredict", 1))
        return endpoint

    # ------------------------------------------------------------ sending
    async def send(self, endpoint: Endpoint, key: KeyState | None, body: bytes,
                   client_headers: Headers | None, parsed: dict[str, Any], request_id: str) -> IResponse:
        """POST the body; the Deferred fires with the response once its headers are in."""
        if self.client is None:
            return mock.respond(self.clock, parsed, endpoint.model, self.config.mock_reply, self.config.mock_delay,
                                "chatcmpl-mock" + request_id[-12:])  # type: ignore[return-value]
        t = self.config.timeouts
        d: Deferred[IResponse] = self.client.wire.request(
            b"POST", endpoint.url, self._cached_headers(endpoint, key, client_headers), body)
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
            if isinstance(e, ResponseFailed) and e.reasons and all(r.check(CancelledError) for r in e.reasons):
                raise CancelledError() from None  # we cancelled it (client gone, /v1/cancel): no upstream fault
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


def _host_header(url: bytes) -> bytes:
    u = URI.fromBytes(url)
    default = 443 if u.scheme == b"https" else 80
    return u.host if u.port == default else u.host + b":" + str(u.port).encode()


def clamp_max_tokens(dialect: str, body: dict[str, Any], limit: int | None) -> None:
    """Lower the body's output cap to ``limit`` when it asks for more (never raise it).

    An Anthropic thinking budget is kept below the new cap (Anthropic requires
    ``budget_tokens < max_tokens``), with room for the answer where possible.
    """
    if not limit:
        return
    for name in MAX_TOKENS_FIELDS.get(dialect, ()):
        v = body.get(name)
        if isinstance(v, int) and not isinstance(v, bool) and v > limit:
            body[name] = limit
    if dialect == "anthropic":
        th = body.get("thinking")
        mt = body.get("max_tokens")
        if isinstance(th, dict) and isinstance(th.get("budget_tokens"), int) and isinstance(mt, int) \
                and th["budget_tokens"] >= mt:
            body["thinking"] = {**th, "budget_tokens": max(MIN_THINKING_BUDGET,
                                                           min(th["budget_tokens"], mt - THINKING_ANSWER_ROOM))}


def _key_pool(reactor: Any, config: ProviderConfig, client: UpstreamClient | None) -> KeyPool:
    """Static keys first, then one key per credential source (``keys`` entries, ``credential``, ``oauth``)."""
    sources: list[CredentialSource] = []
    static: list[str] = []
    for k in config.keys:
        if looks_like_source(k):
            sources.append(build_source(config.name, k, reactor, config.credential_ttl))
        else:
            static.append(k)
    if config.credential:
        sources.append(build_source(config.name, config.credential, reactor, config.credential_ttl))
    if config.oauth is not None and client is not None:
        sources.append(OAuthSource(config.name, reactor, config.credential_ttl, spec=config.oauth, http=client.http))
    pool = KeyPool.of(reactor, static)
    for src in sources:
        pool.keys.append(KeyState("", len(pool.keys), source=src))
    return pool
