"""Virtual keys end to end: the admin API, the real SDKs, the usage ledger and every per-key limit,
against the real gateway (in this reactor, 127.0.0.1:0) in front of strict fake upstreams."""
from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest
import pytest_twisted
from attrs import define
from twisted.internet import threads
from twisted.internet.defer import Deferred

from fproxy import cli
from tests.fakes.upstream import FakeUpstream, start_fake
from tests.integration.harness import RunningGateway, provider, start_gateway
from tests.integration.keys_support import ADMIN, STATIC, ahttp, ant, bearer, chat, create_key, msgs, until, usage

OMODEL, AMODEL, OTHER = "ka-gpt", "ka-claude", "ka-other"


@define
class Env:
    gw: RunningGateway
    oai: FakeUpstream
    ant: FakeUpstream
    db: Any

    @property
    def url(self) -> str:
        return self.gw.url


@pytest_twisted.async_yield_fixture
async def env(reactor: Any, tmp_path: Any) -> AsyncIterator[Env]:
    oai = await start_fake(reactor, "openai-chat", keys=["sk-up-o"])
    antf = await start_fake(reactor, "anthropic", keys=["sk-up-a"])
    db = tmp_path / "keys.db"
    conf = {
        "access": {"keys": [STATIC], "admin_keys": [ADMIN]},
        "store": {"url": f"sqlite:{db}"},
        "provider": [provider("o", "openai-chat", oai.base_url, ["sk-up-o"]),
                     provider("a", "anthropic", antf.base_url, ["sk-up-a"])],
        "route": [{"model": OMODEL, "to": ["o:gpt-4o-mini"]}, {"model": OTHER, "to": ["o:gpt-4o"]},
                  {"model": AMODEL, "to": ["a:claude-haiku-4-5"]}],
    }
    gw = await start_gateway(reactor, conf)
    await gw.service.ready
    try:
        yield Env(gw, oai, antf, db)
    finally:
        await gw.stop()
        await oai.stop()
        await antf.stop()


def _oai(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=20)


def _ant(url: str, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=20)


async def _post(env: Env, key: str, dialect: str, model: str | None = None, **kw: Any) -> Any:
    if dialect == "openai":
        return await ahttp("POST", env.url + "/v1/chat/completions", json=chat(model or OMODEL, **kw),
                           headers=bearer(key))
    return await ahttp("POST", env.url + "/v1/messages", json=msgs(model or AMODEL, **kw), headers=ant(key))


def _code(resp: Any, dialect: str) -> str:
    """The limit named in an error: OpenAI's ``code``; Anthropic's message ends with ``(code)``."""
    body = resp.json()
    if dialect == "openai":
        return body["error"]["code"]
    assert body["type"] == "error" and body["error"]["type"], body
    return body["error"]["message"].rsplit("(", 1)[-1].rstrip(")")


# ---------------------------------------------------------------- lifecycle
@pytest_twisted.ensureDeferred
async def test_key_create_use_usage_revoke(reactor: Any, env: Env) -> None:
    k = await create_key(env.url, name="alice", metadata={"team": "ml"})
    assert k["key"].startswith("sk-fp-") and k["prefix"] == k["key"][:10] and k["name"] == "alice"

    # the real SDKs with the virtual key, both dialects, stream and not
    env.oai.script({"text": "one", "usage": {"input": 11, "output": 3}},
                   {"text": "two three", "chunks": 2, "usage": {"input": 13, "output": 5}},
                   {"text": "four", "usage": {"input": 17, "output": 7}})
    env.ant.script({"text": "five", "usage": {"input": 19, "output": 2}},
                   {"text": "six seven", "chunks": 2, "usage": {"input": 23, "output": 4}})
    client = _oai(env.url, k["key"])
    r = await threads.deferToThread(client.chat.completions.create, model=OMODEL,
                                    messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "one"

    def stream(include_usage: bool) -> str:
        kw = {"stream_options": {"include_usage": True}} if include_usage else {}
        s = client.chat.completions.create(model=OMODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
                                           **kw)
        return "".join(c.choices[0].delta.content or "" for c in s if c.choices)

    assert await threads.deferToThread(stream, True) == "two three"
    assert await threads.deferToThread(stream, False) == "four"
    aclient = _ant(env.url, k["key"])
    m = await threads.deferToThread(aclient.messages.create, model=AMODEL, max_tokens=32,
                                    messages=[{"role": "user", "content": "hi"}])
    assert m.content[0].text == "five"

    def astream() -> str:
        with aclient.messages.stream(model=AMODEL, max_tokens=32, messages=[{"role": "user", "content": "hi"}]) as s:
            return "".join(s.text_stream)

    assert await threads.deferToThread(astream) == "six seven"
    assert all(rec.key in ("sk-up-o", "sk-up-a") for rec in env.oai.requests + env.ant.requests)
    assert not any(k["key"] in json.dumps(rec.headers) for rec in env.oai.requests + env.ant.requests)

    # the ledger holds the upstreams' exact numbers (read-your-writes: no waiting for the batch)
    u = await usage(env.url, key=k["id"], group_by="key")
    assert u["data"] == [{"group": k["id"], "name": "alice", "requests": 5, "prompt_tokens": 11 + 13 + 17 + 19 + 23,
                          "completion_tokens": 3 + 5 + 7 + 2 + 4, "reasoning_tokens": 0, "cached_tokens": 0,
                          "cost_usd": u["data"][0]["cost_usd"]}]
    assert u["total"]["requests"] == 5 and u["data"][0]["cost_usd"] > 0  # gpt-4o-mini and claude-haiku-4-5 priced
    by_model = await usage(env.url, key=k["id"], group_by="model")
    assert {g["group"]: g["requests"] for g in by_model["data"]} == {OMODEL: 3, AMODEL: 2}
    by_provider = await usage(env.url, group_by="provider", provider="a")
    assert [(g["group"], g["prompt_tokens"]) for g in by_provider["data"]] == [("a", 42)]
    since = int(time.time()) - 60
    by_hour = await usage(env.url, key=k["id"], group_by="hour", since=since)
    assert sum(g["requests"] for g in by_hour["data"]) == 5 and by_hour["data"][0]["group"].endswith(":00:00Z")
    assert (await usage(env.url, key=k["id"], until=since))["total"]["requests"] == 0

    # listing and showing never contain the key
    listing = await ahttp("GET", env.url + "/api/keys", headers=bearer(ADMIN))
    assert k["key"] not in listing.text and k["id"] in [e["id"] for e in listing.json()["data"]]
    shown = await ahttp("GET", env.url + f"/api/keys/{k['id']}", headers=bearer(ADMIN))
    assert k["key"] not in shown.text and shown.json()["metadata"] == {"team": "ml"}
    assert shown.json()["spend"]["tokens"] == 83 + 21

    # revoked: refused at once, in both dialects
    t0 = time.monotonic()
    gone = await ahttp("DELETE", env.url + f"/api/keys/{k['id']}", headers=bearer(ADMIN))
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    r1 = await _post(env, k["key"], "openai")
    assert r1.status_code == 401 and r1.json()["error"]["type"] == "authentication_error"
    r2 = await _post(env, k["key"], "anthropic")
    assert r2.status_code == 401 and r2.json()["error"]["type"] == "authentication_error"
    assert time.monotonic() - t0 < 1.0
    assert (await ahttp("GET", env.url + f"/api/keys/{k['id']}", headers=bearer(ADMIN))).status_code == 404
    assert (await ahttp("DELETE", env.url + f"/api/keys/{k['id']}", headers=bearer(ADMIN))).status_code == 404


@pytest_twisted.ensureDeferred
async def test_key_revoked_in_the_database_by_another_instance_refused_within_a_second(reactor: Any, env: Env) -> None:
    """Another instance's revocation reaches this one through the cache refresh (every 0.5 s)."""
    k = await create_key(env.url)
    assert (await _post(env, k["key"], "openai")).status_code == 200
    store = env.gw.service.store
    await store.revoke_key(k["id"], time.time())  # as another instance would: straight to the store
    t0 = time.monotonic()
    refused = await until(reactor, lambda: _refused(env, k["key"]), timeout=3.0)
    assert refused and time.monotonic() - t0 < 1.0


async def _refused(env: Env, key: str) -> bool:
    return (await _post(env, key, "openai")).status_code == 401


@pytest_twisted.ensureDeferred
async def test_the_store_file_holds_the_hash_never_the_key(env: Env) -> None:
    k = await create_key(env.url, name="hashed")
    raw = b"".join(p.read_bytes() for p in env.db.parent.glob(env.db.name + "*"))  # db, -wal, -shm
    assert hashlib.sha256(k["key"].encode()).hexdigest().encode() in raw
    assert k["key"].encode() not in raw and k["key"][10:].encode() not in raw
    assert STATIC.encode() not in raw and ADMIN.encode() not in raw


# ---------------------------------------------------------------- limits, both dialects
@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest_twisted.ensureDeferred
async def test_rpm_limit(env: Env, dialect: str) -> None:
    k = await create_key(env.url, rpm=2)
    for _ in range(2):
        assert (await _post(env, k["key"], dialect)).status_code == 200
    r = await _post(env, k["key"], dialect)
    assert r.status_code == 429 and _code(r, dialect) == "rpm_exceeded"
    assert 50 <= int(r.headers["retry-after"]) <= 60


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest_twisted.ensureDeferred
async def test_tpm_limit_counts_real_usage(env: Env, dialect: str) -> None:
    k = await create_key(env.url, tpm=30)
    fake = env.oai if dialect == "openai" else env.ant
    fake.script({"text": "big", "usage": {"input": 20, "output": 15}})
    assert (await _post(env, k["key"], dialect)).status_code == 200
    r = await _post(env, k["key"], dialect)
    assert r.status_code == 429 and _code(r, dialect) == "tpm_exceeded"
    assert 1 <= int(r.headers["retry-after"]) <= 60


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest_twisted.ensureDeferred
async def test_concurrency_limit(reactor: Any, env: Env, dialect: str) -> None:
    k = await create_key(env.url, max_concurrency=1)
    fake = env.oai if dialect == "openai" else env.ant
    fake.script({"first_byte_delay": 1.0, "text": "slow"})
    slow = Deferred.fromCoroutine(_post(env, k["key"], dialect))
    await fake.wait_for(lambda recs: recs)
    r = await _post(env, k["key"], dialect)
    assert r.status_code == 429 and _code(r, dialect) == "concurrency_exceeded" and r.headers["retry-after"] == "1"
    assert (await slow).status_code == 200
    assert (await _post(env, k["key"], dialect)).status_code == 200  # the slot came back


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest_twisted.ensureDeferred
async def test_budget_limits(env: Env, dialect: str) -> None:
    fake = env.oai if dialect == "openai" else env.ant
    daily = await create_key(env.url, budget_tokens=30, budget_period="day")
    fake.script({"text": "x", "usage": {"input": 25, "output": 10}})
    assert (await _post(env, daily["key"], dialect)).status_code == 200  # crosses the budget, completes
    r = await _post(env, daily["key"], dialect)
    assert r.status_code == 429 and _code(r, dialect) == "budget_exceeded"
    assert 0 < int(r.headers["retry-after"]) <= 86400
    forever = await create_key(env.url, budget_usd=0.000001)
    fake.script({"text": "x", "usage": {"input": 1000, "output": 1000}})
    assert (await _post(env, forever["key"], dialect)).status_code == 200
    r = await _post(env, forever["key"], dialect)
    assert r.status_code == 429 and _code(r, dialect) == "budget_exceeded"
    assert "retry-after" not in r.headers, "a budget that never resets has no Retry-After"
    # raising the budget lets the key work again
    patched = await ahttp("PATCH", env.url + f"/api/keys/{forever['id']}", json={"budget_usd": 100},
                          headers=bearer(ADMIN))
    assert patched.status_code == 200 and patched.json()["budget_usd"] == 100
    assert (await _post(env, forever["key"], dialect)).status_code == 200


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest_twisted.ensureDeferred
async def test_model_allow_list(env: Env, dialect: str) -> None:
    k = await create_key(env.url, models=["ka-g*", "ka-claude"])
    allowed, denied = (OMODEL, OTHER) if dialect == "openai" else (AMODEL, "ka-claude-x")
    assert (await _post(env, k["key"], dialect, model=allowed)).status_code == 200
    before = len(env.oai.requests)
    r = await _post(env, k["key"], dialect, model=denied)
    assert r.status_code == 403 and len(env.oai.requests) == before
    if dialect == "openai":
        assert r.json()["error"]["code"] == "model_not_allowed"
    else:
        assert r.json()["error"]["type"] == "permission_error"
    listed = await ahttp("GET", env.url + "/v1/models", headers=bearer(k["key"]))
    assert sorted(m["id"] for m in listed.json()["data"]) == [AMODEL, OMODEL]
    listed = await ahttp("GET", env.url + "/v1/models", headers=ant(k["key"]))
    assert sorted(m["id"] for m in listed.json()["data"]) == [AMODEL, OMODEL]
    assert (await ahttp("GET", env.url + f"/v1/models/{OTHER}", headers=bearer(k["key"]))).status_code == 404
    everything = await ahttp("GET", env.url + "/v1/models", headers=bearer(STATIC))
    assert OTHER in [m["id"] for m in everything.json()["data"]]


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest_twisted.ensureDeferred
async def test_expired_and_disabled_keys_refused(env: Env, dialect: str) -> None:
    expired = await create_key(env.url, expires_at="2020-01-01T00:00:00Z")
    r = await _post(env, expired["key"], dialect)
    assert r.status_code == 401 and _code(r, dialect) in ("key_expired", "This API key has expired.")
    soon = await create_key(env.url, expires_at=time.time() + 3600)
    assert (await _post(env, soon["key"], dialect)).status_code == 200
    off = await ahttp("PATCH", env.url + f"/api/keys/{soon['id']}", json={"disabled": True}, headers=bearer(ADMIN))
    assert off.json()["disabled"] is True
    assert (await _post(env, soon["key"], dialect)).status_code == 401
    await ahttp("PATCH", env.url + f"/api/keys/{soon['id']}", json={"disabled": False}, headers=bearer(ADMIN))
    assert (await _post(env, soon["key"], dialect)).status_code == 200


@pytest_twisted.ensureDeferred
async def test_admin_key_and_static_keys_work_as_client_keys(env: Env) -> None:
    for key in (ADMIN, STATIC):
        assert (await _post(env, key, "openai")).status_code == 200
    u = await usage(env.url, group_by="key")
    assert {"admin:0", "static:0"} <= {g["group"] for g in u["data"]}


# ---------------------------------------------------------------- admin only, validation
ADMIN_ROUTES = [("GET", "/api/keys", None), ("POST", "/api/keys", {"name": "x"}), ("GET", "/api/keys/key_x", None),
                ("PATCH", "/api/keys/key_x", {"rpm": 1}), ("DELETE", "/api/keys/key_x", None),
                ("GET", "/api/usage", None), ("GET", "/metrics", None)]


@pytest_twisted.ensureDeferred
async def test_non_admins_refused_on_every_admin_route(env: Env) -> None:
    virtual = await create_key(env.url)
    for method, path, body in ADMIN_ROUTES:
        for key in (STATIC, virtual["key"]):
            r = await ahttp(method, env.url + path, json=body, headers=bearer(key))
            assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required", (method, path, r.text)
        r = await ahttp(method, env.url + path, json=body)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", (method, path)
    keys = (await ahttp("GET", env.url + "/api/keys", headers=bearer(ADMIN))).json()["data"]
    assert [e["name"] for e in keys] == [None], "nothing was created by the refused POSTs"


@pytest.mark.parametrize("body,field", [
    ({"rpm": -1}, "rpm"), ({"rpm": "5"}, "rpm"), ({"tpm": 0}, "tpm"), ({"max_concurrency": 1.5}, "max_concurrency"),
    ({"budget_usd": "lots"}, "budget_usd"), ({"budget_period": "week"}, "budget_period"),
    ({"expires_at": "tomorrow"}, "expires_at"), ({"models": "*"}, None), ({"models": [1]}, "models"),
    ({"metadata": [1]}, "metadata"), ({"disabled": "yes"}, "disabled"), ({"colour": "red"}, "colour"),
    ({"name": 5}, "name"),
])
@pytest_twisted.ensureDeferred
async def test_key_validation_names_the_field(env: Env, body: dict[str, Any], field: str | None) -> None:
    r = await ahttp("POST", env.url + "/api/keys", json=body, headers=bearer(ADMIN))
    if field is None:  # a single glob string is accepted as a one-item list
        assert r.status_code == 201 and r.json()["models"] == ["*"]
        return
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and err["message"].startswith(field + ":"), err


@pytest.mark.parametrize("params,field", [({"group_by": "week"}, "group_by"), ({"since": "yesterday"}, "since"),
                                          ({"until": "x"}, "until"), ({"bogus": "1"}, "bogus"),
                                          ({"since": "2025-02-01", "until": "2025-01-01"}, "until")])
@pytest_twisted.ensureDeferred
async def test_usage_validation_names_the_field(env: Env, params: dict[str, str], field: str) -> None:
    r = await ahttp("GET", env.url + "/api/usage", params=params, headers=bearer(ADMIN))
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text


@pytest_twisted.ensureDeferred
async def test_usage_since_until_accept_unix_seconds_and_rfc3339(env: Env) -> None:
    k = await create_key(env.url)
    await _post(env, k["key"], "openai")
    now = int(time.time())
    for since, until_ in ((now - 60, now + 60), (_iso(now - 60), _iso(now + 60))):
        u = await usage(env.url, key=k["id"], since=since, until=until_)
        assert u["total"]["requests"] == 1, (since, u)
    assert (await usage(env.url, key=k["id"], since=now + 60))["total"]["requests"] == 0


def _iso(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# ---------------------------------------------------------------- the operator CLI
def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        cli.run(list(argv), out)
    except cli.CliError as e:
        return 1, str(e)
    return 0, out.getvalue()


@pytest_twisted.ensureDeferred
async def test_cli_manages_keys_and_reads_usage(env: Env) -> None:
    base = ["--url", env.url, "--admin-key", ADMIN]
    rc, out = await threads.deferToThread(_cli, *base, "--json", "keys", "create", "--name", "cli-key", "--rpm", "7",
                                          "--models", "ka-*", "--budget-usd", "2.5", "--budget-period", "month")
    assert rc == 0, out
    created = json.loads(out)
    assert created["rpm"] == 7 and created["models"] == ["ka-*"] and created["budget_period"] == "month"
    assert (await _post(env, created["key"], "openai")).status_code == 200
    rc, out = await threads.deferToThread(_cli, *base, "keys", "list")
    assert rc == 0 and created["id"] in out and created["prefix"] in out and created["key"] not in out
    assert out.splitlines()[0].split()[:3] == ["ID", "NAME", "PREFIX"]
    rc, out = await threads.deferToThread(_cli, *base, "keys", "update", created["id"], "--rpm", "0", "--disable")
    assert rc == 0 and "rpm" in out
    rc, out = await threads.deferToThread(_cli, *base, "--json", "keys", "show", created["id"])
    shown = json.loads(out)
    assert shown["rpm"] is None and shown["disabled"] is True
    rc, out = await threads.deferToThread(_cli, *base, "usage", "--key", created["id"])
    assert rc == 0 and created["id"] in out and "TOTAL" in out
    rc, out = await threads.deferToThread(_cli, *base, "keys", "revoke", created["id"])
    assert rc == 0 and "revoked" in out
    rc, out = await threads.deferToThread(_cli, *base, "keys", "show", created["id"])
    assert rc == 1 and "404" in out
    rc, out = await threads.deferToThread(_cli, "--url", env.url, "--admin-key", STATIC, "keys", "list")
    assert rc == 1 and "403" in out
