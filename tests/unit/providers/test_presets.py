"""Every preset: the URL, auth header, extra headers and query of its outgoing request.

The integration test (tests/integration/test_presets.py) sends real requests to loopback fakes
with ``base_url`` overridden; this one checks what each preset sends to the real provider.
"""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from twisted.internet.task import Clock

from fproxy.config import ConfigError, from_dict
from fproxy.providers.presets import AZURE_API_VERSION, PRESETS
from fproxy.providers.provider import Provider

KEY = "sk-preset-key"
VERTEX_BASE = ("https://us-east5-aiplatform.googleapis.com/v1/projects/my-proj/locations/us-east5"
               "/publishers/anthropic/models")

# preset -> (extra config, model, expected URL, auth header, auth value, extra headers expected)
CASES = {
    "openai": ({}, "gpt-4o", "https://api.openai.com/v1/chat/completions", "authorization", f"Bearer {KEY}", {}),
    "anthropic": ({}, "claude-sonnet-4-5", "https://api.anthropic.com/v1/messages", "x-api-key", KEY,
                  {"anthropic-version": "2023-06-01"}),
    "minimax": ({}, "MiniMax-M2", "https://api.minimax.io/anthropic/v1/messages", "authorization", f"Bearer {KEY}",
                {"anthropic-version": "2023-06-01"}),
    "vertex-anthropic": ({"base_url": VERTEX_BASE}, "claude-sonnet-4@20250514",
                         VERTEX_BASE + "/claude-sonnet-4@20250514:rawPredict", "authorization", f"Bearer {KEY}", {}),
    "openrouter": ({}, "anthropic/claude-sonnet-4.5", "https://openrouter.ai/api/v1/chat/completions",
                   "authorization", f"Bearer {KEY}", {}),
    "xai": ({}, "grok-4", "https://api.x.ai/v1/chat/completions", "authorization", f"Bearer {KEY}", {}),
    "deepseek": ({}, "deepseek-chat", "https://api.deepseek.com/v1/chat/completions", "authorization",
                 f"Bearer {KEY}", {}),
    "moonshot": ({}, "kimi-k2-0905-preview", "https://api.moonshot.ai/v1/chat/completions", "authorization",
                 f"Bearer {KEY}", {}),
    "zhipu": ({}, "glm-4.6", "https://open.bigmodel.cn/api/paas/v4/chat/completions", "authorization",
              f"Bearer {KEY}", {}),
    "groq": ({}, "llama-3.3-70b-versatile", "https://api.groq.com/openai/v1/chat/completions", "authorization",
             f"Bearer {KEY}", {}),
    "mistral": ({}, "mistral-large-latest", "https://api.mistral.ai/v1/chat/completions", "authorization",
                f"Bearer {KEY}", {}),
    "together": ({}, "meta-llama/Llama-3.3-70B-Instruct-Turbo", "https://api.together.xyz/v1/chat/completions",
                 "authorization", f"Bearer {KEY}", {}),
    "perplexity": ({}, "sonar-pro", "https://api.perplexity.ai/chat/completions", "authorization", f"Bearer {KEY}",
                   {}),
    "cerebras": ({}, "llama3.1-8b", "https://api.cerebras.ai/v1/chat/completions", "authorization",
                 f"Bearer {KEY}", {}),
    "azure": ({"base_url": "https://my-res.openai.azure.com"}, "my-gpt4o-deployment",
              "https://my-res.openai.azure.com/openai/deployments/my-gpt4o-deployment/chat/completions"
              f"?api-version={AZURE_API_VERSION}", "api-key", KEY, {}),
    "github-copilot": ({}, "gpt-4.1", "https://api.githubcopilot.com/chat/completions", "authorization",
                       f"Bearer {KEY}", {"copilot-integration-id": "vscode-chat", "editor-version": "vscode/1.99.3"}),
    "gitlab-duo": ({}, "gpt-5", "https://cloud.gitlab.com/ai/v1/proxy/openai/v1/chat/completions", "authorization",
                   f"Bearer {KEY}", {}),
    "chatgpt-codex": ({}, "gpt-5-codex", "https://chatgpt.com/backend-api/codex/responses", "authorization",
                      f"Bearer {KEY}", {"openai-beta": "responses=experimental", "originator": "fproxy"}),
    "gemini-openai": ({}, "gemini-2.5-pro", "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
                      "authorization", f"Bearer {KEY}", {}),
    "qwen": ({}, "qwen3-coder-plus", "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions",
             "authorization", f"Bearer {KEY}", {}),
    "ollama": ({}, "llama3.2", "http://127.0.0.1:11434/v1/chat/completions", "authorization", f"Bearer {KEY}", {}),
    "vllm": ({}, "Qwen/Qwen3-8B", "http://127.0.0.1:8000/v1/chat/completions", "authorization", f"Bearer {KEY}",
             {}),
    "lmstudio": ({}, "qwen3-8b", "http://127.0.0.1:1234/v1/chat/completions", "authorization", f"Bearer {KEY}",
                 {}),
    "litellm": ({}, "gpt-4o", "http://127.0.0.1:4000/v1/chat/completions", "authorization", f"Bearer {KEY}", {}),
    "factory": ({}, "claude-sonnet-4-5-20250929", "https://app.factory.ai/api/llm/a/v1/messages", "authorization",
                f"Bearer {KEY}", {"anthropic-version": "2023-06-01", "anthropic-beta": "context-1m-2025-08-07"}),
}


def _provider(preset: str, **more) -> Provider:
    cfg = from_dict({"provider": [{"name": "p", "preset": preset, "keys": [KEY], **more}]}, {})
    return Provider.build(Clock(), cfg.providers[0])


def _headers(h) -> dict[str, str]:
    return {k.decode().lower(): v[0].decode() for k, v in h.getAllRawHeaders()}


def test_every_preset_of_the_issue_is_tested():
    assert set(CASES) == set(PRESETS) - {"mock"}


@pytest.mark.parametrize("preset", sorted(CASES))
def test_preset_request(preset):
    more, model, url, auth_name, auth_value, extra = CASES[preset]
    p = _provider(preset, **more)
    ep = p.endpoint(model)
    assert ep.url.decode() == url
    h = _headers(p.headers(ep, p.pool.keys[0], None))
    assert h[auth_name] == auth_value
    for other in {"authorization", "x-api-key", "api-key"} - {auth_name}:
        assert other not in h, f"{preset}: the key must go in {auth_name} only"
    for name, value in extra.items():
        assert h.get(name) == value, (preset, name, h)


def test_two_lines_of_config_are_enough():
    for preset in sorted(set(CASES) - {"azure", "vertex-anthropic"}):
        cfg = from_dict({"provider": [{"name": "p", "preset": preset, "keys": [KEY]}]}, {})
        assert cfg.providers[0].base_url.startswith("http")


@pytest.mark.parametrize("preset,hint", [("azure", "RESOURCE.openai.azure.com"),
                                         ("vertex-anthropic", "aiplatform.googleapis.com")])
def test_presets_without_a_base_url_say_what_it_is(preset, hint):
    with pytest.raises(ConfigError, match=hint):
        from_dict({"provider": [{"name": "p", "preset": preset, "keys": [KEY]}]}, {})


def test_azure_api_version_is_a_setting_and_a_deployment_base_is_kept():
    p = _provider("azure", base_url="https://r.openai.azure.com", api_version="2025-04-01-preview")
    q = parse_qs(urlsplit(p.endpoint("dep").url.decode()).query)
    assert q == {"api-version": ["2025-04-01-preview"]}
    p = _provider("azure", base_url="https://r.openai.azure.com/openai/deployments/fixed")
    assert p.endpoint("ignored").url.decode() == \
        f"https://r.openai.azure.com/openai/deployments/fixed/chat/completions?api-version={AZURE_API_VERSION}"


def test_preset_values_are_overridable_and_headers_merge():
    p = _provider("github-copilot", headers={"Editor-Version": "fproxy/1", "X-Extra": "1"},
                  base_url="https://copilot.example/api")
    ep = p.endpoint("gpt-4.1")
    assert ep.url == b"https://copilot.example/api/chat/completions"
    h = _headers(p.headers(ep, p.pool.keys[0], None))
    assert h["editor-version"] == "fproxy/1" and h["x-extra"] == "1"
    assert h["copilot-integration-id"] == "vscode-chat", "a preset header stays unless replaced"
    p = _provider("anthropic", auth="bearer")
    assert _headers(p.headers(p.endpoint("claude-x"), p.pool.keys[0], None))["authorization"] == f"Bearer {KEY}"


def test_local_presets_send_no_key_when_none_is_configured():
    cfg = from_dict({"provider": [{"name": "p", "preset": "ollama"}]}, {})
    p = Provider.build(Clock(), cfg.providers[0])
    assert not p.needs_key
    assert "authorization" not in _headers(p.headers(p.endpoint("llama3.2"), None, None))
