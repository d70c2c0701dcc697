"""PostgreSQL store (``store.url = "postgresql://user[:password]@host[:port]/db"``), psycopg 3 via adbapi.

The same schema, migrations and queries as SQLite (`fproxy.store.sql`); what differs is the
`POSTGRES` dialect: ``%s`` placeholders, ``FLOOR`` for time buckets (PostgreSQL's cast to an
integer rounds) and an advisory lock around migrations, so that instances starting at the same
moment on a fresh database migrate one after the other.

Queries run in adbapi's thread pool (`POOL_MAX` connections), never on the reactor.  Several
instances can write the ledger at once: request ids are random and unique, and a batch is
inserted with ``ON CONFLICT (request_id) DO NOTHING``, so a retried batch duplicates nothing.
A connection that drops is replaced (``cp_reconnect``); a failed batch stays in the usage
writer's queue for the next flush.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.enterprise import adbapi

from fproxy.config import ConfigError
from fproxy.store.sql import Dialect, SqlStore

POOL_MIN = 1
POOL_MAX = 4
CONNECT_TIMEOUT = 10
#: pg_advisory_xact_lock key: "fprx" as a number
MIGRATION_LOCK = 0x66707278

POSTGRES = Dialect(
    "postgresql", "%s",
    bucket=lambda col, secs: f"CAST(FLOOR({col} / {secs}) AS BIGINT) * {secs}",
    lock=f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})",
)


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def check_url(url: str) -> str:
    """@raise ConfigError: naming ``store.url`` when the URL cannot work (or psycopg is missing)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f'store.url: expected "postgresql://user@host:port/db", got "{parts.scheme}:"')
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ConfigError("store.url: the port is not a number") from None
    if not parts.path.strip("/"):
        raise ConfigError('store.url: name the database, e.g. "postgresql://fproxy@db.internal:5432/fproxy"')
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ConfigError('store.url: PostgreSQL needs psycopg 3: pip install "psycopg[binary]"') from None
    return url


def open_postgres(reactor: Any, url: str) -> SqlStore:
    """A store over the database at ``url`` (connections open lazily, in the pool's threads)."""
    url = check_url(url)
    pool = adbapi.ConnectionPool("psycopg", url, connect_timeout=CONNECT_TIMEOUT, application_name="fproxy",
                                 cp_min=POOL_MIN, cp_max=POOL_MAX, cp_reconnect=True, cp_reactor=reactor,
                                 cp_noisy=False)
    return SqlStore(pool, POSTGRES, redact(url))
