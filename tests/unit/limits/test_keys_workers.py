"""KeyLimits.divisor: with --workers N and memory state, each worker enforces limit // N (at least 1)."""
from __future__ import annotations

from twisted.internet.task import Clock

from fproxy.ir.errors import GatewayError
from fproxy.limits.keys import KeyLimits
from fproxy.state.memory import MemoryState
from fproxy.store.base import KeyRecord
from tests.unit.sync import run

BODY = {"model": "m", "messages": [{"role": "user", "content": "x" * 40}]}  # ~14 tokens estimated


def key(**kw):
    return KeyRecord(id="key_w", key_hash="h", prefix="sk-fp-w", created_at=0, updated_at=0, **kw)


def admitted(lim: KeyLimits, rec: KeyRecord, n: int) -> int:
    ok = 0
    for _ in range(n):
        try:
            run(lim.admit(rec, "m", BODY))
            ok += 1
        except GatewayError as e:
            assert e.status == 429
    return ok


def limits(divisor: int) -> KeyLimits:
    clock = Clock()
    clock.advance(1_000_000)
    lim = KeyLimits(MemoryState(clock), clock)
    lim.divisor = divisor
    return lim


def test_rpm_divided_among_workers():
    assert admitted(limits(1), key(rpm=10), 20) == 10
    assert admitted(limits(2), key(rpm=10), 20) == 5
    assert admitted(limits(3), key(rpm=10), 20) == 3
    assert admitted(limits(4), key(rpm=2), 20) == 1, "never below one call per worker"


def test_concurrency_and_tpm_divided():
    assert admitted(limits(2), key(max_concurrency=4), 10) == 2
    # tpm 40 // 2 = 20 per worker: one call of ~14 tokens fits, a second does not
    assert admitted(limits(2), key(tpm=40), 5) == 1
    assert admitted(limits(1), key(tpm=40), 5) == 2
