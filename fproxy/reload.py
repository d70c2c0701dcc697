"""Live reload: SIGHUP and ``POST /api/reload`` re-read the configuration without a restart.

The new configuration is read (in a thread: a file read stays off the reactor) and validated
completely, and its providers are built, before anything changes.  Any error is logged in
one line and the running configuration stays in force.  On success the swap happens in one
step of the reactor thread, for *new* requests:

- providers: an unchanged provider keeps its object (key health, cooldowns, queue and
  connection pool survive); a changed one gets a new object (a change of ``models`` only
  updates the running object); a removed or replaced one is *retired*: calls and streams
  that already hold it finish on it, and its idle connections are closed once its last call
  has ended.  The gateway binds a call's providers before its first ``await``
  (`fproxy.gateway.Gateway.chat`), so a call never sees half of two configurations.
- routes (a new `fproxy.routing.Router`), static and admin client keys (`Authenticator.set_access`),
  ``[[price]]`` tables, thinking budgets, image fetching, CORS origins, the body size cap,
  the drain deadline and the keep-alive interval.

Not reloadable, logged as "needs a restart" when changed: ``server.listen`` and
``server.metrics_listen`` (sockets are bound once, before privileges are dropped),
``store.url`` and ``state.url`` / ``state.prefix`` (open connections and counters).

In ``--workers`` mode the parent forwards SIGHUP to every worker; ``POST /api/reload``
served by one worker validates the file there, then signals the parent, which signals all
workers (`fproxy.workers`).
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import attrs
from attrs import frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from fproxy.config import Config, ConfigError, ProviderConfig, from_environment, load
from fproxy.pricing import PriceTable
from fproxy.providers.provider import Provider
from fproxy.routing import Router

log = Logger()

RETIRE_CHECK_SECONDS = 5.0


@frozen
class ReloadResult:
    """What a reload did (or, in a worker that signalled its parent, will do in every worker)."""

    source: str
    changes: tuple[str, ...]
    restart_needed: tuple[str, ...] = ()
    scope: str = "this process"

    def as_json(self) -> dict[str, Any]:
        return {"object": "reload", "reloaded": True, "source": self.source, "changes": list(self.changes),
                "restart_needed": list(self.restart_needed), "scope": self.scope}


def config_loader(path: str | None) -> Callable[[], Config]:
    """How to read the configuration again: the ``--config`` file, or the environment."""
    if path:
        where = os.path.abspath(path)  # twistd may change directory (--rundir) after the start
        return lambda: load(where)
    return lambda: from_environment(os.environ)


def _names(items: Any) -> str:
    return ", ".join(sorted(items))


def describe_changes(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """(what a reload changes, what would need a restart), in words for the log and the API."""
    changes: list[str] = []
    old_p = {p.name: p for p in old.providers}
    new_p = {p.name: p for p in new.providers}
    added = new_p.keys() - old_p.keys()
    removed = old_p.keys() - new_p.keys()
    changed = {n for n in new_p.keys() & old_p.keys() if new_p[n] != old_p[n]}
    if added:
        changes.append(f"providers added: {_names(added)}")
    if removed:
        changes.append(f"providers removed: {_names(removed)}")
    if changed:
        changes.append(f"providers changed: {_names(changed)}")
    if old.routes != new.routes:
        changes.append("routes")
    if old.access.keys != new.access.keys or old.access.header != new.access.header:
        changes.append("access.keys")
    if old.access.admin_keys != new.access.admin_keys:
        changes.append("access.admin_keys")
    for name in ("prices", "thinking", "images"):
        if getattr(old, name) != getattr(new, name):
            changes.append(name)
    for name in ("cors_origins", "max_request_bytes", "drain_seconds", "keepalive_seconds"):
        if getattr(old.server, name) != getattr(new.server, name):
            changes.append(f"server.{name}")
    restart = [f"server.{n}" for n in ("listen", "metrics_listen") if getattr(old.server, n) != getattr(new.server, n)]
    restart += [n for n, a, b in (("store.url", old.store.url, new.store.url), ("state.url", old.state.url,
                new.state.url), ("state.prefix", old.state.prefix, new.state.prefix)) if a != b]
    return changes, restart


def _same_but_models(a: ProviderConfig, b: ProviderConfig) -> bool:
    return attrs.evolve(a, models=()) == attrs.evolve(b, models=())


class Reloader:
    """Re-reads and applies the configuration of one running `fproxy.service.GatewayService`.

    @param load: returns a validated `Config` (raises `ConfigError`); runs in a thread.
    @param parent_pid: in a ``--workers`` worker, the parent to signal so every worker reloads.
    """

    def __init__(self, service: Any, load: Callable[[], Config], reactor: Any,
                 run_blocking: Callable[[Callable[[], Config]], Deferred[Config]] | None = None,
                 parent_pid: int | None = None, workers: int = 1) -> None:
        self.service = service
        self._load = load
        self._reactor = reactor
        self._run_blocking = run_blocking or self._in_thread
        self._lock = DeferredLock()
        self.parent_pid = parent_pid
        self.workers = workers
        self.retired: list[Provider] = []
        self._retire_loop: LoopingCall | None = None

    def _in_thread(self, f: Callable[[], Config]) -> Deferred[Config]:
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f)

    # ------------------------------------------------------------ entry points
    def trigger(self, why: str) -> Deferred[Any]:
        """Reload from a signal: errors are logged (a refused configuration by `reload` itself)."""
        d = Deferred.fromCoroutine(self.reload(why))
        d.addErrback(lambda f: None if f.check(ConfigError) else log.failure("reload ({why}) failed", f, why=why))
        return d

    async def reload(self, why: str) -> ReloadResult:
        """Read, validate and apply the configuration; @raise ConfigError: refused, nothing changed."""
        await self._lock.acquire()
        try:
            return await self._reload(why)
        finally:
            self._lock.release()

    async def _reload(self, why: str) -> ReloadResult:
        try:
            new = await self._run_blocking(self._load)
        except ConfigError as e:
            log.error("configuration reload ({why}) refused, the running configuration stays: {error}",
                      why=why, error=str(e))
            raise
        try:
            providers = self._build_providers(new)
        except ConfigError as e:
            log.error("configuration reload ({why}) refused, the running configuration stays: {error}",
                      why=why, error=str(e))
            raise
        changes, restart = describe_changes(self.service.config, new)
        if self.parent_pid is not None and why != "SIGHUP" and self._signal_parent():
            # one worker got POST /api/reload: the parent's SIGHUP reaches every worker, this one included
            # (the providers built above only proved the file usable; they hold no connection yet)
            log.info("configuration at {source} is valid ({why}): signalled the parent {pid} to reload all workers",
                     source=new.source, why=why, pid=self.parent_pid)
            return ReloadResult(new.source, tuple(changes), tuple(restart), f"all {self.workers} workers (signalled)")
        self._apply(new, providers)
        log.info("configuration reloaded from {source} ({why}): {changes}", source=new.source, why=why,
                 changes="; ".join(changes) or "no changes")
        for what in restart:
            log.warn("{what} changed in {source}: it takes effect only after a restart", what=what,
                     source=new.source)
        return ReloadResult(new.source, tuple(changes), tuple(restart))

    def _signal_parent(self) -> bool:
        assert self.parent_pid is not None
        try:
            os.kill(self.parent_pid, signal.SIGHUP)
        except OSError as e:
            log.warn("cannot signal the workers' parent {pid} ({error}): reloading this worker only",
                     pid=self.parent_pid, error=e.strerror)
            return False
        return True

    # ------------------------------------------------------------ building and swapping
    def _build_providers(self, new: Config) -> dict[str, Provider]:
        """The provider objects of ``new``: running ones where their configuration is the same."""
        running: dict[str, Provider] = self.service.providers
        out: dict[str, Provider] = {}
        for pc in new.providers:
            old = running.get(pc.name)
            if old is not None and (old.config == pc or _same_but_models(old.config, pc)):
                out[pc.name] = old
            else:
                out[pc.name] = Provider.build(self._reactor, pc)  # ConfigError (ca_file) refuses the reload
        return out

    def _apply(self, new: Config, providers: dict[str, Provider]) -> None:
        """Swap everything at once (no await in here: no request runs in between)."""
        svc = self.service
        shared: dict[str, Provider] = svc.providers  # the one dict the gateway, calls, metrics and stop share
        for name, p in list(shared.items()):
            if providers.get(name) is not p:
                self._retire(p)
        for pc in new.providers:
            if providers[pc.name].config != pc:  # only `models` differ (see _build_providers)
                providers[pc.name].config = pc
        shared.clear()
        shared.update(providers)
        router = Router(new)
        svc.router = router
        svc.config = new
        gw = svc.gateway
        if gw.config.images != new.images:
            from fproxy.providers.images import ImageFetcher

            gw.images = ImageFetcher(self._reactor, new.images) if new.images.fetch else None
        gw.router = router
        gw.config = new
        svc.prices = PriceTable(new.prices)
        svc.calls._prices = svc.prices
        svc.auth.set_access(new.access)
        site = svc.site
        site.max_request_bytes = new.server.max_request_bytes
        site.cors_origins = tuple(o.encode() for o in new.server.cors_origins)
        svc.drain._grace = new.server.drain_seconds
        sync = getattr(svc, "shared", None)  # redis:// state: hook the new pools now, not at the next refresh
        if sync is not None:
            sync.upstream.attach()

    # ------------------------------------------------------------ retired providers
    def _retire(self, provider: Provider) -> None:
        self.retired.append(provider)
        if self._retire_loop is None:
            self._retire_loop = LoopingCall(self._close_idle)
            self._retire_loop.clock = self._reactor
            self._retire_loop.start(RETIRE_CHECK_SECONDS, now=False).addErrback(
                lambda f: log.failure("closing retired providers failed", f))

    @staticmethod
    def _idle(p: Provider) -> bool:
        return p.limiter.active == 0 and not p.limiter.waiting

    def _close_idle(self) -> None:
        """Close the connection pools of retired providers whose last call has ended."""
        keep = []
        for p in self.retired:
            if self._idle(p):
                self._close(p)
            else:
                keep.append(p)
        self.retired = keep
        if not keep and self._retire_loop is not None:
            self._retire_loop.stop()
            self._retire_loop = None

    @staticmethod
    def _close(p: Provider) -> None:
        d = p.close()
        if d is not None:
            d.addErrback(lambda f: log.failure("closing the pool of retired provider {name}", f, name=p.name))

    def stop(self) -> None:
        """At shutdown: close every retired provider's idle connections now."""
        if self._retire_loop is not None:
            self._retire_loop.stop()
            self._retire_loop = None
        for p in self.retired:
            self._close(p)
        self.retired = []


class ReloadService(Service):
    """Installs the SIGHUP handler while running (the handler only schedules a reload in the reactor)."""

    def __init__(self, reactor: Any, reloader: Reloader) -> None:
        self.reactor = reactor
        self.reloader = reloader

    def startService(self) -> None:
        super().startService()
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reloader.trigger, "SIGHUP")

    def stopService(self) -> None:
        super().stopService()
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # no reload while stopping (and no death by SIGHUP)
        self.reloader.stop()


def attach(reactor: Any, service: Any, load: Callable[[], Config], parent_pid: int | None = None,
           workers: int = 1) -> Reloader:
    """Give a gateway service its reloader: SIGHUP while running, and ``POST /api/reload``."""
    reloader = Reloader(service, load, reactor, parent_pid=parent_pid, workers=workers)
    service.reloader = reloader
    service.admin.reloader = reloader
    ReloadService(reactor, reloader).setServiceParent(service)
    return reloader
