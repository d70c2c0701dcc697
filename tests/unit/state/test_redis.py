"""RedisState against a real redis-server of the test's own (a free loopback port, no persistence).

Two RedisState objects on one server stand for two gateway instances: windows, slots and
counters are shared between them; messages go from one to the other; a server stopped and
started again gives per-instance fallback, then shared state again.  (Not pure unit tests:
they need ``redis-server``; skipped without it, failed under ``CI=true``.)
"""
from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from fproxy.config import ConfigError, StateConfig
from fproxy.state import open_state
from fproxy.state.redis_url import parse_url
from tests.integration.keys_support import until
from tests.services import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path / "redis")
    s.start()
    try:
        yield s
    finally:
        s.stop()


async def _open(reactor: Any, server: RedisServer, prefix: str, db: int = 0) -> Any:
    state = open_state(StateConfig(server.url.replace("/0", f"/{db}"), prefix), reactor)
    state.startService()
    await until(reactor, lambda: state.up, timeout=5)
    assert state.up, "connected to the test's redis-server"
    return state


@pytest_twisted.async_yield_fixture
async def pair(reactor: Any, server: RedisServer) -> AsyncIterator[tuple[Any, Any]]:
    """Two instances sharing one server and prefix."""
    prefix = f"t{secrets.token_hex(4)}:"
    a = await _open(reactor, server, prefix)
    b = await _open(reactor, server, prefix)
    try:
        yield a, b
    finally:
        await a.stopService()
        await b.stopService()


def test_urls() -> None:
    u = parse_url("redis://:s3cret@cache.internal:6380/2")
    assert (u.host, u.port, u.db, u.password) == ("cache.internal", 6380, 2, "s3cret")
    assert "s3cret" not in u.where
    assert parse_url("redis://localhost").port == 6379 and parse_url("redis://localhost").db == 0
    with pytest.raises(ConfigError, match="state.url: the database must be a number"):
        parse_url("redis://h:1/zero")
    with pytest.raises(ConfigError, match="state.url: the port"):
        parse_url("redis://h:port/0")
    with pytest.raises(ConfigError, match='state.url: unsupported backend "memcache:"'):
        open_state(StateConfig("memcache://h"), None)


@pytest_twisted.ensureDeferred
async def test_window_shared_by_two_instances(pair: tuple[Any, Any]) -> None:
    a, b = pair
    assert (await a.window_take("rpm:k", 1, 3, 60)).ok
    assert (await b.window_take("rpm:k", 1, 3, 60)).ok
    t = await a.window_take("rpm:k", 1, 3, 60)
    assert t.ok and t.used == 2
    refused = await b.window_take("rpm:k", 1, 3, 60)
    assert not refused.ok and refused.used == 3
    assert 59 <= refused.retry_after <= 60, refused.retry_after
    assert (await a.window_take("rpm:other", 1, 3, 60)).ok, "windows are per key"


@pytest_twisted.ensureDeferred
async def test_window_amount_corrected_later(pair: tuple[Any, Any]) -> None:
    a, b = pair
    t = await a.window_take("tpm:k", 10, 100, 60)
    await a.window_set("tpm:k", t.handle, 95)  # the real usage, settled
    refused = await b.window_take("tpm:k", 10, 100, 60)
    assert not refused.ok and refused.used == 95
    await a.window_set("tpm:k", t.handle, 0)  # undone
    ok = await b.window_take("tpm:k", 10, 100, 60)
    assert ok.ok and ok.used == 0
    assert (await a.window_take("tpm:big", 500, 100, 60)).ok, "an empty window takes one call over the limit"


@pytest_twisted.ensureDeferred
async def test_window_entries_age_out(reactor: Any, pair: tuple[Any, Any]) -> None:
    a, b = pair
    assert (await a.window_take("w", 1, 1, 0.3)).ok
    assert not (await b.window_take("w", 1, 1, 0.3)).ok
    await until(reactor, lambda: False, timeout=0.4)
    assert (await b.window_take("w", 1, 1, 0.3)).ok


@pytest_twisted.ensureDeferred
async def test_slots_shared_and_released(pair: tuple[Any, Any]) -> None:
    a, b = pair
    s1 = await a.slot_take("conc:k", 2)
    s2 = await b.slot_take("conc:k", 2)
    assert s1 is not None and s2 is not None
    assert await a.slot_take("conc:k", 2) is None
    assert await b.slot_count("conc:k") == 2
    await a.slot_release("conc:k", s1)
    await a.slot_release("conc:k", s1)  # twice: harmless
    assert await b.slot_count("conc:k") == 1
    assert await b.slot_take("conc:k", 2) is not None


@pytest_twisted.ensureDeferred
async def test_counters_shared(pair: tuple[Any, Any]) -> None:
    a, b = pair
    assert await a.counter_add("spend:usd:k", 0.25, ttl=60) == 0.25
    assert await b.counter_add("spend:usd:k", 0.5, ttl=60) == 0.75
    assert await a.counter_get("spend:usd:k") == 0.75
    assert await b.counter_raise("spend:usd:k", 0.5) == 0.75, "a seed lower than the shared value is ignored"
    assert await b.counter_raise("spend:usd:k", 2.0, ttl=60) == 2.0
    assert await a.counter_get("spend:usd:k") == 2.0
    assert await a.counter_take("c", 1) and not await b.counter_take("c", 1)
    await b.counter_set("c", 0)
    assert await b.counter_take("c", 1)
    assert await a.counter_get("missing") == 0


@pytest_twisted.ensureDeferred
async def test_messages_reach_the_other_instance_only(reactor: Any, pair: tuple[Any, Any]) -> None:
    a, b = pair
    got_a: list[dict[str, Any]] = []
    got_b: list[dict[str, Any]] = []
    a.subscribe("key", got_a.append)
    b.subscribe("key", got_b.append)
    a.publish("key", {"id": "key_1"})
    assert await until(reactor, lambda: got_b, timeout=3)
    assert got_b[0]["id"] == "key_1" and got_b[0]["t"] == "key"
    assert got_a == [], "an instance ignores its own messages"


@pytest_twisted.ensureDeferred
async def test_prefix_separates_deployments(reactor: Any, server: RedisServer) -> None:
    a = await _open(reactor, server, "one:")
    b = await _open(reactor, server, "two:")
    try:
        assert (await a.window_take("rpm:k", 1, 1, 60)).ok
        assert (await b.window_take("rpm:k", 1, 1, 60)).ok, "another prefix, another window"
        keys = await threads.deferToThread(server.command, "KEYS", "*")
        assert b"one:w:rpm:k" in keys and b"two:w:rpm:k" in keys
    finally:
        await a.stopService()
        await b.stopService()


@pytest_twisted.ensureDeferred
async def test_outage_falls_back_to_memory_then_shares_again(reactor: Any, server: RedisServer) -> None:
    prefix = f"t{secrets.token_hex(4)}:"
    a = await _open(reactor, server, prefix, db=3)  # a database other than 0: SELECT on every (re)connect
    b = await _open(reactor, server, prefix, db=3)
    reconnects: list[int] = []
    a.on_connect(lambda: reconnects.append(1))
    try:
        held = await a.slot_take("conc:k", 5)  # taken in Redis, released after the outage
        await threads.deferToThread(server.stop)
        assert await until(reactor, lambda: not a.up and not b.up, timeout=5)
        assert a.health()["ok"] is False and "per instance" in a.health()["detail"]
        # per-instance limits: each instance has its own window now
        assert (await a.window_take("rpm:k", 1, 1, 60)).ok
        assert (await b.window_take("rpm:k", 1, 1, 60)).ok
        assert not (await a.window_take("rpm:k", 1, 1, 60)).ok
        local = await a.slot_take("conc:k", 1)
        assert local is not None and await a.slot_take("conc:k", 1) is None
        await a.slot_release("conc:k", held)  # Redis is away: the lease would run out by itself
        await a.slot_release("conc:k", local)
        assert await a.counter_add("spend:tokens:k", 5) == 5
        a.publish("key", {"id": "lost"})  # nothing to send to: dropped, no error

        await threads.deferToThread(server.start)
        assert await until(reactor, lambda: a.up and b.up, timeout=15), "reconnected"
        assert reconnects, "on_connect callbacks ran after the reconnect"
        assert a.health() == {"backend": "redis", "url": server.url.replace("/0", "/3"), "ok": True}
        assert (await a.window_take("rpm:k", 1, 1, 60)).ok, "the restarted Redis is empty"
        assert not (await b.window_take("rpm:k", 1, 1, 60)).ok, "and shared again"
    finally:
        await a.stopService()
        await b.stopService()


@pytest_twisted.ensureDeferred
async def test_unreachable_at_start_serves_from_memory(reactor: Any, tmp_path: Path) -> None:
    down = RedisServer(tmp_path / "never")  # a free port nobody listens on
    state = open_state(StateConfig(down.url), reactor)
    state.startService()
    try:
        assert not state.up
        t = await state.window_take("rpm:k", 1, 1, 60)
        assert t.ok
        assert not (await state.window_take("rpm:k", 1, 1, 60)).ok
        assert await state.slot_take("conc:k", 1) is not None
    finally:
        await state.stopService()
