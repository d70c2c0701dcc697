"""SQLite store (``store.url = "sqlite:PATH"``): one file, created on first start.

One connection in one pool thread (``cp_max=1``): SQLite serialises writers anyway, and a
single connection keeps ``sqlite::memory:`` (tests) alive.  WAL mode lets readers of the
file (an operator's ``sqlite3`` shell, backups) work while fproxy writes.
"""
from __future__ import annotations

import os
from typing import Any

from twisted.enterprise import adbapi

from fproxy.config import ConfigError
from fproxy.store.sql import SQLITE, SqlStore

MEMORY = ":memory:"


def _prepare(conn: Any) -> None:
    """Per-connection settings (runs in the pool thread, once)."""
    cur = conn.cursor()
    # the busy timeout first: switching a fresh file to WAL takes a lock that another worker
    # starting at the same moment may hold
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def check_path(path: str) -> str:
    """The database path, made absolute; its directory must exist.

    @raise ConfigError: naming ``store.url`` when it cannot work.
    """
    if not path:
        raise ConfigError('store.url: "sqlite:" needs a file path, e.g. "sqlite:fproxy.db"')
    if path == MEMORY:
        return path
    path = os.path.abspath(os.path.expanduser(path))
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise ConfigError(f'store.url: the directory "{folder}" does not exist')
    if os.path.isdir(path):
        raise ConfigError(f'store.url: "{path}" is a directory, not a database file')
    return path


def open_sqlite(reactor: Any, path: str) -> SqlStore:
    """A store over the SQLite file ``path`` (connections open lazily, in the pool thread)."""
    path = check_path(path)
    pool = adbapi.ConnectionPool("sqlite3", path, check_same_thread=False, cp_min=1, cp_max=1,
                                 cp_openfun=_prepare, cp_reactor=reactor, cp_noisy=False)
    return SqlStore(pool, SQLITE, f"sqlite:{path}")
