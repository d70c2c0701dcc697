"""Run a coroutine that never waits on I/O (memory state, fakes) to its end, synchronously."""
from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """The coroutine's result; its exception is raised.  Fails if it is still waiting."""
    out: list[Any] = []
    Deferred.fromCoroutine(coro).addBoth(out.append)
    assert out, "the coroutine is still waiting for something"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]
