"""Shared state (rate-limit windows, counters) behind one interface: `fproxy.state.base.State`."""
from __future__ import annotations

from typing import Any

from fproxy.config import ConfigError, StateConfig
from fproxy.state.base import State


def open_state(config: StateConfig, clock: Any) -> State:
    """The backend named by ``state.url``: ``memory:`` (Redis comes with the scale-out issue)."""
    url = config.url.strip()
    if url in ("memory:", "memory", ""):
        from fproxy.state.memory import MemoryState

        return MemoryState(clock)
    scheme = url.split(":", 1)[0]
    raise ConfigError(f'state.url: unsupported backend "{scheme}:" (supported: "memory:")')
