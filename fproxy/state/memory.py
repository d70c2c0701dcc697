"""In-process state (``state.url = "memory:"``): one gateway process, nothing shared.

Windows are logs of ``[time, amount]`` entries pruned as they age out, so a window holds at
most as many entries as calls in the last ``window`` seconds.  Counters carry an expiry.
Keys nobody touches any more are swept every `SWEEP_EVERY` operations, so memory follows
the live keys, not every key ever seen.  Time comes from the injected clock.
"""
from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.interfaces import IReactorTime

from fproxy.state.base import Taken

SWEEP_EVERY = 4096


class _Entry:
    __slots__ = ("t", "amount")

    def __init__(self, t: float, amount: float) -> None:
        self.t = t
        self.amount = amount


class _Slot:
    """A slot handle: released once."""

    __slots__ = ("released",)

    def __init__(self) -> None:
        self.released = False


class _Window:
    __slots__ = ("entries", "span")

    def __init__(self, span: float) -> None:
        self.entries: deque[_Entry] = deque()
        self.span = span

    def prune(self, now: float) -> None:
        horizon = now - self.span
        e = self.entries
        while e and e[0].t <= horizon:
            e.popleft()

    def used(self) -> float:
        return sum(x.amount for x in self.entries)

    def wait_for(self, amount: float, limit: float, now: float) -> float:
        """Seconds until ``amount`` fits under ``limit`` as old entries age out."""
        remaining = self.used()
        for x in self.entries:
            remaining -= x.amount
            if remaining <= 0 or remaining + amount <= limit:
                return max(0.0, x.t + self.span - now)
        return self.span


class MemoryState:
    """`fproxy.state.base.State` in a dict; the clock is injected (``task.Clock`` in tests)."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._counters: dict[str, tuple[float, float | None]] = {}  # key -> (value, expires at)
        self._ops = 0

    # ------------------------------------------------------------ windows
    async def window_take(self, key: str, amount: float, limit: float, window: float) -> Taken:
        now = self._tick()
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = _Window(window)
        w.span = window
        w.prune(now)
        used = w.used()
        if used > 0 and used + amount > limit:
            return Taken(False, used, w.wait_for(amount, limit, now))
        entry = _Entry(now, amount)
        w.entries.append(entry)
        return Taken(True, used, None, entry)

    async def window_set(self, key: str, handle: Any, amount: float) -> None:
        if isinstance(handle, _Entry):
            handle.amount = amount

    def window_used(self, key: str) -> float:
        """The window's current sum (for tests and /api introspection)."""
        w = self._windows.get(key)
        if w is None:
            return 0.0
        w.prune(self._clock.seconds())
        return w.used()

    # ------------------------------------------------------------ counters
    async def counter_take(self, key: str, limit: float) -> bool:
        now = self._tick()
        value = self._value(key, now)
        if value + 1 > limit:
            return False
        self._counters[key] = (value + 1, None)
        return True

    async def counter_add(self, key: str, amount: float, ttl: float | None = None) -> float:
        now = self._tick()
        value = self._value(key, now) + amount
        old = self._counters.get(key)
        expires = now + ttl if ttl is not None else (old[1] if old is not None else None)
        self._counters[key] = (value, expires)
        return value

    async def counter_get(self, key: str) -> float:
        return self._value(key, self._clock.seconds())

    async def counter_set(self, key: str, value: float, ttl: float | None = None) -> None:
        now = self._tick()
        self._counters[key] = (value, now + ttl if ttl is not None else None)

    async def counter_raise(self, key: str, value: float, ttl: float | None = None) -> float:
        now = self._tick()
        current = self._value(key, now)
        if value <= current:
            return current
        old = self._counters.get(key)
        expires = now + ttl if ttl is not None else (old[1] if old is not None else None)
        self._counters[key] = (value, expires)
        return value

    # ------------------------------------------------------------ slots (a counter per key, here)
    async def slot_take(self, key: str, limit: float) -> Any:
        if not await self.counter_take(key, limit):
            return None
        return _Slot()

    async def slot_release(self, key: str, handle: Any) -> None:
        if isinstance(handle, _Slot) and not handle.released:
            handle.released = True
            now = self._tick()
            value = max(0.0, self._value(key, now) - 1)
            old = self._counters.get(key)
            self._counters[key] = (value, old[1] if old is not None else None)

    # ------------------------------------------------------------ internals
    def _value(self, key: str, now: float) -> float:
        v = self._counters.get(key)
        if v is None:
            return 0.0
        if v[1] is not None and v[1] <= now:
            del self._counters[key]
            return 0.0
        return v[0]

    def _tick(self) -> float:
        now = self._clock.seconds()
        self._ops += 1
        if self._ops >= SWEEP_EVERY:
            self._ops = 0
            self.sweep(now)
        return now

    def sweep(self, now: float) -> None:
        """Drop empty windows, expired counters and counters back at zero."""
        for k in [k for k, w in self._windows.items() if (w.prune(now), not w.entries)[1]]:
            del self._windows[k]
        for k in [k for k, (v, exp) in self._counters.items() if (exp is not None and exp <= now) or v == 0]:
            del self._counters[k]

    def __len__(self) -> int:
        return len(self._windows) + len(self._counters)
