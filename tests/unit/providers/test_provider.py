"""Provider endpoints and last touches: Factory families, Vertex, stream-only upstreams, clamping."""
from __future__ import annotations

import base64
import json

import pytest
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from fproxy.config import from_dict
from fproxy.providers.provider import Provider, clamp_max_tokens

FK = "fk-factory"


def _provider(**conf) -> Provider:
    cfg = from_dict({"provider": [{"name": "p", **conf}]}, {})
    return Provider.build(Clock(), cfg.providers[0])


def _h(p: Provider, ep, client: Headers | None = None) -> dict[str, str]:
    h = p.headers(ep, p.pool.keys[0] if p.pool.keys else None, client)
    return {k.decode().lower(): v[0].decode() for k, v in h.getAllRawHeaders()}


# model, path, dialect, upstream model, x-api-provider, 1M beta
FACTORY = [
    ("claude-sonnet-4-5-20250929", "/api/llm/a/v1/messages", "anthropic", "claude-sonnet-4-5-20250929", None, True),
    ("claude-sonnet-4-20250514", "/api/llm/a/v1/messages", "anthropic", "claude-sonnet-4-20250514", None, True),
    ("claude-opus-4-1-20250805", "/api/llm/a/v1/messages", "anthropic", "claude-opus-4-1-20250805", None, False),
    ("claude-3-5-haiku-20241022", "/api/llm/a/v1/messages", "anthropic", "claude-3-5-haiku-20241022", None, False),
    ("bedrock-claude-3-5-sonnet-20241022", "/api/llm/a/v1/messages", "anthropic", "claude-3-5-sonnet-20241022",
     "bedrock_anthropic", False),
    ("bedrock:claude-sonnet-4-5-20250929", "/api/llm/a/v1/messages", "anthropic", "claude-sonnet-4-5-20250929",
     "bedrock_anthropic", True),
    ("vertex_claude-sonnet-4-20250514", "/api/llm/a/v1/messages", "anthropic", "claude-sonnet-4-20250514",
     "vertex_anthropic", True),
    ("vertexclaude-opus-4-1-20250805", "/api/llm/a/v1/messages", "anthropic", "claude-opus-4-1-20250805",
     "vertex_anthropic", False),
    ("gemini-2.5-pro", "/api/llm/o/v1/chat/completions", "openai-chat", "gemini-2.5-pro", None, False),
    ("glm-4.6", "/api/llm/o/v1/chat/completions", "openai-chat", "glm-4.6", None, False),
    ("kimi-k2-0905-preview", "/api/llm/o/v1/chat/completions", "openai-chat", "kimi-k2-0905-preview", None, False),
    ("gpt-5-2025-08-07", "/api/llm/o/v1/responses", "openai-responses", "gpt-5-2025-08-07", None, False),
    ("gpt-5-codex", "/api/llm/o/v1/responses", "openai-responses", "gpt-5-codex", None, False),
    ("o3", "/api/llm/o/v1/responses", "openai-responses", "o3", None, False),
    ("o4-mini", "/api/llm/o/v1/responses", "openai-responses", "o4-mini", None, False),
]


@pytest.mark.parametrize("model,path,dialect,upstream,api_provider,beta", FACTORY, ids=[f[0] for f in FACTORY])
def test_factory_families(model, path, dialect, upstream, api_provider, beta):
    p = _provider(preset="factory", keys=[FK], base_url="https://factory.example")
    ep = p.endpoint(model)
    assert (ep.url.decode(), ep.dialect, ep.model) == ("https://factory.example" + path, dialect, upstream)
    h = _h(p, ep)
    assert h["authorization"] == f"Bearer {FK}" and "x-api-key" not in h
    assert h.get("x-api-provider") == api_provider
    if dialect == "anthropic":
        assert h["anthropic-version"] == "2023-06-01"
    assert ("context-1m-2025-08-07" in h.get("anthropic-beta", "")) is beta


def test_factory_1m_beta_merges_with_client_betas_once():
    p = _provider(preset="factory", keys=[FK])
    ep = p.endpoint("claude-sonnet-4-5")
    h = _h(p, ep, Headers({b"anthropic-beta": [b"interleaved-thinking-2025-05-14"]}))
    assert h["anthropic-beta"] == "interleaved-thinking-2025-05-14,context-1m-2025-08-07"
    h = _h(p, ep, Headers({b"anthropic-beta": [b"context-1m-2025-08-07"]}))
    assert h["anthropic-beta"] == "context-1m-2025-08-07"
    plain = _provider(preset="anthropic", keys=["k"])
    assert "anthropic-beta" not in _h(plain, plain.endpoint("claude-sonnet-4-5")), "only where context_1m is set"


VERTEX = ("https://europe-west1-aiplatform.googleapis.com/v1/projects/pr/locations/europe-west1"
          "/publishers/anthropic/models")


@pytest.mark.parametrize("stream,suffix", [(False, ":rawPredict"), (True, ":streamRawPredict")])
def test_vertex_url_and_body(stream, suffix):
    p = _provider(preset="vertex-anthropic", base_url=VERTEX, keys=["ya29.tok"])
    ep = p.endpoint("claude-sonnet-4-5@20250929")
    body = {"model": "claude-sonnet-4-5@20250929", "max_tokens": 100, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}
    ep = p.finish_request(ep, body)
    assert ep.url.decode() == f"{VERTEX}/claude-sonnet-4-5@20250929{suffix}"
    assert "model" not in body and body["anthropic_version"] == "vertex-2023-10-16"
    assert body["stream"] is stream
    assert _h(p, ep)["authorization"] == "Bearer ya29.tok"


def test_stream_only_upstream_is_asked_for_a_stream():
    p = _provider(preset="chatgpt-codex", keys=["t"])
    body = {"model": "gpt-5", "input": "hi", "stream": False, "temperature": 0.2, "max_output_tokens": 50}
    from fproxy.codecs.passthrough import strip

    strip(body, p.config, "openai-responses")
    p.finish_request(p.endpoint("gpt-5"), body)
    assert body == {"model": "gpt-5", "input": "hi", "stream": True}
    chat = _provider(dialect="openai-chat", base_url="https://x.example/v1", stream_only=True)
    body = {"model": "m", "messages": []}
    chat.finish_request(chat.endpoint("m"), body)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def _jwt(claims: dict) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


def test_codex_account_id_comes_from_the_token():
    token = _jwt({"https://api.openai.com/auth": {"chatgpt_account_id": "acct-123"}})
    p = _provider(preset="chatgpt-codex", keys=[token])
    assert _h(p, p.endpoint("gpt-5"))["chatgpt-account-id"] == "acct-123"
    p = _provider(preset="chatgpt-codex", keys=[token], headers={"chatgpt-account-id": "configured"})
    assert _h(p, p.endpoint("gpt-5"))["chatgpt-account-id"] == "configured"
    p = _provider(preset="chatgpt-codex", keys=["not-a-jwt"])
    assert "chatgpt-account-id" not in _h(p, p.endpoint("gpt-5"))


@pytest.mark.parametrize("dialect,body,limit,expected", [
    ("openai-chat", {"max_tokens": 100_000}, 16_384, {"max_tokens": 16_384}),
    ("openai-chat", {"max_completion_tokens": 200_000}, 128_000, {"max_completion_tokens": 128_000}),
    ("openai-chat", {"max_tokens": 100}, 16_384, {"max_tokens": 100}),  # only lowered, never raised
    ("openai-chat", {}, 16_384, {}),
    ("openai-responses", {"max_output_tokens": 500_000}, 128_000, {"max_output_tokens": 128_000}),
    ("anthropic", {"max_tokens": 64_000}, 32_000, {"max_tokens": 32_000}),
    ("anthropic", {"max_tokens": 40_000, "thinking": {"type": "enabled", "budget_tokens": 36_000}}, 32_000,
     {"max_tokens": 32_000, "thinking": {"type": "enabled", "budget_tokens": 27_904}}),
    ("anthropic", {"max_tokens": 9_000}, None, {"max_tokens": 9_000}),  # unknown model: untouched
])
def test_clamp_max_tokens(dialect, body, limit, expected):
    clamp_max_tokens(dialect, body, limit)
    assert body == expected


def test_finish_request_clamps_to_the_catalogue():
    p = _provider(preset="anthropic", keys=["k"])
    body = {"model": "claude-opus-4-1-20250805", "max_tokens": 100_000, "messages": []}
    p.finish_request(p.endpoint("claude-opus-4-1-20250805"), body)
    assert body["max_tokens"] == 32_000
    body = {"model": "some-new-model", "max_tokens": 100_000, "messages": []}
    p.finish_request(p.endpoint("some-new-model"), body)
    assert body["max_tokens"] == 100_000
