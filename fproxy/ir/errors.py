"""Gateway errors: one exception type carrying what every dialect needs to render it."""
from __future__ import annotations

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type_for(status: int) -> str:
    """The conventional error ``type`` for an HTTP status (Anthropic's vocabulary)."""
    if status in _TYPES:
        return _TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


class GatewayError(Exception):
    """An error answered to the client in its own dialect.

    ``retryable`` marks upstream failures after which the gateway may try another key or
    target (never set for the client's own mistakes).  ``upstream_status`` keeps what the
    upstream answered, for logs and key handling.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,  # noqa: A002 - the wire name
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        retryable: bool = False,
        upstream_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or error_type_for(status)
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.retryable = retryable
        self.upstream_status = upstream_status

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.message!r}, code={self.code!r})"


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)
