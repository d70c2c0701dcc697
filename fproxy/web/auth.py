"""Client authentication: which key was presented, and whose it is.

Keys are read from ``Authorization: Bearer``, ``x-api-key`` and the configured header.
Only SHA-256 digests of configured keys are kept in memory, compared in constant time.
"""
from __future__ import annotations

import hashlib
import hmac

from attrs import frozen
from twisted.web.iweb import IRequest

from fproxy.config import AccessConfig
from fproxy.ir.errors import GatewayError


@frozen
class Principal:
    """Who is calling: ``id`` names them in usage records and the queue (never the key)."""

    id: str
    admin: bool = False
    record: object | None = None  # a stored virtual key, when the store resolved one


OPEN = Principal("open")


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def presented_key(request: IRequest, header: bytes) -> str | None:
    h = request.requestHeaders
    auth = h.getRawHeaders(b"authorization")
    if auth:
        v = auth[0]
        if v[:7].lower() == b"bearer ":
            k = v[7:].strip()
            if k:
                return k.decode("utf-8", "replace")
    for name in (b"x-api-key", header):
        v2 = h.getRawHeaders(name)
        if v2 and v2[0].strip():
            return v2[0].strip().decode("utf-8", "replace")
    return None


class Authenticator:
    def __init__(self, access: AccessConfig) -> None:
        self.header = access.header.lower().encode()
        self._static = [(f"static:{i}", digest(k)) for i, k in enumerate(access.keys)]
        self._admin = [(f"admin:{i}", digest(k)) for i, k in enumerate(access.admin_keys)]
        self.open = not self._static and not self._admin

    def _match(self, d: bytes, table: list[tuple[str, bytes]]) -> str | None:
        found = None
        for ident, ref in table:  # no early exit: the time does not depend on which key matched
            if hmac.compare_digest(d, ref):
                found = ident
        return found

    def authenticate(self, request: IRequest) -> Principal:
        key = presented_key(request, self.header)
        if key is None:
            if self.open:
                return OPEN
            raise GatewayError(401, "Missing API key: send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'.",
                               code="missing_api_key")
        d = digest(key)
        ident = self._match(d, self._admin)
        if ident is not None:
            return Principal(ident, admin=True)
        ident = self._match(d, self._static)
        if ident is not None:
            return Principal(ident)
        if self.open:
            return OPEN
        raise GatewayError(401, "Invalid API key.", code="invalid_api_key")

    def require_admin(self, request: IRequest) -> Principal:
        p = self.authenticate(request)
        if not p.admin:
            raise GatewayError(403, "This route needs an admin key.", code="admin_required")
        return p
