"""Costs: [[price]] rules before the catalogue, specific rules first, cache reads/writes priced apart."""
from __future__ import annotations

import pytest

from fproxy.catalogue import Price
from fproxy.config import ConfigError, from_dict
from fproxy.ir.response import Usage
from fproxy.pricing import PriceRule, PriceTable, cost_of


def test_catalogue_prices_with_its_tolerant_names():
    t = PriceTable()
    assert t.find("gpt-4o-mini").input == 0.15
    assert t.find("openai/gpt-4o-mini-2024-07-18").cached_input == 0.075
    assert t.find("claude-haiku-4-5").cache_write == 1.25
    assert t.find("no-such-model") is None
    assert t.find(None, "", "no-such", "gpt-4o-mini").output == 0.60  # the first name that has a price


def test_rules_come_first_in_order():
    t = PriceTable([PriceRule("gpt-4o-mini*", 9, 9), PriceRule("gpt-*", 1, 2, 0.5), PriceRule("my-local", 0, 0)])
    assert t.find("gpt-4o-mini").input == 9
    assert (t.find("gpt-5").input, t.find("gpt-5").cached_input) == (1, 0.5)
    assert t.find("my-local").output == 0
    assert t.find("claude-haiku-4-5").input == 1.0  # no rule: the catalogue


def test_cost_prices_cache_reads_and_writes_separately():
    p = Price(3.0, 15.0, 0.3, 3.75)
    u = Usage(prompt_tokens=1_000_000, completion_tokens=100_000, cache_read_tokens=200_000,
              cache_write_tokens=100_000)
    assert cost_of(p, u) == pytest.approx(0.7 * 3.0 + 0.2 * 0.3 + 0.1 * 3.75 + 0.1 * 15.0)
    assert cost_of(Price(1.0, 2.0), Usage(prompt_tokens=10, cache_read_tokens=10)) == pytest.approx(10e-6)
    assert PriceTable().cost(None, "gpt-4o") == 0.0
    assert PriceTable().cost(Usage(prompt_tokens=5), "no-price") == 0.0


def test_config_price_tables():
    cfg = from_dict({"price": [{"model": "gpt-4o*", "input": 1, "output": 2, "cached": 0.5}]}, {})
    assert cfg.prices == (PriceRule("gpt-4o*", 1.0, 2.0, 0.5, None),)
    assert PriceTable(cfg.prices).find("gpt-4o-mini").cached_input == 0.5


@pytest.mark.parametrize("table,message", [
    ({"model": "x", "input": 1}, "price[1].output: missing"),
    ({"input": 1, "output": 1}, "price[1].model: missing"),
    ({"model": "x", "input": -1, "output": 1}, "price[1].input: expected a non-negative number"),
    ({"model": "x", "input": 1, "output": 1, "cache": 1}, 'price[1].cache: unknown key "cache"'),
])
def test_bad_price_tables_name_the_key(table, message):
    with pytest.raises(ConfigError) as e:
        from_dict({"price": [table]}, {})
    assert message in str(e.value)
