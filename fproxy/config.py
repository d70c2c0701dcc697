"""Configuration: TOML (or the environment alone) -> frozen attrs classes.

Every problem is reported as one `ConfigError` line naming the key, e.g.
``provider "openai" (provider[1]): dialect: unknown dialect "opneai" (did you mean "openai-chat"?)``.
Unknown keys are refused with the nearest known name, so a typo never silently does nothing.
"""
from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from attrs import field, frozen

from fproxy.pricing import PriceRule
from fproxy.providers.credentials import OAuthSpec, looks_like_source, parse_spec
from fproxy.providers.presets import BASE_URL_HINTS, PRESETS

DIALECTS = ("openai-chat", "openai-responses", "anthropic", "mock")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_KEY_SPLIT = re.compile(r"[;,\s]+")


class ConfigError(ValueError):
    """A configuration problem; ``str()`` is the one line shown to the operator."""


@frozen
class Timeouts:
    connect: float = 10.0
    first_byte: float = 120.0
    idle: float = 120.0
    total: float = 900.0


@frozen
class ProviderConfig:
    name: str
    dialect: str
    base_url: str
    keys: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    timeouts: Timeouts = Timeouts()
    preset: str | None = None
    auth: str = "bearer"  # bearer | x-api-key | api-key | none
    headers: Mapping[str, str] = field(factory=dict)
    query: Mapping[str, str] = field(factory=dict)
    max_concurrency: int | None = None
    queue_size: int = 100
    system_prefix: tuple[str, ...] = ()
    strip_params: tuple[str, ...] | str = ()
    thinking_budget: int | None = None
    max_tokens_field: str = "max_tokens"
    ca_file: str | None = None
    mock_reply: str | None = None
    mock_delay: float = 0.05
    max_connections: int = 64
    # credentials (fproxy.providers.credentials): a source string, its cache TTL, an OAuth refresh grant
    credential: str | None = None
    credential_ttl: float = 300.0
    oauth: OAuthSpec | None = None
    api_version: str | None = None  # Azure's api-version query parameter
    stream_only: bool = False  # the upstream only streams: ask for a stream, collect it for non-stream clients
    context_1m: bool = False  # send the 1M-context beta for models the catalogue marks 1M-capable


@frozen
class Target:
    provider: str
    model: str


@frozen
class RouteConfig:
    model: str
    to: tuple[Target, ...]
    weights: tuple[float, ...] | None = None


@frozen
class ServerConfig:
    listen: tuple[str, ...] = ("tcp:8001:interface=127.0.0.1",)
    cors_origins: tuple[str, ...] = ()
    max_request_bytes: int = 32 * 1024 * 1024
    drain_seconds: float = 30.0
    keepalive_seconds: float = 15.0
    metrics_listen: str | None = None


@frozen
class AccessConfig:
    keys: tuple[str, ...] = ()
    header: str = "X-Proxy-Key"
    admin_keys: tuple[str, ...] = ()


@frozen
class StoreConfig:
    url: str = "sqlite:fproxy.db"


@frozen
class StateConfig:
    url: str = "memory:"
    prefix: str = "fproxy:"


@frozen
class ThinkingConfig:
    """Budgets for the ``-thinking`` suffix (``budget``) and ``reasoning_effort`` levels."""

    budget: int = 16000
    low: int = 2048
    medium: int = 8192
    high: int = 16384


@frozen
class ImagesConfig:
    """Fetching ``http(s)`` image URLs for upstreams that need inline images."""

    fetch: bool = True
    max_bytes: int = 10 * 1024 * 1024
    timeout: float = 10.0
    allow_private: bool = False


@frozen
class Config:
    server: ServerConfig = ServerConfig()
    access: AccessConfig = AccessConfig()
    store: StoreConfig = StoreConfig()
    state: StateConfig = StateConfig()
    thinking: ThinkingConfig = ThinkingConfig()
    images: ImagesConfig = ImagesConfig()
    providers: tuple[ProviderConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    prices: tuple[PriceRule, ...] = ()  # [[price]] tables: they come before the catalogue's prices
    source: str = "(defaults)"

    def provider(self, name: str) -> ProviderConfig | None:
        for p in self.providers:
            if p.name == name:
                return p
        return None


# ---------------------------------------------------------------- interpolation
def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """``${VAR}`` / ``${VAR:-default}`` in every string, recursively (unset and empty -> default)."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def split_keys(values: Any) -> tuple[str, ...]:
    """A key list: each entry split on ``;``, ``,`` or white space, empties dropped."""
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for v in values:
        out.extend(k for k in _KEY_SPLIT.split(v) if k)
    return tuple(out)


# ---------------------------------------------------------------- validation helpers
class _Table:
    """Reads one TOML table, remembering what was read so leftovers can be refused."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a table")
        self.data = data
        self.where = where

    def err(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where}{key}: {problem}")

    def get(self, key: str, check: Callable[[Any, str], Any], default: Any = None) -> Any:
        if key not in self.data:
            return default
        return check(self.data[key], f"{self.where}{key}")

    def refuse_unknown(self, known: tuple[str, ...] | list[str]) -> None:
        for k in self.data:
            if k not in known:
                near = difflib.get_close_matches(k, known, n=1, cutoff=0.6)
                hint = f' (did you mean "{near[0]}"?)' if near else f" (known keys: {', '.join(sorted(known))})"
                raise ConfigError(f'{self.where}{k}: unknown key "{k}"{hint}')


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise ConfigError(f"{where}: expected a string")
    return v


def _strs(v: Any, where: str) -> tuple[str, ...]:
    if isinstance(v, str):
        return (v,)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{where}: expected a list of strings")
    return tuple(x for x in v if x != "")


def _keys(v: Any, where: str) -> tuple[str, ...]:
    return split_keys(_strs(v, where))


def _num(v: Any, where: str) -> float:
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise ConfigError(f"{where}: expected a non-negative number")
    return float(v)


def _int(v: Any, where: str) -> int:
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigError(f"{where}: expected a non-negative integer")
    return v


def _bool(v: Any, where: str) -> bool:
    if isinstance(v, str) and v.lower() in ("true", "false", "1", "0", "yes", "no"):
        return v.lower() in ("true", "1", "yes")
    if not isinstance(v, bool):
        raise ConfigError(f"{where}: expected true or false")
    return v


def _str_map(v: Any, where: str) -> dict[str, str]:
    if not isinstance(v, dict) or not all(isinstance(x, (str, int, float)) for x in v.values()):
        raise ConfigError(f"{where}: expected a table of strings")
    return {str(k): str(x) for k, x in v.items()}


def _one_of(*choices: str) -> Callable[[Any, str], str]:
    def check(v: Any, where: str) -> str:
        v = _str(v, where)
        if v not in choices:
            near = difflib.get_close_matches(v, choices, n=1, cutoff=0.5)
            hint = f' (did you mean "{near[0]}"?)' if near else f" (one of: {', '.join(choices)})"
            raise ConfigError(f'{where}: unknown value "{v}"{hint}')
        return v

    return check


# ---------------------------------------------------------------- sections
def _server(data: Any) -> ServerConfig:
    t = _Table(data, "server.")
    d = ServerConfig()
    out = ServerConfig(
        listen=t.get("listen", _strs, d.listen),
        cors_origins=t.get("cors_origins", _strs, d.cors_origins),
        max_request_bytes=t.get("max_request_bytes", _int, d.max_request_bytes),
        drain_seconds=t.get("drain_seconds", _num, d.drain_seconds),
        keepalive_seconds=t.get("keepalive_seconds", _num, d.keepalive_seconds),
        metrics_listen=t.get("metrics_listen", _str, d.metrics_listen) or None,
    )
    t.refuse_unknown(["listen", "cors_origins", "max_request_bytes", "drain_seconds", "keepalive_seconds",
                      "metrics_listen"])
    return out


def _access(data: Any) -> AccessConfig:
    t = _Table(data, "access.")
    out = AccessConfig(
        keys=t.get("keys", _keys, ()),
        header=t.get("header", _str, "X-Proxy-Key") or "X-Proxy-Key",
        admin_keys=t.get("admin_keys", _keys, ()),
    )
    t.refuse_unknown(["keys", "header", "admin_keys"])
    return out


def _simple(data: Any, name: str, cls: type, keys: dict[str, Callable[[Any, str], Any]]) -> Any:
    t = _Table(data, f"{name}.")
    defaults = cls()
    values = {k: t.get(k, check, getattr(defaults, k)) for k, check in keys.items()}
    t.refuse_unknown(list(keys))
    return cls(**values)


_PROVIDER_KEYS: dict[str, Callable[[Any, str], Any]] = {
    "name": _str, "dialect": _str, "preset": _str, "base_url": _str, "keys": lambda v, w: _provider_keys(v, w),
    "models": _strs,
    "timeouts": lambda v, w: v, "auth": _one_of("bearer", "x-api-key", "api-key", "none"),
    "headers": _str_map, "query": _str_map, "max_concurrency": _int, "queue_size": _int,
    "system_prefix": _strs, "strip_params": lambda v, w: v, "thinking_budget": _int,
    "max_tokens_field": _one_of("max_tokens", "max_completion_tokens"), "ca_file": _str,
    "mock_reply": _str, "mock_delay": _num, "max_connections": _int,
    "credential": lambda v, w: _credential(v, w), "credential_ttl": _num, "oauth": lambda v, w: _oauth(v, w),
    "api_version": _str, "stream_only": _bool, "context_1m": _bool,
}


def _provider_keys(v: Any, where: str) -> tuple[str, ...]:
    """Upstream keys; an entry that is a credential source (``command:...``) is kept whole, not split."""
    out: list[str] = []
    for i, entry in enumerate(_strs(v, where)):
        if looks_like_source(entry.strip()):
            _credential(entry, f"{where}[{i}]")
            out.append(entry.strip())
        else:
            out.extend(split_keys(entry))
    return tuple(out)


def _credential(v: Any, where: str) -> str:
    """``env:NAME``, ``file:PATH[#json.path]`` or ``command:...``: one string, never split."""
    v = _str(v, where).strip()
    try:
        parse_spec(v)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    return v


_OAUTH_KEYS = ("token_url", "client_id", "client_secret", "refresh_token", "scope")


def _oauth(v: Any, where: str) -> OAuthSpec:
    """``[provider.oauth]``: the refresh-token grant (``token_url``, ``client_id``, ``refresh_token``)."""
    t = _Table(v, where + ".")
    t.refuse_unknown(list(_OAUTH_KEYS))
    values = {k: t.get(k, _str) for k in _OAUTH_KEYS}
    for k in ("token_url", "client_id", "refresh_token"):
        if not values[k]:
            raise t.err(k, "missing (the refresh-token grant needs token_url, client_id and refresh_token)")
    if not re.match(r"^https?://[^/\s]+", values["token_url"]):
        raise t.err("token_url", f'"{values["token_url"]}" is not an http(s) URL')
    return OAuthSpec(values["token_url"], values["client_id"], values["refresh_token"],
                     values["client_secret"] or None, values["scope"] or None)


def _timeouts(v: Any, where: str) -> Timeouts:
    t = _Table(v, where + ".")
    d = Timeouts()
    out = Timeouts(**{k: t.get(k, _num, getattr(d, k)) for k in ("connect", "first_byte", "idle", "total")})
    t.refuse_unknown(["connect", "first_byte", "idle", "total"])
    return out


def _provider(data: Any, i: int, names: set[str]) -> ProviderConfig:
    raw_name = data.get("name") if isinstance(data, dict) else None
    label = f'provider "{raw_name}" (provider[{i}]): ' if isinstance(raw_name, str) else f"provider[{i}]: "
    t = _Table(data, label)
    t.refuse_unknown(list(_PROVIDER_KEYS))
    name = t.get("name", _str)
    if not name:
        raise t.err("name", "missing (every provider needs a name)")
    if not re.match(r"^[A-Za-z0-9_.-]+$", name):
        raise t.err("name", "use letters, digits, '_', '-' or '.' only")
    if name in names:
        raise t.err("name", f'duplicate provider name "{name}"')
    names.add(name)
    values: dict[str, Any] = {}
    preset_name = t.get("preset", _str)
    if preset_name is not None:
        if preset_name not in PRESETS:
            near = difflib.get_close_matches(preset_name, list(PRESETS), n=1, cutoff=0.5)
            hint = f' (did you mean "{near[0]}"?)' if near else f" (known: {', '.join(sorted(PRESETS))})"
            raise t.err("preset", f'unknown preset "{preset_name}"{hint}')
        values.update(PRESETS[preset_name])
        values["preset"] = preset_name
    for k, check in _PROVIDER_KEYS.items():
        if k in ("name", "preset") or k not in t.data:
            continue
        if k == "timeouts":
            values[k] = _timeouts(t.data[k], f"{label}timeouts")
        elif k in ("headers", "query") and isinstance(values.get(k), Mapping):
            values[k] = {**values[k], **check(t.data[k], f"{label}{k}")}  # a preset's extras stay unless replaced
        elif k == "strip_params":
            sp = t.data[k]
            if sp == "auto":
                values[k] = "auto"
            else:
                values[k] = _strs(sp, f"{label}strip_params")
        else:
            values[k] = check(t.data[k], f"{label}{k}")
    dialect = values.get("dialect")
    if dialect is None:
        raise t.err("dialect", 'missing (set dialect, e.g. "openai-chat", or a preset)')
    if dialect not in DIALECTS:
        near = difflib.get_close_matches(dialect, DIALECTS, n=1, cutoff=0.4)
        hint = f' (did you mean "{near[0]}"?)' if near else f" (one of: {', '.join(DIALECTS)})"
        raise t.err("dialect", f'unknown dialect "{dialect}"{hint}')
    base = values.get("base_url", "")
    if dialect != "mock":
        if not base:
            hint = BASE_URL_HINTS.get(preset_name or "")
            raise t.err("base_url", f"missing ({hint})" if hint else "missing")
        if not re.match(r"^https?://[^/\s]+", base):
            raise t.err("base_url", f'"{base}" is not an http(s) URL')
    if "auth" not in values:
        values["auth"] = "x-api-key" if dialect == "anthropic" else "bearer"
    values["base_url"] = base.rstrip("/")
    return ProviderConfig(name=name, **values)


def _route(data: Any, i: int, providers: dict[str, ProviderConfig]) -> RouteConfig:
    t = _Table(data, f"route[{i}].")
    t.refuse_unknown(["model", "to", "weights"])
    model = t.get("model", _str)
    if not model:
        raise t.err("model", "missing")
    raw = t.get("to", _strs, ())
    if not raw:
        raise t.err("to", 'missing (a list of "provider:model" targets)')
    targets = []
    for j, s in enumerate(raw):
        pname, sep, upstream = s.partition(":")
        if pname not in providers:
            near = difflib.get_close_matches(pname, list(providers), n=1, cutoff=0.5)
            hint = f' (did you mean "{near[0]}"?)' if near else ""
            raise t.err(f"to[{j}]", f'unknown provider "{pname}"{hint}')
        targets.append(Target(pname, upstream if sep and upstream else model))
    weights = t.get("weights", lambda v, w: tuple(_num(x, w) for x in (v if isinstance(v, list) else [v])))
    if weights is not None and len(weights) != len(targets):
        raise t.err("weights", "needs one weight per target in `to`")
    return RouteConfig(model, tuple(targets), weights)


def _price(data: Any, i: int) -> PriceRule:
    """One ``[[price]]`` table: a model (glob) and USD per million input/output/cached tokens."""
    t = _Table(data, f"price[{i}].")
    t.refuse_unknown(["model", "input", "output", "cached", "cache_write"])
    model = t.get("model", _str)
    if not model:
        raise t.err("model", "missing (a model name or glob)")
    for k in ("input", "output"):
        if k not in t.data:
            raise t.err(k, "missing (USD per million tokens)")
    return PriceRule(model, t.get("input", _num), t.get("output", _num), t.get("cached", _num),
                 t.get("cache_write", _num))


TOP_LEVEL = ("server", "access", "store", "state", "thinking", "images", "provider", "route", "price")


def from_dict(data: dict[str, Any], env: Mapping[str, str] | None = None, source: str = "(dict)") -> Config:
    """Build a validated `Config` from parsed TOML (interpolating ``${VAR}`` from ``env``)."""
    data = interpolate(data, os.environ if env is None else env)
    top = _Table(data, "")
    top.refuse_unknown(list(TOP_LEVEL) + ["providers", "routes"])
    if "providers" in data or "routes" in data:
        k = "providers" if "providers" in data else "routes"
        raise ConfigError(f'{k}: unknown key "{k}" (did you mean "[[{k[:-1]}]]"?)')
    provs_raw = data.get("provider", [])
    if isinstance(provs_raw, dict):
        provs_raw = [provs_raw]
    if not isinstance(provs_raw, list):
        raise ConfigError("provider: expected [[provider]] tables")
    names: set[str] = set()
    providers = tuple(_provider(p, i, names) for i, p in enumerate(provs_raw, 1))
    by_name = {p.name: p for p in providers}
    routes_raw = data.get("route", [])
    if not isinstance(routes_raw, list):
        raise ConfigError("route: expected [[route]] tables")
    routes = tuple(_route(r, i, by_name) for i, r in enumerate(routes_raw, 1))
    prices_raw = data.get("price", [])
    if isinstance(prices_raw, dict):
        prices_raw = [prices_raw]
    if not isinstance(prices_raw, list):
        raise ConfigError("price: expected [[price]] tables")
    prices = tuple(_price(p, i) for i, p in enumerate(prices_raw, 1))
    return Config(
        server=_server(data.get("server", {})),
        access=_access(data.get("access", {})),
        store=_simple(data.get("store", {}), "store", StoreConfig, {"url": _str}),
        state=_simple(data.get("state", {}), "state", StateConfig, {"url": _str, "prefix": _str}),
        thinking=_simple(data.get("thinking", {}), "thinking", ThinkingConfig,
                         {"budget": _int, "low": _int, "medium": _int, "high": _int}),
        images=_simple(data.get("images", {}), "images", ImagesConfig,
                       {"fetch": _bool, "max_bytes": _int, "timeout": _num, "allow_private": _bool}),
        providers=providers,
        routes=routes,
        prices=prices,
        source=source,
    )


def load(path: str, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML file.  Called once at start (and on reload), never per request."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return from_dict(data, env, source=path)


def from_environment(env: Mapping[str, str]) -> Config:
    """The environment-only mode: a Factory-style gateway with no config file."""
    data: dict[str, Any] = {
        "server": {"listen": ["tcp:8001"]},
        "access": {"keys": [env.get("PROXY_ACCESS_KEYS", "")]},
        "store": {"url": env.get("FPROXY_STORE_URL") or "sqlite:fproxy.db"},
        "provider": [],
    }
    if env.get("PROXY_KEY_HEADER"):
        data["access"]["header"] = env["PROXY_KEY_HEADER"]
    if env.get("FPROXY_ADMIN_KEY"):
        data["access"]["admin_keys"] = [env["FPROXY_ADMIN_KEY"]]
    if env.get("FACTORY_API_KEYS"):
        p: dict[str, Any] = {"name": "factory", "preset": "factory", "keys": [env["FACTORY_API_KEYS"]]}
        if env.get("FACTORY_BASE_URL"):
            p["base_url"] = env["FACTORY_BASE_URL"]
        data["provider"].append(p)
    for preset, var in (("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY"),
                        ("openrouter", "OPENROUTER_API_KEY"), ("deepseek", "DEEPSEEK_API_KEY"),
                        ("groq", "GROQ_API_KEY")):
        keys = env.get(var) or env.get(var + "S")
        if keys:
            data["provider"].append({"name": preset, "preset": preset, "keys": [keys]})
    return from_dict(data, env, source="(environment)")
