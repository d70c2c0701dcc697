"""The shared-state interface: the counters behind limits.

Two primitives cover every per-key limit:

- a *sliding window*: timestamped amounts summed over the last ``window`` seconds (requests
  per minute, tokens per minute).  An amount taken at admission can be corrected later
  (the token estimate is settled with the real usage), through the handle it returned.
- a *counter*: a number with an optional time to live (budget spend).
- *slots*: a bounded count of holders (concurrent requests).  A slot taken is a handle
  given back with `State.slot_release`; a networked backend gives each one a lease, so a
  process that dies holding slots does not hold them forever.

Every method is ``async`` so that a networked backend (`fproxy.state.redis`) can implement
the same interface; the in-memory one (`fproxy.state.memory`) never suspends.
Check-and-add operations are atomic per key, which the Redis one does with Lua scripts.
"""
from __future__ import annotations

from typing import Any, Protocol

from attrs import frozen


@frozen
class Taken:
    """The answer of `State.window_take`.

    ``ok``: the amount was added.  ``used``: the window's sum before the call.
    ``retry_after``: seconds until the amount would fit (when refused).
    ``handle``: give it to `State.window_set` to correct the amount later.
    """

    ok: bool
    used: float
    retry_after: float | None = None
    handle: Any = None


class State(Protocol):
    async def window_take(self, key: str, amount: float, limit: float, window: float) -> Taken:
        """Add ``amount`` to the window ``key`` unless that would pass ``limit``.

        An empty window always accepts (one request larger than the limit still runs once).
        """

    async def window_set(self, key: str, handle: Any, amount: float) -> None:
        """Replace the amount of an earlier `window_take` (0 undoes it)."""

    async def counter_take(self, key: str, limit: float) -> bool:
        """Add 1 to counter ``key`` if it is below ``limit``; True when added."""

    async def counter_add(self, key: str, amount: float, ttl: float | None = None) -> float:
        """Add ``amount`` (may be negative); ``ttl`` seconds of life from now (None: forever).  Returns the sum."""

    async def counter_get(self, key: str) -> float:
        """The counter's value (0 when absent or expired)."""

    async def counter_set(self, key: str, value: float, ttl: float | None = None) -> None:
        """Set a counter outright."""

    async def counter_raise(self, key: str, value: float, ttl: float | None = None) -> float:
        """Raise a counter to ``value`` if it is lower (seeding from the ledger: a shared backend may
        already hold more than the ledger, whose last records are still being written).  Returns the value."""

    async def slot_take(self, key: str, limit: float) -> Any:
        """Take one of ``limit`` slots of ``key``: a handle for `slot_release`, or None when all are taken."""

    async def slot_release(self, key: str, handle: Any) -> None:
        """Give back a slot taken by `slot_take` (a second release of the same handle is harmless)."""
