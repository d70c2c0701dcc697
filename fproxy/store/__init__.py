"""The store: virtual keys and the usage ledger, behind `fproxy.store.base.Store`."""
from __future__ import annotations

from typing import Any

from fproxy.config import ConfigError, StoreConfig
from fproxy.store.base import Store


def open_store(reactor: Any, config: StoreConfig) -> Store:
    """The store named by ``store.url``: ``sqlite:PATH`` (PostgreSQL comes with the scale-out issue).

    @raise ConfigError: for an unknown scheme or an unusable path, naming ``store.url``.
    """
    url = config.url.strip()
    scheme, sep, rest = url.partition(":")
    if sep and scheme == "sqlite":
        from fproxy.store.sqlite import open_sqlite

        return open_sqlite(reactor, rest)
    raise ConfigError(f'store.url: unsupported store "{url}" (supported: "sqlite:PATH")')
