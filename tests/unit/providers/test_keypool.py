"""Key pool state changes (no sockets, task.Clock)."""
from __future__ import annotations

from twisted.internet.task import Clock

from fproxy.providers.keypool import KeyPool


def test_round_robin_skips_unhealthy():
    clock = Clock()
    pool = KeyPool.of(clock, ["a", "b", "c"])
    assert [pool.pick().key for _ in range(4)] == ["a", "b", "c", "a"]
    pool.disable(pool.keys[1])
    assert [pool.pick().key for _ in range(3)] == ["c", "a", "c"]


def test_429_cooldown_from_retry_after_and_never_shortened():
    clock = Clock()
    pool = KeyPool.of(clock, ["a", "b"])
    a = pool.keys[0]
    pool.cool(a, 30, 429)
    pool.cool(a, 5, 429)  # a shorter cooldown does not shorten the longer one
    assert [pool.pick().key for _ in range(2)] == ["b", "b"]
    clock.advance(29.9)
    assert pool.pick().key == "b"
    clock.advance(0.2)
    assert {pool.pick().key, pool.pick().key} == {"a", "b"}


def test_growing_default_cooldown_and_reset_on_success():
    clock = Clock()
    pool = KeyPool.of(clock, ["a"])
    a = pool.keys[0]
    assert pool.cool(a, None, 429) == 1.0
    assert pool.cool(a, None, 429) == 2.0
    assert pool.cool(a, None, 429) == 4.0
    pool.succeeded(a)
    assert a.strikes == 0


def test_402_long_cooldown_and_retry_after():
    clock = Clock()
    pool = KeyPool.of(clock, ["a", "b"])
    pool.cool(pool.keys[0], None, 402)
    pool.cool(pool.keys[1], 12, 429)
    assert pool.pick() is None
    assert pool.retry_after() == 12
    pool.disable(pool.keys[1])
    assert pool.retry_after() >= 3000
    pool.disable(pool.keys[0])
    assert pool.retry_after() is None
    assert pool.snapshot() == {"healthy": 0, "cooling": 0, "disabled": 2}


def test_pick_excludes_tried_keys():
    pool = KeyPool.of(Clock(), ["a", "b"])
    first = pool.pick()
    second = pool.pick({first.index})
    assert second is not None and second.key != first.key
    assert pool.pick({0, 1}) is None


def test_labels_never_reveal_the_key():
    pool = KeyPool.of(Clock(), ["sk-secret-1"])
    assert pool.keys[0].label() == "#1"


def test_listener_hears_local_changes_only_and_shared_ones_apply():
    clock = Clock()
    pool = KeyPool.of(clock, ["a", "b", "c"])
    heard = []
    pool.listener = heard.append
    pool.disable(pool.keys[0])
    pool.cool(pool.keys[1], 30, 429)
    assert [k.key for k in heard] == ["a", "b"]
    pool.apply_shared(pool.keys[2], False, 50.0)  # another instance's cooldown
    pool.apply_shared(pool.keys[1], False, 10.0)  # shorter than ours: ignored
    assert pool.keys[2].cooldown_until == 50.0 and pool.keys[1].cooldown_until == 30.0
    pool.apply_shared(pool.keys[2], True, 0.0)
    assert pool.keys[2].disabled and len(heard) == 2, "applying news from others does not re-publish it"


def test_picked_hook_and_shared_cursor():
    clock = Clock()
    pool = KeyPool.of(clock, ["a", "b", "c"])
    picks = []
    pool.picked = picks.append
    assert pool.pick().key == "a" and picks == [pool]
    pool.set_cursor(7)  # the shared counter: 7 % 3 = 1
    assert pool.pick().key == "b"
