"""``twistd -n fproxy --workers 2`` (issue 6, item 3), as a real subprocess tree.

- both workers serve the one listening socket (distinct pids in ``x-fproxy-pid``);
- a worker killed with SIGKILL is replaced by a new one, the socket never stops serving;
- SIGTERM to the parent stops every worker after it has drained: a stream running at that
  moment completes, and every request a surviving worker answered is in the usage ledger;
- SIGHUP to the parent reaches every worker (live reload);
- with ``memory:`` state each worker enforces ``limit // 2`` of a key's RPM, and the parent's
  start-up log says so;
- a worker whose parent died (SIGKILL) stops by itself.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest_twisted
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from tests.integration.twistd_support import LOOPBACK, Launcher, TwistdProcess, chat_body

WORDS = " ".join(f"w{i}" for i in range(1, 41))
CONFIG = """
[access]
keys = ["ck"]
admin_keys = ["ak"]
[store]
url = "sqlite:{db}"
[[provider]]
name = "demo"
dialect = "mock"
models = ["fproxy-demo"]
mock_reply = "{reply}"
mock_delay = {delay}
"""


@pytest_twisted.async_yield_fixture
async def launcher(reactor: Any, tmp_path: Path) -> AsyncIterator[Launcher]:
    lau = Launcher(reactor, tmp_path)
    try:
        yield lau
    finally:
        await lau.cleanup()


def _config(tmp: Path, reply: str = "hello there", delay: float = 0.0) -> str:
    return CONFIG.format(db=tmp / "fproxy.db", reply=reply, delay=delay)


async def _start_workers(launcher: Launcher, config: str, n: int = 2) -> TwistdProcess:
    path = launcher.write("fproxy.toml", config)
    gw = launcher.spawn(["-n", "--pidfile=", "fproxy", "--config", str(path), "--workers", str(n),
                         "--listen", LOOPBACK])
    await gw.listening(10)
    return gw


def _chat(url: str, key: str = "ck", body: dict[str, Any] | None = None) -> tuple[int, str, str, str]:
    """One call on a new connection: (status, worker pid, request id, reply text or error code)."""
    with httpx.Client(timeout=10) as c:
        r = c.post(url + "/v1/chat/completions", json=body or chat_body(), headers={"authorization": f"Bearer {key}"})
    text = r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.json()["error"].get("code")
    return r.status_code, r.headers.get("x-fproxy-pid", ""), r.headers.get("x-request-id", ""), text


async def _calls(url: str, n: int, **kw: Any) -> list[tuple[int, str, str, str]]:
    out = []
    for _ in range(n):
        out.append(await threads.deferToThread(_chat, url, **kw))
    return out


async def _calls_from_both(url: str, n: int, limit: int = 300) -> list[tuple[int, str, str, str]]:
    """At least ``n`` calls, and more (up to ``limit``) until two workers have answered: which
    process accepts a connection on the shared socket is the kernel's choice, and on a busy
    2-core machine one worker can win many accepts in a row."""
    out = await _calls(url, n)
    while len({p for _, p, _, _ in out}) < 2 and len(out) < limit:
        out.extend(await _calls(url, 5))
    return out


async def _until(reactor: Any, predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await deferLater(reactor, 0.1, lambda: None)


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone: an orphan's reaper may be slow)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # reading a process being reaped gives ESRCH
        return False
    return state not in ("Z", "X")


def _ledger(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT request_id FROM usage_records")}


def _stream_with_id(url: str, first: Any, reactor: Any) -> dict[str, Any]:
    """A streamed call read line by line (in a thread); tells the reactor when the first data arrives."""
    out: dict[str, Any] = {"data": []}
    with httpx.Client(timeout=20) as c, c.stream("POST", url + "/v1/chat/completions", json=chat_body(stream=True),
                                                 headers={"authorization": "Bearer ck"}) as r:
        out["status"], out["pid"], out["id"] = r.status_code, r.headers.get("x-fproxy-pid"), r.headers.get("x-request-id")
        for line in r.iter_lines():
            if line.startswith("data:"):
                if not out["data"]:
                    reactor.callFromThread(first.callback, None)
                out["data"].append(line[5:].strip())
    return out


# --------------------------------------------------------------------------- serve, replace, stop
@pytest_twisted.ensureDeferred
async def test_two_workers_serve_one_killed_is_replaced_sigterm_stops_all(reactor: Any, launcher: Launcher) -> None:
    gw = await _start_workers(launcher, _config(launcher.cwd, WORDS, 0.03))
    served = await _calls_from_both(gw.url, 30)
    assert all(s == 200 and t == WORDS for s, _, _, t in served), served
    pids = {p for _, p, _, _ in served}
    assert len(pids) == 2, f"both workers must serve: {pids}\n{gw.output}"
    assert gw.pid is not None and str(gw.pid) not in pids, "the parent must not serve"

    victim = int(sorted(pids)[0])
    try:
        os.kill(victim, signal.SIGKILL)
    except ProcessLookupError:
        raise AssertionError(f"worker {victim} served, then was gone before the test killed it\n{gw.output}") from None
    await _until(reactor, lambda: not _alive(victim), 5, "the killed worker to go")
    replaced = set()

    async def new_pid_seen() -> None:
        while True:
            s, p, _, _ = await threads.deferToThread(_chat, gw.url)
            assert s == 200, "the socket keeps serving while a worker is replaced"
            served.append((s, p, "", ""))
            if p not in pids:
                replaced.add(p)
                return

    d = Deferred.fromCoroutine(new_pid_seen())
    d.addTimeout(10, reactor)
    await d
    assert "worker 0 exited" in gw.output or "worker 1 exited" in gw.output, gw.output
    after = await _calls(gw.url, 20)
    after_pids = {p for _, p, _, _ in after}
    assert str(victim) not in after_pids and after_pids <= (pids | replaced), after_pids
    workers_now = {int(p) for p in (pids | replaced) if p != str(victim)}

    # a stream runs when SIGTERM comes: it completes, then everything stops
    first: Deferred[None] = Deferred()
    streaming = threads.deferToThread(_stream_with_id, gw.url, first, reactor)
    first.addTimeout(5, reactor)
    await first
    gw.signal(signal.SIGTERM)
    stream = await streaming
    await gw.exited(20)
    assert gw.stopped_cleanly, gw.output
    assert stream["status"] == 200 and stream["data"][-1] == "[DONE]", stream["data"][-3:]
    assert not any(_alive(p) for p in workers_now), "every worker must be gone with the parent"

    expected = {rid for s, p, rid, _ in served + after if rid and p != str(victim)} | {stream["id"]}
    ledger = _ledger(launcher.cwd / "fproxy.db")
    missing = expected - ledger
    assert not missing, f"{len(missing)} of {len(expected)} records lost on SIGTERM\n{gw.output}"


@pytest_twisted.ensureDeferred
async def test_sighup_to_the_parent_reloads_every_worker(reactor: Any, launcher: Launcher) -> None:
    gw = await _start_workers(launcher, _config(launcher.cwd, "before"))
    served = await _calls_from_both(gw.url, 10)
    assert {t for _, _, _, t in served} == {"before"} and len({p for _, p, _, _ in served}) == 2, served
    launcher.write("fproxy.toml", _config(launcher.cwd, "after"))
    gw.signal(signal.SIGHUP)
    await _until(reactor, lambda: gw.output.count("configuration reloaded from") >= 2, 5, "both workers reloading")
    served = await _calls(gw.url, 10)
    assert {t for _, _, _, t in served} == {"after"}, served
    assert gw.pid is not None and _alive(gw.pid), "SIGHUP must not stop the parent"

    # POST /api/reload on one worker reaches both (through the parent)
    launcher.write("fproxy.toml", _config(launcher.cwd, "again"))

    def reload() -> httpx.Response:
        return httpx.post(gw.url + "/api/reload", headers={"authorization": "Bearer ak"}, timeout=10)

    r = await threads.deferToThread(reload)
    assert r.status_code == 200 and r.json()["scope"] == "all 2 workers (signalled)", r.text
    await _until(reactor, lambda: gw.output.count("configuration reloaded from") >= 4, 5, "both workers reloading")
    served = await _calls_from_both(gw.url, 10)
    assert {t for _, _, _, t in served} == {"again"} and len({p for _, p, _, _ in served}) == 2, served
    assert await gw.terminate(15), gw.output


# --------------------------------------------------------------------------- limits with memory state
@pytest_twisted.ensureDeferred
async def test_memory_state_divides_key_limits_among_workers(reactor: Any, launcher: Launcher) -> None:
    gw = await _start_workers(launcher, _config(launcher.cwd))
    assert "each of the 2 workers counts per-key limits on its own" in gw.output, gw.output

    def create() -> httpx.Response:
        return httpx.post(gw.url + "/api/keys", json={"name": "limited", "rpm": 4},
                          headers={"authorization": "Bearer ak"}, timeout=10)

    r = await threads.deferToThread(create)
    assert r.status_code == 201, r.text
    key = r.json()["key"]

    def known_by(k: str) -> str | None:  # /v1/models takes no rate-limit slot
        resp = httpx.get(gw.url + "/v1/models", headers={"authorization": f"Bearer {k}"}, timeout=5)
        return resp.headers.get("x-fproxy-pid") if resp.status_code == 200 else None

    seen: set[str] = set()

    async def both_know() -> None:
        while len(seen) < 2:
            pid = await threads.deferToThread(known_by, key)
            if pid:
                seen.add(pid)

    d = Deferred.fromCoroutine(both_know())
    d.addTimeout(10, reactor)
    await d
    results = await _calls(gw.url, 16, key=key)
    ok_by_pid: dict[str, int] = {}
    for status, pid, _, text in results:
        assert status in (200, 429), (status, text)
        if status == 200:
            ok_by_pid[pid] = ok_by_pid.get(pid, 0) + 1
        else:
            assert text == "rpm_exceeded"
    assert all(n <= 2 for n in ok_by_pid.values()), f"each worker may allow 4 // 2 = 2: {ok_by_pid}"
    assert 2 <= sum(ok_by_pid.values()) <= 4, ok_by_pid
    assert await gw.terminate(15), gw.output


# --------------------------------------------------------------------------- orphans
@pytest_twisted.ensureDeferred
async def test_workers_stop_when_the_parent_is_killed(reactor: Any, launcher: Launcher) -> None:
    gw = await _start_workers(launcher, _config(launcher.cwd))
    pids = {int(p) for _, p, _, _ in await _calls_from_both(gw.url, 12)}
    assert len(pids) == 2
    assert gw.pid is not None
    os.kill(gw.pid, signal.SIGKILL)  # the parent only: its workers are left behind
    await gw.exited(5)
    await _until(reactor, lambda: not any(_alive(p) for p in pids), 10, "orphaned workers to stop")
