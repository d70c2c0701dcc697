"""Anthropic Messages (+ count_tokens, models) as api.anthropic.com answers it (pure).

Stricter than today's api.anthropic.com in one place, on purpose: consecutive same-role
turns are rejected (Bedrock and older API versions do so), so a gateway must merge them.
Thinking blocks carry the fake's own signature (L{sign_thinking}); a thinking block sent
back with any other signature is rejected, as a forged or edited one is by the real API.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from tests.fakes.wire_common import (
    ApiError, Reply, estimate_tokens, fragments, new_id, sign_thinking, signature_ok, sse,
)  # fmt: skip

# Documented request fields (anthropic-sdk-python MessageCreateParams + stream), including
# the ones Claude Code sends (output_config, context_management).
KNOWN_PARAMS = frozenset({
    "cache_control", "container", "context_management", "inference_geo", "max_tokens",
    "mcp_servers", "messages", "metadata", "model", "output_config", "service_tier", "speed",
    "stop_sequences", "stream", "system", "temperature", "thinking", "tool_choice", "tools",
    "top_k", "top_p",
})  # fmt: skip
COUNT_PARAMS = frozenset({"cache_control", "context_management", "mcp_servers", "messages", "model",
                          "output_config", "system", "thinking", "tool_choice", "tools"})  # fmt: skip
ROUTES = {"/v1/messages": "generate", "/v1/messages/count_tokens": "count_tokens"}
TOOL_ID_PREFIX = "toolu_01"
USER_BLOCKS = ("text", "image", "document", "tool_result", "search_result")
ASSISTANT_BLOCKS = ("text", "tool_use", "thinking", "redacted_thinking", "server_tool_use", "web_search_tool_result")
STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
VERSION_RE = re.compile(r"^20\d\d-\d\d-\d\d$")
GARBAGE_BODY = b'{"id": "msg_broken", "type": "message", "content": [ {"ty'
GARBAGE_STREAM = (
    b'event: message_start\ndata: {"type": "message_st\n\n',
    b"<html><body>502 Bad Gateway</body></html>\n\n",
    b"event: content_block_delta\ndata: nonsense\n\n",
)


def error_body(type_: str, message: str) -> dict[str, Any]:
    """The Anthropic error envelope."""
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": new_id("req_011")}


def err(status: int, message: str, type_: str = "invalid_request_error") -> ApiError:
    """An L{ApiError} carrying an Anthropic error body."""
    return ApiError(status, error_body(type_, message))


def response_headers() -> dict[str, str]:
    """Headers Anthropic puts on every answer."""
    return {"request-id": new_id("req_011")}


def authenticate(headers: dict[str, str], keys: list[str] | None) -> str:
    """The x-api-key (or Bearer token), or Anthropic's 401."""
    key = headers.get("x-api-key", "")
    auth = headers.get("authorization", "")
    if not key and auth.lower().startswith("bearer "):
        key = auth[7:].strip()
    if not key:
        raise err(401, "x-api-key header is required", "authentication_error")
    if keys is not None and key not in keys:
        raise err(401, "invalid x-api-key", "authentication_error")
    return key


def check_headers(headers: dict[str, str]) -> None:
    """anthropic-version is mandatory."""
    version = headers.get("anthropic-version")
    if not version:
        raise err(400, "anthropic-version: header is required")
    if not VERSION_RE.match(version) or version < "2023-01-01":
        raise err(400, f"anthropic-version: invalid version '{version}'")


def parse_error() -> ApiError:
    """The 400 for a body that is not a JSON object."""
    return err(400, "There was an error parsing the body of your request. Please ensure the body is valid JSON.")


def not_found(method: str, path: str) -> ApiError:
    """The 404 for an unknown path."""
    return err(404, "Not Found", "not_found_error")


def _check_block(b: object, w: str, role: str) -> None:
    if not isinstance(b, dict):
        raise err(400, f"{w}: Input should be a valid dictionary or object to extract fields from")
    kind = b.get("type")
    if kind not in (USER_BLOCKS if role == "user" else ASSISTANT_BLOCKS):
        raise err(400, f"{w}.type: '{kind}' content blocks are not permitted in '{role}' messages")
    if kind == "text":
        if not isinstance(b.get("text"), str):
            raise err(400, f"{w}.text: Field required")
        if not b["text"].strip():
            raise err(400, f"{w}.text: text content blocks must contain non-whitespace text"
                      if b["text"] else f"{w}.text: text content blocks must be non-empty")  # fmt: skip
    elif kind == "tool_use":
        if not isinstance(b.get("id"), str) or not re.match(r"^[a-zA-Z0-9_-]+$", b["id"]):
            raise err(400, f"{w}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        if not isinstance(b.get("input"), dict):
            raise err(400, f"{w}.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        if not isinstance(b.get("tool_use_id"), str):
            raise err(400, f"{w}.tool_use_id: Field required")
        if isinstance(b.get("content"), list):
            for k, sub in enumerate(b["content"]):
                _check_block(sub, f"{w}.content.{k}", "user")
    elif kind == "thinking":
        if not signature_ok(b.get("thinking"), b.get("signature")):
            raise err(400, f"{w}: Invalid `signature` in `thinking` block")
    elif kind == "image":
        src = b.get("source")
        if not isinstance(src, dict) or src.get("type") not in ("base64", "url", "file"):
            raise err(400, f"{w}.source: Input tag found using 'type' does not match any of the expected tags: "
                           "'base64', 'url', 'file'")  # fmt: skip


def _blocks(m: dict[str, Any], w: str, is_last: bool) -> list[dict[str, Any]]:
    content = m.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise err(400, f"{w}.content: Input should be a valid list")
    if not content and not (is_last and m.get("role") == "assistant"):
        raise err(400, f"{w}: all messages must have non-empty content except for the optional final "
                       "assistant message")  # fmt: skip
    for j, b in enumerate(content):
        _check_block(b, f"{w}.content.{j}", m["role"])
    return content


def _check_tool_results(blocks: list[dict[str, Any]], expected: list[str], i: int) -> None:
    ids = [b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"]
    for j, b in enumerate(blocks):
        if b.get("type") == "tool_result" and b["tool_use_id"] not in expected:
            raise err(400, f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                           f"{b['tool_use_id']}. Each `tool_result` block must have a corresponding `tool_use` "
                           "block in the previous message.")  # fmt: skip
    missing = [x for x in expected if x not in ids]
    if missing:
        raise err(400, f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks immediately "
                       f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding "
                       "`tool_result` block in the next message.")  # fmt: skip
    kinds = [b.get("type") for b in blocks]
    if ids and kinds[: len(ids)] != ["tool_result"] * len(ids):
        raise err(400, f"messages.{i}.content: tool_result blocks must come first in the content array; any "
                       "other content must come after all tool_result blocks")  # fmt: skip


def _check_messages(msgs: object) -> list[list[dict[str, Any]]]:
    if not isinstance(msgs, list) or not msgs:
        raise err(400, "messages: at least one message is required" if isinstance(msgs, list)
                  else "messages: Field required")  # fmt: skip
    turns, prev_role, expected = [], None, []
    for i, m in enumerate(msgs):
        w = f"messages.{i}"
        role = m.get("role") if isinstance(m, dict) else None
        if role == "system":
            raise err(400, 'messages: Unexpected role "system". The Messages API accepts a top-level `system` '
                           'parameter, not "system" as an input message role.')  # fmt: skip
        if role not in ("user", "assistant"):
            raise err(400, f"{w}.role: Input should be 'user' or 'assistant'")
        if i == 0 and role != "user":
            raise err(400, 'messages: first message must use the "user" role')
        if role == prev_role:
            raise err(400, 'messages: roles must alternate between "user" and "assistant", but found multiple '
                           f'"{role}" roles in a row')  # fmt: skip
        blocks = _blocks(m, w, i == len(msgs) - 1)
        if role == "user":
            _check_tool_results(blocks, expected, i)
            expected = []
        else:
            expected = [b["id"] for b in blocks if b.get("type") == "tool_use"]
        turns.append(blocks)
        prev_role = role
    if expected:
        raise err(400, f"messages.{len(msgs) - 1}: `tool_use` ids were found without `tool_result` blocks "
                       f"immediately after: {', '.join(expected)}. Each `tool_use` block must have a "
                       "corresponding `tool_result` block in the next message.")  # fmt: skip
    return turns


def _check_thinking(body: dict[str, Any], turns: list[list[dict[str, Any]]], count_only: bool) -> None:
    th = body.get("thinking")
    if th is None:
        return
    if not isinstance(th, dict) or th.get("type") not in ("enabled", "disabled", "adaptive"):
        raise err(400, "thinking: Input tag found using 'type' does not match any of the expected tags: "
                       "'enabled', 'disabled', 'adaptive'")  # fmt: skip
    if th["type"] == "enabled":
        budget = th.get("budget_tokens")
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise err(400, "thinking.enabled.budget_tokens: Field required")
        if budget < 1024:
            raise err(400, "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
        if not count_only and budget >= body["max_tokens"]:
            raise err(400, "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
                           "documentation at "
                           "https://docs.claude.com/en/docs/build-with-claude/extended-thinking")  # fmt: skip
    if th["type"] == "disabled":
        return
    temp = body.get("temperature")
    if temp is not None and temp != 1:
        raise err(400, "`temperature` may only be set to 1 when thinking is enabled or in adaptive mode.")
    if body.get("top_k") is not None:
        raise err(400, "`top_k` must be unset when thinking is enabled or in adaptive mode.")
    tc = body.get("tool_choice")
    if isinstance(tc, dict) and tc.get("type") in ("any", "tool"):
        raise err(400, "Thinking may not be enabled when tool_choice forces tool use.")
    # A tool loop in progress: the assistant turn answered by the final tool_result must
    # start with the (signed) thinking block it was returned with.
    last = turns[-1]
    if len(turns) >= 2 and any(b.get("type") == "tool_result" for b in last):
        prev = turns[-2]
        first = prev[0].get("type") if prev else "text"
        if first not in ("thinking", "redacted_thinking"):
            raise err(400, f"messages.{len(turns) - 2}.content.0.type: Expected `thinking` or `redacted_thinking`, "
                           f"but found `{first}`. When `thinking` is enabled, a final `assistant` message must "
                           "start with a thinking block (preceeding the lastmost set of `tool_use` and "
                           "`tool_result` blocks). We recommend you include thinking blocks from previous turns. "
                           "To avoid this requirement, disable `thinking`.")  # fmt: skip


def validate(body: Any, headers: dict[str, str], count_only: bool = False) -> None:
    """Raise the L{ApiError} api.anthropic.com would answer for this request, if any."""
    if not isinstance(body, dict):
        raise parse_error()
    for k in body:
        if k not in (COUNT_PARAMS if count_only else KNOWN_PARAMS):
            raise err(400, f"{k}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise err(400, "model: Field required")
    if not count_only:
        mt = body.get("max_tokens")
        if mt is None:
            raise err(400, "max_tokens: Field required")
        if isinstance(mt, bool) or not isinstance(mt, int) or mt < 1:
            raise err(400, "max_tokens: Input should be a valid integer greater than or equal to 1")
    turns = _check_messages(body.get("messages"))
    system = body.get("system")
    if isinstance(system, list):
        for j, b in enumerate(system):
            if not isinstance(b, dict) or b.get("type") != "text":
                raise err(400, f"system.{j}: Input tag found using 'type' does not match any of the expected tags: "
                               "'text'")  # fmt: skip
            _check_block(b, f"system.{j}", "user")
    elif system is not None and not isinstance(system, str):
        raise err(400, "system: Input should be a valid string or list")
    temp = body.get("temperature")
    if temp is not None and (isinstance(temp, bool) or not isinstance(temp, (int, float)) or not 0 <= temp <= 1):
        raise err(400, "temperature: Input should be less than or equal to 1")
    for j, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise err(400, f"tools.{j}.name: Field required")
        if tool.get("type") in (None, "custom") and not isinstance(tool.get("input_schema"), dict):
            raise err(400, f"tools.{j}.custom.input_schema: Field required")
    _check_thinking(body, turns, count_only)


def thinking_for(body: dict[str, Any], scripted: str | None) -> str | None:
    """Anthropic returns a signed thinking block exactly when the request turns thinking on."""
    th = body.get("thinking")
    if not (isinstance(th, dict) and th.get("type") in ("enabled", "adaptive")):
        return None
    return scripted or f"Thinking about: {prompt_text(body)[:60]}"


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    out = []
    for b in content if isinstance(content, list) else []:
        if isinstance(b, dict) and b.get("type") == "text":
            out.append(b.get("text", ""))
        elif isinstance(b, dict) and b.get("type") == "tool_result":
            out.append(_text_of(b.get("content")))
    return " ".join(out)


def prompt_text(body: dict[str, Any]) -> str:
    """Text of the last user turn (tool results included)."""
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            return _text_of(m.get("content"))
    return ""


def prompt_obj(body: dict[str, Any]) -> object:
    """What counts as prompt tokens."""
    return {"system": body.get("system"), "messages": body.get("messages"), "tools": body.get("tools")}


def _content(reply: Reply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if reply.thinking:
        blocks.append({"type": "thinking", "thinking": reply.thinking, "signature": sign_thinking(reply.thinking)})
    if reply.text or not reply.tool_calls:
        blocks.append({"type": "text", "text": reply.text})
    for c in reply.tool_calls:
        blocks.append({"type": "tool_use", "id": c.id, "name": c.name, "input": c.input_object()})
    return blocks


def _usage(reply: Reply) -> dict[str, Any]:
    u = reply.usage
    return {"input_tokens": u.input, "cache_creation_input_tokens": u.cache_write,
            "cache_read_input_tokens": u.cache_read, "output_tokens": u.output, "service_tier": "standard"}  # fmt: skip


def render(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    """The non-streaming Message."""
    return {"id": new_id("msg_01"), "type": "message", "role": "assistant", "model": reply.model,
            "content": _content(reply), "stop_reason": STOP[reply.finish], "stop_sequence": None,
            "usage": _usage(reply)}  # fmt: skip


def stream(reply: Reply, body: dict[str, Any]) -> Iterator[bytes]:
    """message_start, the content blocks, ping, message_delta (usage), message_stop."""
    start_usage = {**_usage(reply), "output_tokens": 1}
    message = {"id": new_id("msg_01"), "type": "message", "role": "assistant", "model": reply.model, "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": start_usage}  # fmt: skip
    yield sse({"type": "message_start", "message": message}, "message_start")
    index = 0

    def ev(kind: str, **data: Any) -> bytes:
        return sse({"type": kind, "index": index, **data}, kind)

    if reply.thinking:
        yield ev("content_block_start", content_block={"type": "thinking", "thinking": "", "signature": ""})
        yield sse({"type": "ping"}, "ping")
        for piece in reply.thinking_pieces:
            yield ev("content_block_delta", delta={"type": "thinking_delta", "thinking": piece})
        yield ev("content_block_delta", delta={"type": "signature_delta", "signature": sign_thinking(reply.thinking)})
        yield ev("content_block_stop")
        index += 1
    if reply.text or not reply.tool_calls:
        yield ev("content_block_start", content_block={"type": "text", "text": ""})
        if index == 0:
            yield sse({"type": "ping"}, "ping")
        for piece in reply.pieces:
            yield ev("content_block_delta", delta={"type": "text_delta", "text": piece})
        yield ev("content_block_stop")
        index += 1
    for c in reply.tool_calls:
        yield ev("content_block_start", content_block={"type": "tool_use", "id": c.id, "name": c.name, "input": {}})
        yield ev("content_block_delta", delta={"type": "input_json_delta", "partial_json": ""})
        for frag in fragments(c.arguments):
            yield ev("content_block_delta", delta={"type": "input_json_delta", "partial_json": frag})
        yield ev("content_block_stop")
        index += 1
    final_usage = {k: v for k, v in _usage(reply).items() if k != "service_tier"}
    yield sse({"type": "message_delta", "delta": {"stop_reason": STOP[reply.finish], "stop_sequence": None},
               "usage": final_usage}, "message_delta")  # fmt: skip
    yield sse({"type": "message_stop"}, "message_stop")


def stream_error(spec: dict[str, Any]) -> bytes:
    """The in-stream ``error`` event."""
    body = error_body(spec.get("type", "overloaded_error"), spec.get("message", "Overloaded"))
    return sse(body, "error")


_ERRORS = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "model: not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "This request would exceed your organization's rate limit. Please try again later."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}


def error_for(spec: dict[str, Any]) -> ApiError:
    """The scripted error: its status, Anthropic body and Retry-After."""
    status = int(spec.get("status", 500))
    type_, message = _ERRORS.get(status, ("api_error", "Error"))
    headers = {}
    if spec.get("retry_after") is not None:
        headers["retry-after"] = str(spec["retry_after"])
    if status == 529:
        headers["x-should-retry"] = "true"
    return ApiError(status, error_body(spec.get("type", type_), spec.get("message", message)), headers)


def count_tokens(body: Any, headers: dict[str, str]) -> dict[str, Any]:
    """POST /v1/messages/count_tokens."""
    validate(body, headers, count_only=True)
    return {"input_tokens": estimate_tokens(prompt_obj(body))}


def models_body(models: list[str]) -> dict[str, Any]:
    """GET /v1/models in Anthropic's paginated shape."""
    data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"} for m in models]
    return {"data": data, "has_more": False, "first_id": models[0] if models else None,
            "last_id": models[-1] if models else None}  # fmt: skip
