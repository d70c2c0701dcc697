"""Model name -> ordered upstream targets, by the design's four rules (first match wins).

1. a ``[[route]]`` whose ``model`` (exact or glob) matches;
2. ``PROVIDER/model`` with a configured provider name;
3. the first ``[[provider]]`` whose ``models`` match (upstream model = the name asked for);
4. otherwise 404 ``model_not_found``.

A ``-thinking`` suffix is taken off first and reported, so the caller can turn thinking on.
Exact names are looked up in a dict; globs are compiled once.
"""
from __future__ import annotations

import fnmatch
import random
import re
from collections.abc import Callable

from attrs import frozen

from fproxy import catalogue
from fproxy.config import Config, RouteConfig, Target
from fproxy.ir.errors import GatewayError

THINKING_SUFFIX = "-thinking"


@frozen
class Resolution:
    model: str  # the name asked for, without the -thinking suffix
    targets: tuple[Target, ...]
    thinking: bool = False


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


class Router:
    def __init__(self, config: Config, rng: Callable[[], float] = random.random) -> None:
        self._rng = rng
        self._exact_routes: dict[str, RouteConfig] = {}
        self._glob_routes: list[tuple[re.Pattern[str], RouteConfig]] = []
        for r in config.routes:
            if _is_glob(r.model):
                self._glob_routes.append((re.compile(fnmatch.translate(r.model)), r))
            else:
                self._exact_routes.setdefault(r.model, r)
        self._providers = {p.name: p for p in config.providers}
        self._provider_globs: list[tuple[re.Pattern[str], str]] = []
        for p in config.providers:
            for m in p.models:
                self._provider_globs.append((re.compile(fnmatch.translate(m)), p.name))
        self._cache: dict[str, Resolution | None] = {}

    def resolve(self, name: str) -> Resolution:
        res = self._cache.get(name)
        if res is None:
            res = self._resolve_uncached(name)
            if len(self._cache) < 10000:
                self._cache[name] = res
        if res is None:
            raise GatewayError(404, f"The model `{name}` does not exist or you do not have access to it.",
                               code="model_not_found", param="model")
        route = self._exact_routes.get(res.model) if res.targets else None
        if route is None:
            for rx, r in self._glob_routes:
                if rx.match(res.model):
                    route = r
                    break
        if route is not None and route.weights:
            return Resolution(res.model, self._weighted(route), res.thinking)
        return res

    def _resolve_uncached(self, name: str) -> Resolution | None:
        exact = self._exact_routes.get(name)
        if exact is not None:  # a route written for the full name (even "x-thinking") is taken as is
            return Resolution(name, exact.to)
        if name.endswith(THINKING_SUFFIX) and len(name) > len(THINKING_SUFFIX):
            base = name[: -len(THINKING_SUFFIX)]
            found = self._lookup(base)
            if found is not None:
                return Resolution(base, found, thinking=True)
        found = self._lookup(name)
        return Resolution(name, found) if found is not None else None

    def _lookup(self, name: str) -> tuple[Target, ...] | None:
        r = self._exact_routes.get(name)
        if r is not None:
            return r.to
        for rx, route in self._glob_routes:
            if rx.match(name):
                return route.to
        pname, sep, rest = name.partition("/")
        if sep and rest and pname in self._providers:
            return (Target(pname, rest),)
        for rx, prov in self._provider_globs:
            if rx.match(name):
                return (Target(prov, name),)
        return None

    def _weighted(self, route: RouteConfig) -> tuple[Target, ...]:
        """Pick the first target by weight; the others follow in order as fallbacks."""
        weights = route.weights or ()
        total = sum(weights)
        if total <= 0:
            return route.to
        x = self._rng() * total
        for i, w in enumerate(weights):
            x -= w
            if x < 0:
                return (route.to[i],) + route.to[:i] + route.to[i + 1:]
        return route.to

    def model_names(self) -> list[str]:
        """Names for /v1/models: routes and exact provider models (globs are not listable), plus, for a
        Factory provider, the ids of Factory's models list that its globs serve."""
        names = [r for r in self._exact_routes]
        for p in self._providers.values():
            names.extend(m for m in p.models if not _is_glob(m))
            if p.preset == "factory":
                names.extend(catalogue.factory_ids([m for m in p.models if _is_glob(m)]))
        return list(dict.fromkeys(names))

    def limits(self, name: str) -> dict[str, int]:
        """``context_window`` / ``max_output_tokens`` of what ``name`` resolves to, where the catalogue knows.

        The first target's upstream model is looked up; its window is 1M when that provider
        sends the 1M-context beta (``context_1m``) and the model supports it.
        """
        try:
            res = self.resolve(name)
        except GatewayError:
            return {}
        if not res.targets:
            return {}
        target = res.targets[0]
        info = catalogue.info_for(target.model) or catalogue.info_for(res.model)
        if info is None:
            return {}
        prov = self._providers.get(target.provider)
        out: dict[str, int] = {}
        window = info.window(bool(prov is not None and prov.context_1m))
        if window:
            out["context_window"] = window
        if info.max_output:
            out["max_output_tokens"] = info.max_output
        return out
