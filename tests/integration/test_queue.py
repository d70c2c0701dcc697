"""GET /v1/queue and POST /v1/cancel/{id}: a provider with max_concurrency = 1, its second call
waiting, cancelled before it reaches the upstream; running streams and calls cut, the fake
upstream seeing its connection closed; who may see and cancel what; the ledger's record."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest_twisted
from attrs import define
from twisted.internet.defer import Deferred

from fproxy.store.base import UsageQuery
from tests.fakes.upstream import FakeUpstream, start_fake
from tests.integration.harness import RunningGateway, provider, start_gateway
from tests.integration.keys_support import ADMIN, STATIC, ahttp, bearer, chat, create_key, until
from tests.integration.twistd_support import stream_sse

OTHER_STATIC = "sk-static-int-other"
SLOW = {"text": "tick " * 20, "chunks": 20, "chunk_delay": 0.15}  # ~3 s


@define
class Env:
    gw: RunningGateway
    fake: FakeUpstream

    @property
    def url(self) -> str:
        return self.gw.url


@pytest_twisted.async_yield_fixture
async def env(reactor: Any) -> AsyncIterator[Env]:
    fake = await start_fake(reactor, "openai-chat", keys=["sk-up-q"])
    conf = {"access": {"keys": [STATIC, OTHER_STATIC], "admin_keys": [ADMIN]},
            "provider": [provider("q", "openai-chat", fake.base_url, ["sk-up-q"], max_concurrency=1)],
            "route": [{"model": "q-first", "to": ["q:gpt-first"]}, {"model": "q-second", "to": ["q:gpt-second"]}]}
    gw = await start_gateway(reactor, conf)
    try:
        yield Env(gw, fake)
    finally:
        await gw.stop()
        await fake.stop()


async def _queue(env: Env, key: str) -> list[dict[str, Any]]:
    r = await ahttp("GET", env.url + "/v1/queue", headers=bearer(key))
    assert r.status_code == 200, r.text
    return r.json()["data"]


def _by_model(entries: list[dict[str, Any]], model: str) -> dict[str, Any] | None:
    return next((e for e in entries if e["model"] == model), None)


async def _running_stream(reactor: Any, env: Env, key: str = STATIC) -> tuple[Deferred[Any], Deferred[None]]:
    """A slow stream holding the provider's only slot; returns (its log, fired at its first data)."""
    env.fake.script(SLOW)
    first_data: Deferred[None] = Deferred()
    log = stream_sse(reactor, env.url + "/v1/chat/completions", chat("q-first", stream=True), bearer(key),
                     on_first_data=lambda: first_data.callback(None), timeout=30)
    await first_data
    return log, first_data


@pytest_twisted.ensureDeferred
async def test_waiting_call_listed_and_cancelled_before_reaching_the_upstream(reactor: Any, env: Env) -> None:
    first, _ = await _running_stream(reactor, env)
    second = ahttp("POST", env.url + "/v1/chat/completions", json=chat("q-second"), headers=bearer(STATIC), timeout=30)

    async def both_listed() -> Any:
        entries = await _queue(env, STATIC)
        w, r = _by_model(entries, "q-second"), _by_model(entries, "q-first")
        return (w, r) if w and r else None

    waiting, running = await until(reactor, both_listed)
    assert waiting["state"] == "waiting" and running["state"] == "running"
    assert waiting["key"] == "static:0" and waiting["id"].startswith("req_") and waiting["age_s"] >= 0
    assert running["stream"] is True and running["provider"] == "q"
    # a client sees only its own; an admin sees all; someone else's id is a 404
    assert await _queue(env, OTHER_STATIC) == []
    assert {e["id"] for e in await _queue(env, ADMIN)} == {waiting["id"], running["id"]}
    other = await ahttp("POST", env.url + f"/v1/cancel/{waiting['id']}", headers=bearer(OTHER_STATIC))
    assert other.status_code == 404 and other.json()["error"]["code"] == "request_not_found"

    t0 = time.monotonic()
    r = await ahttp("POST", env.url + f"/v1/cancel/{waiting['id']}", headers=bearer(STATIC))
    assert r.status_code == 200 and r.json() == {"id": waiting["id"], "cancelled": True, "state": "waiting"}
    resp = await second
    assert time.monotonic() - t0 < 1.0
    assert resp.status_code == 499 and resp.json()["error"]["code"] == "request_cancelled"
    assert _by_model(await _queue(env, STATIC), "q-second") is None

    log = await first
    assert log.status == 200 and log.data[-1] == "[DONE]" and log.text() == SLOW["text"], "the running one goes on"
    assert [r.body["model"] for r in env.fake.requests] == ["gpt-first"], "the cancelled call reached the upstream"
    # the queue moved on: the slot is free
    env.fake.script({"text": "after"})
    ok = await ahttp("POST", env.url + "/v1/chat/completions", json=chat("q-second"), headers=bearer(STATIC))
    assert ok.status_code == 200
    outcomes = await _outcomes(env)
    assert outcomes[waiting["id"]] == ("cancelled", 499)


@pytest_twisted.ensureDeferred
async def test_running_stream_cut_in_band_and_upstream_closed(reactor: Any, env: Env) -> None:
    log_d, _ = await _running_stream(reactor, env)
    entry = _by_model(await _queue(env, STATIC), "q-first")
    assert entry and entry["state"] == "running"
    t0 = env.gw.service.reactor.seconds()
    r = await ahttp("POST", env.url + f"/v1/cancel/{entry['id']}", headers=bearer(ADMIN))  # an admin may cancel any
    assert r.status_code == 200 and r.json()["state"] == "running"
    log = await log_d
    assert log.error is None and log.data[-1] == "[DONE]", log.data[-3:]
    err = orjson.loads(log.data[-2])
    assert err["error"]["code"] == "request_cancelled"
    assert len(log.text()) < len(SLOW["text"])
    rec = env.fake.requests[0]
    closed = await until(reactor, lambda: rec.closed_by_peer_at, timeout=2.0)
    assert closed and closed - t0 < 1.0 and rec.outcome == "client_closed"
    outcomes = await _outcomes(env)
    assert outcomes[entry["id"]] == ("cancelled", 200)


@pytest_twisted.ensureDeferred
async def test_running_non_stream_call_cancelled(reactor: Any, env: Env) -> None:
    k = await create_key(env.url, name="mine")
    env.fake.script({"first_byte_delay": 5, "text": "late"})
    call = ahttp("POST", env.url + "/v1/chat/completions", json=chat("q-first"), headers=bearer(k["key"]))
    await env.fake.wait_for(lambda recs: recs)
    entry = (await _queue(env, k["key"]))[0]
    assert entry["state"] == "running" and entry["key"] == k["id"] and entry["key_name"] == "mine"
    r = await ahttp("POST", env.url + f"/v1/cancel/{entry['id']}", headers=bearer(k["key"]))
    assert r.status_code == 200
    resp = await call
    assert resp.status_code == 499 and resp.json()["error"]["code"] == "request_cancelled"
    rec = env.fake.requests[0]
    assert await until(reactor, lambda: rec.closed_by_peer_at, timeout=2.0), "the upstream connection stayed open"
    assert await _queue(env, k["key"]) == []


@pytest_twisted.ensureDeferred
async def test_unknown_request_and_no_key(env: Env) -> None:
    r = await ahttp("POST", env.url + "/v1/cancel/req_nope", headers=bearer(ADMIN))
    assert r.status_code == 404
    assert (await ahttp("GET", env.url + "/v1/queue")).status_code == 401
    assert (await ahttp("POST", env.url + "/v1/cancel/req_nope")).status_code == 401


async def _outcomes(env: Env) -> dict[str, tuple[str, int]]:
    """request id -> (outcome, status) from the ledger (after a flush)."""
    svc = env.gw.service
    await svc.usage.flush()
    rows = await svc.store._pool.runQuery("SELECT request_id, outcome, status FROM usage_records")
    assert (await svc.store.usage_summary(UsageQuery()))[1].requests == len(rows)
    return {r[0]: (r[1], r[2]) for r in rows}
