"""Upstream key rotation: round-robin over healthy keys, cooldowns and removal.

State changes happen the moment an answer arrives (pitfall 13: a key that answered 429
leaves rotation at once).  A new cooldown never shortens a longer one.  Keys are held as
given but never logged: `label()` gives a safe name (``#2``) for logs and metrics.

With a shared state backend (`fproxy.state.shared`), ``listener`` hears of every disable and
cooldown so other instances learn of it, their news is applied with `apply_shared`, and
``picked`` lets the round-robin cursor follow a shared counter.  `pick` itself never waits.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.interfaces import IReactorTime

#: 402 Payment Required: the key's account is out of credit - a long pause
PAYMENT_COOLDOWN = 3600.0
#: 429 without Retry-After: 1 s, 2 s, 4 s ... up to this
MAX_DEFAULT_COOLDOWN = 60.0


@define
class KeyState:
    key: str
    index: int
    cooldown_until: float = 0.0
    disabled: bool = False
    strikes: int = 0  # consecutive 429s without Retry-After, for the growing default
    # a credential source (fproxy.providers.credentials) whose current value `key` holds, and the
    # headers that came with that value; None for a static key
    source: Any = None
    extra_headers: tuple[tuple[str, str], ...] = ()

    def label(self) -> str:
        return f"#{self.index + 1}"


@define
class KeyPool:
    clock: IReactorTime
    keys: list[KeyState] = field(factory=list)
    _cursor: int = 0
    #: called after this instance's answers disable or cool a key (publishing it to other instances)
    listener: Callable[[KeyState], None] | None = None
    #: called after every pick (advancing a shared round-robin counter)
    picked: Callable[[KeyPool], None] | None = None

    @classmethod
    def of(cls, clock: IReactorTime, keys: tuple[str, ...] | list[str]) -> KeyPool:
        return cls(clock, [KeyState(k, i) for i, k in enumerate(keys)])

    def healthy(self) -> list[KeyState]:
        now = self.clock.seconds()
        return [k for k in self.keys if not k.disabled and k.cooldown_until <= now]

    def pick(self, exclude: set[int] | frozenset[int] = frozenset()) -> KeyState | None:
        """The next healthy key after the cursor, skipping ``exclude`` (indices tried already)."""
        n = len(self.keys)
        now = self.clock.seconds()
        for step in range(n):
            i = (self._cursor + step) % n
            k = self.keys[i]
            if i in exclude or k.disabled or k.cooldown_until > now:
                continue
            self._cursor = (i + 1) % n
            if self.picked is not None:
                self.picked(self)
            return k
        return None

    def set_cursor(self, n: int) -> None:
        """Move the round-robin cursor (a shared counter's value; taken modulo the key count)."""
        if self.keys:
            self._cursor = n % len(self.keys)

    def apply_shared(self, k: KeyState, disabled: bool, cooldown_until: float) -> None:
        """Another instance disabled or cooled ``k``: the same here, without telling the listener again."""
        if disabled:
            k.disabled = True
        k.cooldown_until = max(k.cooldown_until, cooldown_until)

    def retry_after(self) -> float | None:
        """Seconds until some key is usable again (None if every key is disabled)."""
        now = self.clock.seconds()
        waits = [k.cooldown_until - now for k in self.keys if not k.disabled]
        return max(0.0, min(waits)) if waits else None

    def succeeded(self, k: KeyState) -> None:
        k.strikes = 0

    def disable(self, k: KeyState) -> None:
        """401/403: the key is refused by the upstream; out of rotation until reload."""
        k.disabled = True
        if self.listener is not None:
            self.listener(k)

    def cool(self, k: KeyState, seconds: float | None, status: int) -> float:
        """429 (``seconds`` from Retry-After, else growing) or 402 (long).  Returns the wait."""
        if status == 402:
            wait = PAYMENT_COOLDOWN
        elif seconds is not None and seconds > 0:
            wait = seconds
        else:
            wait = min(MAX_DEFAULT_COOLDOWN, 2.0 ** k.strikes)
            k.strikes += 1
        k.cooldown_until = max(k.cooldown_until, self.clock.seconds() + wait)
        if self.listener is not None:
            self.listener(k)
        return wait

    def snapshot(self) -> dict[str, int]:
        now = self.clock.seconds()
        out = {"healthy": 0, "cooling": 0, "disabled": 0}
        for k in self.keys:
            out["disabled" if k.disabled else "cooling" if k.cooldown_until > now else "healthy"] += 1
        return out
