"""Credential sources end to end: command, file, env and OAuth refresh against loopback fakes.

The upstream fake accepts only the keys listed on it, so a stale credential is answered 401
the way a real provider does; the gateway must fetch a fresh one and retry without the client
noticing, re-fetch when the cached value expires, and answer 503 naming the provider when the
source itself fails.
"""
from __future__ import annotations

import json
import os
import stat
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest_twisted
from twisted.internet import threads
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.web.server import Request

from tests.fakes.loopback import Leaf, TrackingSite
from tests.fakes.upstream import start_fake
from tests.integration.harness import start_gateway

CK = "sk-client-creds"


def chat(gw: Any, model: str = "m") -> Any:
    return threads.deferToThread(httpx.post, gw.url + "/v1/chat/completions", timeout=15,
                                 headers={"authorization": f"Bearer {CK}"},
                                 json={"model": model, "messages": [{"role": "user", "content": "hi"}]})


async def gateway(reactor: Any, fake: Any, **provider: Any) -> Any:
    conf = {"access": {"keys": [CK]},
            "provider": [{"name": "up", "dialect": "openai-chat", "base_url": fake.base_url, **provider}],
            "route": [{"model": "m", "to": ["up:gpt-4o-mini"]}]}
    return await start_gateway(reactor, conf)


def sleep(reactor: Any, seconds: float) -> Any:
    return deferLater(reactor, seconds, lambda: None)


def script(path: Any, text: str) -> str:
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


# ------------------------------------------------------------------ command
@pytest_twisted.ensureDeferred
async def test_command_cached_rerun_after_401_and_after_ttl(reactor, tmp_path):
    # each run prints tok-N (N = the number of runs so far); the upstream only knows tok-2 and tok-3
    cmd = script(tmp_path / "get-token", 'echo run >> "$0.runs"\necho "tok-$(wc -l < "$0.runs" | tr -d \' \')"\n')
    runs = tmp_path / "get-token.runs"
    fake = await start_fake(reactor, "openai-chat", keys=["tok-2", "tok-3"])
    gw = await gateway(reactor, fake, credential=f"command:{cmd}", credential_ttl=1.0)
    try:
        r = await chat(gw)
        assert r.status_code == 200, r.text  # tok-1 was refused (401), tok-2 fetched and accepted
        assert [rec.key for rec in fake.requests] == ["tok-1", "tok-2"]
        assert [rec.status for rec in fake.requests] == [401, 200]
        assert len(runs.read_text().splitlines()) == 2

        r = await chat(gw)
        assert r.status_code == 200 and fake.requests[-1].key == "tok-2"
        assert len(runs.read_text().splitlines()) == 2, "cached: the command did not run again"

        await sleep(reactor, 1.1)  # credential_ttl is over
        r = await chat(gw)
        assert r.status_code == 200 and fake.requests[-1].key == "tok-3"
        assert len(runs.read_text().splitlines()) == 3
    finally:
        await gw.stop()
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_command_runs_without_a_shell_and_keys_entries_work_too(reactor):
    fake = await start_fake(reactor, "openai-chat", keys=["a|b $HOME;x"])
    gw = await gateway(reactor, fake, keys=["command:echo 'a|b' $HOME;x"])
    try:
        r = await chat(gw)
        assert r.status_code == 200, r.text
        assert fake.requests[-1].key == "a|b $HOME;x", "no shell: no pipe, no expansion, no ';'"
    finally:
        await gw.stop()
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_failing_command_is_a_503_naming_the_provider(reactor, tmp_path):
    cmd = script(tmp_path / "fail", "echo 'You are not logged in' >&2\nexit 3\n")
    fake = await start_fake(reactor, "openai-chat")
    gw = await gateway(reactor, fake, credential=f"command:{cmd}")
    try:
        r = await chat(gw)
        assert r.status_code == 503, r.text
        msg = r.json()["error"]["message"]
        assert "provider up" in msg and "exited with status 3" in msg and "You are not logged in" in msg
        assert r.json()["error"]["code"] == "credential_unavailable"
        assert fake.requests == [], "nothing was sent upstream"
        gw2 = await gateway(reactor, fake, credential="command:/nonexistent/tool print-token")
        try:
            r = await chat(gw2)
            assert r.status_code == 503 and "provider up" in r.json()["error"]["message"]
        finally:
            await gw2.stop()
    finally:
        await gw.stop()
        await fake.stop()


# ------------------------------------------------------------------ file
@pytest_twisted.ensureDeferred
async def test_file_json_path_reread_after_401_and_after_ttl(reactor, tmp_path):
    creds = tmp_path / "auth.json"
    creds.write_text(json.dumps({"tokens": {"access_token": "f-1", "refresh_token": "never-sent"}}))
    fake = await start_fake(reactor, "openai-chat", keys=["f-1"])
    gw = await gateway(reactor, fake, credential=f"file:{creds}#tokens.access_token", credential_ttl=1.0)
    try:
        assert (await chat(gw)).status_code == 200 and fake.requests[-1].key == "f-1"
        creds.write_text(json.dumps({"tokens": {"access_token": "f-2"}}))
        fake.keys = ["f-2"]  # the provider revoked f-1: the cached value is refused, the file read again
        r = await chat(gw)
        assert r.status_code == 200, r.text
        assert [rec.key for rec in fake.requests[-2:]] == ["f-1", "f-2"]
        creds.write_text(json.dumps({"tokens": {"access_token": "f-3"}}))
        fake.keys = ["f-2", "f-3"]
        assert (await chat(gw)).status_code == 200 and fake.requests[-1].key == "f-2", "still cached"
        await sleep(reactor, 1.1)
        assert (await chat(gw)).status_code == 200 and fake.requests[-1].key == "f-3", "re-read after the ttl"
        os.remove(creds)
        fake.keys = ["other"]
        r = await chat(gw)
        assert r.status_code == 503, r.text
        assert "provider up" in r.json()["error"]["message"] and "cannot read" in r.json()["error"]["message"]
    finally:
        await gw.stop()
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_env_source(reactor, monkeypatch):
    monkeypatch.setenv("FPROXY_TEST_UPSTREAM_TOKEN", "env-tok")
    fake = await start_fake(reactor, "openai-chat", keys=["env-tok"])
    gw = await gateway(reactor, fake, credential="env:FPROXY_TEST_UPSTREAM_TOKEN")
    gw2 = await gateway(reactor, fake, credential="env:FPROXY_TEST_UNSET_VARIABLE")
    try:
        assert (await chat(gw)).status_code == 200 and fake.requests[-1].key == "env-tok"
        r = await chat(gw2)
        assert r.status_code == 503 and "FPROXY_TEST_UNSET_VARIABLE is not set" in r.json()["error"]["message"]
    finally:
        await gw.stop()
        await gw2.stop()
        await fake.stop()


# ------------------------------------------------------------------ OAuth refresh-token grant
class TokenEndpoint:
    """A loopback OAuth token endpoint: records each form, answers from a list."""

    def __init__(self, answers: list[tuple[int, dict[str, Any]]]) -> None:
        self.answers = answers
        self.forms: list[dict[str, list[str]]] = []
        self.content_types: list[str] = []
        self.url = ""

    async def start(self, reactor: Any) -> TokenEndpoint:
        self._site = TrackingSite(Leaf(self._render), reactor)
        self._port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(self._site)
        self.url = f"http://127.0.0.1:{self._port.getHost().port}/oauth/token"
        return self

    def _render(self, request: Request) -> bytes:
        self.content_types.append((request.getHeader(b"content-type") or b"").decode())
        self.forms.append(parse_qs(request.content.read().decode()))
        status, body = self.answers.pop(0)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode()

    async def stop(self) -> None:
        await self._port.stopListening()
        await self._site.close_all()


@pytest_twisted.ensureDeferred
async def test_oauth_refresh_on_expiry_and_on_401(reactor):
    tokens = await TokenEndpoint([
        (200, {"access_token": "oa-1", "expires_in": 1, "token_type": "Bearer", "refresh_token": "rt-2"}),
        (200, {"access_token": "oa-2", "expires_in": 3600, "token_type": "Bearer"}),
        (200, {"access_token": "oa-3", "expires_in": 3600, "token_type": "Bearer"}),
        (400, {"error": "invalid_grant", "error_description": "refresh token revoked"}),
    ]).start(reactor)
    fake = await start_fake(reactor, "openai-chat", keys=["oa-1", "oa-2"])
    gw = await gateway(reactor, fake, oauth={"token_url": tokens.url, "client_id": "app-id",
                                             "client_secret": "app-secret", "refresh_token": "rt-1"})
    try:
        assert (await chat(gw)).status_code == 200 and fake.requests[-1].key == "oa-1"
        assert tokens.forms[0] == {"grant_type": ["refresh_token"], "refresh_token": ["rt-1"],
                                   "client_id": ["app-id"], "client_secret": ["app-secret"]}
        assert tokens.content_types[0] == "application/x-www-form-urlencoded"

        await sleep(reactor, 1.0)  # oa-1 lived 1 s (used for 0.9 s)
        assert (await chat(gw)).status_code == 200 and fake.requests[-1].key == "oa-2"
        assert tokens.forms[1]["refresh_token"] == ["rt-2"], "the rotated refresh token is used"

        fake.keys = ["oa-3"]  # oa-2 is revoked early: 401, refresh, retry - unseen by the client
        r = await chat(gw)
        assert r.status_code == 200, r.text
        assert [(rec.key, rec.status) for rec in fake.requests[-2:]] == [("oa-2", 401), ("oa-3", 200)]
        assert len(tokens.forms) == 3

        fake.keys = ["never"]
        r = await chat(gw)  # oa-3 refused, the refresh fails: a clear 503 naming the provider
        assert r.status_code == 503, r.text
        assert "provider up" in r.json()["error"]["message"] and "invalid_grant" in r.json()["error"]["message"]
    finally:
        await gw.stop()
        await tokens.stop()
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_a_fresh_credential_refused_again_is_not_retried_forever(reactor):
    fake = await start_fake(reactor, "openai-chat", keys=["the-right-one"])
    gw = await gateway(reactor, fake, credential="command:echo wrong-token")
    try:
        r = await chat(gw)
        assert r.status_code == 502, r.text
        assert "refused the credential from command:echo" in r.json()["error"]["message"]
        assert [rec.key for rec in fake.requests] == ["wrong-token", "wrong-token"]
    finally:
        await gw.stop()
        await fake.stop()
