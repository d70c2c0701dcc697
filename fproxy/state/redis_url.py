"""``state.url = "redis://[[user]:password@]host[:port][/db]"`` parsed, without importing txredisapi
(which imports the global reactor)."""
from __future__ import annotations

from urllib.parse import unquote, urlsplit

from attrs import frozen

from fproxy.config import ConfigError

DEFAULT_PORT = 6379


@frozen
class RedisURL:
    """``redis://`` parsed (the password is never shown by `where`)."""

    host: str
    port: int
    db: int
    username: str | None = None
    password: str | None = None

    @property
    def where(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"


def parse_url(url: str) -> RedisURL:
    """@raise ConfigError: naming ``state.url`` when it is not a usable ``redis://`` URL."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ConfigError(f'state.url: expected "redis://host:port/db", got "{parts.scheme}:"')
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ConfigError("state.url: the port is not a number") from None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ConfigError(f'state.url: the database must be a number, e.g. "redis://host:6379/0", not "/{path}"')
    if parts.query or parts.fragment:
        raise ConfigError("state.url: options after ? or # are not supported")
    return RedisURL(parts.hostname or "127.0.0.1", port, int(path or 0),
                    unquote(parts.username) if parts.username else None,
                    unquote(parts.password) if parts.password is not None else None)
