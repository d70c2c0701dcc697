"""Running the real ``twistd fproxy`` as a subprocess from a pytest-twisted test.

The child is spawned with ``reactor.spawnProcess`` so the test's reactor keeps serving the
fake upstreams while the gateway talks to them.  Blocking clients (httpx, the openai SDK)
run in ``threads.deferToThread``.  The child makes itself a session leader (``os.setsid()``)
so a cleanup can kill its whole process group.

    launcher = Launcher(reactor, tmp_path)
    try:
        gw = await launcher.start(config=CONFIG_TEXT)
        ...  # talk to gw.url over loopback
        await gw.terminate()
    finally:
        await launcher.cleanup()
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import orjson
from twisted.internet import threads
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

CHECKOUT = str(Path(__file__).resolve().parents[2])
#: the command of the brief, plus os.setsid() so the child leads its own process group
TWISTD_CODE = ("import os, sys; os.setsid(); sys.argv[0] = 'twistd'; "
               "from twisted.scripts.twistd import run; run()")
LOOPBACK = "tcp:0:interface=127.0.0.1"
_PORT_LINE = re.compile(rb"FproxySite(?: \(TLS\))? starting on (\d+)")


def child_env(**extra: str) -> dict[str, str]:
    """A small, predictable environment: nothing from the developer's shell that fproxy reads
    (no OPENAI_API_KEY, FPROXY_KEY, ...), plus PYTHONPATH so the plugin is found."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT") if k in os.environ}
    env.update(PYTHONPATH=CHECKOUT, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    env.update(extra)
    return env


class TwistdProcess(ProcessProtocol):
    """One twistd child: collects its output, finds its port, reports its exit."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.out = bytearray()
        self.err = bytearray()
        self.port: int | None = None
        self.exit_code: int | None = None
        self.exit_signal: int | None = None
        self.ended_at: float | None = None
        self._port_waiters: list[Deferred[int]] = []
        self._end_waiters: list[Deferred[int | None]] = []

    # -------------------------------------------------------------- ProcessProtocol
    def outReceived(self, data: bytes) -> None:
        self.out += data
        self._look_for_port()

    def errReceived(self, data: bytes) -> None:
        self.err += data
        self._look_for_port()

    def processEnded(self, reason: Failure) -> None:
        self.ended_at = time.monotonic()
        if reason.check(ProcessDone):
            self.exit_code = 0
        elif reason.check(ProcessTerminated):
            self.exit_code = reason.value.exitCode
            self.exit_signal = reason.value.signal
        waiters, self._end_waiters = self._end_waiters, []
        for d in waiters:
            d.callback(self.exit_code)
        port_waiters, self._port_waiters = self._port_waiters, []
        for d in port_waiters:
            d.errback(AssertionError(f"twistd exited (code {self.exit_code}, signal {self.exit_signal}) "
                                     f"before listening\n{self.output}"))

    # -------------------------------------------------------------- queries
    @property
    def pid(self) -> int | None:
        return self.transport.pid if self.transport is not None else None  # type: ignore[union-attr]

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    @property
    def stopped_cleanly(self) -> bool:
        """Ended after an orderly shutdown.

        twistd stopped by SIGTERM runs its shutdown, logs "Server Shut Down." and then kills
        itself with the same signal (twisted.scripts.twistd.runApp -> app._exitWithSignal), so
        the exit status reports the signal, as init systems expect; exit code 0 counts too.
        """
        if self.exit_code == 0:
            return True
        return self.exit_signal == signal.SIGTERM and b"Server Shut Down." in self.out + self.err

    @property
    def output(self) -> str:
        """stdout and stderr as text, for assertion messages."""
        return (f"--- stdout ---\n{self.out.decode('utf-8', 'replace')}"
                f"--- stderr ---\n{self.err.decode('utf-8', 'replace')}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _look_for_port(self) -> None:
        if self.port is not None:
            return
        m = _PORT_LINE.search(bytes(self.out)) or _PORT_LINE.search(bytes(self.err))
        if m is None:
            return
        self.port = int(m.group(1))
        waiters, self._port_waiters = self._port_waiters, []
        for d in waiters:
            d.callback(self.port)

    # -------------------------------------------------------------- waiting
    async def _within(self, d: Deferred[Any], seconds: float, what: str) -> Any:
        d.addTimeout(seconds, self.reactor)
        try:
            return await d
        except TimeoutError:
            raise AssertionError(f"twistd: {what} did not happen within {seconds}s\n{self.output}") from None

    async def listening(self, timeout: float = 8.0) -> int:
        """The port from the "FproxySite starting on N" log line."""
        if self.port is not None:
            return self.port
        if self.ended:
            raise AssertionError(f"twistd exited (code {self.exit_code}) before listening\n{self.output}")
        d: Deferred[int] = Deferred()
        self._port_waiters.append(d)
        return await self._within(d, timeout, "listening")  # type: ignore[no-any-return]

    async def exited(self, timeout: float = 8.0) -> int | None:
        """The exit code (None when killed by a signal), once the process has ended."""
        if self.ended:
            return self.exit_code
        d: Deferred[int | None] = Deferred()
        self._end_waiters.append(d)
        return await self._within(d, timeout, "exit")  # type: ignore[no-any-return]

    # -------------------------------------------------------------- signals
    def signal(self, sig: int) -> None:
        """Send ``sig`` to the twistd process itself."""
        if not self.ended and self.pid is not None:
            os.kill(self.pid, sig)

    async def terminate(self, timeout: float = 8.0) -> bool:
        """SIGTERM, then wait for the exit; returns L{stopped_cleanly}."""
        self.signal(signal.SIGTERM)
        await self.exited(timeout)
        return self.stopped_cleanly

    async def kill(self) -> None:
        """SIGKILL the whole process group and wait until the child is reaped."""
        if self.ended or self.pid is None:
            return
        pid = self.pid
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:  # not yet a group leader (setsid not run yet), or gone
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not self.ended:
            await self.exited(5.0)


class Launcher:
    """Starts twistd children in one directory; `cleanup` kills whatever still runs."""

    def __init__(self, reactor: Any, cwd: Path) -> None:
        self.reactor = reactor
        self.cwd = cwd
        self.children: list[TwistdProcess] = []

    def spawn(self, args: Iterable[str], env: dict[str, str] | None = None) -> TwistdProcess:
        """``python -c <twistd> ARGS`` with cwd = our directory."""
        proto = TwistdProcess(self.reactor)
        argv = [sys.executable, "-c", TWISTD_CODE, *args]
        self.reactor.spawnProcess(proto, sys.executable, argv, env=env if env is not None else child_env(),
                                  path=str(self.cwd))
        self.children.append(proto)
        return proto

    async def run(self, args: Iterable[str], env: dict[str, str] | None = None,
                  timeout: float = 8.0) -> TwistdProcess:
        """Run twistd to its end (for --help and refused configs)."""
        proc = self.spawn(args, env)
        await proc.exited(timeout)
        return proc

    async def start(self, config: str | Path | None = None, *, listen: str | None = LOOPBACK,
                    env: dict[str, str] | None = None, twistd_options: Iterable[str] = (),
                    timeout: float = 8.0) -> TwistdProcess:
        """``twistd -n --pidfile= [OPTIONS] fproxy [--config C] [--listen L]``, once listening.

        @param config: TOML text (written to ``fproxy.toml`` in our directory) or a path.
        """
        args = ["-n", "--pidfile=", *twistd_options, "fproxy"]
        if config is not None:
            path = config if isinstance(config, Path) else self.write("fproxy.toml", config)
            args += ["--config", str(path)]
        if listen is not None:
            args += ["--listen", listen]
        proc = self.spawn(args, env)
        await proc.listening(timeout)
        return proc

    def write(self, name: str, text: str) -> Path:
        path = self.cwd / name
        path.write_text(text, encoding="utf-8")
        return path

    async def cleanup(self) -> None:
        for proc in self.children:
            await proc.kill()


# ------------------------------------------------------------------ blocking clients (run in threads)
def chat_body(model: str = "fproxy-demo", stream: bool = False, text: str = "hello") -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def request(method: str, url: str, *, json: Any = None, headers: dict[str, str] | None = None,
            timeout: float = 8.0) -> Deferred[httpx.Response]:
    """One buffered httpx request, in a thread."""
    def go() -> httpx.Response:
        with httpx.Client(timeout=timeout) as client:
            return client.request(method, url, json=json, headers=headers)

    return threads.deferToThread(go)


class StreamLog:
    """What a streaming client saw: every SSE line with the time it arrived."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.lines: list[tuple[float, str]] = []
        self.ended_at: float | None = None
        self.error: BaseException | None = None

    @property
    def data(self) -> list[str]:
        """The payloads of the ``data:`` lines, in order."""
        return [line[5:].strip() for _, line in self.lines if line.startswith("data:")]

    def chunks(self) -> list[dict[str, Any]]:
        """Every data payload except ``[DONE]``, parsed (raises on a half-written JSON line)."""
        return [orjson.loads(d) for d in self.data if d != "[DONE]"]

    def text(self) -> str:
        """The concatenated ``delta.content`` of the chunks."""
        out = []
        for c in self.chunks():
            for choice in c.get("choices") or []:
                out.append((choice.get("delta") or {}).get("content") or "")
        return "".join(out)


def stream_sse(reactor: Any, url: str, body: dict[str, Any], headers: dict[str, str],
               on_first_data: Callable[[], None] | None = None, timeout: float = 15.0) -> Deferred[StreamLog]:
    """POST ``body`` and read the SSE answer line by line in a thread.

    ``on_first_data`` is called in the reactor thread when the first ``data:`` line arrives.
    Transport errors (the server cutting the stream) end the log instead of raising, so a
    test can look at what arrived before.
    """
    log = StreamLog()

    def go() -> StreamLog:
        notified = False
        try:
            with httpx.Client(timeout=timeout) as client, \
                    client.stream("POST", url, json=body, headers=headers) as response:
                log.status = response.status_code
                for line in response.iter_lines():
                    log.lines.append((time.monotonic(), line))
                    if not notified and line.startswith("data:") and on_first_data is not None:
                        notified = True
                        reactor.callFromThread(on_first_data)
        except httpx.TransportError as e:
            log.error = e
        log.ended_at = time.monotonic()
        return log

    return threads.deferToThread(go)


def refused_within(port: int, seconds: float) -> Deferred[float | None]:
    """Poll connecting to ``port``: seconds until a connection is refused, or None if never."""
    def go() -> float | None:
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    pass
            except ConnectionRefusedError:
                return time.monotonic() - start
            except OSError:
                pass
            time.sleep(0.02)
        return None

    return threads.deferToThread(go)


# ------------------------------------------------------------------ TLS material
def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
