"""Operator routes (Klein): virtual keys, usage, the queue, cancelling, metrics, live reload.

``/api/keys``, ``/api/usage`` and ``/api/reload`` need an admin key (``access.admin_keys``): a client key gets
403, no key 401.  ``/v1/queue`` and ``/v1/cancel/{id}`` take any key: a client sees and
cancels its own calls (someone else's is a 404), an admin all of them.  ``/metrics`` needs
an admin key here; ``server.metrics_listen`` serves it without one (`metrics_resource`).
Errors use the OpenAI error shape, like the rest of the gateway; 400s name the field.
"""
from __future__ import annotations

import math
from typing import Any

import orjson
from klein import Klein
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site

from fproxy.ir.errors import GatewayError
from fproxy.metrics import CONTENT_TYPE
from fproxy.store.base import KeyRecord, UsageQuery
from fproxy.store.keys import key_hash, key_prefix, new_key, new_key_id
from fproxy.timeutil import parse_time, rfc3339
from fproxy.web.errors import install_error_handlers
from fproxy.web.request import error_bytes

log = Logger()

GROUP_BY = ("key", "model", "provider", "hour", "day")
PERIODS = ("day", "month")
KEY_FIELDS = ("name", "models", "rpm", "tpm", "max_concurrency", "budget_tokens", "budget_usd", "budget_period",
              "expires_at", "disabled", "metadata")
MAX_NAME = 200
MAX_METADATA_BYTES = 16 * 1024


# ---------------------------------------------------------------- validation
def _bad(field: str, problem: str) -> GatewayError:
    return GatewayError(400, f"{field}: {problem}", param=field, code="invalid_value")


def _count(v: Any, field: str) -> int | None:
    """A positive integer, or null (no limit)."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise _bad(field, "expected a positive integer or null")
    return v


def _field(name: str, v: Any) -> Any:
    if name == "name":
        if v is not None and (not isinstance(v, str) or len(v) > MAX_NAME):
            raise _bad(name, f"expected a string of at most {MAX_NAME} characters or null")
        return v or None
    if name == "models":
        if v is None:
            return ()
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise _bad(name, "expected a list of model names or globs")
        return tuple(v)
    if name in ("rpm", "tpm", "max_concurrency"):
        return _count(v, name)
    if name == "budget_tokens":
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise _bad(name, "expected a non-negative integer or null")
        return v
    if name == "budget_usd":
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or not math.isfinite(v):
            raise _bad(name, "expected a non-negative number or null")
        return float(v)
    if name == "budget_period":
        if v is not None and v not in PERIODS:
            raise _bad(name, 'expected "day", "month" or null (never resets)')
        return v
    if name == "expires_at":
        return None if v is None else parse_time(v, name)
    if name == "disabled":
        if not isinstance(v, bool):
            raise _bad(name, "expected true or false")
        return v
    if name == "metadata":
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise _bad(name, "expected a JSON object")
        if len(orjson.dumps(v)) > MAX_METADATA_BYTES:
            raise _bad(name, f"at most {MAX_METADATA_BYTES} bytes of JSON")
        return v
    raise _bad(name, f'unknown field (known: {", ".join(KEY_FIELDS)})')


def key_fields(body: Any) -> dict[str, Any]:
    """Validated key fields of a POST/PATCH body (only those present)."""
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object.", code="invalid_json")
    return {k: _field(k, v) for k, v in body.items()}


def key_json(rec: KeyRecord) -> dict[str, Any]:
    """A key as the admin API shows it: never the key, its ``prefix`` only."""
    return {
        "id": rec.id, "object": "key", "name": rec.name, "prefix": rec.prefix, "created_at": rfc3339(rec.created_at),
        "models": list(rec.models), "rpm": rec.rpm, "tpm": rec.tpm, "max_concurrency": rec.max_concurrency,
        "budget_tokens": rec.budget_tokens, "budget_usd": rec.budget_usd, "budget_period": rec.budget_period,
        "expires_at": rfc3339(rec.expires_at), "disabled": rec.disabled, "metadata": dict(rec.metadata),
    }


def _one(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode())
    if not values:
        return None
    v = values[0].decode("utf-8", "replace").strip()
    return v or None


def usage_query(request: IRequest) -> UsageQuery:
    """The filters of ``GET /api/usage``; 400 naming the parameter when one is wrong."""
    for raw in request.args:
        name = raw.decode("utf-8", "replace")
        if name not in ("key", "model", "provider", "since", "until", "group_by"):
            raise _bad(name, "unknown parameter (known: key, model, provider, since, until, group_by)")
    group = _one(request, "group_by")
    if group is not None and group not in GROUP_BY:
        raise _bad("group_by", f'expected one of {", ".join(GROUP_BY)}')
    since = _one(request, "since")
    until = _one(request, "until")
    q = UsageQuery(key=_one(request, "key"), model=_one(request, "model"), provider=_one(request, "provider"),
                   since=parse_time(since, "since") if since is not None else None,
                   until=parse_time(until, "until") if until is not None else None, group_by=group or "key")
    if q.since is not None and q.until is not None and q.until < q.since:
        raise _bad("until", "is before since")
    return q


# ---------------------------------------------------------------- the routes
class AdminAPI:
    app = Klein()
    reloader: Any = None  # fproxy.reload.Reloader, set by fproxy.reload.attach (twistd); None: no reload route

    def __init__(self, auth: Any, clock: Any, store: Any = None, keys: Any = None, limits: Any = None,
                 usage: Any = None, calls: Any = None, metrics: Any = None) -> None:
        self.auth = auth
        self.clock = clock
        self.store = store
        self.keys = keys
        self.limits = limits
        self.usage = usage
        self.calls = calls
        self.metrics = metrics

    def resource(self) -> Any:
        return self.app.resource()

    def _store(self) -> Any:
        if self.store is None:
            raise GatewayError(503, "This gateway runs without a store.", code="no_store")
        return self.store

    @staticmethod
    def _json(request: IRequest, obj: Any, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return orjson.dumps(obj)

    @staticmethod
    def _body(request: IRequest) -> Any:
        raw = request.content.read() if request.content is not None else b""
        if not raw.strip():
            return {}
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise GatewayError(400, f"The request body is not valid JSON: {e}", code="invalid_json") from None

    # ------------------------------------------------------------ keys
    @app.route("/api/keys", methods=["POST"])
    async def create_key(self, request: IRequest) -> bytes:
        self.auth.require_admin(request)
        fields = key_fields(self._body(request))
        store = self._store()
        now = self.clock.seconds()
        key = new_key()
        rec = KeyRecord(id=new_key_id(), key_hash=key_hash(key), prefix=key_prefix(key), created_at=now,
                        updated_at=now, **fields)
        await store.create_key(rec)
        if self.keys is not None:
            self.keys.put(rec)
        log.info("key {id} ({name}) created", id=rec.id, name=rec.name)
        return self._json(request, {**key_json(rec), "key": key}, 201)

    @app.route("/api/keys", methods=["GET"])
    async def list_keys(self, request: IRequest) -> bytes:
        self.auth.require_admin(request)
        recs = await self._store().list_keys()
        return self._json(request, {"object": "list", "data": [key_json(r) for r in recs]})

    async def _get(self, key_id: str) -> KeyRecord:
        rec = await self._store().get_key(key_id)
        if rec is None:
            raise GatewayError(404, f"No key `{key_id}`.", code="key_not_found")
        return rec

    @app.route("/api/keys/<key_id>", methods=["GET"])
    async def show_key(self, request: IRequest, key_id: str) -> bytes:
        self.auth.require_admin(request)
        rec = await self._get(key_id)
        out = key_json(rec)
        if self.limits is not None:
            spend = await self.limits.spent(rec)
            spend["since"] = rfc3339(spend["since"])
            out["spend"] = spend
        return self._json(request, out)

    @app.route("/api/keys/<key_id>", methods=["PATCH"])
    async def update_key(self, request: IRequest, key_id: str) -> bytes:
        self.auth.require_admin(request)
        changes = key_fields(self._body(request))
        store = self._store()
        if not changes:
            return self._json(request, key_json(await self._get(key_id)))
        rec = await store.update_key(key_id, changes, self.clock.seconds())
        if rec is None or rec.revoked_at is not None:
            raise GatewayError(404, f"No key `{key_id}`.", code="key_not_found")
        if self.keys is not None:
            self.keys.put(rec)
        log.info("key {id} updated: {fields}", id=key_id, fields=", ".join(sorted(changes)))
        return self._json(request, key_json(rec))

    @app.route("/api/keys/<key_id>", methods=["DELETE"])
    async def revoke_key(self, request: IRequest, key_id: str) -> bytes:
        self.auth.require_admin(request)
        rec = await self._store().revoke_key(key_id, self.clock.seconds())
        if rec is None:
            raise GatewayError(404, f"No key `{key_id}`.", code="key_not_found")
        if self.keys is not None:
            self.keys.put(rec)  # refused from the next request on
        log.info("key {id} revoked", id=key_id)
        return self._json(request, {"id": key_id, "object": "key", "deleted": True,
                                    "revoked_at": rfc3339(rec.revoked_at)})

    # ------------------------------------------------------------ usage
    @app.route("/api/usage", methods=["GET"])
    async def usage(self, request: IRequest) -> bytes:
        self.auth.require_admin(request)
        q = usage_query(request)
        store = self._store()
        if self.usage is not None:
            await self.usage.flush()  # read your writes: this instance's pending records first
        groups, total = await store.usage_summary(q)
        names = {}
        if q.group_by == "key" and self.keys is not None:
            for g in groups:
                rec = self.keys.get(g.group) if isinstance(g.group, str) else None
                if rec is not None and rec.name:
                    names[g.group] = rec.name
        data = []
        for g in groups:
            row = {"group": g.group, **g.as_json()}
            if g.group in names:
                row["name"] = names[g.group]
            data.append(row)
        return self._json(request, {
            "object": "usage", "group_by": q.group_by, "since": rfc3339(q.since), "until": rfc3339(q.until),
            "data": data, "total": total.as_json(),
        })

    # ------------------------------------------------------------ queue and cancel
    @app.route("/v1/queue", methods=["GET"])
    def queue(self, request: IRequest) -> bytes:
        principal = self.auth.authenticate(request)
        entries = self.calls.queue(principal) if self.calls is not None else []
        return self._json(request, {"object": "list", "data": entries})

    @app.route("/v1/cancel/<request_id>", methods=["POST", "DELETE"])
    def cancel(self, request: IRequest, request_id: str) -> bytes:
        principal = self.auth.authenticate(request)
        done = self.calls.cancel(principal, request_id) if self.calls is not None else None
        if done is None:
            raise GatewayError(404, f"No request `{request_id}` is waiting or running for this key.",
                               code="request_not_found")
        return self._json(request, done)

    # ------------------------------------------------------------ live reload
    @app.route("/api/reload", methods=["POST"])
    async def reload(self, request: IRequest) -> bytes:
        """Re-read the configuration (as SIGHUP does); 400 naming the problem when it is refused."""
        self.auth.require_admin(request)
        if self.reloader is None:
            raise GatewayError(501, "This gateway was not started by twistd: it cannot reload its configuration.",
                               code="reload_unavailable")
        from fproxy.config import ConfigError

        try:
            result = await self.reloader.reload("POST /api/reload")
        except ConfigError as e:
            raise GatewayError(400, f"The new configuration was refused (the running one stays): {e}",
                               code="invalid_config") from None
        return self._json(request, result.as_json())

    # ------------------------------------------------------------ metrics
    @app.route("/metrics", methods=["GET"])
    def metrics_route(self, request: IRequest) -> bytes:
        self.auth.require_admin(request)
        if self.metrics is None:
            raise GatewayError(404, "Metrics are not enabled.", code="not_found")
        request.setHeader(b"content-type", self.metrics_content_type())
        return self.metrics.render()

    @staticmethod
    def metrics_content_type() -> bytes:
        return CONTENT_TYPE.encode()



install_error_handlers(AdminAPI.app)


class QuietSite(Site):
    """A Site without access lines (scrapes every few seconds would fill the log)."""

    noisy = False

    def log(self, request: Any) -> None:
        """No access log."""


class MetricsResource(Resource):
    """``/metrics`` without authentication, for ``server.metrics_listen`` (a private address)."""

    isLeaf = True

    def __init__(self, metrics: Any) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: IRequest) -> bytes:
        if request.path not in (b"/metrics", b"/"):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"application/json")
            return error_bytes(request.path, 404, "Only /metrics is served here.", "not_found")
        request.setHeader(b"content-type", AdminAPI.metrics_content_type())
        return self._metrics.render()
