"""fproxy.state.shared over a real redis-server: two "instances" (two RedisState objects, each with
its own key pools and key cache) kept in step - upstream keys disabled or cooling, round-robin
cursors, key changes, catching up after a reconnect."""
from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from attrs import define, field
from twisted.internet import threads

from fproxy.config import StateConfig
from fproxy.providers.keypool import KeyPool
from fproxy.state import open_state
from fproxy.state.shared import QueueCounts, SharedSync, UpstreamKeySync, fingerprint
from tests.integration.keys_support import until
from tests.services import RedisServer


@define
class _Provider:
    pool: KeyPool


@define
class _Keys:
    """Stands for the KeyCache: records pokes; `notify` is set by SharedSync."""

    loaded: bool = True
    pokes: int = 0
    notify: Any = None

    def poke(self) -> None:
        self.pokes += 1


@define
class _Instance:
    state: Any
    providers: dict[str, _Provider]
    keys: _Keys
    sync: SharedSync
    reseeds: list[int] = field(factory=list)
    counts: list[int] = field(factory=lambda: [0, 0])  # waiting, running


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path / "redis")
    s.start()
    try:
        yield s
    finally:
        s.stop()


async def _instance(reactor: Any, server: RedisServer, prefix: str) -> _Instance:
    state = open_state(StateConfig(server.url, prefix), reactor)
    providers = {"up": _Provider(KeyPool.of(reactor, ["sk-1", "sk-2", "sk-3"]))}
    keys = _Keys()
    reseeds: list[int] = []

    async def reseed() -> None:
        reseeds.append(1)

    counts = [0, 0]
    sync = SharedSync(state, keys, UpstreamKeySync(state, lambda: providers, reactor), reactor, reseed,
                      interval=0.2, queue=QueueCounts(state, lambda: (counts[0], counts[1])))
    state.startService()
    sync.startService()
    assert await until(reactor, lambda: state.up, timeout=5)
    return _Instance(state, providers, keys, sync, reseeds, counts)


@pytest_twisted.async_yield_fixture
async def pair(reactor: Any, server: RedisServer) -> AsyncIterator[tuple[_Instance, _Instance]]:
    prefix = f"t{secrets.token_hex(4)}:"
    a = await _instance(reactor, server, prefix)
    b = await _instance(reactor, server, prefix)
    try:
        yield a, b
    finally:
        for i in (a, b):
            i.sync.stopService()
            await i.state.stopService()


def test_fingerprints_hide_the_key_and_differ_per_provider(reactor: Any) -> None:
    k = KeyPool.of(reactor, ["sk-secret-value"]).keys[0]
    fp = fingerprint("openai", k)
    assert "secret" not in fp and fp == fingerprint("openai", k) and fp != fingerprint("azure", k)


@pytest_twisted.ensureDeferred
async def test_a_key_disabled_on_one_instance_leaves_rotation_on_the_other(reactor: Any, pair: Any) -> None:
    a, b = pair
    pa, pb = a.providers["up"].pool, b.providers["up"].pool
    pa.disable(pa.keys[0])
    assert await until(reactor, lambda: pb.keys[0].disabled, timeout=2)
    assert not pb.keys[1].disabled
    picks = {pb.pick().key for _ in range(6)}
    assert picks == {"sk-2", "sk-3"}, "B never picks the key A saw refused"


@pytest_twisted.ensureDeferred
async def test_cooldowns_are_shared_and_never_shortened(reactor: Any, pair: Any) -> None:
    a, b = pair
    pa, pb = a.providers["up"].pool, b.providers["up"].pool
    pa.cool(pa.keys[1], 30, 429)
    until_a = pa.keys[1].cooldown_until
    assert await until(reactor, lambda: pb.keys[1].cooldown_until == until_a, timeout=2)
    pb.cool(pb.keys[1], 5, 429)  # shorter: B keeps the longer one, and so does the shared record
    assert pb.keys[1].cooldown_until == until_a
    assert pb.snapshot() == {"healthy": 2, "cooling": 1, "disabled": 0}


@pytest_twisted.ensureDeferred
async def test_an_instance_started_later_reads_the_shared_record(reactor: Any, pair: Any, server: RedisServer) -> None:
    a, _ = pair
    pa = a.providers["up"].pool
    pa.disable(pa.keys[2])
    await until(reactor, lambda: False, timeout=0.2)
    late = await _instance(reactor, server, a.state.prefix)
    try:
        assert await until(reactor, lambda: late.providers["up"].pool.keys[2].disabled, timeout=3)
    finally:
        late.sync.stopService()
        await late.state.stopService()


@pytest_twisted.ensureDeferred
async def test_round_robin_cursor_is_shared(reactor: Any, pair: Any) -> None:
    a, b = pair
    pa, pb = a.providers["up"].pool, b.providers["up"].pool
    assert [pa.pick().key, pa.pick().key] == ["sk-1", "sk-2"]
    # B made no pick yet; once it has read the shared counter it continues A's sequence
    await until(reactor, lambda: False, timeout=0.5)
    assert pb.pick().key == "sk-3"
    await until(reactor, lambda: False, timeout=0.5)  # and A learns of B's pick at its next refresh
    assert pa.pick().key == "sk-1"


@pytest_twisted.ensureDeferred
async def test_key_changes_poke_the_other_caches(reactor: Any, pair: Any) -> None:
    a, b = pair
    assert a.keys.notify is not None
    before_a, before_b = a.keys.pokes, b.keys.pokes  # (each poked itself once when it connected)
    a.keys.notify(_Rec("key_1"))
    assert await until(reactor, lambda: b.keys.pokes > before_b, timeout=2)
    await until(reactor, lambda: False, timeout=0.1)
    assert a.keys.pokes == before_a, "no echo to the instance that made the change"


@define
class _Rec:
    id: str


@pytest_twisted.ensureDeferred
async def test_after_an_outage_everything_catches_up(reactor: Any, pair: Any, server: RedisServer) -> None:
    a, b = pair
    pa, pb = a.providers["up"].pool, b.providers["up"].pool
    await threads.deferToThread(server.stop)
    assert await until(reactor, lambda: not a.state.up and not b.state.up, timeout=5)
    pa.disable(pa.keys[0])  # while Redis is away: only A knows
    await until(reactor, lambda: False, timeout=0.3)
    assert not pb.keys[0].disabled
    pokes, reseeds = b.keys.pokes, len(b.reseeds)
    await threads.deferToThread(server.start)
    assert await until(reactor, lambda: a.state.up and b.state.up, timeout=15)
    assert await until(reactor, lambda: pb.keys[0].disabled, timeout=3), "A re-published what happened meanwhile"
    assert b.keys.pokes > pokes, "the key cache re-read the store after the reconnect"
    assert len(b.reseeds) > reseeds, "budgets re-seeded (a restarted Redis is empty)"


@pytest_twisted.ensureDeferred
async def test_queue_counts_summed_over_instances(reactor: Any, pair: Any, server: RedisServer) -> None:
    a, b = pair
    a.counts[:] = [2, 3]
    b.counts[:] = [1, 4]
    want = {"instances": 2, "waiting": 3, "running": 7}
    assert await until(reactor, lambda: a.sync.health().get("cluster") == want, timeout=3), a.sync.health()
    assert await until(reactor, lambda: b.sync.health().get("cluster") == want, timeout=3)
    late = await _instance(reactor, server, a.state.prefix)
    late.counts[:] = [0, 1]
    assert await until(reactor, lambda: a.sync.health().get("cluster", {}).get("instances") == 3, timeout=3)
    await late.sync.stopService()  # a stopping instance removes its counts at once
    await late.state.stopService()
    want = {"instances": 2, "waiting": 3, "running": 7}
    assert await until(reactor, lambda: a.sync.health().get("cluster") == want, timeout=3), a.sync.health()
