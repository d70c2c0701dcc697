"""Live reload (issue 6, item 5): SIGHUP and ``POST /api/reload``.

The real ``twistd fproxy`` in front of two fake upstreams:

- a stream from upstream A runs; the configuration is rewritten to route the model to B
  (and to drop provider A altogether) and SIGHUP is sent: the next request goes to B while
  the stream from A completes, whole, on the connection it started with;
- SIGHUP with a broken configuration changes nothing and logs one line;
- ``POST /api/reload`` is for admins (401 / 403 otherwise), answers 400 naming the problem
  for a broken file and 200 listing the changes for a good one.

In-process (the gateway in the test's reactor, `fproxy.reload.Reloader` driven directly):
unchanged providers keep their state, client keys are swapped, and a retired provider's
pool is closed only once its last call has ended.
"""
from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater

from fproxy import reload as reload_module
from fproxy.config import ConfigError, from_dict
from fproxy.reload import Reloader
from tests.fakes.upstream import start_fake
from tests.integration.harness import provider, start_gateway
from tests.integration.twistd_support import Launcher, bearer, chat_body, request, stream_sse

WORDS = " ".join(f"w{i}" for i in range(1, 41))


@pytest_twisted.async_yield_fixture
async def launcher(reactor: Any, tmp_path: Path) -> AsyncIterator[Launcher]:
    lau = Launcher(reactor, tmp_path)
    try:
        yield lau
    finally:
        await lau.cleanup()


@pytest_twisted.async_yield_fixture
async def fakes(reactor: Any) -> AsyncIterator[tuple[Any, Any]]:
    a = await start_fake(reactor, keys=["ka"])
    b = await start_fake(reactor, keys=["kb"])
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()


def _config(a: Any, b: Any, route_to: str, with_a: bool = True, extra: str = "") -> str:
    text = '[access]\nkeys = ["ck"]\nadmin_keys = ["ak"]\n[store]\nurl = "sqlite:fproxy.db"\n'
    if with_a:
        text += f'[[provider]]\nname = "a"\ndialect = "openai-chat"\nbase_url = "{a.base_url}"\nkeys = ["ka"]\n'
    text += f'[[provider]]\nname = "b"\ndialect = "openai-chat"\nbase_url = "{b.base_url}"\nkeys = ["kb"]\n'
    text += f'[[route]]\nmodel = "m"\nto = ["{route_to}:gpt-4o-mini"]\n' + extra
    return text


async def _log_line(reactor: Any, gw: Any, text: str, count: int = 1, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while gw.output.count(text) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {count}x {text!r} in the log within {timeout}s\n{gw.output}")
        await deferLater(reactor, 0.05, lambda: None)


# --------------------------------------------------------------------------- SIGHUP, twistd
@pytest_twisted.ensureDeferred
async def test_sighup_new_route_for_next_request_while_running_stream_completes(
        reactor: Any, launcher: Launcher, fakes: tuple[Any, Any]) -> None:
    a, b = fakes
    gw = await launcher.start(_config(a, b, "a"))
    a.script({"text": WORDS, "chunks": 40, "chunk_delay": 0.05})
    first: Deferred[None] = Deferred()
    streaming = stream_sse(reactor, gw.url + "/v1/chat/completions", chat_body("m", stream=True), bearer("ck"),
                           on_first_data=lambda: first.callback(None))
    first.addTimeout(5, reactor)
    await first

    launcher.write("fproxy.toml", _config(a, b, "b", with_a=False))  # route to b, provider a gone
    gw.signal(signal.SIGHUP)
    await _log_line(reactor, gw, "configuration reloaded from")
    assert "providers removed: a" in gw.output and "routes" in gw.output, gw.output
    r = await request("POST", gw.url + "/v1/chat/completions", json=chat_body("m"), headers=bearer("ck"))
    next_done = time.monotonic()
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Echo: hello"
    assert [x.key for x in b.requests] == ["kb"] and len(a.requests) == 1, "the next request goes to b"

    log = await streaming
    assert log.error is None and log.status == 200, (log.error, log.lines[-3:])
    assert log.data[-1] == "[DONE]" and log.text() == WORDS, log.data[-3:]
    assert log.ended_at is not None and log.ended_at > next_done, "the stream was still running after the reload"
    assert a.requests[0].outcome == "completed", a.requests[0]

    # a broken configuration: refused, one line, the running one stays
    launcher.write("fproxy.toml", _config(a, b, "c", with_a=False))
    gw.signal(signal.SIGHUP)
    await _log_line(reactor, gw, "configuration reload (SIGHUP) refused")
    refused = [ln for ln in gw.output.splitlines() if "refused, the running configuration stays" in ln]
    assert len(refused) == 1 and 'route[1].to[0]: unknown provider "c"' in refused[0], refused
    r = await request("POST", gw.url + "/v1/chat/completions", json=chat_body("m"), headers=bearer("ck"))
    assert r.status_code == 200 and len(b.requests) == 2 and len(a.requests) == 1, r.text
    assert await gw.terminate(), gw.output


@pytest_twisted.ensureDeferred
async def test_post_api_reload_for_admins(reactor: Any, launcher: Launcher, fakes: tuple[Any, Any]) -> None:
    a, b = fakes
    gw = await launcher.start(_config(a, b, "b", with_a=False))
    url = gw.url + "/api/reload"
    assert (await request("POST", url)).status_code == 401
    forbidden = await request("POST", url, headers=bearer("ck"))
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "admin_required"

    launcher.write("fproxy.toml", _config(a, b, "b", with_a=False, extra="[server]\nmax_request_bytes = -1\n"))
    bad = await request("POST", url, headers=bearer("ak"))
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["code"] == "invalid_config"
    assert "server.max_request_bytes" in bad.json()["error"]["message"], bad.text

    launcher.write("fproxy.toml", _config(a, b, "a", extra='[server]\nlisten = ["tcp:9:interface=127.0.0.1"]\n'))
    ok = await request("POST", url, headers=bearer("ak"))
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["reloaded"] is True and body["scope"] == "this process"
    assert "providers added: a" in body["changes"] and "routes" in body["changes"], body
    assert body["restart_needed"] == ["server.listen"], body
    assert "server.listen changed" in gw.output and "only after a restart" in gw.output, gw.output
    r = await request("POST", gw.url + "/v1/chat/completions", json=chat_body("m"), headers=bearer("ck"))
    assert r.status_code == 200 and len(a.requests) == 1 and b.requests == [], r.text
    assert await gw.terminate(), gw.output


# --------------------------------------------------------------------------- in process
def _conf(a: Any, b: Any, route_to: str, keys: list[str], with_a: bool = True) -> dict[str, Any]:
    providers = [provider("b", "openai-chat", b.base_url, ["kb"])]
    if with_a:
        providers.insert(0, provider("a", "openai-chat", a.base_url, ["ka"]))
    return {"store": {"url": "sqlite::memory:"}, "access": {"keys": keys, "admin_keys": ["ak"]},
            "provider": providers, "route": [{"model": "m", "to": [f"{route_to}:gpt-4o-mini"]}]}


class Source:
    """The configuration a reload reads: what the test put there last."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf

    def __call__(self) -> Any:
        return from_dict(self.conf, {}, source="(test)")


def _reloader(gw: Any, source: Source, reactor: Any) -> Reloader:
    r = Reloader(gw.service, source, reactor, run_blocking=lambda f: succeed(f()))
    gw.service.admin.reloader = r
    return r


def _post(url: str, key: str, stream: bool = False) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=chat_body("m", stream=stream),
                      headers={"authorization": f"Bearer {key}"}, timeout=15)


@pytest_twisted.ensureDeferred
async def test_reload_keeps_unchanged_providers_and_swaps_client_keys(reactor: Any, fakes: tuple[Any, Any]) -> None:
    a, b = fakes
    source = Source(_conf(a, b, "a", ["ck-old"]))
    gw = await start_gateway(reactor, source.conf)
    try:
        reloader = _reloader(gw, source, reactor)
        svc = gw.service
        before = dict(svc.providers)
        key_b = before["b"].pool.keys[0]
        before["b"].pool.cool(key_b, 60.0, 429)  # state that must survive a reload
        assert (await threads.deferToThread(_post, gw.url, "ck-old")).status_code == 200

        source.conf = _conf(a, b, "a", ["ck-new"])
        source.conf["provider"][0]["timeouts"] = {"connect": 5}  # a changed
        result = await reloader.reload("test")
        assert result.changes == ("providers changed: a", "access.keys"), result
        assert svc.providers["b"] is before["b"], "an unchanged provider keeps its object and key state"
        assert svc.providers["b"].pool.snapshot()["cooling"] == 1
        assert svc.providers["a"] is not before["a"] and svc.providers["a"].config.timeouts.connect == 5
        assert reloader.retired == [before["a"]]
        assert svc.gateway.providers is svc.providers, "one dict, shared with calls and metrics"

        old = await threads.deferToThread(_post, gw.url, "ck-old")
        assert old.status_code == 401, "a client key removed by the reload is refused from the next request"
        new = await threads.deferToThread(_post, gw.url, "ck-new")
        assert new.status_code == 200, new.text
        assert [r.key for r in a.requests] == ["ka", "ka"] and b.requests == []
        # /api/reload in process, with a broken configuration: nothing changes
        source.conf = _conf(a, b, "nowhere", ["ck-new"])
        with pytest.raises(ConfigError):
            await reloader.reload("test")
        assert svc.config.routes[0].to[0].provider == "a" and svc.providers["a"].config.timeouts.connect == 5

        def admin_reload() -> httpx.Response:
            return httpx.post(gw.url + "/api/reload", headers={"authorization": "Bearer ak"}, timeout=5)

        r = await threads.deferToThread(admin_reload)
        assert r.status_code == 400 and 'unknown provider "nowhere"' in r.json()["error"]["message"], r.text
    finally:
        await gw.stop()


class ClosingSpy:
    """An upstream client that notes when its pool is closed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.closed: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def close(self) -> Any:
        self.closed.append(time.monotonic())
        return self.inner.close()


@pytest_twisted.ensureDeferred
async def test_retired_provider_is_closed_only_after_its_stream_ends(reactor: Any, fakes: tuple[Any, Any],
                                                                      monkeypatch: Any) -> None:
    monkeypatch.setattr(reload_module, "RETIRE_CHECK_SECONDS", 0.05)
    a, b = fakes
    source = Source(_conf(a, b, "a", ["ck"]))
    gw = await start_gateway(reactor, source.conf)
    try:
        reloader = _reloader(gw, source, reactor)
        old_a = gw.service.providers["a"]
        old_a.client = spy = ClosingSpy(old_a.client)
        closed = spy.closed
        a.script({"text": WORDS, "chunks": 40, "chunk_delay": 0.03})
        first: Deferred[None] = Deferred()
        streaming = stream_sse(reactor, gw.url + "/v1/chat/completions", chat_body("m", stream=True),
                               bearer("ck"), on_first_data=lambda: first.callback(None))
        first.addTimeout(5, reactor)
        await first
        source.conf = _conf(a, b, "b", ["ck"], with_a=False)
        await reloader.reload("test")
        assert "a" not in gw.service.providers and reloader.retired == [old_a]
        await deferLater(reactor, 0.3, lambda: None)
        assert closed == [], "a provider with a running stream must not be closed"
        r = await threads.deferToThread(_post, gw.url, "ck")
        assert r.status_code == 200 and len(b.requests) == 1
        log = await streaming
        assert log.data[-1] == "[DONE]" and log.text() == WORDS, log.data[-3:]
        ended = time.monotonic()
        await deferLater(reactor, 0.3, lambda: None)
        assert len(closed) == 1 and closed[0] >= ended - 0.1, closed
        assert reloader.retired == [] and reloader._retire_loop is None
    finally:
        await gw.stop()
