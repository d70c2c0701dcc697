"""MemoryState: sliding windows (take, correct, retry-after) and counters (TTL, take), on task.Clock."""
from __future__ import annotations

from twisted.internet.task import Clock

from fproxy.state.memory import MemoryState
from tests.unit.sync import run


def test_window_refuses_past_limit_and_says_when_it_lifts():
    clock = Clock()
    s = MemoryState(clock)
    for i in range(3):
        clock.advance(10)
        t = run(s.window_take("rpm:k", 1, 3, 60))
        assert t.ok and t.used == i
    clock.advance(5)  # now = 35; entries at 10, 20, 30
    t = run(s.window_take("rpm:k", 1, 3, 60))
    assert not t.ok and t.used == 3
    assert t.retry_after == 35  # the entry at t=10 leaves the window at t=70
    clock.advance(35)  # now = 70: the first entry is out
    assert run(s.window_take("rpm:k", 1, 3, 60)).ok


def test_window_empty_accepts_one_call_larger_than_the_limit():
    s = MemoryState(Clock())
    assert run(s.window_take("tpm:k", 500, 100, 60)).ok
    t = run(s.window_take("tpm:k", 1, 100, 60))
    assert not t.ok and t.used == 500 and t.retry_after == 60


def test_window_amount_corrected_through_handle():
    clock = Clock()
    s = MemoryState(clock)
    t = run(s.window_take("tpm:k", 10, 100, 60))
    run(s.window_set("tpm:k", t.handle, 95))
    assert s.window_used("tpm:k") == 95
    refused = run(s.window_take("tpm:k", 10, 100, 60))
    assert not refused.ok and refused.retry_after == 60
    run(s.window_set("tpm:k", t.handle, 0))  # undone
    assert run(s.window_take("tpm:k", 10, 100, 60)).ok


def test_retry_after_counts_only_as_many_entries_as_needed():
    clock = Clock()
    s = MemoryState(clock)
    run(s.window_take("w", 40, 100, 60))       # t=0
    clock.advance(10)
    run(s.window_take("w", 40, 100, 60))       # t=10
    clock.advance(10)
    t = run(s.window_take("w", 50, 100, 60))   # t=20: 80 used, 50 more needs the t=0 entry gone
    assert not t.ok and t.retry_after == 40


def test_counter_take_respects_limit_and_release():
    s = MemoryState(Clock())
    assert run(s.counter_take("c", 2)) and run(s.counter_take("c", 2))
    assert not run(s.counter_take("c", 2))
    assert run(s.counter_add("c", -1)) == 1
    assert run(s.counter_take("c", 2))


def test_counter_ttl_expires():
    clock = Clock()
    s = MemoryState(clock)
    assert run(s.counter_add("spend", 5.5, ttl=100)) == 5.5
    assert run(s.counter_add("spend", 1.0, ttl=100)) == 6.5
    clock.advance(99)
    assert run(s.counter_get("spend")) == 6.5
    clock.advance(101)
    assert run(s.counter_get("spend")) == 0
    run(s.counter_set("forever", 3))
    clock.advance(10**6)
    assert run(s.counter_get("forever")) == 3


def test_sweep_forgets_idle_keys():
    clock = Clock()
    s = MemoryState(clock)
    run(s.window_take("w1", 1, 10, 60))
    run(s.counter_add("gone", 1, ttl=5))
    run(s.counter_add("zero", 1))
    run(s.counter_add("zero", -1))
    run(s.counter_set("kept", 2))
    assert len(s) == 4
    clock.advance(61)
    s.sweep(clock.seconds())
    assert len(s) == 1 and run(s.counter_get("kept")) == 2


def test_counter_raise_keeps_a_higher_value_and_its_expiry():
    clock = Clock()
    s = MemoryState(clock)
    assert run(s.counter_raise("spend", 5, ttl=10)) == 5
    assert run(s.counter_raise("spend", 3, ttl=100)) == 5, "a lower seed changes nothing"
    clock.advance(11)
    assert run(s.counter_get("spend")) == 0, "the first expiry still holds"
    run(s.counter_add("spend", 2))
    assert run(s.counter_raise("spend", 7)) == 7 and run(s.counter_get("spend")) == 7


def test_slots_taken_and_released_once():
    s = MemoryState(Clock())
    one, two = run(s.slot_take("conc:k", 2)), run(s.slot_take("conc:k", 2))
    assert one is not None and two is not None
    assert run(s.slot_take("conc:k", 2)) is None
    run(s.slot_release("conc:k", one))
    run(s.slot_release("conc:k", one))  # a second release of the same handle gives nothing back twice
    assert run(s.counter_get("conc:k")) == 1
    assert run(s.slot_take("conc:k", 2)) is not None and run(s.slot_take("conc:k", 2)) is None
