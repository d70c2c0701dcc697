"""fproxy.workers: the worker command line, restarts with back-off, SIGHUP forwarding (no real processes)."""
from __future__ import annotations

import signal
import sys
from typing import Any

from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from fproxy import workers
from fproxy.workers import WorkersService, child_argv, is_memory_state


def test_child_argv_adopts_instead_of_listening():
    argv = ["twistd", "-n", "--pidfile=/run/x.pid", "--logger=fproxy.logs.json_observer", "fproxy",
            "--config", "f.toml", "--workers", "3", "--listen", "tcp:8001", "--listen=ssl:8443:privateKey=k"]
    out = child_argv(argv, ["3:tcp:8001", "4:ssl:8443:privateKey=k"])
    assert out[0] == sys.executable and out[1] == "-c"
    rest = out[3:]
    assert rest == ["-n", "--pidfile=", "--logger=fproxy.logs.json_observer", "fproxy", "--config", "f.toml",
                    "--adopt", "3:tcp:8001", "--adopt", "4:ssl:8443:privateKey=k"]


def test_memory_state_urls():
    assert is_memory_state("memory:") and is_memory_state("") and is_memory_state(" memory ")
    assert not is_memory_state("redis://localhost:6379/0")


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, sig: str) -> None:
        self.signals.append(sig)


class FakeReactor(Clock):
    """A Clock that records spawnProcess calls."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str], dict[str, str], FakeProcess]] = []

    def spawnProcess(self, proto: Any, exe: str, argv: list[str], env: dict[str, str], childFDs: Any) -> FakeProcess:
        proc = FakeProcess(1000 + len(self.spawned))
        self.spawned.append((proto, argv, env, proc))
        return proc


def _service(n: int = 2) -> tuple[WorkersService, FakeReactor]:
    reactor = FakeReactor()
    svc = WorkersService(reactor, n, (), ["twistd", "-n", "fproxy", "--workers", str(n)], 1.0)
    for i in range(n):
        svc._spawn(i)
    return svc, reactor


def _die(reactor: FakeReactor, index: int) -> None:
    proto = [p for p, _, env, _ in reactor.spawned if env["FPROXY_WORKER_INDEX"] == str(index)][-1]
    proto.processEnded(Failure(ProcessTerminated(signal=9)))


def test_worker_env_tells_its_index_the_count_and_the_parent():
    import os

    _, reactor = _service(2)
    envs = [env for _, _, env, _ in reactor.spawned]
    assert [e["FPROXY_WORKER_INDEX"] for e in envs] == ["0", "1"]
    assert {e["FPROXY_WORKERS"] for e in envs} == {"2"} and {e["FPROXY_PARENT_PID"] for e in envs} == {str(os.getpid())}


def test_dead_worker_restarted_with_backoff_while_it_keeps_dying_at_start():
    svc, reactor = _service(2)
    delays = []
    for _ in range(7):
        before = len(reactor.spawned)
        _die(reactor, 1)
        waited = 0.0
        while len(reactor.spawned) == before:
            reactor.advance(0.5)
            waited += 0.5
        delays.append(waited)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0], delays
    reactor.advance(workers.SHORT_LIFE + 1)  # this one lives: the next death restarts after 1 s again
    before = len(reactor.spawned)
    _die(reactor, 1)
    reactor.advance(1.0)
    assert len(reactor.spawned) == before + 1


def test_no_restart_once_stopping_and_sighup_forwarded_to_live_workers():
    saved = signal.getsignal(signal.SIGHUP)
    try:
        svc, reactor = _service(3)
        _die(reactor, 2)
        svc.reload_all()
        assert [proc.signals for _, _, _, proc in reactor.spawned] == [["HUP"], ["HUP"], []]
        svc.stopService()
        assert [proc.signals for _, _, _, proc in reactor.spawned] == [["HUP", "TERM"], ["HUP", "TERM"], []]
        reactor.advance(60)
        assert len(reactor.spawned) == 3, "no restart while stopping"
    finally:
        signal.signal(signal.SIGHUP, saved)
