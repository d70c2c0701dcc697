"""Same-dialect fast path: the client's body goes upstream with only ``model`` rewritten.

Unknown fields survive; a ``model`` inside ``tools[]`` or metadata is never touched.
Streams ask OpenAI-dialect upstreams for usage (``stream_options.include_usage``) so
usage can be recorded; the usage chunk is then hidden from a client that did not ask.
"""
from __future__ import annotations

from typing import Any

from fproxy.config import ProviderConfig
from fproxy.ir.errors import bad_request
from fproxy.ir.response import Usage


def check(dialect: str, body: dict[str, Any]) -> None:
    """The cheap shape checks worth doing before spending an upstream round trip."""
    if dialect in ("openai-chat", "anthropic"):
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise bad_request("messages: expected a non-empty list of messages", param="messages")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise bad_request(f"messages[{i}]: expected a message object with a role", param=f"messages[{i}]")
    elif dialect == "openai-responses" and "input" in body and not isinstance(body["input"], (str, list)):
        raise bad_request("input: expected a string or a list of items", param="input")


def prepare(dialect: str, body: dict[str, Any], model: str, provider: ProviderConfig) -> dict[str, Any]:
    check(dialect, body)
    out = dict(body)
    out["model"] = model
    if dialect == "openai-chat" and out.get("stream"):
        so = out.get("stream_options")
        out["stream_options"] = {**so, "include_usage": True} if isinstance(so, dict) else {"include_usage": True}
    if provider.system_prefix:
        _prefix_system(dialect, out, provider.system_prefix)
    if dialect == "openai-chat" and provider.max_tokens_field == "max_completion_tokens" \
            and "max_tokens" in out and "max_completion_tokens" not in out:
        out["max_completion_tokens"] = out.pop("max_tokens")
    return strip(out, provider, dialect)


def _prefix_system(dialect: str, body: dict[str, Any], lines: tuple[str, ...]) -> None:
    """Each ``system_prefix`` line is its own system message / block before the client's (as on the
    translated path); a Responses upstream gets them joined with blank lines ahead of ``instructions``."""
    if dialect == "openai-chat":
        body["messages"] = [{"role": "system", "content": line} for line in lines] + list(body.get("messages") or [])
    elif dialect == "anthropic":
        system = body.get("system")
        blocks = [{"type": "text", "text": line} for line in lines]
        if isinstance(system, list):
            body["system"] = blocks + system
        elif isinstance(system, str) and system:
            body["system"] = blocks + [{"type": "text", "text": system}]
        else:
            body["system"] = blocks
    elif dialect == "openai-responses":
        ins = body.get("instructions")
        body["instructions"] = "\n\n".join(list(lines) + ([ins] if isinstance(ins, str) and ins else []))


#: what ``strip_params = "auto"`` removes per upstream dialect (fields such upstreams refuse)
AUTO_STRIP: dict[str, tuple[str, ...]] = {
    "openai-chat": (),
    "anthropic": (),
    "openai-responses": ("temperature", "top_p"),
}


def strip(body: dict[str, Any], provider: ProviderConfig, dialect: str) -> dict[str, Any]:
    names = AUTO_STRIP.get(dialect, ()) if provider.strip_params == "auto" else provider.strip_params
    for name in names:
        body.pop(name, None)
    return body


def usage_of(dialect: str, obj: dict[str, Any]) -> Usage | None:
    """The usage of a whole (non-streamed) answer, read with the dialect codec's own converter."""
    u = obj.get("usage")
    if not isinstance(u, dict):
        return None
    if dialect == "anthropic":
        from fproxy.codecs.anthropic import usage_from_anthropic

        return usage_from_anthropic(u)
    if dialect == "openai-responses":
        from fproxy.codecs.openai_responses import usage_from_json as responses_usage

        return responses_usage(u)
    from fproxy.codecs.openai_chat import usage_from_json

    return usage_from_json(u)
