"""Same-dialect preparation: only `model` rewritten; system_prefix lines each their own block."""
from __future__ import annotations

from fproxy.codecs.passthrough import prepare, usage_of
from fproxy.config import from_dict

P = from_dict({"provider": [{"name": "p", "dialect": "openai-chat", "base_url": "http://x/v1",
                             "system_prefix": ["Line A.", "Line B."]}]}, {}).providers[0]


def test_chat_prefix_lines_are_system_messages_and_usage_is_requested():
    body = {"model": "slot", "stream": True, "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f", "model": "keep"}}]}
    out = prepare("openai-chat", body, "up", P)
    assert out["model"] == "up" and out["tools"] == body["tools"] and body["model"] == "slot"
    assert out["messages"][:2] == [{"role": "system", "content": "Line A."}, {"role": "system", "content": "Line B."}]
    assert out["stream_options"] == {"include_usage": True}


def test_anthropic_and_responses_prefix_shapes():
    a = prepare("anthropic", {"model": "m", "system": "Client.", "messages": [{"role": "user", "content": "x"}]},
                "up", P)
    assert [b["text"] for b in a["system"]] == ["Line A.", "Line B.", "Client."]
    r = prepare("openai-responses", {"model": "m", "input": "x", "instructions": "Client."}, "up", P)
    assert r["instructions"] == "Line A.\n\nLine B.\n\nClient."


def test_usage_of_each_dialect_uses_the_codec_meaning():
    a = usage_of("anthropic", {"usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 2}})
    assert (a.prompt_tokens, a.cache_read_tokens, a.completion_tokens) == (15, 5, 2)
    r = usage_of("openai-responses", {"usage": {"input_tokens": 9, "output_tokens": 3,
                                                "input_tokens_details": {"cached_tokens": 4}}})
    assert (r.prompt_tokens, r.cache_read_tokens) == (9, 4)
    assert usage_of("openai-chat", {}) is None
