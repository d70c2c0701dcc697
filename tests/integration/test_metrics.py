"""/metrics parsed with prometheus_client's own parser: counters move by exactly what was done;
the main listener wants an admin key, ``server.metrics_listen`` serves it open."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from attrs import define
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred

from tests.fakes.upstream import FakeUpstream, free_port, start_fake
from tests.integration.harness import RunningGateway, provider, start_gateway
from tests.integration.keys_support import ADMIN, STATIC, ahttp, bearer, chat, create_key, until
from tests.integration.twistd_support import stream_sse


@define
class Env:
    gw: RunningGateway
    fake: FakeUpstream
    bad: FakeUpstream
    metrics_port: int

    @property
    def url(self) -> str:
        return self.gw.url


@pytest_twisted.async_yield_fixture
async def env(reactor: Any) -> AsyncIterator[Env]:
    fake = await start_fake(reactor, "openai-chat", keys=["sk-up-m"])
    bad = await start_fake(reactor, "openai-chat", keys=["sk-up-b"])
    mport = free_port()
    conf = {"server": {"metrics_listen": f"tcp:{mport}:interface=127.0.0.1"},
            "access": {"keys": [STATIC], "admin_keys": [ADMIN]},
            "provider": [provider("m", "openai-chat", fake.base_url, ["sk-up-m"], max_concurrency=1),
                         provider("b", "openai-chat", bad.base_url, ["sk-up-b"])],
            "route": [{"model": "mx", "to": ["m:gpt-4o-mini"]}, {"model": "mx-bad", "to": ["b:gpt-bad"]}]}
    gw = await start_gateway(reactor, conf)
    await gw.service.ready
    try:
        yield Env(gw, fake, bad, mport)
    finally:
        await gw.stop()
        await fake.stop()
        await bad.stop()


async def scrape(env: Env, key: str | None = ADMIN) -> dict[str, Any]:
    r = await ahttp("GET", env.url + "/metrics", headers=bearer(key) if key else {})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def value(fams: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    fam = fams.get(family)
    if fam is None:
        return 0.0
    return sum(s.value for s in fam.samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest_twisted.ensureDeferred
async def test_counters_histograms_and_tokens(reactor: Any, env: Env) -> None:
    before = await scrape(env)
    env.fake.script({"text": "a", "usage": {"input": 10, "output": 2}},
                    {"text": "b", "usage": {"input": 10, "output": 2}},
                    {"text": "c d", "chunks": 2, "usage": {"input": 7, "output": 3}})
    for _ in range(2):
        r = await ahttp("POST", env.url + "/v1/chat/completions", json=chat("mx"), headers=bearer(STATIC))
        assert r.status_code == 200
    log = await stream_sse(reactor, env.url + "/v1/chat/completions", chat("mx", stream=True), bearer(STATIC))
    assert log.status == 200 and log.text() == "c d"
    env.bad.script({"status": 500}, {"status": 500})
    r = await ahttp("POST", env.url + "/v1/chat/completions", json=chat("mx-bad"), headers=bearer(STATIC))
    assert r.status_code == 502
    r = await ahttp("POST", env.url + "/v1/chat/completions", json=chat("no-such-model"), headers=bearer(STATIC))
    assert r.status_code == 404
    after = await scrape(env)

    def delta(family: str, sample: str, **labels: str) -> float:
        return value(after, family, sample, **labels) - value(before, family, sample, **labels)

    ok = {"route": "/v1/chat/completions", "model": "mx", "provider": "m"}
    assert delta("fproxy_requests", "fproxy_requests_total", status="200", **ok) == 3
    assert delta("fproxy_requests", "fproxy_requests_total", model="mx-bad", provider="-", status="502") == 1
    assert delta("fproxy_requests", "fproxy_requests_total", model="-", status="404") == 1, "unknown models: one label"
    assert delta("fproxy_request_duration_seconds", "fproxy_request_duration_seconds_count", **ok) == 3
    assert delta("fproxy_time_to_first_token_seconds", "fproxy_time_to_first_token_seconds_count",
                 model="mx", provider="m") == 1
    assert delta("fproxy_tokens", "fproxy_tokens_total", kind="prompt") == 27
    assert delta("fproxy_tokens", "fproxy_tokens_total", kind="completion") == 7
    assert delta("fproxy_upstream_errors", "fproxy_upstream_errors_total", provider="b", status="500") == 1
    assert value(after, "fproxy_upstream_keys", "fproxy_upstream_keys", provider="m", state="healthy") == 1
    assert value(after, "fproxy_active_streams", "fproxy_active_streams") == 0


@pytest_twisted.ensureDeferred
async def test_live_gauges_and_limit_rejections(reactor: Any, env: Env) -> None:
    env.fake.script({"text": "tick " * 10, "chunks": 10, "chunk_delay": 0.15})
    first_data: Deferred[None] = Deferred()
    log = stream_sse(reactor, env.url + "/v1/chat/completions", chat("mx", stream=True), bearer(STATIC),
                     on_first_data=lambda: first_data.callback(None))
    await first_data
    waiting = ahttp("POST", env.url + "/v1/chat/completions", json=chat("mx"), headers=bearer(STATIC))

    async def queued() -> Any:
        fams = await scrape(env)
        return fams if value(fams, "fproxy_queue_depth", "fproxy_queue_depth", provider="m") == 1 else None

    fams = await until(reactor, queued)
    assert fams, "the waiting call never showed in fproxy_queue_depth"
    assert value(fams, "fproxy_active_streams", "fproxy_active_streams") == 1
    assert value(fams, "fproxy_in_flight_requests", "fproxy_in_flight_requests") == 2
    await log
    assert (await waiting).status_code == 200
    k = await create_key(env.url, rpm=1)
    await ahttp("POST", env.url + "/v1/chat/completions", json=chat("mx"), headers=bearer(k["key"]))
    r = await ahttp("POST", env.url + "/v1/chat/completions", json=chat("mx"), headers=bearer(k["key"]))
    assert r.status_code == 429
    fams = await scrape(env)
    assert value(fams, "fproxy_limit_rejections", "fproxy_limit_rejections_total", limit="rpm") == 1
    assert value(fams, "fproxy_requests", "fproxy_requests_total", model="mx", provider="-", status="429") == 1


@pytest_twisted.ensureDeferred
async def test_metrics_need_an_admin_key_except_on_metrics_listen(env: Env) -> None:
    assert (await ahttp("GET", env.url + "/metrics")).status_code == 401
    assert (await ahttp("GET", env.url + "/metrics", headers=bearer(STATIC))).status_code == 403
    r = await ahttp("GET", f"http://127.0.0.1:{env.metrics_port}/metrics")
    assert r.status_code == 200 and "fproxy_requests" in r.text
    fams = {f.name for f in text_string_to_metric_families(r.text)}
    assert {"fproxy_upstream_keys", "fproxy_queue_depth", "fproxy_active_streams"} <= fams
    other = await ahttp("GET", f"http://127.0.0.1:{env.metrics_port}/api/keys")
    assert other.status_code == 404, "the open metrics listener serves nothing else"
