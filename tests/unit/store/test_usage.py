"""UsageWriter (batching, retry, flush on stop, bound) and build_record (estimates, cost) with task.Clock."""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from fproxy.pricing import PriceTable
from fproxy.gateway import Call
from fproxy.ir.response import Usage
from fproxy.store.base import UsageRecord
from fproxy.store.usage import UsageWriter, build_record, estimate_completion_tokens, estimate_prompt_tokens
from fproxy.web.auth import Principal


class FakeStore:
    """insert_usage answers with a Deferred the test fires (or fails)."""

    def __init__(self) -> None:
        self.pending: list[tuple[list[UsageRecord], Deferred[None]]] = []
        self.rows: list[UsageRecord] = []

    def insert_usage(self, records: list[UsageRecord]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.pending.append((list(records), d))
        return d

    def ok(self) -> None:
        records, d = self.pending.pop(0)
        self.rows.extend(records)
        d.callback(None)

    def fail(self) -> None:
        _, d = self.pending.pop(0)
        d.errback(RuntimeError("database is locked"))


def rec(i: int) -> UsageRecord:
    return UsageRecord(request_id=f"r{i}", ts=0, key_id="k", route_model="m", provider="p", upstream_model="m")


def writer(batch=3, max_pending=100) -> tuple[UsageWriter, FakeStore, Clock]:
    clock, store = Clock(), FakeStore()
    w = UsageWriter(store, clock, interval=1.0, batch_size=batch, max_pending=max_pending)
    w.startService()
    return w, store, clock


def test_flushes_every_interval():
    w, store, clock = writer(batch=10)
    w.record(rec(1))
    w.record(rec(2))
    assert store.pending == []
    clock.advance(1.0)
    assert [r.request_id for r in store.pending[0][0]] == ["r1", "r2"]
    store.ok()
    assert len(w) == 0 and w.written == 2


def test_full_batch_written_at_once_and_in_batches():
    w, store, clock = writer(batch=3)
    for i in range(7):
        w.record(rec(i))
    assert len(store.pending) == 1 and len(store.pending[0][0]) == 3
    store.ok()  # the flush goes on with the next batch
    assert len(store.pending[0][0]) == 3
    store.ok()
    assert len(store.pending[0][0]) == 1
    store.ok()
    assert [r.request_id for r in store.rows] == [f"r{i}" for i in range(7)] and len(w) == 0


def test_failed_write_keeps_records_for_the_next_tick():
    w, store, clock = writer(batch=10)
    w.record(rec(1))
    clock.advance(1.0)
    store.fail()
    assert len(w) == 1
    clock.advance(1.0)
    store.ok()
    assert [r.request_id for r in store.rows] == ["r1"] and len(w) == 0


def test_stop_flushes_everything_and_waits():
    w, store, clock = writer(batch=10)
    for i in range(4):
        w.record(rec(i))
    done = w.stopService()
    assert not done.called
    store.ok()
    assert done.called and len(store.rows) == 4
    clock.advance(5)
    assert store.pending == []  # the loop is stopped


def test_stop_retries_a_failed_final_flush():
    w, store, _ = writer(batch=10)
    w.record(rec(1))
    done = w.stopService()
    store.fail()
    store.ok()
    assert done.called and [r.request_id for r in store.rows] == ["r1"]


def test_bounded_buffer_drops_oldest():
    w, store, _ = writer(batch=1000, max_pending=5)
    for i in range(8):
        w.record(rec(i))
    assert len(w) == 5 and w.dropped == 3


# ---------------------------------------------------------------- records
def call(**kw: Any) -> Call:
    c = Call(request_id="req_1", dialect="openai-chat", principal=Principal("key_a"),
             body={"model": "gpt-4o", "messages": [{"role": "user", "content": "y" * 400}]}, started=100.0)
    c.model = "gpt-4o"
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_record_with_upstream_usage_and_cost():
    c = call(provider="openai", upstream_model="gpt-4o-mini", status=200, outcome="completed", ttft=0.25,
             usage=Usage(prompt_tokens=1000, completion_tokens=500, cache_read_tokens=200, reasoning_tokens=50))
    r = build_record(c, 102.5, PriceTable(), "/v1/chat/completions")
    assert (r.key_id, r.route_model, r.upstream_model, r.provider) == ("key_a", "gpt-4o", "gpt-4o-mini", "openai")
    assert (r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.reasoning_tokens) == (1000, 500, 200, 50)
    assert r.latency_ms == 2500 and r.ttft_ms == 250 and not r.estimated and r.tokens == 1500
    # gpt-4o-mini: 800 fresh * 0.15 + 200 cached * 0.075 + 500 * 0.60 per million
    assert abs(r.cost_usd - (800 * 0.15 + 200 * 0.075 + 500 * 0.60) / 1e6) < 1e-12


def test_record_estimated_when_the_upstream_gave_no_usage():
    c = call(provider="openai", upstream_model="x", stream=True, outcome="client_closed")
    r = build_record(c, 101.0, PriceTable(), bytes_out=1000)
    assert r.estimated and r.prompt_tokens == estimate_prompt_tokens(c.body) == 104
    assert r.completion_tokens == estimate_completion_tokens(1000, True) == 10
    assert r.outcome == "client_closed" and r.status == 499


def test_record_of_a_call_that_never_reached_an_upstream():
    c = call(status=404, outcome="error", error="no such model")
    r = build_record(c, 100.0, PriceTable())
    assert r.tokens == 0 and not r.estimated and r.status == 404 and r.error == "no such model"


def test_record_of_cancelled_and_cut_calls():
    assert build_record(call(), 100.0, PriceTable(), cancelled=True).outcome == "cancelled"
    r = build_record(call(outcome="running"), 100.0, PriceTable())
    assert (r.outcome, r.status) == ("client_closed", 499)
