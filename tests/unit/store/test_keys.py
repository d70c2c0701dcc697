"""KeyCache: load at start, periodic refresh of changed rows, immediate local changes; key material."""
from __future__ import annotations

from attrs import evolve
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from fproxy.store.base import KeyRecord
from fproxy.store.keys import FULL_RELOAD_SECONDS, KeyCache, key_hash, key_prefix, new_key, new_key_id
from tests.unit.sync import run


class FakeStore:
    def __init__(self, recs: list[KeyRecord]) -> None:
        self.recs = {r.id: r for r in recs}
        self.calls: list[tuple[str, float | None]] = []
        self.fail_next = False

    def list_keys(self, include_revoked: bool = False) -> Deferred[list[KeyRecord]]:
        self.calls.append(("list", None))
        return succeed(list(self.recs.values()))

    def keys_updated_since(self, since: float) -> Deferred[list[KeyRecord]]:
        self.calls.append(("since", since))
        if self.fail_next:
            self.fail_next = False
            d: Deferred[list[KeyRecord]] = Deferred()
            d.errback(RuntimeError("database is locked"))
            return d
        return succeed([r for r in self.recs.values() if r.updated_at > since])


def rec(kid: str, t: float, **kw) -> KeyRecord:
    return KeyRecord(id=kid, key_hash=key_hash(kid), prefix=kid[:10], created_at=0, updated_at=t, **kw)


def test_key_material():
    k = new_key()
    assert k.startswith("sk-fp-") and len(k) == 38 and k != new_key()
    assert key_prefix(k) == k[:10] and len(key_hash(k)) == 64 and key_hash(k) != k
    assert new_key_id().startswith("key_")


def test_load_then_refresh_picks_up_changes_from_elsewhere():
    clock = Clock()
    clock.advance(1000)
    store = FakeStore([rec("a", 10), rec("b", 20)])
    cache = KeyCache(store, clock, interval=0.5)
    run(cache.load())
    assert cache.by_hash(key_hash("a")).id == "a" and len(cache) == 2
    cache.start()
    store.recs["a"] = evolve(store.recs["a"], revoked_at=1000.2, updated_at=1000.2)  # another instance revokes
    clock.advance(0.5)
    assert cache.by_hash(key_hash("a")).revoked_at == 1000.2 and len(cache) == 1
    assert store.calls[-1] == ("since", 20 - 2.0)
    clock.advance(0.5)
    assert store.calls[-1] == ("since", 1000.2 - 2.0)  # only recent rows are read again
    cache.stop()


def test_a_failed_refresh_keeps_the_loop_running():
    clock = Clock()
    store = FakeStore([rec("a", 1)])
    cache = KeyCache(store, clock, interval=0.5)
    run(cache.load())
    cache.start()
    store.fail_next = True
    clock.advance(0.5)
    store.recs["c"] = rec("c", 2)
    clock.advance(0.5)
    assert cache.get("c") is not None
    cache.stop()


def test_full_reload_now_and_then_and_local_put():
    clock = Clock()
    store = FakeStore([rec("a", 1)])
    cache = KeyCache(store, clock, interval=0.5)
    run(cache.load())
    cache.put(rec("local", 5))
    assert cache.get("local") is not None
    clock.advance(FULL_RELOAD_SECONDS)
    run(cache.refresh())
    assert store.calls[-1] == ("list", None)
    assert cache.get("local") is None  # the store is the truth


class SlowStore(FakeStore):
    """keys_updated_since answers only when the test says so."""

    def __init__(self, recs: list[KeyRecord]) -> None:
        super().__init__(recs)
        self.pending: list[Deferred[list[KeyRecord]]] = []

    def keys_updated_since(self, since: float) -> Deferred[list[KeyRecord]]:
        self.calls.append(("since", since))
        d: Deferred[list[KeyRecord]] = Deferred()
        self.pending.append(d)
        return d

    def answer(self) -> None:
        d = self.pending.pop(0)
        d.callback(list(self.recs.values()))


def test_poke_rereads_at_once_and_coalesces_and_put_notifies():
    clock = Clock()
    store = SlowStore([rec("key_a", 10)])
    cache = KeyCache(store, clock, interval=0.5)
    store.recs = {"key_a": rec("key_a", 10)}
    run_load = Deferred.fromCoroutine(cache.load())
    assert run_load.called
    told: list[KeyRecord] = []
    cache.notify = told.append
    cache.poke()  # another instance revoked key_a
    store.recs["key_a"] = rec("key_a", 11, revoked_at=11)
    cache.poke()
    cache.poke()  # two more pokes while the first read runs: one more read, not two
    assert len(store.pending) == 1
    store.answer()
    assert cache.get("key_a").revoked_at == 11
    assert len(store.pending) == 1, "one more read for the pokes that came meanwhile"
    store.answer()
    assert store.pending == []
    assert told == [], "what was read from the store is not published again"
    cache.put(rec("key_b", 12))
    assert [r.id for r in told] == ["key_b"], "a change made here is published"
    assert told and cache.get("key_b") is not None
