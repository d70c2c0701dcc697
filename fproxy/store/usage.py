"""The usage ledger: one record per finished call, written to the store in batches.

`UsageWriter` keeps records in memory and writes them every `FLUSH_SECONDS`, or sooner once
`BATCH_SIZE` are waiting; a failed write keeps the records for the next try.  Its
``stopService`` writes everything left, and `fproxy.service.GatewayService` stops it only
after the drain has let every in-flight call finish, so a graceful stop loses no record.
The buffer is bounded (`MAX_PENDING`): if the database stays down, the oldest records are
dropped, with an error in the log, rather than memory growing without end.

`build_record` turns a finished call into a record, estimating tokens (~4 characters per
token) when the upstream reported no usage.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredLock
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from fproxy.ir.response import Usage
from fproxy.pricing import PriceTable
from fproxy.store.base import Store, UsageRecord

log = Logger()

FLUSH_SECONDS = 1.0
BATCH_SIZE = 200
MAX_PENDING = 100_000
CHARS_PER_TOKEN = 4.0
#: an SSE event carries ~1 token of text in ~100 bytes of framing and JSON
STREAM_BYTES_PER_TOKEN = 100.0
#: the JSON envelope of a whole (non-streamed) answer
ENVELOPE_BYTES = 250
_TEXT_FIELDS = ("messages", "system", "input", "instructions", "prompt", "tools")


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_chars(v) for k, v in value.items() if k not in ("type", "role", "cache_control"))
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    return 0


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """~4 characters per token over the text a request carries, plus a little per message."""
    chars = sum(_text_chars(body.get(f)) for f in _TEXT_FIELDS)
    messages = body.get("messages")
    overhead = 4 * len(messages) if isinstance(messages, list) else 4
    return int(math.ceil(chars / CHARS_PER_TOKEN)) + overhead


def estimate_completion_tokens(bytes_out: int, stream: bool) -> int:
    """A rough count from the bytes the client received (their framing weighed out)."""
    if bytes_out <= 0:
        return 0
    if stream:
        return int(math.ceil(bytes_out / STREAM_BYTES_PER_TOKEN))
    return int(math.ceil(max(0, bytes_out - ENVELOPE_BYTES) / CHARS_PER_TOKEN))


def final_outcome(call: Any, cancelled: bool) -> tuple[str, int]:
    """(outcome, status) for the ledger: a call still "running" when it finished was cut by its client."""
    if cancelled:
        return "cancelled", call.status or 499
    outcome = call.outcome
    if outcome in ("running", "streaming"):
        return "client_closed", call.status or 499
    if outcome == "client_closed":
        return outcome, call.status or 499
    return outcome, call.status


def build_record(call: Any, now: float, prices: PriceTable, endpoint: str | None = None, bytes_out: int = 0,
                 cancelled: bool = False) -> UsageRecord:
    """The ledger record of a finished `fproxy.gateway.Call`."""
    usage: Usage | None = call.usage
    estimated = False
    if usage is None and call.provider is not None:
        # the upstream took the call but reported no usage (cut short, or it never does)
        usage = Usage(prompt_tokens=estimate_prompt_tokens(call.body),
                      completion_tokens=estimate_completion_tokens(bytes_out, call.stream))
        estimated = True
    u = usage or Usage()
    outcome, status = final_outcome(call, cancelled)
    principal = call.principal
    return UsageRecord(
        request_id=call.request_id, ts=call.started, key_id=getattr(principal, "id", None),
        route_model=call.model or None, provider=call.provider, upstream_model=call.upstream_model,
        endpoint=endpoint, stream=bool(call.stream),
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, reasoning_tokens=u.reasoning_tokens,
        cached_tokens=u.cache_read_tokens, cache_write_tokens=u.cache_write_tokens,
        cost_usd=prices.cost(usage, call.upstream_model, call.model),
        status=status, outcome=outcome, latency_ms=round(max(0.0, now - call.started) * 1000.0, 3),
        ttft_ms=round(call.ttft * 1000.0, 3) if call.ttft is not None else None,
        estimated=estimated, error=(call.error or None) and str(call.error)[:500],
    )


class UsageWriter(Service):
    """Batches usage records into the store; flushes on stop."""

    def __init__(self, store: Store, clock: Any, interval: float = FLUSH_SECONDS, batch_size: int = BATCH_SIZE,
                 max_pending: int = MAX_PENDING) -> None:
        self._store = store
        self._clock = clock
        self._interval = interval
        self._batch = batch_size
        self._max = max_pending
        self._pending: list[UsageRecord] = []
        self._lock = DeferredLock()
        self._loop: LoopingCall | None = None
        self.written = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._pending)

    def record(self, rec: UsageRecord) -> None:
        """Queue one record (never blocks, never fails)."""
        self._pending.append(rec)
        if len(self._pending) > self._max:
            over = len(self._pending) - self._max
            del self._pending[:over]
            self.dropped += over
            log.error("usage ledger: the store is not keeping up; dropped {n} oldest record(s)", n=over)
        if len(self._pending) >= self._batch and not self._lock.locked:
            self._kick()

    def record_many(self, recs: Iterable[UsageRecord]) -> None:
        for r in recs:
            self.record(r)

    def _kick(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(self.flush())
        d.addErrback(lambda f: log.failure("usage ledger flush failed", f))
        return d

    async def flush(self) -> bool:
        """Write everything pending (records queued meanwhile too).  False if a write failed."""
        await self._lock.acquire()
        try:
            while self._pending:
                batch = self._pending[: self._batch]
                try:
                    await self._store.insert_usage(batch)
                except CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - any database error: keep the records, retry later
                    log.failure("usage ledger: writing {n} record(s) failed; will retry", n=len(batch))
                    return False
                # records may have been dropped from the front meanwhile (overflow): remove by identity
                if self._pending[: len(batch)] == batch:
                    del self._pending[: len(batch)]
                else:
                    done = {id(r) for r in batch}
                    self._pending = [r for r in self._pending if id(r) not in done]
                self.written += len(batch)
            return True
        finally:
            self._lock.release()

    # ------------------------------------------------------------ service
    def startService(self) -> None:
        super().startService()
        loop = self._loop = LoopingCall(self._kick)
        loop.clock = self._clock
        loop.start(self._interval, now=False).addErrback(lambda f: log.failure("usage flush loop stopped", f))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return Deferred.fromCoroutine(self._final_flush())

    async def _final_flush(self) -> None:
        for attempt in range(3):
            if await self.flush():
                if self.written:
                    log.info("usage ledger flushed ({n} record(s) written since start)", n=self.written)
                return
            log.warn("usage ledger: final flush attempt {n} failed", n=attempt + 1)
        log.error("usage ledger: {n} record(s) could not be written at shutdown", n=len(self._pending))
