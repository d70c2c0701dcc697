"""Known providers: the config values a ``preset = "NAME"`` fills in (each overridable).

Values here are defaults for `fproxy.config.ProviderConfig` fields, so a provider needs two
lines (``preset`` and ``keys`` or ``credential``); anything set in the provider's own table
wins, except ``headers`` and ``query``, which are merged over the preset's.  The README's
preset table lists this one.

A few presets also select a URL scheme in `fproxy.providers.provider.Provider.endpoint`:
``factory`` (the path and dialect depend on the model family), ``azure`` (deployment URLs
with ``api-version``) and ``vertex-anthropic`` (``{base_url}/{model}:rawPredict``).
"""
from __future__ import annotations

from typing import Any

#: Azure OpenAI's api-version used when the provider sets none (the current GA data-plane version)
AZURE_API_VERSION = "2024-10-21"


def _oa(base: str, **more: Any) -> dict[str, Any]:
    return {"dialect": "openai-chat", "base_url": base, "auth": "bearer", **more}


PRESETS: dict[str, dict[str, Any]] = {
    "mock": {"dialect": "mock", "base_url": "", "auth": "none", "models": ("fproxy-demo",)},
    # ---- Anthropic dialect
    "anthropic": {"dialect": "anthropic", "base_url": "https://api.anthropic.com", "auth": "x-api-key",
                  "models": ("claude-*",)},
    "minimax": {"dialect": "anthropic", "base_url": "https://api.minimax.io/anthropic", "auth": "bearer",
                "models": ("MiniMax-*",)},
    "vertex-anthropic": {"dialect": "anthropic", "base_url": "", "auth": "bearer", "models": ("claude-*",)},
    "factory": {"dialect": "anthropic", "base_url": "https://app.factory.ai", "auth": "bearer", "context_1m": True,
                "models": ("claude*", "*bedrock*", "*vertex*", "anthropic.*", "gpt-*", "o1*", "o3*", "o4*",
                           "codex*", "gemini*", "glm*", "kimi*", "grok-*", "nectarine*")},
    # ---- OpenAI Responses dialect
    "chatgpt-codex": {"dialect": "openai-responses", "base_url": "https://chatgpt.com/backend-api/codex",
                      "auth": "bearer", "stream_only": True, "strip_params": "auto",
                      "headers": {"OpenAI-Beta": "responses=experimental", "originator": "fproxy"},
                      "models": ("gpt-5*", "codex-*")},
    # ---- OpenAI chat dialect
    "openai": _oa("https://api.openai.com/v1", models=("gpt-*", "o1*", "o3*", "o4*", "chatgpt-*"),
                  max_tokens_field="max_completion_tokens"),
    "azure": _oa("", auth="api-key", api_version=AZURE_API_VERSION),
    "openrouter": _oa("https://openrouter.ai/api/v1"),
    "xai": _oa("https://api.x.ai/v1", models=("grok-*",)),
    "deepseek": _oa("https://api.deepseek.com/v1", models=("deepseek-*",)),
    "moonshot": _oa("https://api.moonshot.ai/v1", models=("kimi-*", "moonshot-*")),
    "zhipu": _oa("https://open.bigmodel.cn/api/paas/v4", models=("glm-*",)),
    "groq": _oa("https://api.groq.com/openai/v1"),
    "mistral": _oa("https://api.mistral.ai/v1", models=("mistral-*", "codestral-*", "magistral-*", "devstral-*")),
    "together": _oa("https://api.together.xyz/v1"),
    "perplexity": _oa("https://api.perplexity.ai", models=("sonar*",)),
    "cerebras": _oa("https://api.cerebras.ai/v1"),
    "gemini-openai": _oa("https://generativelanguage.googleapis.com/v1beta/openai", models=("gemini-*",)),
    "qwen": _oa("https://dashscope-intl.aliyuncs.com/compatible-mode/v1", models=("qwen*",)),
    "github-copilot": _oa("https://api.githubcopilot.com",
                          headers={"Copilot-Integration-Id": "vscode-chat", "Editor-Version": "vscode/1.99.3"}),
    "gitlab-duo": _oa("https://cloud.gitlab.com/ai/v1/proxy/openai/v1"),
    # ---- local servers: no key needed (a configured key goes as a bearer token)
    "ollama": _oa("http://127.0.0.1:11434/v1"),
    "vllm": _oa("http://127.0.0.1:8000/v1"),
    "lmstudio": _oa("http://127.0.0.1:1234/v1"),
    "litellm": _oa("http://127.0.0.1:4000/v1"),
}

#: What a preset with no default base URL needs (shown when ``base_url`` is missing).
BASE_URL_HINTS: dict[str, str] = {
    "azure": "the resource endpoint, e.g. https://RESOURCE.openai.azure.com",
    "vertex-anthropic": "e.g. https://REGION-aiplatform.googleapis.com/v1/projects/PROJECT/locations/REGION"
                        "/publishers/anthropic/models",
}

#: Fields ``strip_params = "auto"`` also drops for a preset, beyond its dialect's list
#: (`fproxy.codecs.passthrough.AUTO_STRIP`): the Codex backend refuses ``max_output_tokens``.
AUTO_STRIP: dict[str, tuple[str, ...]] = {
    "chatgpt-codex": ("max_output_tokens",),
}
