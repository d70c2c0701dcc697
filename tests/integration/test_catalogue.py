"""The model catalogue in the running gateway: max_tokens clamping and /v1/models limits."""
from __future__ import annotations

from typing import Any

import httpx
import pytest_twisted
from twisted.internet import threads

from tests.fakes.upstream import start_fake
from tests.integration.harness import provider, start_gateway

CK = "sk-client-catalogue"


def post(gw: Any, path: str, body: dict[str, Any], **headers: str) -> Any:
    return threads.deferToThread(httpx.post, gw.url + path, json=body, timeout=15,
                                 headers={"authorization": f"Bearer {CK}", **headers})


def get(gw: Any, path: str, **headers: str) -> Any:
    return threads.deferToThread(httpx.get, gw.url + path, timeout=15,
                                 headers={"authorization": f"Bearer {CK}", **headers})


@pytest_twisted.ensureDeferred
async def test_clamping_in_passthrough_and_translation_and_model_limits(reactor):
    ant = await start_fake(reactor, "anthropic", keys=["ka"])
    oai = await start_fake(reactor, "openai-chat", keys=["ko"])
    gw = await start_gateway(reactor, {
        "access": {"keys": [CK]},
        "provider": [provider("ant", "anthropic", ant.base_url, ["ka"], thinking_budget=30_000),
                     provider("oai", "openai-chat", oai.base_url, ["ko"])],
        "route": [{"model": "haiku", "to": ["ant:claude-3-5-haiku-20241022"]},
                  {"model": "opus", "to": ["ant:claude-opus-4-1-20250805"]},
                  {"model": "gpt", "to": ["oai:gpt-4o"]},
                  {"model": "local", "to": ["oai:my-finetune"]}]})
    msgs = [{"role": "user", "content": "hi"}]
    anthropic = {"anthropic-version": "2023-06-01"}
    try:
        # Anthropic client -> Anthropic upstream (passthrough): lowered to 8192, small values kept
        r = await post(gw, "/v1/messages", {"model": "haiku", "max_tokens": 100_000, "messages": msgs}, **anthropic)
        assert r.status_code == 200, r.text
        assert ant.requests[-1].body["max_tokens"] == 8_192
        r = await post(gw, "/v1/messages", {"model": "haiku", "max_tokens": 100, "messages": msgs}, **anthropic)
        assert r.status_code == 200 and ant.requests[-1].body["max_tokens"] == 100

        # passthrough with thinking: the budget stays below the lowered cap
        r = await post(gw, "/v1/messages", {"model": "opus", "max_tokens": 60_000, "messages": msgs,
                                            "thinking": {"type": "enabled", "budget_tokens": 50_000}}, **anthropic)
        assert r.status_code == 200, r.text
        sent = ant.requests[-1].body
        assert sent["max_tokens"] == 32_000 and sent["thinking"]["budget_tokens"] < 32_000

        # OpenAI client -> Anthropic upstream (translated), and the -thinking suffix within the limit
        r = await post(gw, "/v1/chat/completions", {"model": "opus", "max_tokens": 50_000, "messages": msgs})
        assert r.status_code == 200 and ant.requests[-1].body["max_tokens"] == 32_000
        # (the gateway raises max_tokens to budget + max_tokens = 40000: more than Opus 4.1 can produce)
        r = await post(gw, "/v1/chat/completions", {"model": "opus-thinking", "max_tokens": 10_000, "messages": msgs})
        assert r.status_code == 200, r.text
        sent = ant.requests[-1].body
        assert sent["max_tokens"] == 32_000 and sent["thinking"]["budget_tokens"] == 30_000

        # OpenAI passthrough: gpt-4o answers at most 16384; an unknown model is left alone
        r = await post(gw, "/v1/chat/completions", {"model": "gpt", "max_tokens": 50_000, "messages": msgs})
        assert r.status_code == 200 and oai.requests[-1].body["max_tokens"] == 16_384
        r = await post(gw, "/v1/chat/completions", {"model": "local", "max_tokens": 50_000, "messages": msgs})
        assert r.status_code == 200 and oai.requests[-1].body["max_tokens"] == 50_000

        models = {m["id"]: m for m in (await get(gw, "/v1/models")).json()["data"]}
        assert (models["gpt"]["context_window"], models["gpt"]["max_output_tokens"]) == (128_000, 16_384)
        assert models["haiku"]["max_output_tokens"] == 8_192
        assert "context_window" not in models["local"], "nothing invented for unknown models"
        one = (await get(gw, "/v1/models/opus", **anthropic)).json()
        assert (one["max_input_tokens"], one["max_tokens"]) == (200_000, 32_000)
    finally:
        await gw.stop()
        await ant.stop()
        await oai.stop()
