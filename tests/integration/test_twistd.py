"""The real ``twistd fproxy`` as a subprocess (issue 2, items 2 and 7).

Each test starts ``python -c '...twistd...' -n --pidfile= fproxy ...`` in a temporary directory
(PYTHONPATH = the checkout, so ``twisted/plugins/fproxy_plugin.py`` is found), reads the port
from the "FproxySite starting on N" log line and talks to it over loopback: with httpx or the
openai SDK in threads, so the test's reactor stays free to run fake upstreams.  Every child is
killed (its whole process group) in ``finally``.
"""
from __future__ import annotations

import re
import signal
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import quoteStringArgument

from tests.fakes.prefixed import start_prefixed_fake
from tests.fakes.upstream import start_fake
from tests.integration.twistd_support import (
    CHECKOUT,
    LOOPBACK,
    Launcher,
    bearer,
    chat_body,
    child_env,
    refused_within,
    request,
    self_signed,
    stream_sse,
)

EXAMPLE = Path(CHECKOUT) / "etc" / "fproxy.example.toml"
MOCK_PROVIDER = """
[[provider]]
name = "demo"
dialect = "mock"
models = ["fproxy-demo"]
"""


@pytest_twisted.async_yield_fixture
async def launcher(reactor: Any, tmp_path: Path) -> AsyncIterator[Launcher]:
    """Starts twistd children in tmp_path; kills every one still running afterwards (a finally)."""
    lau = Launcher(reactor, tmp_path)
    try:
        yield lau
    finally:
        await lau.cleanup()


def _lines(text: bytes) -> list[str]:
    return [line for line in text.decode("utf-8", "replace").splitlines() if line.strip()]


# --------------------------------------------------------------------------- 1. --help
@pytest_twisted.ensureDeferred
async def test_help_lists_config_and_listen(launcher: Launcher) -> None:
    proc = await launcher.run(["fproxy", "--help"])
    assert proc.exit_code == 0, proc.output
    out = proc.out.decode()
    assert "--config" in out and "--listen" in out, proc.output


# --------------------------------------------------------------------------- 2. refused configs
BAD_CONFIGS = {
    "unknown-dialect": (
        '[[provider]]\nname = "x"\ndialect = "x"\nmodels = ["m"]\n',
        re.compile(r'provider "x" \(provider\[1\]\): dialect: unknown dialect "x"'),
    ),
    "misspelt-key": (
        '[[provider]]\nname = "demo"\ndialect = "mock"\nmodles = ["fproxy-demo"]\n',
        re.compile(r'provider "demo" \(provider\[1\]\): modles: .*did you mean "models"'),
    ),
    "misspelt-section-key": (
        '[server]\ndrain_secnds = 3\n' + MOCK_PROVIDER,
        re.compile(r'server\.drain_secnds: .*did you mean "drain_seconds"'),
    ),
    "bad-toml": (
        '[server\nlisten = 1\n',
        re.compile(r"fproxy\.toml: not valid TOML.*line 1"),
    ),
}


def _assert_one_line_refusal(proc: Any, pattern: re.Pattern[str]) -> None:
    assert proc.exit_code not in (0, None), proc.output
    lines = _lines(bytes(proc.out)) + _lines(bytes(proc.err))
    assert len(lines) == 1, proc.output
    assert pattern.search(lines[0]), proc.output
    assert "Traceback" not in proc.output


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
@pytest_twisted.ensureDeferred
async def test_broken_config_refused_with_one_line(launcher: Launcher, case: str) -> None:
    text, pattern = BAD_CONFIGS[case]
    path = launcher.write("fproxy.toml", text)
    proc = await launcher.run(["-n", "--pidfile=", "fproxy", "--config", str(path), "--listen", LOOPBACK])
    _assert_one_line_refusal(proc, pattern)


@pytest_twisted.ensureDeferred
async def test_missing_config_file_refused(launcher: Launcher) -> None:
    missing = launcher.cwd / "nope" / "fproxy.toml"
    proc = await launcher.run(["-n", "--pidfile=", "fproxy", "--config", str(missing), "--listen", LOOPBACK])
    _assert_one_line_refusal(proc, re.compile(re.escape(str(missing)) + ": no such file"))


@pytest.mark.parametrize("listen", ["nonsense:1234", "tcp:notaport", "ssl:0:privateKey=/nonexistent/key.pem"])
@pytest_twisted.ensureDeferred
async def test_bad_listen_description_refused(launcher: Launcher, listen: str) -> None:
    path = launcher.write("fproxy.toml", MOCK_PROVIDER)
    proc = await launcher.run(["-n", "--pidfile=", "fproxy", "--config", str(path), "--listen", listen])
    _assert_one_line_refusal(proc, re.compile("listen: " + re.escape(repr(listen))))


@pytest_twisted.ensureDeferred
async def test_listen_port_in_use_refused_with_one_line(launcher: Launcher) -> None:
    """A port another process holds: the start fails at once, with one line, not a traceback."""
    first = await launcher.start(MOCK_PROVIDER)
    taken = f"tcp:{first.port}:interface=127.0.0.1"
    path = launcher.write("second.toml", MOCK_PROVIDER)
    proc = await launcher.run(["-n", "--pidfile=", "fproxy", "--config", str(path), "--listen", taken])
    assert proc.exit_code not in (0, None), proc.output
    assert "Traceback" not in proc.output, proc.output
    # twistd's own "starting up" lines may come first; the problem is one line naming the listener
    named = [line for line in _lines(bytes(proc.out) + bytes(proc.err)) if f"{first.port}" in line]
    assert len(named) == 1 and "listen" in named[0], proc.output


# --------------------------------------------------------------------------- 3. interpolation
@pytest_twisted.ensureDeferred
async def test_env_interpolation_and_key_list_splitting(launcher: Launcher) -> None:
    config = (
        '[access]\nkeys = ["${T_KEYS}"]\n'
        + MOCK_PROVIDER + 'mock_reply = "${MISSING:-dflt}"\nmock_delay = 0\n'
    )
    gw = await launcher.start(config, env=child_env(T_KEYS="k1;k2 k3"))
    url = gw.url + "/v1/chat/completions"
    for key in ("k1", "k2", "k3"):
        r = await request("POST", url, json=chat_body(), headers=bearer(key))
        assert r.status_code == 200, (key, r.text)
        assert r.json()["choices"][0]["message"]["content"] == "dflt"
    for key in ("k4", "k1;k2 k3", "k1;k2"):
        r = await request("POST", url, json=chat_body(), headers=bearer(key))
        assert r.status_code == 401, (key, r.text)
        assert r.json()["error"]["message"]
    assert await gw.terminate(), gw.output


# --------------------------------------------------------------------------- 4. the example config
def _sdk_stream(base_url: str, key: str, model: str, http_client: httpx.Client | None = None) -> list[str]:
    client = openai.OpenAI(base_url=base_url, api_key=key, http_client=http_client, max_retries=0, timeout=10)
    pieces = []
    with client.chat.completions.create(model=model, stream=True,
                                        messages=[{"role": "user", "content": "hello"}]) as stream:
        for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)
    return pieces


@pytest_twisted.ensureDeferred
async def test_example_config_streams_demo_model_to_openai_sdk(launcher: Launcher) -> None:
    gw = await launcher.start(EXAMPLE)
    pieces = await threads.deferToThread(_sdk_stream, gw.url + "/v1", "sk-fproxy-demo", "fproxy-demo")
    text = "".join(pieces)
    assert len(pieces) >= 5, pieces
    assert text.startswith("Hello from fproxy's built-in mock model!"), text
    assert text.endswith("You said: hello"), text
    r = await request("GET", gw.url + "/v1/models", headers=bearer("sk-fproxy-demo"))
    assert [m["id"] for m in r.json()["data"]] == ["fproxy-demo"]
    r = await request("GET", gw.url + "/v1/models", headers=bearer("sk-not-the-demo-key"))
    assert r.status_code == 401
    assert await gw.terminate(), gw.output


# --------------------------------------------------------------------------- 5. environment-only mode
@pytest_twisted.ensureDeferred
async def test_environment_only_mode_factory_anthropic_route(reactor: Any, launcher: Launcher) -> None:
    fake = await start_prefixed_fake(reactor, "/api/llm/a", dialect="anthropic", keys=["fk-1", "fk-2"])
    try:
        env = child_env(FACTORY_API_KEYS="fk-1;fk-2", FACTORY_BASE_URL=fake.base_url, PROXY_ACCESS_KEYS="ck")
        gw = await launcher.start(None, env=env)
        log = await stream_sse(reactor, gw.url + "/v1/chat/completions",
                               chat_body("claude-sonnet-4-5", stream=True, text="hello"), bearer("ck"))
        assert fake.paths == ["/api/llm/a/v1/messages"], fake.paths
        rec = fake.upstream.requests[0]
        assert rec.headers.get("authorization") in ("Bearer fk-1", "Bearer fk-2"), rec.headers
        assert "ck" not in rec.headers.get("authorization", "")
        assert rec.body["model"] == "claude-sonnet-4-5" and rec.body["stream"] is True, rec.body
        assert rec.status == 200 and rec.outcome == "completed", (rec.status, rec.outcome, rec.error)
        assert log.status == 200, (log.status, log.lines)
        assert log.data[-1] == "[DONE]", log.data
        assert len(log.chunks()) >= 3, log.data
        assert log.text() == "Echo: hello", log.data
        r = await request("POST", gw.url + "/v1/chat/completions", json=chat_body("claude-sonnet-4-5"),
                          headers=bearer("fk-1"))
        assert r.status_code == 401, "an upstream key must not be a client key"
        assert await gw.terminate(), gw.output
    finally:
        await fake.stop()


# --------------------------------------------------------------------------- 6. TLS
@pytest_twisted.ensureDeferred
async def test_tls_listener_with_self_signed_certificate(launcher: Launcher) -> None:
    cert, key = self_signed(launcher.cwd)
    listen = (f"ssl:0:privateKey={quoteStringArgument(str(key))}:certKey={quoteStringArgument(str(cert))}"
              ":interface=127.0.0.1")
    gw = await launcher.start('[access]\nkeys = ["ck"]\n' + MOCK_PROVIDER + "mock_delay = 0.01\n", listen=listen)
    base = f"https://127.0.0.1:{gw.port}"

    def over_tls() -> list[str]:
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as http:
            return _sdk_stream(base + "/v1", "ck", "fproxy-demo", http_client=http)

    pieces = await threads.deferToThread(over_tls)
    assert len(pieces) >= 5 and "".join(pieces).endswith("You said: hello"), pieces

    def by_name() -> int:  # the certificate also names localhost
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert)), timeout=5) as http:
            return http.get(f"https://localhost:{gw.port}/health").status_code

    assert await threads.deferToThread(by_name) == 200

    def plain_http() -> Any:
        with httpx.Client(timeout=5) as http:
            return http.get(f"http://127.0.0.1:{gw.port}/health")

    with pytest.raises(httpx.TransportError):
        await threads.deferToThread(plain_http)

    def unverified() -> Any:  # the system trust store does not know our certificate
        with httpx.Client(timeout=5) as http:
            return http.get(base + "/health")

    with pytest.raises(httpx.ConnectError):
        await threads.deferToThread(unverified)
    assert await gw.terminate(), gw.output


# --------------------------------------------------------------------------- 7. SIGTERM drain
WORDS_40 = " ".join(f"w{i}" for i in range(1, 41))
WORDS_400 = " ".join(f"w{i}" for i in range(1, 401))


async def _start_stream_then_sigterm(reactor: Any, gw: Any) -> tuple[Deferred[Any], float]:
    """Start a streamed request; SIGTERM the gateway once its first chunk arrives."""
    first: Deferred[None] = Deferred()
    done = stream_sse(reactor, gw.url + "/v1/chat/completions", chat_body(stream=True), bearer("ck"),
                      on_first_data=lambda: first.callback(None))
    first.addTimeout(5, reactor)
    await first
    sent_at = time.monotonic()
    gw.signal(signal.SIGTERM)
    return done, sent_at


@pytest_twisted.ensureDeferred
async def test_sigterm_stops_listening_and_lets_running_stream_finish(reactor: Any, launcher: Launcher) -> None:
    config = ('[access]\nkeys = ["ck"]\n' + MOCK_PROVIDER
              + f'mock_reply = "{WORDS_40}"\nmock_delay = 0.05\n')
    gw = await launcher.start(config)
    port = gw.port
    done, sigterm_at = await _start_stream_then_sigterm(reactor, gw)
    refused_after = await refused_within(port, 1.0)
    refused_at = time.monotonic()
    log = await done
    await gw.exited(6.0)

    assert refused_after is not None, "the listener still accepted connections 1s after SIGTERM"
    assert log.ended_at is not None and refused_at < log.ended_at, "the stream should still run while refused"
    assert log.error is None, f"the stream was cut: {log.error!r}; last lines {log.lines[-2:]}\n{gw.output}"
    assert log.status == 200
    assert log.data[-1] == "[DONE]", log.data
    assert log.text() == WORDS_40, log.text()
    assert not any("error" in c for c in log.chunks()), log.data
    assert log.ended_at - sigterm_at > 1.0, "the stream was cut short instead of drained"
    assert gw.stopped_cleanly, gw.output
    assert gw.ended_at is not None and gw.ended_at - log.ended_at < 3.0, gw.output


@pytest_twisted.ensureDeferred
async def test_sigterm_drain_deadline_ends_long_stream_cleanly(reactor: Any, launcher: Launcher) -> None:
    config = ('[server]\ndrain_seconds = 1\n[access]\nkeys = ["ck"]\n' + MOCK_PROVIDER
              + f'mock_reply = "{WORDS_400}"\nmock_delay = 0.05\n')
    gw = await launcher.start(config)
    done, sigterm_at = await _start_stream_then_sigterm(reactor, gw)
    log = await done
    await gw.exited(6.0)

    assert log.ended_at is not None
    assert 0.7 < log.ended_at - sigterm_at < 3.0, log.ended_at - sigterm_at
    assert log.error is None, f"the stream was cut, not ended: {log.error!r}; last lines: {log.lines[-2:]}\n" \
                              f"{gw.output}"
    assert log.data[-1] == "[DONE]", log.data[-3:]
    chunks = log.chunks()  # every data line is whole JSON
    assert "error" in chunks[-1], chunks[-1]
    assert 0 < len(log.text().split()) < 400
    assert WORDS_400.startswith(log.text()), "the words before the end must be the stream's, in order"
    assert gw.stopped_cleanly, gw.output


# --------------------------------------------------------------------------- 8. JSON log
@pytest_twisted.ensureDeferred
async def test_json_logger_one_object_per_line_and_no_keys(reactor: Any, launcher: Launcher) -> None:
    client_key, bad_up, good_up = "ck-log-secret-777", "sk-up-log-bad-111", "sk-up-log-good-222"
    fake = await start_fake(reactor, dialect="openai-chat", keys=[good_up])
    try:
        config = (f'[access]\nkeys = ["{client_key}"]\n'
                  f'[[provider]]\nname = "up"\ndialect = "openai-chat"\nbase_url = "{fake.base_url}"\n'
                  f'keys = ["{bad_up}", "{good_up}"]\nmodels = ["gpt-4o-mini"]\n' + MOCK_PROVIDER + "mock_delay = 0\n")
        gw = await launcher.start(config, twistd_options=["--logger=fproxy.logs.json_observer"])
        ok = await request("POST", gw.url + "/v1/chat/completions", json=chat_body("gpt-4o-mini"),
                           headers=bearer(client_key))
        assert ok.status_code == 200, ok.text
        assert [r.key for r in fake.requests] == [bad_up, good_up], "the bad upstream key must be tried first"
        denied = await request("POST", gw.url + "/v1/chat/completions", json=chat_body(),
                               headers=bearer(client_key + "-wrong"))
        assert denied.status_code == 401
        streamed = await stream_sse(reactor, gw.url + "/v1/chat/completions", chat_body(stream=True),
                                    bearer(client_key))
        assert streamed.data[-1] == "[DONE]", streamed.lines
        assert await gw.terminate(), gw.output

        records = []
        for line in _lines(bytes(gw.out)):
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                pytest.fail(f"not a JSON line: {line!r}\n{gw.output}")
        access = [r for r in records if r.get("path") == "/v1/chat/completions"]
        assert [r.get("status") for r in access] == [200, 401, 200], access
        assert all(r.get("request_id") for r in access)
        assert access[0]["request_id"] == ok.headers["x-request-id"], access[0]
        assert access[1]["request_id"] == denied.headers["x-request-id"], access[1]
        assert access[0].get("outcome") == "completed", access[0]
        everything = bytes(gw.out) + bytes(gw.err)
        for secret in (client_key, bad_up, good_up):
            assert secret.encode() not in everything, f"{secret} leaked into the log"
    finally:
        await fake.stop()


def _json_records(proc: Any) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in _lines(bytes(proc.out))]


@pytest_twisted.ensureDeferred
async def test_access_log_outcome_of_finished_stream_is_completed(reactor: Any, launcher: Launcher) -> None:
    """The per-request line of a stream that ran to its end says so (not "streaming")."""
    gw = await launcher.start('[access]\nkeys = ["ck"]\n' + MOCK_PROVIDER + "mock_delay = 0\n",
                              twistd_options=["--logger=fproxy.logs.json_observer"])
    streamed = await stream_sse(reactor, gw.url + "/v1/chat/completions", chat_body(stream=True), bearer("ck"))
    assert streamed.data[-1] == "[DONE]", streamed.lines
    assert await gw.terminate(), gw.output
    access = [r for r in _json_records(gw) if r.get("path") == "/v1/chat/completions"]
    assert len(access) == 1, access
    assert access[0]["status"] == 200 and access[0]["provider"] == "demo", access[0]
    assert access[0].get("outcome") == "completed", access[0]


# --------------------------------------------------------------------------- 9. no secrets in answers
@pytest_twisted.ensureDeferred
async def test_no_upstream_key_in_api_info_or_error_answers(reactor: Any, launcher: Launcher) -> None:
    secrets = ["sk-up-secret-123", "sk-up-secret-456"]
    fake = await start_fake(reactor, dialect="openai-chat", keys=["sk-the-only-valid-key"])
    try:
        config = ('[access]\nkeys = ["ck"]\n'
                  f'[[provider]]\nname = "up"\ndialect = "openai-chat"\nbase_url = "{fake.base_url}"\n'
                  f'keys = ["{secrets[0]};{secrets[1]}"]\nmodels = ["gpt-4o-mini"]\n')
        gw = await launcher.start(config)
        answers: list[httpx.Response] = []
        info = await request("GET", gw.url + "/api/info", headers=bearer("ck"))
        assert info.status_code == 200, info.text
        assert info.json()["providers"][0]["keys"]["healthy"] == 2, info.text
        answers.append(info)
        for stream in (False, True):
            err = await request("POST", gw.url + "/v1/chat/completions",
                                json=chat_body("gpt-4o-mini", stream=stream), headers=bearer("ck"))
            assert err.status_code >= 400, err.text
            assert "error" in err.json(), err.text
            answers.append(err)
        assert sorted(r.key for r in fake.requests) == sorted(secrets), "both upstream keys were tried"
        answers.append(await request("GET", gw.url + "/api/info", headers=bearer("ck")))
        assert answers[-1].json()["providers"][0]["keys"]["disabled"] == 2, answers[-1].text
        answers.append(await request("GET", gw.url + "/health"))
        answers.append(await request("GET", gw.url + "/api/info", headers=bearer("sk-up-secret-123")))
        assert answers[-1].status_code == 401
        for r in answers:
            blob = r.text + "".join(f"{k}: {v}\n" for k, v in r.headers.items())
            assert "up-secret" not in blob, f"an upstream key leaked in {r.request.url}: {blob}"
        assert await gw.terminate(), gw.output
        assert "up-secret" not in gw.output
    finally:
        await fake.stop()
