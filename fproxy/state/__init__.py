"""Shared state (rate-limit windows, counters) behind one interface: `fproxy.state.base.State`."""
from __future__ import annotations

from typing import Any

from fproxy.config import ConfigError, StateConfig
from fproxy.state.base import State


def open_state(config: StateConfig, clock: Any) -> State:
    """The backend named by ``state.url``: ``memory:`` (one process) or ``redis://host:port/db`` (shared).

    The Redis one is a `twisted.application.service.Service`: its owner starts and stops it.

    @raise ConfigError: for an unknown scheme or a malformed URL, naming ``state.url``.
    """
    url = config.url.strip()
    if url in ("memory:", "memory", ""):
        from fproxy.state.memory import MemoryState

        return MemoryState(clock)
    scheme = url.split(":", 1)[0]
    if scheme == "redis":
        from fproxy.state.redis_url import parse_url

        parse_url(url)  # a malformed URL is a ConfigError before txredisapi (and its reactor) is imported
        from fproxy.state.redis import RedisState

        return RedisState(url, config.prefix, clock)
    raise ConfigError(f'state.url: unsupported backend "{scheme}:" (supported: "memory:", "redis://host:port/db")')
