"""Known providers: the config values a ``preset = "NAME"`` fills in (each overridable).

Values here are defaults for `fproxy.config.ProviderConfig` fields.  The ``factory`` preset
is special-cased in `fproxy.providers.endpoints`: the dialect and path depend on the model
family.
"""
from __future__ import annotations

from typing import Any


def _oa(base: str, **more: Any) -> dict[str, Any]:
    return {"dialect": "openai-chat", "base_url": base, "auth": "bearer", **more}


PRESETS: dict[str, dict[str, Any]] = {
    "mock": {"dialect": "mock", "base_url": "", "auth": "none", "models": ("fproxy-demo",)},
    "openai": _oa("https://api.openai.com/v1", models=("gpt-*", "o1*", "o3*", "o4*", "chatgpt-*"),
                  max_tokens_field="max_completion_tokens"),
    "anthropic": {"dialect": "anthropic", "base_url": "https://api.anthropic.com", "auth": "x-api-key",
                  "models": ("claude-*",)},
    "factory": {"dialect": "anthropic", "base_url": "https://app.factory.ai", "auth": "bearer",
                "models": ("claude*", "*bedrock*", "*vertex*", "gpt-*", "o1*", "o3*", "o4*", "codex*",
                           "gemini*", "glm*", "kimi*")},
    "azure": _oa("", auth="api-key", query={"api-version": "2024-10-21"}),
    "openrouter": _oa("https://openrouter.ai/api/v1"),
    "deepseek": _oa("https://api.deepseek.com/v1", models=("deepseek-*",)),
    "groq": _oa("https://api.groq.com/openai/v1"),
    "mistral": _oa("https://api.mistral.ai/v1", models=("mistral-*", "codestral-*", "magistral-*")),
    "together": _oa("https://api.together.xyz/v1"),
    "xai": _oa("https://api.x.ai/v1", models=("grok-*",)),
    "perplexity": _oa("https://api.perplexity.ai", models=("sonar*",)),
    "cerebras": _oa("https://api.cerebras.ai/v1"),
    "moonshot": _oa("https://api.moonshot.ai/v1", models=("kimi-*", "moonshot-*")),
    "zhipu": _oa("https://open.bigmodel.cn/api/paas/v4", models=("glm-*",)),
    "qwen": _oa("https://dashscope-intl.aliyuncs.com/compatible-mode/v1", models=("qwen*",)),
    "gemini-openai": _oa("https://generativelanguage.googleapis.com/v1beta/openai", models=("gemini-*",)),
    "minimax": {"dialect": "anthropic", "base_url": "https://api.minimax.io/anthropic", "auth": "bearer",
                "models": ("MiniMax-*",)},
    "ollama": _oa("http://127.0.0.1:11434/v1", auth="none"),
    "vllm": _oa("http://127.0.0.1:8000/v1", auth="none"),
    "lmstudio": _oa("http://127.0.0.1:1234/v1", auth="none"),
}
