"""One way to answer errors, for every Klein app of the gateway (public and admin).

Errors are written in the client's dialect (Anthropic on ``/v1/messages``, OpenAI elsewhere),
with ``Retry-After`` where a limit will lift and the ``x-fproxy-overhead-ms`` header every
answer carries.  Nothing answers with Werkzeug's HTML.
"""
from __future__ import annotations

from typing import Any

import orjson
from klein import Klein
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from fproxy.codecs.registry import inbound_codec
from fproxy.ir.errors import GatewayError
from fproxy.web.request import error_dialect

log = Logger()


def render_error(request: IRequest, err: GatewayError, clock: Any) -> bytes:
    request.setResponseCode(err.status)
    request.setHeader(b"content-type", b"application/json")
    if err.retry_after is not None and err.status in (429, 503):
        request.setHeader(b"retry-after", str(max(1, int(err.retry_after + 0.999))).encode())
    call = getattr(request, "call", None)
    if call is not None:
        from fproxy.gateway import set_overhead

        set_overhead(request, call, clock.seconds())
    else:
        started = getattr(request, "started", 0.0) or clock.seconds()
        request.setHeader(b"x-fproxy-overhead-ms", f"{(clock.seconds() - started) * 1000:.2f}".encode())
    return orjson.dumps(inbound_codec(error_dialect(request.path)).error_body(err))


def render_unexpected(request: IRequest, failure: Any, clock: Any) -> bytes:
    rid = getattr(request, "request_id", None)
    log.failure("unexpected error serving {path}", failure, path=request.path, request_id=rid)
    return render_error(request, GatewayError(500, f"Internal error in the gateway; see its log for request {rid}.",
                                              code="internal_error"), clock)


def install_error_handlers(app: Klein) -> None:
    """Register the uniform handlers on ``app``, whose owner object has a ``clock``."""

    @app.handle_errors(GatewayError)
    def gateway_error(self: Any, request: IRequest, failure: Any) -> bytes:
        return render_error(request, failure.value, self.clock)

    @app.handle_errors(NotFound)
    def not_found(self: Any, request: IRequest, failure: Any) -> bytes:
        path = request.path.decode("utf-8", "replace")
        return render_error(request, GatewayError(404, f"No route {path}", code="not_found"), self.clock)

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self: Any, request: IRequest, failure: Any) -> bytes:
        method = request.method.decode("ascii", "replace")
        return render_error(request, GatewayError(405, f"Method {method} is not allowed here",
                                                  code="method_not_allowed"), self.clock)

    @app.handle_errors(Exception)
    def unexpected(self: Any, request: IRequest, failure: Any) -> bytes:
        return render_unexpected(request, failure, self.clock)
