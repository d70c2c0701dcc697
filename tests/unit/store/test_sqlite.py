"""The SQLite store through adbapi: migrations, keys by hash, usage batches and summaries.

These run the real pool thread against a file in tmp_path (no sockets)."""
from __future__ import annotations

import datetime
import sqlite3
from typing import Any

import pytest
import pytest_twisted

from fproxy.config import ConfigError, StoreConfig
from fproxy.store import open_store
from fproxy.store.base import KeyRecord, UsageQuery, UsageRecord
from fproxy.store.keys import key_hash, key_prefix, new_key
from fproxy.store.sql import SCHEMA_VERSION

T0 = datetime.datetime(2025, 3, 10, 10, 30, tzinfo=datetime.timezone.utc).timestamp()


def _key(key: str, kid: str = "key_a", **kw: Any) -> KeyRecord:
    return KeyRecord(id=kid, key_hash=key_hash(key), prefix=key_prefix(key), created_at=T0, updated_at=T0, **kw)


def _use(rid: str, ts: float, key: str = "key_a", model: str = "m1", provider: str = "p1", **kw: Any) -> UsageRecord:
    base = dict(prompt_tokens=10, completion_tokens=5, cost_usd=0.001, status=200, outcome="completed")
    base.update(kw)
    return UsageRecord(request_id=rid, ts=ts, key_id=key, route_model=model, provider=provider,
                       upstream_model=model + "-up", **base)


@pytest_twisted.async_yield_fixture
async def store(reactor, tmp_path):
    s = open_store(reactor, StoreConfig(f"sqlite:{tmp_path / 'f.db'}"))
    await s.open()
    yield s
    s.close()


def test_bad_urls_name_the_key(reactor, tmp_path):
    with pytest.raises(ConfigError, match="store.url: unsupported"):
        open_store(reactor, StoreConfig("mysql://x"))
    with pytest.raises(ConfigError, match="store.url: the directory"):
        open_store(reactor, StoreConfig(f"sqlite:{tmp_path}/nope/f.db"))
    with pytest.raises(ConfigError, match="is a directory"):
        open_store(reactor, StoreConfig(f"sqlite:{tmp_path}"))


@pytest_twisted.ensureDeferred
async def test_migrations_recorded_and_idempotent(reactor, tmp_path):
    path = tmp_path / "m.db"
    for _ in range(2):  # a second start applies nothing new
        s = open_store(reactor, StoreConfig(f"sqlite:{path}"))
        await s.open()
        s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"api_keys", "usage_records", "schema_version"} <= tables


@pytest_twisted.ensureDeferred
async def test_newer_schema_refused(reactor, tmp_path):
    path = tmp_path / "n.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (999)")
    s = open_store(reactor, StoreConfig(f"sqlite:{path}"))
    with pytest.raises(RuntimeError, match="newer than this fproxy"):
        await s.open()
    s.close()


@pytest_twisted.ensureDeferred
async def test_keys_crud_and_only_the_hash_on_disk(store, tmp_path):
    secret = new_key()
    rec = _key(secret, name="alice", models=("gpt-*",), rpm=5, budget_usd=1.5, budget_period="day",
               metadata={"team": "x"}, expires_at=T0 + 3600)
    await store.create_key(rec)
    assert await store.get_key("key_a") == rec
    changed = await store.update_key("key_a", {"rpm": None, "disabled": True, "models": ("a", "b")}, T0 + 5)
    assert changed.rpm is None and changed.disabled and changed.models == ("a", "b") and changed.updated_at == T0 + 5
    assert [r.id for r in await store.keys_updated_since(T0)] == ["key_a"]
    assert await store.keys_updated_since(T0 + 5) == []
    revoked = await store.revoke_key("key_a", T0 + 9)
    assert revoked.revoked_at == T0 + 9
    assert await store.revoke_key("key_a", T0 + 10) is None  # already revoked
    assert await store.get_key("key_a") is None
    assert await store.update_key("key_a", {"rpm": 1}, T0 + 11) is None
    assert await store.list_keys() == []
    assert [r.id for r in await store.list_keys(include_revoked=True)] == ["key_a"]
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("f.db*"))
    assert key_hash(secret).encode() in raw and secret.encode() not in raw


@pytest_twisted.ensureDeferred
async def test_usage_batches_are_idempotent(store):
    batch = [_use(f"r{i}", T0 + i) for i in range(5)]
    await store.insert_usage(batch)
    await store.insert_usage(batch[3:] + [_use("r9", T0)])  # a retried batch: no duplicates
    assert await store.count_usage() == 6
    assert await store.count_usage("key_a") == 6


@pytest_twisted.ensureDeferred
async def test_usage_summary_groups_and_filters(store):
    await store.insert_usage([
        _use("a1", T0, reasoning_tokens=2, cached_tokens=3),
        _use("a2", T0 + 3600, model="m2"),
        _use("b1", T0 + 86400, key="key_b", provider="p2", prompt_tokens=100, cost_usd=0.5),
        _use("x1", T0 - 86400 * 40, key="key_b"),
    ])
    groups, total = await store.usage_summary(UsageQuery(group_by="key"))
    assert [(g.group, g.requests, g.prompt_tokens) for g in groups] == [("key_a", 2, 20), ("key_b", 2, 110)]
    assert (total.requests, total.prompt_tokens, total.completion_tokens, total.reasoning_tokens,
            total.cached_tokens) == (4, 130, 20, 2, 3)
    assert total.cost_usd == pytest.approx(0.503)
    groups, total = await store.usage_summary(UsageQuery(since=T0, until=T0 + 86400, group_by="hour"))
    assert [(g.group, g.requests) for g in groups] == [("2025-03-10T10:00:00Z", 1), ("2025-03-10T11:00:00Z", 1)]
    groups, _ = await store.usage_summary(UsageQuery(group_by="day", since=T0))
    assert [(g.group, g.requests) for g in groups] == [("2025-03-10", 2), ("2025-03-11", 1)]
    groups, _ = await store.usage_summary(UsageQuery(group_by="model", key="key_a"))
    assert [(g.group, g.requests) for g in groups] == [("m1", 1), ("m2", 1)]
    groups, total = await store.usage_summary(UsageQuery(group_by="provider", provider="p2"))
    assert [(g.group, g.requests) for g in groups] == [("p2", 1)] and total.requests == 1


@pytest_twisted.ensureDeferred
async def test_spend_by_key(store):
    await store.insert_usage([_use("a1", T0), _use("a2", T0 + 10, cost_usd=0.25), _use("b", T0 - 10, key="key_b")])
    assert await store.spend_by_key(T0) == {"key_a": (30, 0.251)}
    assert set(await store.spend_by_key(0)) == {"key_a", "key_b"}


@pytest_twisted.ensureDeferred
async def test_memory_database(reactor):
    s = open_store(reactor, StoreConfig("sqlite::memory:"))
    await s.open()
    await s.insert_usage([_use("m", T0)])
    assert await s.count_usage() == 1
    s.close()
