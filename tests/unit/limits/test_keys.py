"""KeyLimits: allow-list, RPM, TPM (reserve then settle), concurrency, budgets - task.Clock, memory state."""
from __future__ import annotations

import datetime

import pytest
from twisted.internet.task import Clock

from fproxy.ir.errors import GatewayError
from fproxy.limits.keys import KeyLimits, model_allowed
from fproxy.state.memory import MemoryState
from fproxy.store.base import KeyRecord
from tests.unit.sync import run

BODY = {"model": "m", "messages": [{"role": "user", "content": "x" * 40}]}  # ~10 + 4 tokens estimated
NOON = datetime.datetime(2025, 3, 10, 12, 0, tzinfo=datetime.timezone.utc).timestamp()


def key(**kw):
    return KeyRecord(id="key_t", key_hash="h", prefix="sk-fp-t", created_at=0, updated_at=0, **kw)


def limits(at=NOON):
    clock = Clock()
    clock.advance(at)
    state = MemoryState(clock)
    return KeyLimits(state, clock), clock, state


def refused(coro) -> GatewayError:
    with pytest.raises(GatewayError) as e:
        run(coro)
    return e.value


def test_no_record_no_limits():
    lim, _, _ = limits()
    assert run(lim.admit(None, "anything", BODY)) is None


def test_model_allow_list_globs():
    rec = key(models=("gpt-4o*", "claude-3-5-haiku-20241022"))
    assert model_allowed(rec, "gpt-4o-mini") and model_allowed(rec, "claude-3-5-haiku-20241022")
    assert not model_allowed(rec, "gpt-5") and not model_allowed(rec, "claude-3-5-haiku")
    assert model_allowed(key(), "whatever")
    lim, _, _ = limits()
    e = refused(lim.admit(rec, "gpt-5", BODY))
    assert e.status == 403 and e.code == "model_not_allowed"


def test_rpm_window_and_retry_after():
    lim, clock, _ = limits()
    rec = key(rpm=2)
    run(lim.admit(rec, "m", BODY))
    clock.advance(20)
    run(lim.admit(rec, "m", BODY))
    clock.advance(10)
    e = refused(lim.admit(rec, "m", BODY))
    assert e.status == 429 and e.code == "rpm_exceeded" and e.retry_after == 30
    clock.advance(30)
    assert run(lim.admit(rec, "m", BODY)) is not None


def test_tpm_reserves_estimate_then_settles_real_usage():
    lim, clock, state = limits()
    rec = key(tpm=100)
    a = run(lim.admit(rec, "m", BODY))
    assert a.reserved == 14 and state.window_used("tpm:key_t") == 14
    run(lim.settle(a, 120, 0.0))  # the real usage, larger than the limit
    assert state.window_used("tpm:key_t") == 120
    e = refused(lim.admit(rec, "m", BODY))
    assert e.code == "tpm_exceeded" and e.retry_after == 60 and "120 used" in e.message
    clock.advance(60)
    assert run(lim.admit(rec, "m", BODY)) is not None


def test_tpm_refusal_gives_the_rpm_slot_back():
    lim, _, state = limits()
    rec = key(rpm=10, tpm=10)
    a = run(lim.admit(rec, "m", BODY))
    run(lim.settle(a, 10, 0.0))
    refused(lim.admit(rec, "m", BODY))
    assert state.window_used("rpm:key_t") == 1


def test_concurrency_taken_and_released():
    lim, _, state = limits()
    rec = key(max_concurrency=1, rpm=5)
    a = run(lim.admit(rec, "m", BODY))
    e = refused(lim.admit(rec, "m", BODY))
    assert e.status == 429 and e.code == "concurrency_exceeded" and e.retry_after == 1
    assert state.window_used("rpm:key_t") == 1  # the refused call took no rpm
    run(lim.settle(a, 5, 0.0))
    assert run(lim.admit(rec, "m", BODY)) is not None


def test_concurrency_released_when_a_later_limit_refuses():
    lim, _, _ = limits()
    rec = key(max_concurrency=1, rpm=1)
    a = run(lim.admit(rec, "m", BODY))
    run(lim.settle(a, 0, 0.0))
    e = refused(lim.admit(rec, "m", BODY))
    assert e.code == "rpm_exceeded"
    e2 = refused(lim.admit(rec, "m", BODY))  # still rpm, not concurrency: the slot was given back
    assert e2.code == "rpm_exceeded"


def test_daily_token_budget_resets_at_utc_midnight():
    lim, clock, _ = limits()
    rec = key(budget_tokens=100, budget_period="day")
    a = run(lim.admit(rec, "m", BODY))
    run(lim.settle(a, 100, 0.01))
    e = refused(lim.admit(rec, "m", BODY))
    assert e.code == "budget_exceeded" and e.retry_after == 12 * 3600
    clock.advance(12 * 3600)
    assert run(lim.admit(rec, "m", BODY)) is not None


def test_usd_budget_without_period_never_lifts():
    lim, clock, _ = limits()
    rec = key(budget_usd=0.5)
    run(lim.add_spend("key_t", 10, 0.5))
    e = refused(lim.admit(rec, "m", BODY))
    assert e.code == "budget_exceeded" and e.retry_after is None
    clock.advance(400 * 86400)
    assert refused(lim.admit(rec, "m", BODY)).code == "budget_exceeded"


def test_monthly_budget_and_spent_report():
    lim, clock, _ = limits()
    rec = key(budget_tokens=1000, budget_period="month")
    run(lim.add_spend("key_t", 300, 0.25))
    spent = run(lim.spent(rec))
    assert spent["tokens"] == 300 and spent["usd"] == 0.25 and spent["period"] == "month"
    assert spent["since"] == datetime.datetime(2025, 3, 1, tzinfo=datetime.timezone.utc).timestamp()
    clock.advance(22 * 86400)  # April 1st
    assert run(lim.spent(rec))["tokens"] == 0


class _Ledger:
    def __init__(self, by_since):
        self.by_since = by_since

    async def spend_by_key(self, since):
        return self.by_since(since)


def test_seed_from_ledger():
    lim, _, _ = limits()
    day0 = datetime.datetime(2025, 3, 10, tzinfo=datetime.timezone.utc).timestamp()
    month0 = datetime.datetime(2025, 3, 1, tzinfo=datetime.timezone.utc).timestamp()
    totals = {day0: {"key_t": (50, 0.1)}, month0: {"key_t": (500, 1.0)}, 0.0: {"key_t": (5000, 10.0)}}
    run(lim.seed(_Ledger(lambda since: totals[since])))
    assert run(lim.spent(key(budget_period="day")))["tokens"] == 50
    assert run(lim.spent(key(budget_period="month")))["usd"] == 1.0
    assert run(lim.spent(key()))["tokens"] == 5000
    assert refused(lim.admit(key(budget_tokens=5000), "m", BODY)).code == "budget_exceeded"
