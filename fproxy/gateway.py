"""The one place that knows the order of steps of a call.

route -> for each target: concurrency slot -> for each healthy key: send -> classify the
answer (rotate keys on 401/403/402/429, next target on 5xx / timeouts / unreachable, pass
the client's own 4xx mistakes through) -> deliver (passthrough or translated, streamed or
not) -> record.  Retries happen only while nothing has been sent to the client.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import orjson
from attrs import define, field
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest, IResponse

from fproxy.codecs import passthrough
from fproxy.codecs.collect import collect_events
from fproxy.codecs.registry import inbound_codec, outbound_codec
from fproxy.codecs.sse import SSEDecoder
from fproxy.config import Config, Target
from fproxy.ir.errors import GatewayError
from fproxy.ir.request import ChatRequest, TextPart, Thinking
from fproxy.ir.response import Usage
from fproxy.providers.http import read_body
from fproxy.providers.images import ImageFetcher
from fproxy.providers.keypool import KeyState
from fproxy.providers.provider import Endpoint, Provider
from fproxy.routing import Router
from fproxy.streaming.pipe import StreamPipe
from fproxy.streaming.transcode import PassthroughTranscoder, StreamMeter, TranslatingTranscoder

log = Logger()

MAX_ERROR_BODY = 256 * 1024
MAX_RESPONSE_BODY = 64 * 1024 * 1024
DEFAULT_MAX_TOKENS = 4096


@define(eq=False)
class Call:
    """One client call as it moves through the gateway (also its usage record)."""

    request_id: str
    dialect: str  # the client's dialect
    principal: Any
    body: dict[str, Any]
    started: float
    client_headers: Headers | None = None
    model: str = ""
    stream: bool = False
    provider: str | None = None
    upstream_model: str | None = None
    status: int = 0
    outcome: str = "running"
    usage: Usage | None = None
    usage_estimated: bool = False
    ttft: float | None = None
    upstream_wait: float = 0.0  # seconds spent waiting for upstream headers and bodies
    error: str | None = None
    attempts: list[str] = field(factory=list)
    ir: ChatRequest | None = None
    settle_due: bool = False  # the fast lane runs the on_finished hook after writing the answer


SEND_HEADERS_STREAM = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)


class Gateway:
    def __init__(self, reactor: Any, config: Config, providers: dict[str, Provider], router: Router,
                 on_finished: Callable[[Call], None] | None = None) -> None:
        self.reactor = reactor
        self.config = config
        self.providers = providers
        self.router = router
        self.on_finished = on_finished
        self.images = ImageFetcher(reactor, config.images) if config.images.fetch else None

    # ------------------------------------------------------------ entry
    async def chat(self, request: IRequest, call: Call) -> bytes | None:
        """Serve one chat-like call; returns the body for non-streamed answers."""
        model = call.body.get("model")
        if not isinstance(model, str) or not model:
            raise GatewayError(400, "model: required, a string", param="model")
        call.model = model
        call.stream = bool(call.body.get("stream"))
        res = self.router.resolve(model)
        # bound before the first await: a live reload swaps router and providers for NEW calls only
        chosen = [(self.providers[t.provider], t) for t in res.targets]
        inbound = inbound_codec(call.dialect)
        last: GatewayError | None = None
        for provider, target in chosen:
            try:
                return await self._via_target(request, call, provider, target, res.thinking, inbound)
            except GatewayError as e:
                if not e.retryable:
                    raise
                last = e
                call.attempts.append(f"{provider.name}:{e.status}")
                log.info("request {request_id}: target {provider} failed ({status}: {msg}); trying the next",
                         request_id=call.request_id, provider=provider.name, status=e.status, msg=e.message)
        if last is None:
            raise GatewayError(503, "no upstream is available for this model", code="no_upstream")
        last.retryable = False
        raise last

    async def _via_target(self, request: IRequest, call: Call, provider: Provider, target: Target,
                          thinking: bool, inbound: Any) -> bytes | None:
        limiter = provider.limiter
        if not limiter.try_acquire():
            await limiter.acquire(call)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                limiter.release()

        try:
            endpoint = provider.endpoint(target.model)
            upstream_dialect = "openai-chat" if endpoint.dialect == "mock" else endpoint.dialect
            same = upstream_dialect == call.dialect and not thinking
            if same:
                body = passthrough.prepare(call.dialect, call.body, endpoint.model, provider.config)
            else:
                body = await self._translate_request(call, inbound, upstream_dialect, endpoint, provider, thinking)
            endpoint = provider.finish_request(endpoint, body)  # stream_only, max_tokens clamp, Vertex
            payload = orjson.dumps(body)
            response = await self._send_with_keys(call, provider, endpoint, payload, body)
            call.provider, call.upstream_model = provider.name, endpoint.model
            if call.stream:
                return await self._stream(request, call, provider, response, upstream_dialect, same, inbound,
                                          release)
            return await self._whole(request, call, provider, response, upstream_dialect, same, inbound)
        finally:
            release()

    async def _translate_request(self, call: Call, inbound: Any, upstream_dialect: str, endpoint: Endpoint,
                                 provider: Provider, thinking: bool) -> dict[str, Any]:
        if call.ir is None:
            call.ir = inbound.decode_request(call.body)
        req = call.ir
        if upstream_dialect == "anthropic" and self.images is not None:
            req = call.ir = await self.images.inline(req)
        changes: dict[str, Any] = {}
        if thinking:
            budget = provider.config.thinking_budget or self.config.thinking.budget
            changes["thinking"] = Thinking(budget_tokens=budget)
        elif req.thinking is not None and req.thinking.effort and req.thinking.budget_tokens is None \
                and upstream_dialect == "anthropic":
            t = self.config.thinking
            budget = {"low": t.low, "medium": t.medium, "high": t.high}.get(req.thinking.effort, t.high)
            changes["thinking"] = Thinking(budget_tokens=budget, effort=req.thinking.effort)
        th = changes.get("thinking")
        if th is not None and th.budget_tokens and req.max_tokens is not None and req.max_tokens <= th.budget_tokens:
            # the gateway turned thinking on: max_tokens counts thinking too, so make room for the answer
            changes["max_tokens"] = th.budget_tokens + req.max_tokens
        if provider.config.system_prefix:
            changes["system"] = tuple(TextPart(s) for s in provider.config.system_prefix) + req.system
        if changes:
            req = attrs.evolve(req, **changes)
        body = outbound_codec(upstream_dialect).encode_request(req, endpoint.model)
        return passthrough.strip(body, provider.config, upstream_dialect)

    # ------------------------------------------------------------ keys
    async def _send_with_keys(self, call: Call, provider: Provider, endpoint: Endpoint, payload: bytes,
                              body: dict[str, Any]) -> IResponse:
        tried: set[int] = set()
        refreshed: set[int] = set()  # credential-source keys fetched anew after a 401/403 in this call
        while True:
            key: KeyState | None = None
            if provider.needs_key:
                key = provider.pool.pick(tried)
                if key is None:
                    raise self._no_key_error(provider, tried)
                tried.add(key.index)
                await provider.resolve_key(key)  # a credential source's current token (503 when it fails)
            t0 = self.reactor.seconds()
            try:
                response = await provider.send(endpoint, key, payload, call.client_headers, body, call.request_id)
            finally:
                call.upstream_wait += self.reactor.seconds() - t0
            status = response.code
            if status < 400:
                if key is not None:
                    provider.pool.succeeded(key)
                return response
            t0 = self.reactor.seconds()
            try:
                raw = await read_body(response, MAX_ERROR_BODY, self.reactor, provider.config.timeouts.total)
            except GatewayError:
                raw = b""
            finally:
                call.upstream_wait += self.reactor.seconds() - t0
            message, code = outbound_codec(endpoint.dialect if endpoint.dialect != "mock"
                                           else "openai-chat").error_message(status, raw)
            label = key.label() if key is not None else "-"
            call.attempts.append(f"{provider.name}{label}:{status}")
            log.warn("upstream {provider} key {key} answered {status}: {message}", provider=provider.name,
                     key=label, status=status, message=message[:200], request_id=call.request_id)
            if key is not None and status in (401, 403):
                _auth_refused(provider, key, status, message, code, tried, refreshed)
                continue
            if key is not None and status in (402, 429):
                provider.pool.cool(key, _retry_after(response), status)
                continue
            if status == 429:
                raise GatewayError(429, message, code=code, retry_after=_retry_after(response), retryable=True,
                                   upstream_status=status)
            if status >= 500 or status in (408, 401, 403, 402):
                mapped = 503 if status in (503, 529) else 504 if status in (504, 408) else 502
                raise GatewayError(mapped, f"upstream {provider.name} answered {status}: {message}",
                                   code=code, retryable=True, upstream_status=status)
            raise GatewayError(status, message, code=code, upstream_status=status)

    @staticmethod
    def _no_key_error(provider: Provider, tried: set[int]) -> GatewayError:
        wait = provider.pool.retry_after()
        if wait is not None and wait > 0:
            return GatewayError(429, f"every key of provider {provider.name} is cooling down",
                                code="upstream_rate_limited", retry_after=wait, retryable=True)
        return GatewayError(503, f"provider {provider.name} has no usable upstream key", code="no_healthy_key",
                            retryable=True)

    # ------------------------------------------------------------ delivery
    async def _whole(self, request: IRequest, call: Call, provider: Provider, response: IResponse,
                     upstream_dialect: str, same: bool, inbound: Any) -> bytes:
        t0 = self.reactor.seconds()
        try:
            raw = await read_body(response, MAX_RESPONSE_BODY, self.reactor, provider.config.timeouts.total)
        finally:
            call.upstream_wait += self.reactor.seconds() - t0
        ctype = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if ctype.startswith(b"text/event-stream"):
            resp = _collect_stream(raw, upstream_dialect)
            call.usage = resp.usage
            out = orjson.dumps(inbound.encode_response(resp, call.model))
        else:
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise GatewayError(502, f"upstream {provider.name} answered with invalid JSON",
                                   code="bad_upstream_answer", retryable=True) from None
            if not isinstance(obj, dict):
                raise GatewayError(502, f"upstream {provider.name} answered with a non-object",
                                   code="bad_upstream_answer", retryable=True)
            if same:
                call.usage = passthrough.usage_of(upstream_dialect, obj)
                out = raw
            else:
                resp = outbound_codec(upstream_dialect).decode_response(obj)
                call.usage = resp.usage
                out = orjson.dumps(inbound.encode_response(resp, call.model))
        call.status = 200
        call.outcome = "completed"
        request.setHeader(b"content-type", b"application/json")
        return out

    async def _stream(self, request: IRequest, call: Call, provider: Provider, response: IResponse,
                      upstream_dialect: str, same: bool, inbound: Any, release: Callable[[], None]) -> None:
        req_ir = call.ir
        if req_ir is None:
            include_usage = bool((call.body.get("stream_options") or {}).get("include_usage")) \
                if isinstance(call.body.get("stream_options"), dict) else False
            encoder = inbound.stream_encoder(call.model, ChatRequest(model=call.model, messages=(),
                                                                      include_usage=include_usage))
        else:
            include_usage = req_ir.include_usage
            encoder = inbound.stream_encoder(call.model, req_ir)
        started = self.reactor.seconds()

        def first_token() -> None:
            call.ttft = self.reactor.seconds() - call.started

        meter = StreamMeter(first_token=first_token)
        if same:
            transcoder: Any = PassthroughTranscoder(upstream_dialect, encoder, meter, include_usage)
        else:
            transcoder = TranslatingTranscoder(outbound_codec(upstream_dialect).stream_decoder(), encoder, meter)
        request.setResponseCode(200)
        for name, value in SEND_HEADERS_STREAM:
            request.setHeader(name, value)
        set_overhead(request, call, self.reactor.seconds())
        t = provider.config.timeouts
        pipe = StreamPipe(request, transcoder, self.reactor, t.idle, t.total, self.config.server.keepalive_seconds)
        request.pipe = pipe  # for the drain's deadline and POST /v1/cancel: both cut the stream in-band
        call.outcome = "streaming"
        call.status = 200
        try:
            response.deliverBody(pipe)
            await pipe.done
        except CancelledError:
            pipe.abort("client_closed")
            raise
        finally:
            release()
            call.upstream_wait += self.reactor.seconds() - started
            call.usage = meter.usage
            call.outcome = pipe.outcome if pipe.outcome != "running" else "client_closed"
            if meter.error is not None and call.outcome == "completed":
                call.outcome = "error"
            if call.outcome == "error":
                call.error = (pipe.error or meter.error or GatewayError(502, "stream error")).message
        return None

    # ------------------------------------------------------------ side routes
    async def embeddings(self, request: IRequest, call: Call) -> bytes:
        """Forwarded to the first target that speaks openai-chat; same key handling as chat."""
        model = call.body.get("model")
        if not isinstance(model, str) or not model:
            raise GatewayError(400, "model: required, a string", param="model")
        call.model = model
        last: GatewayError | None = None
        chosen = [(self.providers[t.provider], t) for t in self.router.resolve(model).targets]  # see chat()
        for provider, target in chosen:
            if provider.config.dialect != "openai-chat":
                continue
            ep = provider.endpoint(target.model)
            url = ep.url.replace(b"/chat/completions", b"/embeddings", 1)
            endpoint = Endpoint("openai-chat", url, ep.model, ep.headers)
            body = dict(call.body, model=endpoint.model)
            try:
                response = await self._send_with_keys(call, provider, endpoint, orjson.dumps(body), body)
                raw = await read_body(response, MAX_RESPONSE_BODY, self.reactor, provider.config.timeouts.total)
            except GatewayError as e:
                if not e.retryable:
                    raise
                last = e
                continue
            call.provider, call.upstream_model, call.status, call.outcome = provider.name, endpoint.model, 200, \
                "completed"
            request.setHeader(b"content-type", b"application/json")
            return raw
        if last is not None:
            last.retryable = False
            raise last
        raise GatewayError(404, f"no provider serving `{model}` has an embeddings endpoint", code="model_not_found",
                           param="model")

    async def count_tokens(self, request: IRequest, body: dict[str, Any]) -> bytes:
        """Anthropic ``count_tokens``: forwarded to an Anthropic upstream, estimated otherwise."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise GatewayError(400, "model: required, a string", param="model")
        res = self.router.resolve(model)
        target = res.targets[0]
        provider = self.providers[target.provider]
        endpoint = provider.endpoint(target.model)
        if endpoint.dialect == "anthropic" and provider.config.preset not in ("factory", "vertex-anthropic"):
            ep = Endpoint("anthropic", endpoint.url.replace(b"/v1/messages", b"/v1/messages/count_tokens", 1),
                          endpoint.model, endpoint.headers)
            out = dict(body, model=ep.model)
            call = Call(request_id=request.request_id, dialect="anthropic", principal=None, body=out,
                        started=request.started, client_headers=request.requestHeaders)
            response = await self._send_with_keys(call, provider, ep, orjson.dumps(out), out)
            return await read_body(response, MAX_ERROR_BODY, self.reactor, provider.config.timeouts.total)
        from fproxy.codecs.anthropic import count_tokens_estimate

        req = inbound_codec("anthropic").decode_request(body, require_max_tokens=False)
        return orjson.dumps({"input_tokens": count_tokens_estimate(req)})

    def finished(self, call: Call) -> None:
        if self.on_finished is not None:
            self.on_finished(call)


def _auth_refused(provider: Provider, key: KeyState, status: int, message: str, code: str | None,
                  tried: set[int], refreshed: set[int]) -> None:
    """401/403: a static key leaves rotation; a credential source is fetched anew and tried once more.

    @raise GatewayError: 502 (retryable) when a freshly fetched credential is refused as well.
    """
    if key.source is None:
        provider.pool.disable(key)
        return
    if key.index in refreshed:
        raise GatewayError(502, f"upstream {provider.name} refused the credential from "
                           f"{key.source.describe()} ({status}): {message}", code=code, retryable=True,
                           upstream_status=status)
    refreshed.add(key.index)
    tried.discard(key.index)
    key.source.invalidate(key.key)


def _retry_after(response: IResponse) -> float | None:
    v = response.headers.getRawHeaders(b"retry-after")
    if not v:
        return None
    try:
        return max(0.0, float(v[0]))
    except ValueError:
        return None


def set_overhead(request: IRequest, call: Call, now: float) -> None:
    overhead = max(0.0, (now - call.started) - call.upstream_wait) * 1000.0
    request.setHeader(b"x-fproxy-overhead-ms", f"{overhead:.2f}".encode())


def _collect_stream(raw: bytes, dialect: str) -> Any:
    """A whole SSE body (an upstream that only streams) -> one canonical response."""
    dec = outbound_codec(dialect).stream_decoder()
    events = []
    for sse in SSEDecoder().feed(raw + b"\n\n"):
        events.extend(dec.feed(sse))
    return collect_events(events)
