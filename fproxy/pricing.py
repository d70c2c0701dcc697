"""Call costs for the usage ledger: ``[[price]]`` rules from the config, then the catalogue.

    [[price]]
    model = "gpt-4o*"          # exact name or glob, matched against the upstream model,
    input = 2.5                # then against the name the client asked for
    output = 10.0              # USD per million tokens
    cached = 1.25              # cache reads (default: input)
    cache_write = 3.125        # cache writes (default: input)

Rules are tried in order (put specific globs first), then `fproxy.catalogue.price_for`
(list prices of the common models).  A model with no price costs 0.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from attrs import frozen

from fproxy.catalogue import Price, price_for
from fproxy.ir.response import Usage


@frozen
class PriceRule:
    """One ``[[price]]`` table."""

    model: str
    input: float
    output: float
    cached: float | None = None
    cache_write: float | None = None

    def matches(self, name: str) -> bool:
        return name == self.model or fnmatch.fnmatchcase(name, self.model)

    @property
    def price(self) -> Price:
        return Price(self.input, self.output, self.cached, self.cache_write)


def cost_of(price: Price, u: Usage) -> float:
    """USD for one call.  ``u.prompt_tokens`` includes cache reads and writes (OpenAI meaning)."""
    cached = price.input if price.cached_input is None else price.cached_input
    write = price.input if price.cache_write is None else price.cache_write
    fresh = max(0, u.prompt_tokens - u.cache_read_tokens - u.cache_write_tokens)
    usd = fresh * price.input + u.cache_read_tokens * cached + u.cache_write_tokens * write \
        + u.completion_tokens * price.output
    return usd / 1_000_000.0


class PriceTable:
    """Prices by model name: the config's rules first, then the catalogue (results cached)."""

    def __init__(self, rules: Iterable[PriceRule] = ()) -> None:
        self._rules = tuple(rules)
        self._cache: dict[str, Price | None] = {}

    def find(self, *names: str | None) -> Price | None:
        """The price of the first of ``names`` that has one."""
        for name in names:
            if not name:
                continue
            p = self._lookup(name)
            if p is not None:
                return p
        return None

    def _lookup(self, name: str) -> Price | None:
        if name in self._cache:
            return self._cache[name]
        found = next((r.price for r in self._rules if r.matches(name)), None)
        if found is None:
            found = price_for(name)
        if len(self._cache) < 10_000:
            self._cache[name] = found
        return found

    def cost(self, usage: Usage | None, *names: str | None) -> float:
        """USD for ``usage`` of the first model in ``names`` with a price (0.0 when none has)."""
        if usage is None:
            return 0.0
        p = self.find(*names)
        return cost_of(p, usage) if p is not None else 0.0
