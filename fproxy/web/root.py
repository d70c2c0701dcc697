"""The site's root: sends operator paths to `AdminAPI`, the rest to `PublicAPI`, once ready.

Listeners start with the service (so a busy port fails the start at once), but the store is
opened and the key cache loaded asynchronously just after; a request arriving in those few
milliseconds waits for them rather than being refused a key that exists.
"""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

log = Logger()

ADMIN_PREFIXES = (b"/api/keys", b"/api/usage", b"/api/reload", b"/v1/queue", b"/v1/cancel/", b"/metrics")


def is_admin_path(path: bytes) -> bool:
    for p in ADMIN_PREFIXES:
        if path == p or path.startswith(p) and (p.endswith(b"/") or path[len(p):len(p) + 1] in (b"/", b"")):
            return True
    return False


class Root(Resource):
    isLeaf = True

    def __init__(self, public: Any, admin: Any, fast: Any = None) -> None:
        super().__init__()
        self._fast = fast  # PublicAPI: its fast lane for the chat-like POSTs
        self._public = public
        self._admin = admin
        self.ready = False
        self._waiting: list[Any] = []

    def set_ready(self) -> None:
        self.ready = True
        waiting, self._waiting = self._waiting, []
        for request in waiting:
            if not getattr(request, "_disconnected", False):
                self._dispatch(request)

    def when_ready(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.ready:
            d.callback(None)
        else:
            self._waiting.append(_Callback(d))
        return d

    def render(self, request: Any) -> Any:
        if not self.ready:
            self._waiting.append(request)
            return NOT_DONE_YET
        return self._render(request)

    def _render(self, request: Any) -> Any:
        if self._fast is not None and request.method == b"POST":
            dialect = self._fast.FAST_ROUTES.get(request.path)
            if dialect is not None:
                return self._fast.render_fast(request, dialect)
        target = self._admin if is_admin_path(request.path) else self._public
        return target.render(request)

    def _dispatch(self, request: Any) -> None:
        """Render a request that waited for readiness (it was answered NOT_DONE_YET)."""
        if isinstance(request, _Callback):
            request.d.callback(None)
            return
        body = self._render(request)
        if body is not NOT_DONE_YET:
            request.write(body)
            request.finish()


class _Callback:
    """A waiter that is not a request (`Root.when_ready`)."""

    _disconnected = False

    def __init__(self, d: Deferred[None]) -> None:
        self.d = d
