"""Assembling the gateway: providers, gateway, site, drain and listeners as one service."""
from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from fproxy import __version__
from fproxy.config import Config
from fproxy.drain import ActiveRequests, DrainService
from fproxy.gateway import Gateway
from fproxy.providers.provider import Provider
from fproxy.routing import Router
from fproxy.web.api import PublicAPI
from fproxy.web.auth import Authenticator
from fproxy.web.request import FproxySite

log = Logger()


class ProvidersService(Service):
    """Owns the upstream connection pools; closes them last on stop."""

    def __init__(self, providers: dict[str, Provider]) -> None:
        self.providers = providers

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        ds = [d for d in (p.close() for p in self.providers.values()) if d is not None]
        return DeferredList(ds, consumeErrors=True)


class GatewayService(MultiService):
    """Children start in order and stop in reverse: listeners (added last) stop first."""

    def __init__(self, reactor: Any, config: Config, listen: tuple[str, ...]) -> None:
        super().__init__()
        self.config = config
        self.providers = {p.name: Provider.build(reactor, p) for p in config.providers}
        ProvidersService(self.providers).setServiceParent(self)
        self.router = Router(config)
        self.gateway = Gateway(reactor, config, self.providers, self.router)
        self.auth = Authenticator(config.access)
        self.active = ActiveRequests()
        DrainService(self.active, config.server.drain_seconds, reactor).setServiceParent(self)
        self.api = PublicAPI(self.gateway, self.auth, reactor, {"listeners": list(listen)})
        self.site = FproxySite(self.api.resource(), reactor, config.server.max_request_bytes,
                               config.server.cors_origins)
        self.site.active = self.active
        self.listen = listen
        for desc in listen:
            strports.service(desc, self.site, reactor=reactor).setServiceParent(self)

    def startService(self) -> None:
        if self.auth.open:
            log.warn("no client keys are configured: this gateway is OPEN to anyone who can reach it")
        log.info("fproxy {version} starting: {n} provider(s), listening on {listen}", version=__version__,
                 n=len(self.providers), listen=", ".join(self.listen))
        super().startService()
