"""The usage ledger survives a graceful stop: N calls in flight, SIGTERM, restart on the same
SQLite store -> exactly N records, with the upstream's token counts; budgets are seeded from
them; the store file holds the key's hash, never the key.

The gateway is a real ``twistd fproxy`` child; the fake upstream runs in this test's reactor;
the in-flight calls are made with treq from this reactor (no thread per call)."""
from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from treq.client import HTTPClient
from twisted.internet import threads
from twisted.internet.defer import DeferredList
from twisted.web.client import Agent, HTTPConnectionPool

from tests.fakes.upstream import start_fake
from tests.integration.keys_support import ADMIN, ahttp, bearer, chat, create_key, until, usage
from tests.integration.twistd_support import Launcher

N = 10
USAGE = {"input": 11, "output": 7}


@pytest_twisted.async_yield_fixture
async def launcher(reactor: Any, tmp_path: Path) -> AsyncIterator[Launcher]:
    lau = Launcher(reactor, tmp_path)
    try:
        yield lau
    finally:
        await lau.cleanup()


def _config(fake_url: str, db: Path) -> str:
    return (f'[access]\nadmin_keys = ["{ADMIN}"]\n[store]\nurl = "sqlite:{db}"\n'
            f'[[provider]]\nname = "lg"\ndialect = "openai-chat"\nbase_url = "{fake_url}"\nkeys = ["sk-up-lg"]\n'
            '[[route]]\nmodel = "lg-gpt"\nto = ["lg:gpt-4o-mini"]\n')




def _rows(db: Path, key_id: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT prompt_tokens, completion_tokens, outcome, status, estimated, stream "
                            "FROM usage_records WHERE key_id = ?", (key_id,)).fetchall()


@pytest_twisted.ensureDeferred
async def test_sigterm_with_calls_in_flight_loses_no_usage_record(reactor: Any, launcher: Launcher,
                                                                   tmp_path: Path) -> None:
    fake = await start_fake(reactor, "openai-chat", keys=["sk-up-lg"])
    pool = HTTPConnectionPool(reactor, persistent=False)
    http = HTTPClient(Agent(reactor, pool=pool))
    db = tmp_path / "ledger.db"
    config = launcher.write("fproxy.toml", _config(fake.base_url, db))
    try:
        gw = await launcher.start(config)
        key = await create_key(gw.url, name="ledger", budget_tokens=N * 18 - 1)
        # slow answers: headers after 1.5 s, streams then 8 chunks 0.2 s apart
        fake.script({"first_byte_delay": 1.5, "text": "tick " * 8, "chunks": 8, "chunk_delay": 0.2, "usage": USAGE,
                     "times": 0})
        calls = DeferredList([http.post(gw.url + "/v1/chat/completions",
                                        json=chat("lg-gpt", f"in flight {i}", stream=bool(i % 2)),
                                        headers=bearer(key["key"])).addCallback(_read) for i in range(N)],
                             consumeErrors=True)
        assert await until(reactor, lambda: len(fake.requests) >= N, timeout=10), len(fake.requests)
        assert await gw.terminate(timeout=30), gw.output
        results = await calls
        assert [(ok, code) for ok, (code, _) in results] == [(True, 200)] * N, results
        assert all(b"tick" in body for _, (_, body) in results), "every call was drained to its end"
        assert b"usage ledger flushed" in gw.out + gw.err, gw.output

        rows = await threads.deferToThread(_rows, db, key["id"])
        assert len(rows) == N, f"{N} calls were in flight at SIGTERM; the ledger holds {len(rows)}"
        assert {r[:5] for r in rows} == {(11, 7, "completed", 200, 0)}
        assert sorted(r[5] for r in rows) == [0] * (N // 2) + [1] * (N // 2)
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("ledger.db*"))
        assert key["key"].encode() not in raw, "the store holds the key in plain text"

        gw2 = await launcher.start(config)  # same store
        u = await usage(gw2.url, key=key["id"], group_by="key")
        assert u["total"] == {"requests": N, "prompt_tokens": 11 * N, "completion_tokens": 7 * N,
                              "reasoning_tokens": 0, "cached_tokens": 0, "cost_usd": u["total"]["cost_usd"]}
        # the key still works after the restart, and its budget was seeded from the ledger
        r = await ahttp("POST", gw2.url + "/v1/chat/completions", json=chat("lg-gpt"), headers=bearer(key["key"]))
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded", r.text
        assert await gw2.terminate(), gw2.output
    finally:
        await pool.closeCachedConnections()
        await fake.stop()


def _read(resp: Any) -> Any:
    """(status, whole body) of a response (SSE streams are read to their end)."""
    return treq.content(resp).addCallback(lambda body: (resp.code, body))
