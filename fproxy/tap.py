"""``twistd fproxy``: options and the service maker.  The composition root: the only module
that imports the global reactor."""
from __future__ import annotations

import os
import sys
from typing import Any

from twisted.python import usage

from fproxy.config import Config, ConfigError, from_environment, load


class Options(usage.Options):
    synopsis = "[--config PATH] [--listen DESCRIPTION ...]"
    longdesc = ("fproxy: an LLM API gateway. Without --config the environment configures it "
                "(FACTORY_API_KEYS, PROXY_ACCESS_KEYS, PROXY_KEY_HEADER, OPENAI_API_KEY, ...).")
    optParameters = [
        ["config", "c", None, "TOML configuration file (see etc/fproxy.example.toml)."],
        ["workers", "w", "1", "Serve the listeners from N worker processes (a parent binds, workers adopt)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["adopt"] = []

    def opt_listen(self, description: str) -> None:
        """A strports description to listen on, e.g. tcp:8001:interface=127.0.0.1 or
        ssl:8443:privateKey=key.pem:certKey=cert.pem (repeatable; replaces server.listen)."""
        self["listen"].append(description)

    opt_l = opt_listen

    def opt_adopt(self, spec: str) -> None:
        """(internal, used by --workers) FD:DESCRIPTION of an inherited listening socket to serve."""
        self["adopt"].append(spec)

    def postOptions(self) -> None:
        try:
            self["workers"] = int(self["workers"])
        except ValueError:
            raise usage.UsageError("--workers: expected a number") from None
        if self["workers"] < 1:
            raise usage.UsageError("--workers: expected 1 or more")
        try:
            if self["config"]:
                cfg = load(self["config"])
            else:
                cfg = from_environment(os.environ)
        except ConfigError as e:
            sys.stderr.write(f"fproxy: configuration error: {e}\n")
            sys.stderr.flush()
            raise SystemExit(1) from None
        self["config_obj"] = cfg


def makeService(options: Options) -> Any:
    from twisted.internet import reactor

    from fproxy.service import GatewayService

    cfg: Config = options["config_obj"]
    listen = tuple(options["listen"]) or cfg.server.listen
    if options["workers"] > 1:
        from fproxy.workers import WorkersService, WorkerConfigError, bind  # noqa: F401

        for desc in listen:
            kind = desc.split(":", 1)[0]
            if kind not in ("tcp", "tcp6", "ssl", "unix"):
                sys.stderr.write(f"fproxy: configuration error: listen: {desc!r}: --workers supports tcp, tcp6, "
                                 "ssl and unix listeners\n")
                raise SystemExit(1)
        return WorkersService(reactor, options["workers"], listen, list(sys.argv), cfg.server.drain_seconds)
    if options["adopt"]:
        from fproxy.service import GatewayService
        from fproxy.workers import AdoptedPorts

        svc = GatewayService(reactor, cfg, ())
        svc.site.debug_pid = str(os.getpid()).encode()
        AdoptedPorts(reactor, options["adopt"], svc.site).setServiceParent(svc)  # last child: stops first
        return svc
    from twisted.internet.endpoints import serverFromString

    for desc in listen:
        try:
            serverFromString(reactor, desc)
        except (ValueError, KeyError, TypeError, OSError, ImportError) as e:
            sys.stderr.write(f"fproxy: configuration error: listen: {desc!r}: {e}\n")
            raise SystemExit(1) from None
    try:
        return GatewayService(reactor, cfg, listen)
    except ConfigError as e:
        sys.stderr.write(f"fproxy: configuration error: {e}\n")
        raise SystemExit(1) from None
