"""``--workers N``: one parent binds the listening sockets, N children serve them.

The parent owns no gateway.  It binds each ``--listen`` / ``server.listen`` socket once (so
``tcp:0`` gives every worker the same port), starts N copies of the same ``twistd`` command
with ``--adopt FD:DESCRIPTION`` instead of ``--listen``, passes the sockets' descriptors
down (``spawnProcess`` ``childFDs``), restarts a worker that dies, and on SIGTERM stops
them all, each draining its own streams, before it exits.  Children adopt the sockets with
``IReactorSocket.adoptStreamPort``; an ``ssl:`` or ``tls:`` listener is adopted as TCP and
wrapped in TLS (with ALPN, so h2 works) in the child.  The kernel spreads connections over
the workers.

The parent forwards SIGHUP to every worker, so each re-reads the configuration
(`fproxy.reload`); a worker asked by ``POST /api/reload`` signals the parent (its pid is in
``FPROXY_PARENT_PID``).  A worker reads nothing from its stdin, a pipe from the parent: when
the parent dies without stopping it (SIGKILL), the pipe closes and the worker stops itself
rather than serve on as an orphan.

With ``memory:`` state each worker counts per-key limits on its own, so each enforces
``limit // N`` (``FPROXY_WORKERS`` tells it N; `fproxy.limits.keys.KeyLimits.divisor`).

Supported listener kinds here: ``tcp``, ``tcp6``, ``ssl``, ``tls`` and ``unix``.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

log = Logger()

BOOT = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
SHORT_LIFE = 10.0  # a worker that dies sooner than this after its start counts as failing to start
KINDS = ("tcp", "tcp6", "ssl", "tls", "unix")


def is_memory_state(url: str) -> bool:
    """Whether ``state.url`` keeps the limit counters in each process (nothing shared)."""
    return url.strip() in ("memory:", "memory", "")


class WorkerConfigError(ValueError):
    pass


def bind(description: str) -> socket.socket:
    """A bound, listening, inheritable socket for a strports description."""
    args, kw = endpoints._parse(description)  # Twisted's own strports tokenizer (handles escapes)
    kind = args[0]
    backlog = int(kw.get("backlog", 128))
    if kind in ("tcp", "tcp6", "ssl", "tls"):
        family = socket.AF_INET6 if kind in ("tcp6", "tls") else socket.AF_INET
        if kind == "tls":  # tls:DIRECTORY:port=N (Twisted's SNI endpoint: TCP6, dual stack, default 443)
            port = int(kw.get("port", 443))
        else:
            port = int(args[1]) if len(args) > 1 else int(kw.get("port", 0))
        interface = kw.get("interface", "::" if family == socket.AF_INET6 else "")
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((interface, port))
    elif kind == "unix":
        path = args[1] if len(args) > 1 else kw["address"]
        if os.path.exists(path):
            os.unlink(path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        if "mode" in kw:
            os.chmod(path, int(kw["mode"], 8))
    else:
        raise WorkerConfigError(f"listen: {description!r}: --workers supports tcp, tcp6, ssl, tls and unix listeners")
    s.listen(backlog)
    s.setblocking(False)  # shared by every worker: one that loses the accept race must not block in accept()
    s.set_inheritable(True)
    return s


def adopt(reactor: Any, fd: int, description: str, site: Any) -> Any:
    """In a worker: serve ``site`` on the inherited listening socket ``fd``."""
    args, kw = endpoints._parse(description)
    kind = args[0]
    family = {"tcp": socket.AF_INET, "ssl": socket.AF_INET, "tcp6": socket.AF_INET6, "tls": socket.AF_INET6,
              "unix": socket.AF_UNIX}[kind]
    from fproxy.tls import wrap_adopted

    factory = wrap_adopted(description, site)  # TLS (with ALPN) for ssl: and tls:
    os.set_blocking(fd, False)
    port = reactor.adoptStreamPort(fd, family, factory)
    os.close(fd)  # the port holds its own duplicate
    return port


def child_argv(argv: list[str], adopt_specs: list[str]) -> list[str]:
    """The worker's command line: the parent's twistd command with --adopt instead of --listen/--workers."""
    try:
        at = argv.index("fproxy")
    except ValueError:
        raise WorkerConfigError("--workers: cannot find the fproxy subcommand on the command line") from None
    twistd_opts = [a for a in argv[1:at] if not a.startswith("--pidfile") and a not in ("-n", "--nodaemon")]
    plugin: list[str] = []
    rest = argv[at + 1:]
    i = 0
    while i < len(rest):
        a = rest[i]
        if a in ("--workers", "-w", "--listen", "-l"):
            i += 2
            continue
        if a.startswith(("--workers=", "--listen=")):
            i += 1
            continue
        plugin.append(a)
        i += 1
    out = [sys.executable, "-c", BOOT, "-n", "--pidfile=", *twistd_opts, "fproxy", *plugin]
    for spec in adopt_specs:
        out += ["--adopt", spec]
    return out


class _Worker(ProcessProtocol):
    def __init__(self, parent: WorkersService, index: int, started: float) -> None:
        self.parent = parent
        self.index = index
        self.started = started
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)
        self.parent.worker_ended(self, reason)


class WorkersService(MultiService):
    """The parent process of ``--workers N``."""

    def __init__(self, reactor: Any, n: int, listen: tuple[str, ...], argv: list[str], grace: float,
                 state_url: str = "memory:") -> None:
        super().__init__()
        self.reactor = reactor
        self.n = n
        self.listen = listen
        self.argv = argv
        self.grace = grace
        self.state_url = state_url
        self.sockets: list[socket.socket] = []
        self.workers: dict[int, tuple[_Worker, Any]] = {}
        self.quick_deaths: dict[int, int] = {}
        self.stopping = False

    def privilegedStartService(self) -> None:
        for desc in self.listen:
            try:
                self.sockets.append(bind(desc))
            except OSError as e:
                sys.stderr.write(f"fproxy: cannot listen on {desc!r}: {e}\n")
                raise SystemExit(1) from None
        super().privilegedStartService()

    def ports(self) -> list[Any]:
        return [s.getsockname() for s in self.sockets]

    def startService(self) -> None:
        super().startService()
        if self.n > 1 and is_memory_state(self.state_url):
            log.warn("state.url is memory: each of the {n} workers counts per-key limits on its own, so rpm, tpm "
                     "and concurrency limits are divided among them (limit // {n} per worker, at least 1); "
                     "set state.url to a Redis server for exact limits", n=self.n)
        for s, desc in zip(self.sockets, self.listen, strict=True):
            addr = s.getsockname()
            log.info("fproxy parent {pid}: listening on {desc} ({addr}) for {n} workers", pid=os.getpid(), desc=desc,
                     addr=addr, n=self.n)
            # the line tests and operators look for, as the single-process gateway prints it
            if isinstance(addr, tuple):
                log.info("FproxySite starting on {port}", port=addr[1])
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload_all))
        for i in range(self.n):
            self._spawn(i)

    def reload_all(self) -> None:
        """SIGHUP: every worker re-reads the configuration (each logs whether it took it)."""
        live = [(proto, proc) for proto, proc in self.workers.values() if not proto.ended.called]
        log.info("SIGHUP: asking {n} worker(s) to reload the configuration", n=len(live))
        for proto, proc in live:
            try:
                proc.signalProcess("HUP")
            except OSError as e:  # exited a moment ago: its replacement reads the file anew anyway
                log.warn("worker {index}: cannot signal it ({error})", index=proto.index, error=e)

    def _spawn(self, index: int) -> None:
        fds: dict[int, Any] = {0: "w", 1: 1, 2: 2}
        specs = []
        for j, (s, desc) in enumerate(zip(self.sockets, self.listen, strict=True)):
            child_fd = 3 + j
            fds[child_fd] = s.fileno()
            specs.append(f"{child_fd}:{desc}")
        argv = child_argv(self.argv, specs)
        env = dict(os.environ, FPROXY_WORKER_INDEX=str(index), FPROXY_WORKERS=str(self.n),
                   FPROXY_PARENT_PID=str(os.getpid()))
        proto = _Worker(self, index, self.reactor.seconds())
        proc = self.reactor.spawnProcess(proto, sys.executable, argv, env=env, childFDs=fds)
        self.workers[index] = (proto, proc)
        log.info("worker {index} started (pid {pid})", index=index, pid=proc.pid)

    def worker_ended(self, proto: _Worker, reason: Any) -> None:
        current = self.workers.get(proto.index)
        if current is None or current[0] is not proto:
            return
        if self.stopping:
            return
        if self.reactor.seconds() - proto.started < SHORT_LIFE:
            self.quick_deaths[proto.index] = self.quick_deaths.get(proto.index, 0) + 1
        else:
            self.quick_deaths[proto.index] = 0
        # 1 s, then doubling while it keeps dying at start (a database down...), at most 30 s
        delay = min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** max(0, self.quick_deaths[proto.index] - 1))
        log.warn("worker {index} exited ({reason}); restarting it in {delay:g}s", index=proto.index,
                 reason=reason.getErrorMessage(), delay=delay)
        self.reactor.callLater(delay, self._respawn, proto.index, proto)

    def _respawn(self, index: int, old: _Worker) -> None:
        if not self.stopping and self.workers.get(index, (None,))[0] is old:
            self._spawn(index)

    def stopService(self) -> Deferred[None]:
        self.stopping = True
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        super().stopService()
        return Deferred.fromCoroutine(self._stop_all())

    async def _stop_all(self) -> None:
        from twisted.internet.defer import DeferredList, TimeoutError

        pending = []
        for proto, proc in self.workers.values():
            if not proto.ended.called:
                try:
                    proc.signalProcess("TERM")
                except OSError:
                    continue
                pending.append(proto.ended)
        if pending:
            try:
                await DeferredList(pending).addTimeout(self.grace + 10, self.reactor)
            except TimeoutError:
                for proto, proc in self.workers.values():
                    if not proto.ended.called:
                        proc.signalProcess("KILL")
        for s in self.sockets:
            s.close()


class AdoptedPorts(Service):
    """In a worker: the inherited listening sockets, served by the gateway's site.

    Also watches stdin (a pipe from the parent, see `ParentWatch`) and, once the shutdown has
    begun, ignores further SIGTERM/SIGINT: under systemd (``KillMode=control-group``) a worker
    gets SIGTERM from the service manager *and* from the parent, and Twisted would answer the
    second one with a ``ReactorNotRunning`` traceback.
    """

    def __init__(self, reactor: Any, specs: list[str], site: Any, watch_fd: int | None = 0) -> None:
        self.reactor = reactor
        self.specs = specs
        self.site = site
        self.ports: list[Any] = []
        self.watch_fd = watch_fd
        self.watch: ParentWatch | None = None

    def privilegedStartService(self) -> None:
        for spec in self.specs:
            fd, _, desc = spec.partition(":")
            self.ports.append(adopt(self.reactor, int(fd), desc, self.site))
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self.reactor.addSystemEventTrigger("before", "shutdown", _ignore_more_stop_signals)
        if self.watch_fd is not None:
            self.watch = ParentWatch(self.reactor, self.watch_fd, self._parent_gone)
            self.watch.startReading()

    def _parent_gone(self) -> None:
        if self.running:
            log.warn("worker {pid}: the --workers parent is gone; stopping", pid=os.getpid())
            self.reactor.stop()

    def stopService(self) -> Any:
        super().stopService()
        if self.watch is not None:
            self.watch.stopReading()
        from twisted.internet.defer import DeferredList

        return DeferredList([Deferred.fromCoroutine(_stop(p)) for p in self.ports])


def _ignore_more_stop_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


class ParentWatch(FileDescriptor):
    """Reads the pipe the parent holds open (the worker's stdin); its end means the parent died."""

    def __init__(self, reactor: Any, fd: int, on_gone: Any) -> None:
        super().__init__(reactor)
        self.fd = fd
        self.on_gone = on_gone
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> Any:
        try:
            data = os.read(self.fd, 512)
        except BlockingIOError:
            return None
        except OSError:
            return CONNECTION_LOST
        return None if data else CONNECTION_DONE

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.on_gone()


async def _stop(port: Any) -> None:
    await port.stopListening()
