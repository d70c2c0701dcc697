"""Dialect name -> codec module.  The only list to extend when a dialect is added."""
from __future__ import annotations

import importlib
from typing import Any

from fproxy.ir.errors import GatewayError

_MODULES = {
    "openai-chat": "fproxy.codecs.openai_chat",
    "anthropic": "fproxy.codecs.anthropic",
    "openai-responses": "fproxy.codecs.openai_responses",
}
_cache: dict[str, Any] = {}


def _module(dialect: str) -> Any:
    mod = _cache.get(dialect)
    if mod is None:
        name = _MODULES.get(dialect)
        if name is None:
            raise GatewayError(500, f"no codec for dialect {dialect!r}")
        mod = _cache[dialect] = importlib.import_module(name)
    return mod


def inbound_codec(dialect: str) -> Any:
    return _module(dialect).INBOUND


def outbound_codec(dialect: str) -> Any:
    return _module(dialect).OUTBOUND
