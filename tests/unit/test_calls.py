"""CallTracker with a real ConcurrencyLimiter and memory state, no sockets: queue, cancel, finish."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from fproxy.calls import CallTracker
from fproxy.pricing import PriceTable
from fproxy.gateway import Call
from fproxy.ir.errors import GatewayError
from fproxy.ir.response import Usage
from fproxy.limits.concurrency import ConcurrencyLimiter
from fproxy.limits.keys import KeyLimits
from fproxy.state.memory import MemoryState
from fproxy.store.base import KeyRecord
from fproxy.web.auth import Principal
from tests.unit.sync import run

REC = KeyRecord(id="key_a", key_hash="h", prefix="p", created_at=0, updated_at=0, max_concurrency=5, name="al")
ALICE, BOB, ADMIN = Principal("key_a", record=REC), Principal("static:0"), Principal("admin:0", admin=True)


class Ledger:
    def __init__(self):
        self.records = []

    def record(self, rec):
        self.records.append(rec)


def setup():
    clock = Clock()
    limiter = ConcurrencyLimiter(1)
    providers = {"p": SimpleNamespace(limiter=limiter)}
    state = MemoryState(clock)
    ledger = Ledger()
    tracker = CallTracker(clock, providers, PriceTable(), KeyLimits(state, clock), ledger)
    return tracker, limiter, clock, state, ledger


def new_call(rid, who, started=0.0):
    return Call(request_id=rid, dialect="openai-chat", principal=who, body={"model": "m"}, started=started)


async def work(limiter, call):
    await limiter.acquire(call)
    try:
        call.provider, call.status, call.outcome = "p", 200, "completed"
        call.usage = Usage(prompt_tokens=3, completion_tokens=2)
        return b"ok"
    finally:
        limiter.release()


def test_queue_visibility_and_cancel_waiting():
    tracker, limiter, clock, state, ledger = setup()
    limiter.acquire("someone else")  # the only slot is taken
    c1 = new_call("req_1", ALICE)
    run(tracker.admit(None, c1))
    d = Deferred.fromCoroutine(tracker.run(c1, work(limiter, c1)))
    clock.advance(2.5)
    assert tracker.queue(ALICE) == [{"id": "req_1", "model": "m", "key": "key_a", "key_name": "al",
                                     "state": "waiting", "age_s": 2.5, "provider": "p", "stream": False,
                                     "route": "/v1/chat/completions"}]
    assert tracker.queue(BOB) == [] and len(tracker.queue(ADMIN)) == 1
    assert tracker.cancel(BOB, "req_1") is None
    assert tracker.cancel(ALICE, "req_1") == {"id": "req_1", "cancelled": True, "state": "waiting"}
    failures = []
    d.addErrback(failures.append)
    err = failures[0].value
    assert isinstance(err, GatewayError) and err.status == 499 and err.code == "request_cancelled"
    assert len(limiter.waiting) == 0, "the cancelled call left the provider's queue"
    c1.status, c1.outcome = 499, "error"
    tracker.finished(c1)
    assert ledger.records[0].outcome == "cancelled" and ledger.records[0].status == 499
    assert run(state.counter_get("conc:key_a")) == 0, "the concurrency slot was given back"
    assert len(tracker) == 0 and tracker.when_idle().called


def test_finished_records_usage_and_settles():
    tracker, limiter, clock, state, ledger = setup()
    c = new_call("req_2", ALICE)
    run(tracker.admit(None, c))
    idle = tracker.when_idle()
    assert run(tracker.run(c, work(limiter, c))) == b"ok"
    assert not idle.called
    clock.advance(1)
    tracker.finished(c)
    assert idle.called
    r = ledger.records[0]
    assert (r.key_id, r.prompt_tokens, r.completion_tokens, r.latency_ms, r.endpoint) == \
        ("key_a", 3, 2, 1000.0, "/v1/chat/completions")
    assert run(state.counter_get("spend:tokens:key_a:all")) == 5


def test_refused_call_is_not_registered():
    tracker, *_ = setup()
    rec = KeyRecord(id="key_b", key_hash="h", prefix="p", created_at=0, updated_at=0, models=("x-*",))
    c = new_call("req_3", Principal("key_b", record=rec))
    with pytest.raises(GatewayError) as e:
        run(tracker.admit(None, c))
    assert e.value.status == 403 and c.outcome == "refused" and len(tracker) == 0
