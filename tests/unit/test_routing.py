"""Routing: the design's four rules, in order, and the -thinking suffix."""
from __future__ import annotations

import pytest

from fproxy.config import from_dict
from fproxy.ir.errors import GatewayError
from fproxy.routing import Router

CFG = from_dict({
    "provider": [
        {"name": "oa", "dialect": "openai-chat", "base_url": "http://x/v1", "models": ["gpt-*", "exact-model"]},
        {"name": "an", "dialect": "anthropic", "base_url": "http://y", "models": ["claude-*"]},
    ],
    "route": [
        {"model": "slot", "to": ["oa:gpt-4o-mini", "an:claude-haiku"]},
        {"model": "claude-3-5-haiku-*", "to": ["oa:gpt-4o-mini"]},
        {"model": "lb", "to": ["oa:a", "an:b"], "weights": [1, 3]},
    ],
}, {})


def _t(res):
    return [(t.provider, t.model) for t in res.targets]


def test_rule1_routes_exact_and_glob_first():
    r = Router(CFG)
    assert _t(r.resolve("slot")) == [("oa", "gpt-4o-mini"), ("an", "claude-haiku")]
    # the glob route wins over the provider glob claude-*
    assert _t(r.resolve("claude-3-5-haiku-20241022")) == [("oa", "gpt-4o-mini")]


def test_rule2_provider_slash_model():
    assert _t(Router(CFG).resolve("an/claude-x")) == [("an", "claude-x")]


def test_rule3_provider_globs_keep_the_name():
    r = Router(CFG)
    assert _t(r.resolve("claude-sonnet-4-5")) == [("an", "claude-sonnet-4-5")]
    assert _t(r.resolve("exact-model")) == [("oa", "exact-model")]


def test_rule4_unknown_is_404():
    with pytest.raises(GatewayError) as e:
        Router(CFG).resolve("nope")
    assert e.value.status == 404 and e.value.code == "model_not_found"


def test_thinking_suffix_is_taken_off():
    res = Router(CFG).resolve("claude-sonnet-4-5-thinking")
    assert res.thinking and res.model == "claude-sonnet-4-5"
    assert _t(res) == [("an", "claude-sonnet-4-5")]
    plain = Router(CFG).resolve("claude-sonnet-4-5")
    assert not plain.thinking


def test_weighted_targets_pick_first_by_weight_then_fall_back():
    low = Router(CFG, rng=lambda: 0.1)   # 0.1 * 4 = 0.4 < 1: first target
    high = Router(CFG, rng=lambda: 0.9)  # 3.6: second target first
    assert _t(low.resolve("lb")) == [("oa", "a"), ("an", "b")]
    assert _t(high.resolve("lb")) == [("an", "b"), ("oa", "a")]


def test_model_names_lists_routes_and_exact_models():
    names = Router(CFG).model_names()
    assert names[:2] == ["slot", "lb"] and "exact-model" in names and "gpt-*" not in names
