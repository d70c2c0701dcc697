"""The store: virtual keys and the usage ledger, behind `fproxy.store.base.Store`."""
from __future__ import annotations

from typing import Any

from fproxy.config import ConfigError, StoreConfig
from fproxy.store.base import Store


def open_store(reactor: Any, config: StoreConfig) -> Store:
    """The store named by ``store.url``: ``sqlite:PATH`` or ``postgresql://user@host:port/db``.

    @raise ConfigError: for an unknown scheme or an unusable path, naming ``store.url``.
    """
    url = config.url.strip()
    scheme, sep, rest = url.partition(":")
    if sep and scheme == "sqlite":
        from fproxy.store.sqlite import open_sqlite

        return open_sqlite(reactor, rest)
    if sep and scheme in ("postgresql", "postgres"):
        from fproxy.store.postgres import open_postgres

        return open_postgres(reactor, url)
    shown = f"{scheme}:" if sep else url  # never the rest: it may hold a password
    raise ConfigError(f'store.url: unsupported store "{shown}" '
                      '(supported: "sqlite:PATH", "postgresql://user@host:port/db")')
