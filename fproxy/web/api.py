"""The public HTTP surface (Klein).  Thin: parse, authenticate, hand over to the Gateway."""
from __future__ import annotations

from typing import Any

import orjson
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET

from fproxy import __version__
from fproxy.gateway import Call, Gateway, set_overhead
from fproxy.ir.errors import GatewayError
from fproxy.web import multipart
from fproxy.web.auth import Authenticator
from fproxy.web.errors import install_error_handlers, render_error, render_unexpected

log = Logger()



class PublicAPI:
    app = Klein()
    #: the shared state's health for /health (set by fproxy.state.shared; None: in-process state)
    state_health: Any = None

    def __init__(self, gateway: Gateway, auth: Authenticator, clock: Any, info: dict[str, Any],
                 calls: Any = None) -> None:
        self.gateway = gateway
        self.auth = auth
        self.clock = clock
        self.info = info
        self.started = clock.seconds()
        self.calls = calls  # fproxy.calls.CallTracker: limits, queue/cancel, usage and metrics (None: none)

    def resource(self) -> Any:
        return self.app.resource()

    # ------------------------------------------------------------ helpers
    def _parse_body(self, request: IRequest) -> dict[str, Any]:
        raw = request.content.read() if request.content is not None else b""
        ctype = request.getHeader("content-type") or ""
        if ctype.lower().startswith("multipart/form-data"):
            return multipart.parse(raw, ctype)
        if not raw.strip():
            raise GatewayError(400, "The request body is empty; expected a JSON object.", code="invalid_json")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise GatewayError(400, f"The request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise GatewayError(400, "The request body must be a JSON object.", code="invalid_json")
        return body

    async def _chat(self, request: IRequest, dialect: str, settle_later: bool = False) -> bytes | None:
        """One chat-like call.  With ``settle_later`` the caller runs `Gateway.finished` (usage,
        limits, metrics) itself, after the answer is written: see `render_fast`."""
        principal = self.auth.authenticate(request)
        body = self._parse_body(request)
        call = Call(request_id=request.request_id, dialect=dialect, principal=principal, body=body,
                    started=request.started, client_headers=request.requestHeaders)
        request.call = call
        calls = self.calls
        if calls is not None:
            await calls.admit(request, call)  # per-key limits: 403/429 before anything is routed
        try:
            work = self.gateway.chat(request, call)
            out = await (calls.run(call, work) if calls is not None else work)
            if out is not None and calls is not None:
                calls.note_bytes(call, len(out))
        except GatewayError as e:
            call.status, call.outcome, call.error = e.status, "error", e.message
            raise
        finally:
            if settle_later:
                call.settle_due = True
            else:
                self.gateway.finished(call)
        if out is not None:
            set_overhead(request, call, self.clock.seconds())
        return out

    # ------------------------------------------------------------ the fast lane
    FAST_ROUTES = {b"/v1/chat/completions": "openai-chat", b"/v1/messages": "anthropic",
                   b"/v1/responses": "openai-responses"}

    def render_fast(self, request: IRequest, dialect: str) -> Any:
        """Serve a chat-like POST without Klein's routing (werkzeug matching and Klein's
        Deferred plumbing cost ~15 % of a passthrough call; bench/RESULTS.md).  Same handler,
        same errors as the Klein routes below, which still serve anything else."""
        request.fast_lane = True  # `CallTracker.run` awaits the call directly (see there)
        d = Deferred.fromCoroutine(self._chat(request, dialect, settle_later=True))
        request.call_deferred = d
        if not d.called:
            request.on_gone = d.cancel  # the client left: stop the call (LimitedRequest calls it)

        def done(out: bytes | None) -> None:
            if request.finished or request._disconnected:  # a stream finished the request itself
                return
            if out:
                request.write(out)
            request.finish()

        def failed(f: Any) -> None:
            if request.finished or request._disconnected:
                if not f.check(CancelledError):
                    log.failure("error after the answer was sent ({path})", f, path=request.path)
                return
            if f.check(GatewayError):
                body = render_error(request, f.value, self.clock)
            else:
                body = render_unexpected(request, f, self.clock)
            request.write(body)
            request.finish()

        def settle(result: Any) -> Any:
            # the call's bookkeeping, once its answer is on its way (not between it and the client)
            call = getattr(request, "call", None)
            if call is not None and call.settle_due:
                call.settle_due = False
                self.gateway.finished(call)
            return result

        d.addCallbacks(done, failed)
        d.addBoth(settle)
        d.addErrback(lambda f: log.failure("answering {path} failed", f, path=request.path))
        return NOT_DONE_YET

    # ------------------------------------------------------------ chat-like routes
    @app.route("/v1/chat/completions", methods=["POST"])
    async def chat_completions(self, request: IRequest) -> bytes | None:
        return await self._chat(request, "openai-chat")

    @app.route("/v1/messages", methods=["POST"])
    async def messages(self, request: IRequest) -> bytes | None:
        return await self._chat(request, "anthropic")

    @app.route("/v1/responses", methods=["POST"])
    async def responses(self, request: IRequest) -> bytes | None:
        return await self._chat(request, "openai-responses")

    @app.route("/v1/messages/count_tokens", methods=["POST"])
    async def count_tokens(self, request: IRequest) -> bytes:
        self.auth.authenticate(request)
        body = self._parse_body(request)
        out = await self.gateway.count_tokens(request, body)
        request.setHeader(b"content-type", b"application/json")
        return out

    @app.route("/v1/embeddings", methods=["POST"])
    async def embeddings(self, request: IRequest) -> bytes:
        principal = self.auth.authenticate(request)
        body = self._parse_body(request)
        call = Call(request_id=request.request_id, dialect="openai-chat", principal=principal, body=body,
                    started=request.started, client_headers=request.requestHeaders)
        request.call = call
        calls = self.calls
        if calls is not None:
            await calls.admit(request, call)
        try:
            work = self.gateway.embeddings(request, call)
            out = await (calls.run(call, work) if calls is not None else work)
        except GatewayError as e:
            call.status, call.outcome, call.error = e.status, "error", e.message
            raise
        finally:
            if calls is not None:
                self.gateway.finished(call)
        set_overhead(request, call, self.clock.seconds())
        return out

    # ------------------------------------------------------------ models
    def _model_ids(self) -> list[str]:
        return self.gateway.router.model_names()

    def _limits(self, model_id: str) -> dict[str, int]:
        """Context window and max output from the model catalogue (fproxy.catalogue), where known."""
        return self.gateway.router.limits(model_id)

    @app.route("/v1/models", methods=["GET"])
    def models(self, request: IRequest) -> bytes:
        principal = self.auth.authenticate(request)
        request.setHeader(b"content-type", b"application/json")
        ids = [i for i in self._model_ids() if principal.may_use(i)]
        if request.getHeader(b"anthropic-version"):
            data = [_anthropic_model(i, self._limits(i)) for i in ids]
            return orjson.dumps({"data": data, "has_more": False, "first_id": ids[0] if ids else None,
                                 "last_id": ids[-1] if ids else None})
        return orjson.dumps({"object": "list", "data": [_openai_model(i, self._limits(i)) for i in ids]})

    @app.route("/v1/models/<path:model_id>", methods=["GET"])
    def model(self, request: IRequest, model_id: str) -> bytes:
        principal = self.auth.authenticate(request)
        if not principal.may_use(model_id):  # hidden from this key, as in its /v1/models
            raise GatewayError(404, f"The model `{model_id}` does not exist or you do not have access to it.",
                               code="model_not_found", param="model")
        self.gateway.router.resolve(model_id)  # 404 when nothing serves it
        request.setHeader(b"content-type", b"application/json")
        if request.getHeader(b"anthropic-version"):
            return orjson.dumps(_anthropic_model(model_id, self._limits(model_id)))
        return orjson.dumps(_openai_model(model_id, self._limits(model_id)))

    # ------------------------------------------------------------ ops
    @app.route("/health", methods=["GET", "HEAD"])
    def health(self, request: IRequest) -> bytes:
        providers = {}
        degraded = False
        for name, p in self.gateway.providers.items():
            snap = p.pool.snapshot()
            ok = not p.needs_key or snap["healthy"] > 0 or snap["cooling"] > 0
            providers[name] = {"ok": ok, "keys": snap}
            degraded = degraded or not ok
        out: dict[str, Any] = {"providers": providers}
        if self.state_health is not None:
            # Redis away: still 200 (every instance keeps serving, with per-instance limits; a load
            # balancer must not drop them all), but "degraded" with the reason
            state = out["state"] = self.state_health()
            degraded = degraded or not state["ok"]
        request.setHeader(b"content-type", b"application/json")
        return orjson.dumps({"status": "degraded" if degraded else "ok", **out})

    @app.route("/api/info", methods=["GET"])
    def api_info(self, request: IRequest) -> bytes:
        self.auth.authenticate(request)
        request.setHeader(b"content-type", b"application/json")
        cfg = self.gateway.config
        return orjson.dumps({
            "name": "fproxy", "version": __version__, "uptime_s": round(self.clock.seconds() - self.started, 1),
            **self.info,
            "providers": [{"name": p.name, "dialect": p.dialect, "preset": p.preset, "base_url": p.base_url,
                           "models": list(p.models), "keys": self.gateway.providers[p.name].pool.snapshot()}
                          for p in cfg.providers],
            "routes": [{"model": r.model, "to": [f"{t.provider}:{t.model}" for t in r.to]} for r in cfg.routes],
            "models": self._model_ids(),
        })

    @app.route("/", methods=["GET", "HEAD"])
    def root(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return orjson.dumps({"name": "fproxy", "version": __version__})



install_error_handlers(PublicAPI.app)


def _openai_model(i: str, limits: dict[str, int] | None = None) -> dict[str, Any]:
    """OpenAI's model object, plus ``context_window`` / ``max_output_tokens`` where known."""
    return {"id": i, "object": "model", "created": 0, "owned_by": "fproxy", **(limits or {})}


def _anthropic_model(i: str, limits: dict[str, int] | None = None) -> dict[str, Any]:
    """Anthropic's model object, plus its ``max_input_tokens`` / ``max_tokens`` where known."""
    out = {"type": "model", "id": i, "display_name": i, "created_at": "1970-01-01T00:00:00Z"}
    if limits and "context_window" in limits:
        out["max_input_tokens"] = limits["context_window"]
    if limits and "max_output_tokens" in limits:
        out["max_tokens"] = limits["max_output_tokens"]
    return out
