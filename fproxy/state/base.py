"""The shared-state interface: the counters behind limits.

Two primitives cover every per-key limit:

- a *sliding window*: timestamped amounts summed over the last ``window`` seconds (requests
  per minute, tokens per minute).  An amount taken at admission can be corrected later
  (the token estimate is settled with the real usage), through the handle it returned.
- a *counter*: a number with an optional time to live (concurrent requests, budget spend).

Every method is ``async`` so that a networked backend (Redis, in the scale-out issue) can
implement the same interface; the in-memory one (`fproxy.state.memory`) never suspends.
Check-and-add operations are atomic per key, which a Redis version does with a script.
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
        """Set a counter outright (seeding from the store at start)."""
