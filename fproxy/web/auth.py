"""Client authentication: which key was presented, and whose it is.

Keys are read from ``Authorization: Bearer``, ``x-api-key`` and the configured header.
Only SHA-256 digests of configured keys are kept in memory, compared in constant time.
Virtual keys (`fproxy.store.keys.KeyCache`) are found by their digest in memory: no
database round trip.  Admin keys are accepted as client keys too.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Any

from attrs import frozen
from twisted.web.iweb import IRequest

from fproxy.config import AccessConfig
from fproxy.ir.errors import GatewayError
from fproxy.limits.keys import model_allowed


@frozen
class Principal:
    """Who is calling: ``id`` names them in usage records and the queue (never the key)."""

    id: str
    admin: bool = False
    record: Any = None  # a stored virtual key (`fproxy.store.base.KeyRecord`), when the store resolved one

    @property
    def name(self) -> str | None:
        return getattr(self.record, "name", None)

    def may_use(self, model: str) -> bool:
        """The key's model allow-list (globs against the name asked for); other keys may use all."""
        return model_allowed(self.record, model)


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
    def __init__(self, access: AccessConfig, keys: Any = None, clock: Any = None) -> None:
        self._keys = keys  # a KeyCache, or None when there is no store
        self._clock = clock
        self.set_access(access)

    def set_access(self, access: AccessConfig) -> None:
        """Take the static and admin keys and the header of ``access`` (at start, and on a live reload).

        Every attribute is replaced in one step of the reactor thread, so a request is checked
        against either the old keys or the new ones, never a mix.
        """
        self.header = access.header.lower().encode()
        self._static = [(f"static:{i}", digest(k)) for i, k in enumerate(access.keys)]
        self._admin = [(f"admin:{i}", digest(k)) for i, k in enumerate(access.admin_keys)]
        self._configured = bool(self._static or self._admin)

    @property
    def open(self) -> bool:
        """No static, admin or stored key: anyone may call (warned at start)."""
        return not self._configured and not (self._keys is not None and len(self._keys))

    def _virtual(self, d: bytes) -> Principal | None:
        """A stored key by its digest; refused (401) when revoked, disabled or expired."""
        if self._keys is None:
            return None
        rec = self._keys.by_hash(d.hex())
        if rec is None or not hmac.compare_digest(rec.key_hash, d.hex()):
            return None
        if rec.revoked_at is not None:
            raise GatewayError(401, "Invalid API key (revoked).", code="invalid_api_key")
        if rec.disabled:
            raise GatewayError(401, "This API key is disabled.", code="key_disabled")
        if rec.expires_at is not None and self._clock is not None and rec.expires_at <= self._clock.seconds():
            raise GatewayError(401, "This API key has expired.", code="key_expired")
        return Principal(rec.id, record=rec)

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
        virtual = self._virtual(d)
        if virtual is not None:
            return virtual
        if self.open:
            return OPEN
        raise GatewayError(401, "Invalid API key.", code="invalid_api_key")

    def require_admin(self, request: IRequest) -> Principal:
        p = self.authenticate(request)
        if not p.admin:
            raise GatewayError(403, "This route needs an admin key.", code="admin_required")
        return p
