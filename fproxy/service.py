"""Assembling the gateway: providers, store, state, gateway, site, drain and listeners as one service.

Children start in order and stop one at a time in reverse: listeners (no new requests),
drain (in-flight calls finish), key cache, usage writer (last records flushed), store
(connections closed), providers (upstream pools closed).
"""
from __future__ import annotations

import gc
import os
import sys
from typing import Any

from OpenSSL.SSL import Error as SSLError
from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, TimeoutError, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.logger import Logger

from fproxy import __version__
from fproxy.calls import CallTracker
from fproxy.config import Config
from fproxy.drain import ActiveRequests, DrainService
from fproxy.gateway import Gateway
from fproxy.ir.errors import GatewayError
from fproxy.limits.keys import KeyLimits
from fproxy.metrics import Metrics
from fproxy.pricing import PriceTable
from fproxy.providers.provider import Provider
from fproxy.routing import Router
from fproxy.state import open_state
from fproxy.state.shared import wire_shared_state
from fproxy.store import open_store
from fproxy.store.keys import KeyCache
from fproxy.store.usage import UsageWriter
from fproxy.tls import listen_service
from fproxy.web.admin import AdminAPI, MetricsResource, QuietSite
from fproxy.web.api import PublicAPI
from fproxy.web.auth import Authenticator
from fproxy.web.request import FproxySite
from fproxy.web.root import Root

log = Logger()


class ProvidersService(Service):
    """Owns the upstream connection pools; closes them last on stop."""

    def __init__(self, providers: dict[str, Provider]) -> None:
        self.providers = providers

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        ds = [d for d in (p.close() for p in self.providers.values()) if d is not None]
        return DeferredList(ds, consumeErrors=True)


class StoreService(Service):
    """Owns the key cache's refresh loop (started once the store is open, stopped before the last flush)."""

    def __init__(self, store: Any, keys: KeyCache) -> None:
        self.store = store
        self.keys = keys

    def stopService(self) -> None:
        super().stopService()
        self.keys.stop()


class _StoreCloser(Service):
    """Closes the store's connections; stopped after the usage writer's last flush."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def stopService(self) -> None:
        super().stopService()
        self.store.close()


class SettleService(Service):
    """Stopped right after the drain: waits until every call's on_finished hook has run.

    The drain ends when the last *request* finishes, which happens a moment before the
    gateway's bookkeeping for that call (usage record, limits); the usage writer must only
    flush after it.  One reactor turn more lets the last bytes reach the clients.
    """

    def __init__(self, calls: CallTracker, clock: Any, grace: float = 10.0) -> None:
        self._calls = calls
        self._clock = clock
        self._grace = grace

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._settle())

    async def _settle(self) -> None:
        try:
            await self._calls.when_idle().addTimeout(self._grace, self._clock)
        except TimeoutError:
            log.warn("{n} call(s) still unfinished after the drain; their usage records may be missing",
                     n=len(self._calls))
        await deferLater(self._clock, 0, lambda: None)


def _exit_failed() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


_frozen = False


def _freeze_startup_objects() -> None:
    """Once per process: what start-up made (modules, config, tables) lives as long as the
    process, so it is moved out of the garbage collector's scans (``gc.freeze``) and each
    collection of young objects stays short."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


class GatewayService(MultiService):
    """The whole gateway.  ``ready`` fires once the store is open and the key cache loaded."""

    def __init__(self, reactor: Any, config: Config, listen: tuple[str, ...]) -> None:
        super().__init__()
        self.reactor = reactor
        self.config = config
        self.providers = {p.name: Provider.build(reactor, p) for p in config.providers}
        ProvidersService(self.providers).setServiceParent(self)
        self.store = open_store(reactor, config.store)  # ConfigError for a bad store.url
        _StoreCloser(self.store).setServiceParent(self)
        self.state = open_state(config.state, reactor)
        if isinstance(self.state, Service):  # redis://: connects at start, closes after the last usage flush
            self.state.setServiceParent(self)
        self.keys = KeyCache(self.store, reactor)
        self.usage = UsageWriter(self.store, reactor)
        self.usage.setServiceParent(self)
        StoreService(self.store, self.keys).setServiceParent(self)
        self.prices = PriceTable(config.prices)
        self.limits = KeyLimits(self.state, reactor)
        self.router = Router(config)
        self.calls = CallTracker(reactor, self.providers, self.prices, self.limits, self.usage)
        self.metrics = Metrics(self.providers, self._known_model, self.calls.active_counts)
        self.calls.metrics = self.metrics
        self.gateway = Gateway(reactor, config, self.providers, self.router, on_finished=self.calls.finished)
        self.auth = Authenticator(config.access, keys=self.keys, clock=reactor)
        SettleService(self.calls, reactor).setServiceParent(self)
        self.active = ActiveRequests()
        self.drain = DrainService(self.active, config.server.drain_seconds, reactor)
        self.drain.setServiceParent(self)
        self.api = PublicAPI(self.gateway, self.auth, reactor, {"listeners": list(listen)}, calls=self.calls)
        self.admin = AdminAPI(self.auth, reactor, store=self.store, keys=self.keys, limits=self.limits,
                              usage=self.usage, calls=self.calls, metrics=self.metrics)
        self.root = Root(self.api.resource(), self.admin.resource(), fast=self.api)
        self.site = FproxySite(self.root, reactor, config.server.max_request_bytes, config.server.cors_origins)
        self.site.active = self.active
        self.site.fast_paths = frozenset(PublicAPI.FAST_ROUTES)
        self.drain.site = self.site
        self.shared = wire_shared_state(self)  # redis://: key changes and upstream keys in step across instances
        self.listen = listen
        self.ready: Deferred[None] = Deferred()
        for desc in listen:  # ssl: and tls: with TLS 1.2+ and ALPN (h2): see fproxy.tls
            listen_service(reactor, desc, self.site).setServiceParent(self)
        if config.server.metrics_listen:
            self.metrics_site = QuietSite(MetricsResource(self.metrics))
            strports.service(config.server.metrics_listen, self.metrics_site, reactor=reactor).setServiceParent(self)

    def _known_model(self, name: str) -> bool:
        try:
            self.router.resolve(name)
        except GatewayError:
            return False
        return True

    def privilegedStartService(self) -> None:
        """Bind the listeners; a port in use or a bad certificate stops the start with one line."""
        try:
            super().privilegedStartService()
        except (CannotListenError, OSError, SSLError) as e:
            import sys

            sys.stderr.write(f"fproxy: cannot listen: {e}\n")
            sys.stderr.flush()
            raise SystemExit(1) from None

    def startService(self) -> None:
        log.info("fproxy {version} starting: {n} provider(s), listening on {listen}", version=__version__,
                 n=len(self.providers), listen=", ".join(self.listen))
        super().startService()
        d = Deferred.fromCoroutine(self._open())
        d.addErrback(self._fatal)

    async def _open(self) -> None:
        """Open the store (migrations), load the keys, seed the budgets; then serve."""
        await self.store.open()
        await self.keys.load()
        await self.limits.seed(self.store)
        if not self.running:  # stopped while the store was opening
            return
        self.keys.start()
        if self.auth.open:
            log.warn("no client keys are configured: this gateway is OPEN to anyone who can reach it")
        log.info("store ready: {n} virtual key(s)", n=len(self.keys))
        self.root.set_ready()
        _freeze_startup_objects()
        self.ready.callback(None)

    def _fatal(self, failure: Any) -> None:
        if failure.check(CancelledError):
            return
        log.failure("fproxy could not open its store ({where}); stopping", failure,
                    where=getattr(self.store, "where", self.config.store.url))
        if not self.ready.called:
            self.ready.errback(failure)
            self.ready.addErrback(lambda _: None)  # reported just above
        if self.parent is not None and self.running:  # under twistd: a gateway without its store must not run
            sys.stderr.write(f"fproxy: cannot open the store {self.config.store.url.split('://')[0]}: "
                             f"{failure.getErrorMessage()}\n")
            # twistd exits 0 after reactor.stop(); a supervisor must see a failure (and restart it)
            self.reactor.addSystemEventTrigger("after", "shutdown", _exit_failed)
            self.reactor.stop()

    def stopService(self) -> Deferred[None]:
        """Stop children one at a time, last added first (MultiService would stop them all at once)."""
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_in_order())

    async def _stop_in_order(self) -> None:
        for svc in reversed(list(self)):
            try:
                await maybeDeferred(svc.stopService)
            except CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one child failing to stop must not keep the others running
                log.failure("stopping {svc} failed", svc=svc)
