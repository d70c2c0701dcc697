"""Real Redis, PostgreSQL and nginx for the scale-out tests.

- `RedisServer`: a private ``redis-server`` on a free loopback port, no persistence, in a
  directory of the test's own; `stop` / `start` again simulate an outage (the machine's
  shared server on 6379 is never touched).
- `postgres_database`: a database ``fproxy_test_<random>`` on the machine's PostgreSQL
  (127.0.0.1:5432, trust auth; ``FPROXY_TEST_POSTGRES`` overrides the admin URL), dropped after.
- `Nginx`: Debian's nginx with a generated config (round robin over the given ports, no
  retries on another upstream, ``X-Upstream`` naming the instance that answered).

When a service is missing the tests are skipped - except under ``CI=true``, where they fail:
CI has these services and must run the tests.
"""
from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.loopback import free_port

NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str) -> None:
    """Skip (fail under CI=true) a test whose service is missing."""
    if in_ci():
        pytest.fail(f"{reason} - CI=true, so this is a failure, not a skip")
    pytest.skip(reason)


def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


# ------------------------------------------------------------------ Redis
class RedisServer:
    """A ``redis-server`` of the test's own: `start`, `stop`, `start` again on the same port."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.binary = shutil.which("redis-server")
        self.directory = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        if self.binary is None:
            unavailable("redis-server is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--logfile", str(self.directory / "redis.log"), "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"redis-server did not start on {self.port}: {self.log()}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """One command, answered in RESP (for assertions: ``KEYS``, ``DBSIZE``...)."""
        payload = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(payload)
            time.sleep(0.05)
            return s.recv(65536)

    def stop(self) -> None:
        """SIGTERM and wait: clients see their connections closed, as when Redis goes down."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------ PostgreSQL
def _admin_urls() -> list[str]:
    env = os.environ.get("FPROXY_TEST_POSTGRES")
    if env:
        return [env]
    return ["postgresql://postgres@127.0.0.1:5432/postgres", f"postgresql://{getpass.getuser()}@127.0.0.1:5432/postgres"]


def postgres_admin_url() -> str | None:
    """An admin URL that connects, or None (no server, no psycopg, no usable role)."""
    try:
        import psycopg
    except ImportError:
        return None
    for url in _admin_urls():
        try:
            with psycopg.connect(url, connect_timeout=3):
                return url
        except psycopg.Error:
            continue
    return None


def _with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database of the test's own; yields its URL; dropped afterwards."""
    admin = postgres_admin_url()
    if admin is None:
        unavailable("no PostgreSQL server reachable on 127.0.0.1:5432 (set FPROXY_TEST_POSTGRES to an admin URL)")
    import psycopg

    name = "fproxy_test_" + secrets.token_hex(6)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_db(admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_query(url: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Run one query (blocking: from a thread, or outside the reactor)."""
    import psycopg

    with psycopg.connect(url) as conn:
        return list(conn.execute(sql, args).fetchall())


# ------------------------------------------------------------------ nginx
NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
{user}pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream fproxy {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fproxy;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_read_timeout 120s;
            proxy_next_upstream off;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return next((p for p in NGINX_PATHS if os.access(p, os.X_OK)), None) or shutil.which("nginx")


class Nginx:
    """nginx in front of ``ports`` (round robin), on a free port of its own."""

    def __init__(self, directory: Path, ports: list[int]) -> None:
        self.binary = nginx_binary()
        self.directory = directory
        self.ports = ports
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        if self.binary is None:
            unavailable("nginx is not installed (apt-get install nginx)")
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=0;" for p in self.ports)
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = d / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=d, servers=servers, port=self.port, user=user))
        with open(d / "stderr.log", "wb") as stderr:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([self.binary, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        if not wait_port(self.port, timeout):
            self.stop()
            raise AssertionError(f"nginx did not start: {self.log()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def log(self) -> str:
        out = []
        for name in ("stderr.log", "error.log"):
            path = self.directory / name
            if path.exists():
                out.append(path.read_text(errors="replace")[-2000:])
        return "\n".join(out)
