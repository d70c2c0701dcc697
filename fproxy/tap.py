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
    from fproxy.logs import offer_text_observer

    svc = _make_service(options)
    offer_text_observer(svc, getattr(options, "parent", None))
    return svc


def _make_service(options: Options) -> Any:
    from twisted.internet import reactor

    from fproxy.reload import attach, config_loader
    from fproxy.service import GatewayService

    cfg: Config = options["config_obj"]
    from fproxy.logs import coalesce_stdout

    coalesce_stdout(reactor)  # before twistd creates its log observer on sys.stdout
    listen = tuple(options["listen"]) or cfg.server.listen
    if options["adopt"]:  # a --workers child: the parent checked the listeners and the configuration
        from fproxy.workers import AdoptedPorts, is_memory_state

        workers = int(os.environ.get("FPROXY_WORKERS") or 1)
        parent = int(os.environ.get("FPROXY_PARENT_PID") or 0) or None
        try:
            svc = GatewayService(reactor, cfg, ())
        except ConfigError as e:
            sys.stderr.write(f"fproxy: configuration error: {e}\n")
            raise SystemExit(1) from None
        svc.site.debug_pid = str(os.getpid()).encode()
        if workers > 1 and is_memory_state(cfg.state.url):
            svc.limits.divisor = workers  # the parent logged it once
        attach(reactor, svc, config_loader(options["config"]), parent_pid=parent, workers=workers)
        AdoptedPorts(reactor, options["adopt"], svc.site).setServiceParent(svc)  # last child: stops first
        return svc
    _check_listeners(reactor, listen, options["workers"])
    if options["workers"] > 1:
        from fproxy.workers import WorkersService

        _check_providers(cfg)
        return WorkersService(reactor, options["workers"], listen, list(sys.argv), cfg.server.drain_seconds,
                              cfg.state.url)
    try:
        svc = GatewayService(reactor, cfg, listen)
    except ConfigError as e:
        sys.stderr.write(f"fproxy: configuration error: {e}\n")
        raise SystemExit(1) from None
    attach(reactor, svc, config_loader(options["config"]))  # SIGHUP and POST /api/reload
    return svc


def _check_listeners(reactor: Any, listen: tuple[str, ...], workers: int) -> None:
    """Refuse a bad listener description or certificate before anything starts (one line, exit 1)."""
    from OpenSSL.SSL import Error as SSLError

    from fproxy.tls import server_endpoint
    from fproxy.workers import KINDS

    for desc in listen:
        kind = desc.split(":", 1)[0]
        if workers > 1 and kind not in KINDS:
            sys.stderr.write(f"fproxy: configuration error: listen: {desc!r}: --workers supports "
                             f"{', '.join(KINDS)} listeners\n")
            raise SystemExit(1)
        try:
            server_endpoint(reactor, desc)  # ssl: / tls: load their certificates here (nothing is bound)
        except (ValueError, KeyError, TypeError, OSError, ImportError, SSLError) as e:
            sys.stderr.write(f"fproxy: configuration error: listen: {desc!r}: {e}\n")
            raise SystemExit(1) from None


def _check_providers(cfg: Config) -> None:
    """What would make every worker fail at start (a provider's ca_file), refused once by the parent."""
    from fproxy.providers.http import trust_root

    for p in cfg.providers:
        if p.ca_file and p.dialect != "mock":
            try:
                trust_root(p.ca_file)
            except ConfigError as e:
                sys.stderr.write(f'fproxy: configuration error: provider "{p.name}": {e}\n')
                raise SystemExit(1) from None
