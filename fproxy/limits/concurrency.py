"""Per-provider concurrency: at most N calls upstream, a bounded FIFO of waiters behind them."""
from __future__ import annotations

from collections import deque
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred

from fproxy.ir.errors import GatewayError


@define(eq=False)
class Waiter:
    ticket: Any
    deferred: Deferred[None]


@define
class ConcurrencyLimiter:
    limit: int | None
    queue_size: int = 100
    active: int = 0
    waiting: deque[Waiter] = field(factory=deque)

    def try_acquire(self) -> bool:
        """Take a free slot now, if there is one (no Deferred: the common case)."""
        if self.limit is None or self.active < self.limit:
            self.active += 1
            return True
        return False

    def acquire(self, ticket: Any = None) -> Deferred[None]:
        """Fires when a slot is ours.  Cancelling a waiting acquire leaves the queue."""
        if self.limit is None or self.active < self.limit:
            self.active += 1
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        if len(self.waiting) >= self.queue_size:
            raise GatewayError(429, "too many requests are waiting for this provider; try again shortly",
                               code="queue_full", retry_after=1)

        def cancel(_: Deferred[None]) -> None:
            try:
                self.waiting.remove(w)
            except ValueError:
                pass

        w = Waiter(ticket, Deferred(cancel))
        self.waiting.append(w)
        return w.deferred

    def release(self) -> None:
        while self.waiting:
            w = self.waiting.popleft()
            if not w.deferred.called:
                w.deferred.callback(None)  # the slot passes straight to the waiter
                return
        self.active = max(0, self.active - 1)
