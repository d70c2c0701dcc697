"""Several instances behave as one gateway: Redis state, PostgreSQL store, nginx in front.

The test starts a redis-server of its own (a free port, so it can stop and restart it), makes
a database of its own on the machine's PostgreSQL, runs two ``twistd fproxy`` children on
different ports with the same config, and puts Debian's nginx in front of them (round robin,
no retries, an ``X-Upstream`` header naming the instance that answered).  The fake upstream
runs in the test's reactor; calls are made with treq from it.

Through the balancer: an upstream key refused (401) on one instance is skipped by the other;
a virtual key limited to 10 requests per minute gets exactly 10 successes out of 20 sent at
once; a key revoked on instance A is refused on instance B within a second; the usage totals
in PostgreSQL equal the calls made.  Then Redis is stopped: calls still succeed, limits are
per instance, ``/health`` says degraded; Redis restarted: ``/health`` is ok again and a limit
holds across both instances again.

Needs redis-server, nginx and PostgreSQL: skipped without them, failed under ``CI=true``.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_twisted
import treq
from treq.client import HTTPClient
from twisted.internet import threads
from twisted.internet.defer import DeferredList
from twisted.web.client import Agent, HTTPConnectionPool

from tests.fakes.upstream import start_fake
from tests.integration.keys_support import ADMIN, bearer, chat, sleep, until
from tests.integration.twistd_support import Launcher, TwistdProcess
from tests.services import Nginx, RedisServer, postgres_database, postgres_query

USAGE = {"input": 11, "output": 7}
MODEL = "so-gpt"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest_twisted.async_yield_fixture
async def launcher(reactor: Any, tmp_path: Path) -> AsyncIterator[Launcher]:
    lau = Launcher(reactor, tmp_path)
    try:
        yield lau
    finally:
        await lau.cleanup()


def _config(fake_url: str, pg_url: str, redis_url: str, prefix: str) -> str:
    return (f'[access]\nadmin_keys = ["{ADMIN}"]\n'
            f'[store]\nurl = "{pg_url}"\n'
            f'[state]\nurl = "{redis_url}"\nprefix = "{prefix}"\n'
            f'[[provider]]\nname = "so"\ndialect = "openai-chat"\nbase_url = "{fake_url}"\n'
            'keys = ["sk-up-refused", "sk-up-good"]\n'
            f'[[route]]\nmodel = "{MODEL}"\nto = ["so:gpt-4o-mini"]\n')


class Client:
    """treq in the test's reactor; counts the chat calls that were answered 200."""

    def __init__(self, reactor: Any) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=self.pool))
        self.completed = 0

    async def request(self, method: str, url: str, key: str, body: Any = None) -> tuple[int, Any, str]:
        """(status, parsed JSON body or None, the instance that answered: X-Upstream via nginx)."""
        kw: dict[str, Any] = {"headers": bearer(key)}
        if body is not None:
            kw["json"] = body
        resp = await self.http.request(method, url, **kw)
        raw = await treq.content(resp)
        upstream = (resp.headers.getRawHeaders(b"x-upstream") or [b""])[0].decode()
        try:
            parsed = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = raw
        return resp.code, parsed, upstream

    async def chat(self, base: str, key: str, text: str = "hi") -> tuple[int, Any, str]:
        status, body, upstream = await self.request("POST", base + "/v1/chat/completions", key, chat(MODEL, text))
        if status == 200:
            self.completed += 1
        return status, body, upstream

    async def burst(self, base: str, key: str, n: int) -> list[tuple[int, Any, str]]:
        """``n`` chat calls at once."""
        results = await DeferredList([_d(self.chat(base, key, f"burst {i}")) for i in range(n)],
                                     consumeErrors=True)
        out = []
        for ok, value in results:
            assert ok, value
            out.append(value)
        return out

    async def create_key(self, base: str, **fields: Any) -> dict[str, Any]:
        status, body, _ = await self.request("POST", base + "/api/keys", ADMIN, fields)
        assert status == 201, body
        return body  # type: ignore[no-any-return]

    async def health(self, base: str) -> tuple[int, Any]:
        status, body, _ = await self.request("GET", base + "/health", ADMIN)
        return status, body


def _d(coro: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coro)


async def _known_everywhere(reactor: Any, client: Client, gws: list[TwistdProcess], key: str) -> None:
    """Wait until every instance accepts ``key`` (GET /v1/models: no limit is spent)."""
    for gw in gws:
        async def accepted(gw: TwistdProcess = gw) -> bool:
            status, _, _ = await client.request("GET", gw.url + "/v1/models", key)
            return status == 200
        assert await until(reactor, accepted, timeout=5), f"{gw.url} never accepted the new key"


async def _state_ok(client: Client, gw: TwistdProcess, ok: bool) -> bool:
    status, body = await client.health(gw.url)
    assert status == 200, body  # degraded or not, an instance stays in the balancer's rotation
    return bool(body["state"]["ok"] is ok and body["status"] == ("ok" if ok else "degraded"))


def _ledger(pg_url: str) -> tuple[int, int, int]:
    rows = postgres_query(pg_url, "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), "
                                  "COALESCE(SUM(completion_tokens), 0) FROM usage_records")
    return int(rows[0][0]), int(rows[0][1]), int(rows[0][2])  # type: ignore[call-overload]


@pytest_twisted.ensureDeferred
async def test_two_instances_behind_nginx_behave_as_one(reactor: Any, tmp_path: Path, launcher: Launcher,
                                                         redis: RedisServer, pg_url: str) -> None:
    fake = await start_fake(reactor, "openai-chat", keys=["sk-up-good"])  # "sk-up-refused" gets a 401
    fake.script({"usage": USAGE, "times": 0})
    client = Client(reactor)
    nginx: Nginx | None = None
    prefix = f"fproxy-test-{secrets.token_hex(4)}:"
    config = launcher.write("fproxy.toml", _config(fake.base_url, pg_url, redis.url, prefix))
    try:
        a = await launcher.start(config, timeout=20)
        b = await launcher.start(config, timeout=20)
        gws = [a, b]
        nginx = Nginx(tmp_path / "nginx", [a.port, b.port])  # type: ignore[list-item]
        await threads.deferToThread(nginx.start)
        lb = nginx.url
        for gw in gws:
            assert await until(reactor, lambda gw=gw: _state_ok(client, gw, True), timeout=10), gw.output

        async def instances_seen() -> Any:
            _, body = await client.health(lb)
            return body["state"].get("cluster", {}).get("instances") == 2
        assert await until(reactor, instances_seen, timeout=6), "/health counts both instances"

        # -- an upstream key refused (401) on one instance is skipped by the other
        open_key = (await client.create_key(lb, name="open"))["key"]
        await _known_everywhere(reactor, client, gws, open_key)
        status, body, first = await client.chat(lb, open_key)
        assert status == 200, body
        refused = [r for r in fake.requests if r.key == "sk-up-refused"]
        assert len(refused) == 1, "the first call anywhere tried the refused key once, then the good one"
        await sleep(reactor, 0.2)
        served_by = set()
        for _ in range(6):
            status, body, upstream = await client.chat(lb, open_key)
            assert status == 200, body
            served_by.add(upstream)
        assert served_by == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}, served_by
        assert len([r for r in fake.requests if r.key == "sk-up-refused"]) == 1, \
            "the other instance skipped the key the first one saw refused"

        # -- a key limited to 10 requests per minute: exactly 10 successes in total
        limited = (await client.create_key(lb, name="rpm10", rpm=10))["key"]
        await _known_everywhere(reactor, client, gws, limited)
        results = await client.burst(lb, limited, 20)
        codes = sorted(s for s, _, _ in results)
        assert codes == [200] * 10 + [429] * 10, codes
        assert {b["error"]["code"] for s, b, _ in results if s == 429} == {"rpm_exceeded"}
        assert {u for _, _, u in results} == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}, "both instances served"

        # -- a key revoked on instance A is refused on instance B within a second
        doomed = await client.create_key(a.url, name="doomed")
        await _known_everywhere(reactor, client, gws, doomed["key"])
        status, _, _ = await client.chat(b.url, doomed["key"])
        assert status == 200
        status, body, _ = await client.request("DELETE", f"{a.url}/api/keys/{doomed['id']}", ADMIN)
        assert status == 200, body
        revoked_at = time.monotonic()

        async def refused_on_b() -> bool:
            status, _, _ = await client.request("GET", b.url + "/v1/models", doomed["key"])
            return status == 401
        assert await until(reactor, refused_on_b, timeout=3, interval=0.02)
        elapsed = time.monotonic() - revoked_at
        assert elapsed < 1.0, f"B refused the revoked key only after {elapsed:.2f}s"
        status, body, _ = await client.chat(lb, doomed["key"])
        assert status == 401, body

        # -- the usage totals in PostgreSQL equal the calls made
        n = client.completed

        async def ledger_complete() -> bool:
            return (await threads.deferToThread(_ledger, pg_url))[0] >= n
        assert await until(reactor, ledger_complete, timeout=10)
        assert await threads.deferToThread(_ledger, pg_url) == (n, 11 * n, 7 * n)

        # -- Redis stopped: calls still succeed, limits per instance, /health degraded
        await threads.deferToThread(redis.stop)
        for gw in gws:
            assert await until(reactor, lambda gw=gw: _state_ok(client, gw, False), timeout=10), gw.output
        for _ in range(4):
            status, body, _ = await client.chat(lb, open_key)
            assert status == 200, body
        per_instance = (await client.create_key(lb, name="rpm3-outage", rpm=3))["key"]
        await _known_everywhere(reactor, client, gws, per_instance)
        outage = [await client.chat(lb, per_instance) for _ in range(10)]
        assert sorted(s for s, _, _ in outage) == [200] * 6 + [429] * 4, \
            "during the outage each of the two instances allows 3 per minute on its own"

        # -- Redis restarted: /health ok again, and limits hold across the instances again
        await threads.deferToThread(redis.start)
        for gw in gws:
            assert await until(reactor, lambda gw=gw: _state_ok(client, gw, True), timeout=15), gw.output
        again = (await client.create_key(lb, name="rpm10-again", rpm=10))["key"]
        await _known_everywhere(reactor, client, gws, again)
        results = await client.burst(lb, again, 20)
        assert sorted(s for s, _, _ in results) == [200] * 10 + [429] * 10
        assert {u for _, _, u in results} == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}

        # -- still every call in the ledger, once; a graceful stop of both flushes the rest
        n = client.completed
        for gw in gws:
            assert await gw.terminate(timeout=20), gw.output
        assert await threads.deferToThread(_ledger, pg_url) == (n, 11 * n, 7 * n)
        assert b"serving with per-instance limits" in a.out + a.err, a.output
        assert b"limits are shared again" in a.out + a.err, a.output
    finally:
        if nginx is not None:
            await threads.deferToThread(nginx.stop)
        await client.pool.closeCachedConnections()
        await fake.stop()
