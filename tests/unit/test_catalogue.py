"""The bundled model catalogue: every Factory model known, tolerant lookups, prices."""
from __future__ import annotations

import pytest

from fproxy import catalogue
from fproxy.catalogue import FACTORY_MODELS, info_for, max_output_for, price_for, supports_1m


@pytest.mark.parametrize("model", FACTORY_MODELS)
def test_every_factory_model_has_limits(model):
    info = info_for(model)
    assert info is not None, model
    assert info.context_window and info.context_window >= 128_000
    assert info.max_output and info.max_output >= 4_096


@pytest.mark.parametrize("model,window,window_1m,max_out", [
    ("claude-sonnet-4-5-20250929", 200_000, 1_000_000, 64_000),
    ("claude-sonnet-4-20250514", 200_000, 1_000_000, 64_000),
    ("claude-opus-4-1-20250805", 200_000, 200_000, 32_000),
    ("claude-3-5-haiku-20241022", 200_000, 200_000, 8_192),
    ("gpt-5-2025-08-07", 400_000, 400_000, 128_000),
    ("gemini-2.5-pro", 1_048_576, 1_048_576, 65_536),
    ("gemini-2.5-flash", 1_048_576, 1_048_576, 65_536),
])
def test_limits_named_by_the_issue(model, window, window_1m, max_out):
    info = info_for(model)
    assert (info.window(), info.window(beta_1m=True), info.max_output) == (window, window_1m, max_out)


@pytest.mark.parametrize("spelling,canonical", [
    ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929"),  # no date
    ("claude-sonnet-4@20250514", "claude-sonnet-4-20250514"),  # Vertex
    ("anthropic/claude-sonnet-4.5", "claude-sonnet-4-5-20250929"),  # OpenRouter
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5-20250929"),  # Bedrock profile
    ("anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku-20240307"),
    ("bedrock-claude-3-5-sonnet-20241022", "claude-3-5-sonnet-20241022"),  # Factory
    ("vertex_claude-opus-4-1", "claude-opus-4-1-20250805"),
    ("gpt-5", "gpt-5-2025-08-07"),
    ("gpt-4o-2024-08-06", "gpt-4o-2024-08-06"),
    ("gpt-4o", "gpt-4o-2024-08-06"),
    ("o3", "o3-2025-04-16"),
    ("grok-4", "grok-4-0709"),
    ("glm-4-6", "glm-4.6"),
    ("GPT-4O-MINI", "gpt-4o-mini-2024-07-18"),
])
def test_tolerant_lookup(spelling, canonical):
    assert info_for(spelling).id == canonical


def test_unknown_models_have_nothing():
    assert info_for("my-local-llama") is None
    assert info_for("") is None and info_for(None) is None
    assert price_for("my-local-llama") is None and max_output_for("my-local-llama") is None
    assert info_for("gpt-5-unheard-of") is None  # no prefix guessing


def test_prices_for_the_ledger():
    p = price_for("claude-sonnet-4-5-20250929")
    assert (p.input, p.output, p.cached_input) == (3.0, 15.0, 0.30)
    p = price_for("gpt-5-mini")
    assert (p.input, p.output, p.cached_input) == (0.25, 2.0, 0.025)
    assert price_for("nectarine-alpha-2025-07-24") is None  # limits known, price not public


def test_1m_only_for_sonnet_4_and_4_5():
    assert supports_1m("claude-sonnet-4-5") and supports_1m("claude-sonnet-4-20250514")
    assert not supports_1m("claude-opus-4-1-20250805") and not supports_1m("claude-3-7-sonnet-20250219")
    assert not supports_1m("gpt-5")


def test_factory_ids_follow_globs():
    assert catalogue.factory_ids(["claude*"]) == [m for m in FACTORY_MODELS if m.startswith("claude")]
    assert "glm-4.6" in catalogue.factory_ids(["glm*"]) and catalogue.factory_ids(["nothing*"]) == []
