"""TLS and HTTP/2 (issue 6, item 4).

- ``ssl:`` and ``tls:`` (certificate directory, SNI) listeners of the real ``twistd fproxy``
  negotiate HTTP/2 by ALPN; an httpx client with ``http2=True`` streams a completion through
  them, chunk by chunk, to ``[DONE]``; also with ``--workers 2`` (adopted sockets).
- Only TLS 1.2 and newer is accepted.
- Upstream TLS: a fake upstream behind a certificate of a test CA is reached when the
  provider's ``ca_file`` names that CA, and refused (nothing sent) without it or when the
  certificate does not name the host (service-identity).
"""
from __future__ import annotations

import signal
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest_twisted
from twisted.internet import threads
from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.task import deferLater

from tests.fakes.tls_upstream import TestCA, start_tls_fake
from tests.integration.harness import provider, start_gateway
from tests.integration.twistd_support import Launcher, chat_body, self_signed

WORDS = " ".join(f"w{i}" for i in range(1, 21))
CONFIG = f"""
[access]
keys = ["ck"]
[store]
url = "sqlite:fproxy.db"
[[provider]]
name = "demo"
dialect = "mock"
models = ["fproxy-demo"]
mock_reply = "{WORDS}"
mock_delay = 0.02
"""


@pytest_twisted.async_yield_fixture
async def launcher(reactor: Any, tmp_path: Path) -> AsyncIterator[Launcher]:
    lau = Launcher(reactor, tmp_path)
    try:
        yield lau
    finally:
        await lau.cleanup()


def _ssl_listen(cert: Path, key: Path) -> str:
    return (f"ssl:0:interface=127.0.0.1:privateKey={quoteStringArgument(str(key))}"
            f":certKey={quoteStringArgument(str(cert))}")


def wait_workers_serving(base: str, cafile: Path, timeout: float = 15.0) -> None:
    """The parent prints its port once it has bound it; the workers adopt it a moment later."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(base + "/health", verify=ctx, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def h2_stream(url: str, cafile: Path, body: dict[str, Any], sni: str | None = None,
              then_health: bool = True) -> dict[str, Any]:
    """POST a streamed chat call over HTTP/2 (in a thread); what arrived, and when.

    @param sni: the server name to send (and verify) when ``url`` names an address.
    """
    ctx = ssl.create_default_context(cafile=str(cafile))
    out: dict[str, Any] = {"lines": [], "times": []}
    ext = {"sni_hostname": sni} if sni else None
    with httpx.Client(http2=True, verify=ctx, timeout=15) as client, \
            client.stream("POST", url, json=body, headers={"authorization": "Bearer ck"}, extensions=ext) as r:
        out["version"], out["status"] = r.http_version, r.status_code
        out["content_type"] = r.headers.get("content-type")
        for line in r.iter_lines():
            if line.startswith("data:"):
                out["lines"].append(line[5:].strip())
                out["times"].append(time.monotonic())
        if then_health:  # a second call on the same connection: h2 multiplexes it
            out["health"] = client.get(url.rsplit("/v1/", 1)[0] + "/health", extensions=ext).http_version
    return out


def _text(lines: list[str]) -> str:
    parts = []
    for d in lines:
        if d != "[DONE]":
            for ch in orjson.loads(d).get("choices") or []:
                parts.append((ch.get("delta") or {}).get("content") or "")
    return "".join(parts)


def _assert_streamed_over_h2(got: dict[str, Any]) -> None:
    assert got["version"] == "HTTP/2", got["version"]
    assert got["status"] == 200 and got["content_type"].startswith("text/event-stream"), got
    assert got["lines"][-1] == "[DONE]", got["lines"][-3:]
    assert _text(got["lines"]) == WORDS
    assert len(got["lines"]) >= 20, "one data line per word: streamed, not collected"
    spread = got["times"][-2] - got["times"][0]
    assert spread > 0.2, f"the chunks arrived together ({spread:.3f}s): not streamed"
    assert got["health"] == "HTTP/2"


# --------------------------------------------------------------------------- listeners
@pytest_twisted.ensureDeferred
async def test_h2_client_streams_a_completion_over_ssl_listener(launcher: Launcher) -> None:
    cert, key = self_signed(launcher.cwd)
    gw = await launcher.start(CONFIG, listen=_ssl_listen(cert, key))
    got = await threads.deferToThread(h2_stream, f"https://127.0.0.1:{gw.port}/v1/chat/completions", cert,
                                      chat_body(stream=True))
    _assert_streamed_over_h2(got)

    def http11() -> str:  # a client without h2 still gets HTTP/1.1
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert)), timeout=5) as c:
            return c.get(f"https://127.0.0.1:{gw.port}/health").http_version

    assert await threads.deferToThread(http11) == "HTTP/1.1"
    assert await gw.terminate(), gw.output
    assert "Traceback" not in gw.output, gw.output  # h2 connections closed, not cut


@pytest_twisted.ensureDeferred
async def test_sigterm_drains_a_running_h2_stream(reactor: Any, launcher: Launcher) -> None:
    cert, key = self_signed(launcher.cwd)
    gw = await launcher.start(CONFIG.replace("mock_delay = 0.02", "mock_delay = 0.08"), listen=_ssl_listen(cert, key))
    streaming = threads.deferToThread(h2_stream, f"https://127.0.0.1:{gw.port}/v1/chat/completions", cert,
                                      chat_body(stream=True), None, False)
    await deferLater(reactor, 0.6, lambda: None)  # a few words in (20 words take 1.6 s)
    gw.signal(signal.SIGTERM)
    got = await streaming
    await gw.exited(10)
    assert got["lines"][-1] == "[DONE]" and _text(got["lines"]) == WORDS, got["lines"][-3:]
    assert gw.stopped_cleanly and "Traceback" not in gw.output, gw.output


@pytest_twisted.ensureDeferred
async def test_h2_over_tls_certificate_directory_with_sni(launcher: Launcher) -> None:
    certs = launcher.cwd / "certs"
    certs.mkdir()
    cert, key = self_signed(launcher.cwd)  # names localhost (DNS) and 127.0.0.1
    (certs / "localhost.pem").write_bytes(key.read_bytes() + cert.read_bytes())
    listen = f"tls:{quoteStringArgument(str(certs))}:port=0:interface={quoteStringArgument('::1')}"
    gw = await launcher.start(CONFIG, listen=listen)
    got = await threads.deferToThread(h2_stream, f"https://[::1]:{gw.port}/v1/chat/completions", cert,
                                      chat_body(stream=True), "localhost")
    _assert_streamed_over_h2(got)
    assert await gw.terminate(), gw.output
    assert "Traceback" not in gw.output, gw.output  # h2 connections closed, not cut


@pytest_twisted.ensureDeferred
async def test_h2_over_ssl_with_two_workers(launcher: Launcher) -> None:
    cert, key = self_signed(launcher.cwd)
    args = ["-n", "--pidfile=", "fproxy", "--config", str(launcher.write("fproxy.toml", CONFIG)),
            "--workers", "2", "--listen", _ssl_listen(cert, key)]
    gw = launcher.spawn(args)
    await gw.listening(10)
    await threads.deferToThread(wait_workers_serving, f"https://127.0.0.1:{gw.port}", cert)
    got = await threads.deferToThread(h2_stream, f"https://127.0.0.1:{gw.port}/v1/chat/completions", cert,
                                      chat_body(stream=True))
    _assert_streamed_over_h2(got)
    assert await gw.terminate(15), gw.output
    assert "Traceback" not in gw.output, gw.output


@pytest_twisted.ensureDeferred
async def test_tls_below_1_2_is_refused(launcher: Launcher) -> None:
    cert, key = self_signed(launcher.cwd)
    gw = await launcher.start(CONFIG, listen=_ssl_listen(cert, key))

    def handshake(maximum: ssl.TLSVersion) -> str:
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = maximum
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        import socket

        try:
            with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                return str(tls.version())
        except (ssl.SSLError, ConnectionResetError) as e:
            return f"refused: {e}"

    assert await threads.deferToThread(handshake, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    old = await threads.deferToThread(handshake, ssl.TLSVersion.TLSv1_1)
    assert old.startswith("refused"), old
    assert await gw.terminate(), gw.output
    assert "Traceback" not in gw.output, gw.output  # h2 connections closed, not cut


@pytest_twisted.ensureDeferred
async def test_bad_tls_directory_refused_at_start(launcher: Launcher) -> None:
    empty = launcher.cwd / "nocerts"
    empty.mkdir()
    proc = await launcher.run(["-n", "--pidfile=", "fproxy", "--config", str(launcher.write("f.toml", CONFIG)),
                               "--listen", f"tls:{quoteStringArgument(str(empty))}:port=0"])
    assert proc.exit_code == 1, proc.output
    assert "configuration error: listen:" in proc.err.decode() and "no .pem file" in proc.err.decode(), proc.output


# --------------------------------------------------------------------------- upstream TLS
def _post(url: str) -> httpx.Response:
    with httpx.Client(timeout=15) as c:
        return c.post(url + "/v1/chat/completions", json=chat_body("gpt-4o-mini"),
                      headers={"authorization": "Bearer ck"})


@pytest_twisted.ensureDeferred
async def test_upstream_tls_verified_against_ca_file(reactor: Any, tmp_path: Path) -> None:
    ca = TestCA.create(tmp_path)
    cert, key = ca.issue(tmp_path, "upstream", dns=["localhost"], ips=["127.0.0.1"])
    fake = await start_tls_fake(reactor, cert, key, keys=["sk-up"])
    assert fake.base_url.startswith("https://127.0.0.1:")
    (tmp_path / "other").mkdir()
    other_ca = TestCA.create(tmp_path / "other", "another CA")
    gateways = []
    try:
        good = await start_gateway(reactor, {"access": {"keys": ["ck"]}, "provider": [
            provider("up", "openai-chat", fake.base_url, ["sk-up"], models=["gpt-4o-mini"],
                     ca_file=str(ca.cert_path))]})
        gateways.append(good)
        r = await threads.deferToThread(_post, good.url)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "Echo: hello"
        assert len(fake.requests) == 1

        # the system trust store, or another CA: the certificate is not trusted, nothing is sent
        for extra in ({}, {"ca_file": str(other_ca.cert_path)}):
            gw = await start_gateway(reactor, {"access": {"keys": ["ck"]}, "provider": [
                provider("up", "openai-chat", fake.base_url, ["sk-up"], models=["gpt-4o-mini"], **extra)]})
            gateways.append(gw)
            r = await threads.deferToThread(_post, gw.url)
            assert r.status_code == 502, r.text
            assert len(fake.requests) == 1, "no request may reach an unverified upstream"
    finally:
        for gw in gateways:
            await gw.stop()
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_upstream_tls_checks_the_name_in_the_certificate(reactor: Any, tmp_path: Path) -> None:
    ca = TestCA.create(tmp_path)
    cert, key = ca.issue(tmp_path, "elsewhere", dns=["upstream.example"])  # does not name 127.0.0.1
    fake = await start_tls_fake(reactor, cert, key)
    try:
        gw = await start_gateway(reactor, {"access": {"keys": ["ck"]}, "provider": [
            provider("up", "openai-chat", fake.base_url, ["sk-up"], models=["gpt-4o-mini"],
                     ca_file=str(ca.cert_path))]})
        try:
            r = await threads.deferToThread(_post, gw.url)
            assert r.status_code == 502, r.text
            assert fake.requests == []
        finally:
            await gw.stop()
    finally:
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_missing_ca_file_is_a_configuration_error(launcher: Launcher) -> None:
    fake_url = "https://127.0.0.1:9/v1"
    config = (CONFIG + f'[[provider]]\nname = "up"\ndialect = "openai-chat"\nbase_url = "{fake_url}"\n'
              f'keys = ["k"]\nca_file = "{launcher.cwd / "nope.pem"}"\n')
    for extra in ([], ["--workers", "2"]):
        proc = await launcher.run(["-n", "--pidfile=", "fproxy", "--config", str(launcher.write("f.toml", config)),
                                   "--listen", "tcp:0:interface=127.0.0.1", *extra])
        assert proc.exit_code == 1, proc.output
        err = proc.err.decode()
        assert 'provider "up": ca_file: cannot read' in err and "nope.pem" in err, proc.output
