"""Calls in flight: admission, the queue view, cancelling, and what happens when a call ends.

`CallTracker` sits around `fproxy.gateway.Gateway.chat`:

- `admit` (before routing): per-key limits (`fproxy.limits.keys`), then the call is
  registered by its request id;
- `run` wraps the gateway's coroutine in a Deferred kept in the registry, so that
  ``POST /v1/cancel/{id}`` can cancel it: a call *waiting* for a provider slot leaves the
  queue (its client gets a 4xx ``request_cancelled``), a *running* non-streamed call is
  cancelled (closing its upstream connection), and a running stream is cut in-band with an
  error event (`fproxy.streaming.pipe.StreamPipe.shutdown`, which closes the upstream);
- `finished` (the gateway's ``on_finished`` hook, once per call) settles the limits, writes
  the usage record and updates the metrics.
"""
from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from attrs import define
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from fproxy.ir.errors import GatewayError
from fproxy.limits.keys import Admission, KeyLimits
from fproxy.pricing import PriceTable
from fproxy.store.usage import UsageWriter, build_record

log = Logger()

ROUTES = {"openai-chat": "/v1/chat/completions", "anthropic": "/v1/messages", "openai-responses": "/v1/responses"}


def cancelled_error() -> GatewayError:
    return GatewayError(499, "The request was cancelled.", code="request_cancelled")


@define(eq=False)
class InFlight:
    call: Any  # fproxy.gateway.Call
    request: Any
    route: str
    admission: Admission | None = None
    deferred: Deferred[Any] | None = None
    cancelled: bool = False
    bytes_out: int = 0


class CallTracker:
    def __init__(self, clock: Any, providers: dict[str, Any], prices: PriceTable, limits: KeyLimits | None = None,
                 usage: UsageWriter | None = None, metrics: Any = None) -> None:
        self._clock = clock
        self._providers = providers
        self._prices = prices
        self.limits = limits
        self.usage = usage
        self.metrics = metrics
        self._calls: dict[str, InFlight] = {}
        self._idle_waiters: list[Deferred[None]] = []

    def when_idle(self) -> Deferred[None]:
        """Fires once no call is in flight (every on_finished hook has run)."""
        d: Deferred[None] = Deferred()
        if not self._calls:
            d.callback(None)
        else:
            self._idle_waiters.append(d)
        return d

    def __len__(self) -> int:
        return len(self._calls)

    def get(self, request_id: str) -> InFlight | None:
        return self._calls.get(request_id)

    # ------------------------------------------------------------ lifecycle of one call
    async def admit(self, request: Any, call: Any, route: str | None = None) -> None:
        """Check the caller's limits and register the call (raises GatewayError when refused)."""
        route = route or _route_of(request, call)
        model = call.body.get("model")
        model = model if isinstance(model, str) else ""
        principal = call.principal
        admission = None
        if self.limits is not None:
            try:
                admission = await self.limits.admit(getattr(principal, "record", None), model, call.body)
            except GatewayError as e:
                call.model, call.status, call.outcome, call.error = model, e.status, "refused", e.message
                if self.metrics is not None:
                    self.metrics.refused(route, model, e.status, e.code)
                raise
        self._calls[call.request_id] = InFlight(call, request, route, admission)

    async def run(self, call: Any, work: Coroutine[Any, Any, Any]) -> Any:
        """Await the gateway's coroutine, cancellable through `cancel`."""
        entry = self._calls.get(call.request_id)
        try:
            if entry is not None and getattr(entry.request, "fast_lane", False):
                # the fast lane's request carries the call's own Deferred: cancelling it reaches the
                # same awaited step, without a second coroutine wrapper per call
                return await work
            d: Deferred[Any] = Deferred.fromCoroutine(work)
            if entry is not None:
                entry.deferred = d
            return await d
        except (CancelledError, GatewayError):
            if entry is not None and entry.cancelled:  # however the layers below reported it
                raise cancelled_error() from None
            raise

    def note_bytes(self, call: Any, n: int) -> None:
        """Size of a whole (non-streamed) answer, for token estimates when the upstream gave none."""
        entry = self._calls.get(call.request_id)
        if entry is not None:
            entry.bytes_out = n

    def finished(self, call: Any) -> None:
        """The gateway's on_finished hook: settle limits, write the usage record, count metrics."""
        entry = self._calls.pop(call.request_id, None)
        try:
            self._record(call, entry)
        finally:
            if not self._calls and self._idle_waiters:
                waiters, self._idle_waiters = self._idle_waiters, []
                for d in waiters:
                    d.callback(None)

    def _record(self, call: Any, entry: InFlight | None) -> None:
        route = entry.route if entry is not None else ROUTES.get(call.dialect, "-")
        bytes_out = entry.bytes_out if entry is not None else 0
        pipe = getattr(entry.request, "pipe", None) if entry is not None else None
        if pipe is not None:
            bytes_out = pipe.bytes_out
        rec = build_record(call, self._clock.seconds(), self._prices, route, bytes_out,
                           cancelled=entry is not None and entry.cancelled)
        if self.usage is not None:
            self.usage.record(rec)
        if self.metrics is not None:
            try:
                self.metrics.observe(call, rec, route)
            except Exception:  # noqa: BLE001 - metrics must never break a call's bookkeeping
                log.failure("metrics update failed for {request_id}", request_id=call.request_id)
        if self.limits is not None:
            key_id = getattr(call.principal, "record", None) and call.principal.id
            if entry is not None and entry.admission is not None:
                d = Deferred.fromCoroutine(self.limits.settle(entry.admission, rec.tokens, rec.cost_usd))
            elif key_id:
                d = Deferred.fromCoroutine(self.limits.add_spend(key_id, rec.tokens, rec.cost_usd))
            else:
                return
            d.addErrback(lambda f: log.failure("settling the limits of {request_id} failed", f,
                                               request_id=call.request_id))

    # ------------------------------------------------------------ queue and cancel
    def _waiting(self) -> dict[int, str]:
        """id(call) -> provider name, for calls waiting for a provider's concurrency slot."""
        out: dict[int, str] = {}
        for name, p in self._providers.items():
            for w in p.limiter.waiting:
                if not w.deferred.called:
                    out[id(w.ticket)] = name
        return out

    def active_counts(self) -> tuple[int, int]:
        """(streams being relayed, calls in flight) for the metrics gauges."""
        streams = sum(1 for e in self._calls.values() if getattr(e.request, "pipe", None) is not None
                      and e.call.outcome == "streaming")
        return streams, len(self._calls)

    def queue(self, principal: Any) -> list[dict[str, Any]]:
        """Entries of ``GET /v1/queue``: the caller's own calls, or all of them for an admin."""
        now = self._clock.seconds()
        waiting = self._waiting()
        out = []
        for rid, e in list(self._calls.items()):
            call = e.call
            if not principal.admin and call.principal.id != principal.id:
                continue
            state = "waiting" if id(call) in waiting else "running"
            out.append({
                "id": rid, "model": call.model or call.body.get("model"), "key": call.principal.id,
                "key_name": getattr(call.principal, "name", None), "state": state,
                "age_s": round(now - call.started, 3), "provider": call.provider or waiting.get(id(call)),
                "stream": bool(call.stream), "route": e.route,
            })
        out.sort(key=lambda x: -x["age_s"])
        return out

    def cancel(self, principal: Any, request_id: str) -> dict[str, Any] | None:
        """Cancel one call; None when there is none the caller may see (a 404 for them)."""
        e = self._calls.get(request_id)
        if e is None or (not principal.admin and e.call.principal.id != principal.id):
            return None
        state = "waiting" if id(e.call) in self._waiting() else "running"
        if e.cancelled:
            return {"id": request_id, "cancelled": True, "state": state}
        e.cancelled = True
        log.info("request {rid} cancelled by {who} while {state}", rid=request_id, who=principal.id, state=state)
        pipe = getattr(e.request, "pipe", None)
        if pipe is not None and e.call.outcome == "streaming":
            pipe.shutdown(cancelled_error())  # error event in-band, upstream connection closed
        elif e.deferred is not None:
            e.deferred.cancel()
        elif getattr(e.request, "call_deferred", None) is not None:
            e.request.call_deferred.cancel()
        return {"id": request_id, "cancelled": True, "state": state}


def _route_of(request: Any, call: Any) -> str:
    path = getattr(request, "path", None)
    if isinstance(path, bytes) and path:
        return path.decode("utf-8", "replace")
    return ROUTES.get(call.dialect, "-")
