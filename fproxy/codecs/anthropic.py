"""Anthropic Messages dialect codec: ``INBOUND`` (we serve ``/v1/messages``) and ``OUTBOUND``
(we call an Anthropic-shaped upstream: Anthropic, Vertex rawPredict, Bedrock InvokeModel, ...).

Pure code: no Twisted, no I/O.  Wire reference: ``shared/protocols/anthropic-messages.md``.

Choices made where the references leave room (each one is also noted where it is applied):

Inbound decode
- Content blocks the IR cannot express (server-tool blocks, ``search_result``, file-id
  sources, ...) and server tools (``tools[].type`` other than ``custom``) are skipped, not
  rejected: the passthrough path keeps them for Anthropic upstreams, translation drops them.
- ``thinking: {type: adaptive}`` becomes ``Thinking(effort=output_config.effort or "high")``;
  unknown thinking types are ignored.  ``output_config.format`` (json_schema) becomes an
  OpenAI-shaped ``response_format``.  Other unknown top-level fields are ignored.
- ``max_tokens`` is required except through ``decode_request(body, require_max_tokens=False)``
  (for ``/v1/messages/count_tokens`` bodies).

Inbound stream encoder (interleaved tool calls)
- Anthropic allows one open block at a time.  A tool call that starts while another tool
  block is open is *queued*: the open block is closed and the queued call opened only once
  the open call's arguments form a complete JSON object (so sequential calls still stream
  live); otherwise the queued call's fragments are buffered and written when any other
  block opens, at ``Finish`` or at ``Done``.  A fragment for a call whose block is already
  closed cannot be written any more and is dropped (only possible when an upstream sends
  text between fragments of one call, or bytes after a complete JSON object).
- ``message_delta`` is held until ``Done`` (usage may follow ``Finish``); it carries the
  input-token fields only when they differ from what ``message_start`` announced.

Outbound encode
- Consecutive same-role turns are merged; a history that starts with an assistant turn (or
  is empty) gets a leading user turn ``"(continued)"``.
- Tool results are put first in their user turn, ordered like the calls they answer.  A
  result with no matching ``tool_use`` in the previous assistant turn (or a duplicate) is
  turned into a user text block ``[tool result <id>] ...`` rather than dropped; a call with
  no result gets a synthetic ``is_error`` result ``"(no result)"`` (Anthropic rejects both
  orphans).
- Tool ids that do not match ``^[A-Za-z0-9_-]{1,64}$`` are replaced by ``toolu_`` +
  sha256(id)[:24], the same transform on both sides.
- Tool-call ``arguments`` that are not a JSON object become ``{"raw_input": "<text>"}``
  (empty text becomes ``{}``), so the model still sees what it sent.
- Thinking budget: ``budget >= 1024``; without ``max_tokens`` we send
  ``max(4096, budget + 4096)``; an explicit ``max_tokens <= budget`` is kept as the client's
  cap and the budget shrinks to fit (never below 1024); ``max_tokens <= 1024`` with thinking
  is a 400.  Thinking is dropped for the request when the last assistant turn of a tool-use
  loop carries no signed thinking, or the history ends in an assistant prefill (Anthropic
  would answer 400 otherwise).
- ``temperature`` is clamped into Anthropic's 0..1; whitespace-only stop sequences are
  dropped (Anthropic rejects them); ``tool_choice`` is omitted when no tools are sent;
  ``response_format`` json_schema becomes ``output_config.format``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Final
from urllib.parse import unquote_to_bytes

import orjson
from attrs import define, field, frozen

from fproxy.codecs.common import upstream_malformed
from fproxy.codecs.sse import SSEEvent, encode_event
from fproxy.ir.errors import GatewayError, bad_request, error_type_for
from fproxy.ir.events import (
    Done,
    Event,
    Finish,
    MessageStart,
    RedactedThinking,
    SignatureDelta,
    StreamError,
    TextDelta,
    ThinkingDelta,
    ToolArgsDelta,
    ToolCallStart,
    UsageEvent,
)
from fproxy.ir.request import (
    ChatRequest,
    DocumentPart,
    ImagePart,
    Message,
    Part,
    RedactedThinkingPart,
    TextPart,
    Thinking,
    ThinkingPart,
    Tool,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
)
from fproxy.ir.response import ChatResponse, FinishReason, Usage

DIALECT: Final = "anthropic"
DEFAULT_MAX_TOKENS: Final = 4096
MIN_THINKING_BUDGET: Final = 1024
THINKING_ANSWER_ROOM: Final = 4096
#: effort -> thinking budget; ``minimal``/``xhigh``/``max`` are our additions to the brief's table
DEFAULT_EFFORT_BUDGETS: Final[Mapping[str, int]] = {
    "minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768, "max": 32768,
}
PLACEHOLDER_USER_TEXT: Final = "(continued)"
MISSING_RESULT_TEXT: Final = "(no result)"
IMAGE_TOKENS: Final = 1600  # count_tokens_estimate: Anthropic caps an image near 1.6k tokens
DOCUMENT_TOKENS: Final = 1600

_STOP_TO_IR: Final[Mapping[str, FinishReason]] = {
    "end_turn": "stop", "max_tokens": "length", "model_context_window_exceeded": "length",
    "stop_sequence": "stop_sequence", "tool_use": "tool_calls", "pause_turn": "pause_turn",
    "refusal": "refusal",
}
_IR_TO_STOP: Final[Mapping[str, str]] = {
    "stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
    "stop_sequence": "stop_sequence", "content_filter": "refusal", "pause_turn": "pause_turn",
    "refusal": "refusal",
}
_STATUS_FOR_TYPE: Final[Mapping[str, int]] = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
    "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
    "rate_limit_error": 429, "api_error": 500, "timeout_error": 504, "overloaded_error": 529,
}
_ANTHROPIC_ERROR_TYPES: Final = frozenset(_STATUS_FOR_TYPE)
_TOOL_ID_OK = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MSG_ID_STRIP = re.compile(r"[^A-Za-z0-9_-]")
_INPUT_KEYS: Final = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
_PING: Final = encode_event(b'{"type":"ping"}', "ping")


# --------------------------------------------------------------------------- shared helpers


def _dumps(value: Any) -> str:
    """Compact JSON text (what OpenAI's ``arguments`` look like: no spaces, UTF-8 kept)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # e.g. integers beyond 64 bits from a stdlib-parsed body
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def args_to_input(arguments: str) -> dict[str, Any]:
    """Tool-call JSON text -> Anthropic ``input`` object (always an object).

    Empty text is ``{}``; text that is not a JSON object (model output can be broken,
    especially after ``max_tokens``) is kept as ``{"raw_input": text}``.
    """
    if not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"raw_input": arguments}
    return value if isinstance(value, dict) else {"raw_input": arguments}


def sanitize_tool_id(raw: str) -> str:
    """A tool id Anthropic accepts, the same for a ``tool_use`` and its ``tool_result``."""
    if _TOOL_ID_OK.match(raw):
        return raw
    return "toolu_" + hashlib.sha256(raw.encode()).hexdigest()[:24]


def message_id(raw: str) -> str:
    """A ``msg_...`` id for the client, derived from the upstream's id when there is one."""
    if raw.startswith("msg_"):
        return raw
    cleaned = _MSG_ID_STRIP.sub("", raw)
    return "msg_" + (cleaned or secrets.token_hex(12))


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return 0
    return int(value)


def usage_from_anthropic(raw: Mapping[str, Any]) -> Usage:
    """Anthropic usage (input excludes cache) -> IR usage (prompt includes cache reads and writes)."""
    cache_read = _count(raw.get("cache_read_input_tokens"))
    cache_write = _count(raw.get("cache_creation_input_tokens"))
    details = raw.get("output_tokens_details")
    reasoning = _count(details.get("thinking_tokens")) if isinstance(details, dict) else 0
    return Usage(
        prompt_tokens=_count(raw.get("input_tokens")) + cache_read + cache_write,
        completion_tokens=_count(raw.get("output_tokens")),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
    )


def usage_to_anthropic(usage: Usage | None) -> dict[str, int]:
    """IR usage -> Anthropic's four counters (``input_tokens`` excludes cache reads and writes)."""
    u = usage or Usage()
    return {
        "input_tokens": max(0, u.prompt_tokens - u.cache_read_tokens - u.cache_write_tokens),
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
        "output_tokens": u.completion_tokens,
    }


def anthropic_stop_reason(reason: FinishReason, stop_sequence: str | None, saw_tool: bool) -> str:
    """IR finish reason -> ``stop_reason``; a plain ``stop`` after tool calls is ``tool_use``."""
    if reason == "stop":
        if saw_tool:
            return "tool_use"
        if stop_sequence:
            return "stop_sequence"
    return _IR_TO_STOP.get(reason, "end_turn")


def ir_finish_reason(stop_reason: Any, saw_tool: bool) -> FinishReason:
    """``stop_reason`` -> IR finish reason (unknown or missing -> ``stop``)."""
    reason: FinishReason = _STOP_TO_IR.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"
    return "tool_calls" if reason == "stop" and saw_tool else reason


def anthropic_error_type(err: GatewayError) -> str:
    """The Anthropic ``error.type`` for a gateway error (503 and 529 are ``overloaded_error``)."""
    if err.status in (503, 529):
        return "overloaded_error"
    if err.type in _ANTHROPIC_ERROR_TYPES:
        return err.type
    return error_type_for(err.status)


def thinking_budget_for(
    thinking: Thinking | None, defaults: Mapping[str, int] = DEFAULT_EFFORT_BUDGETS
) -> int | None:
    """The thinking budget a request asks for, or None for no thinking.

    An explicit ``budget_tokens`` wins (0 means off); otherwise the effort is looked up in
    ``defaults`` (``none`` means off, an unknown effort takes the largest budget, a
    ``Thinking`` with neither takes ``medium``, OpenAI's default effort).  The result is
    not clamped to a provider minimum: that is the encoder's business.
    """
    if thinking is None:
        return None
    if thinking.budget_tokens is not None:
        return thinking.budget_tokens if thinking.budget_tokens > 0 else None
    effort = (thinking.effort or "medium").lower()
    if effort in ("none", "off", "disabled"):
        return None
    if effort in defaults:
        return defaults[effort]
    return max(defaults.values()) if defaults else None


def _parse_data_url(url: str) -> tuple[str | None, str] | None:
    """``data:<mime>[;...][;base64],<payload>`` -> (media type, base64 payload)."""
    if not url.startswith("data:"):
        return None
    header, sep, payload = url[5:].partition(",")
    if not sep:
        return None
    params = header.split(";")
    media_type = params[0].strip().lower() or None
    if "base64" in (p.strip().lower() for p in params[1:]):
        return media_type, payload
    return media_type, base64.b64encode(unquote_to_bytes(payload)).decode()


def _sniff_image(data: str) -> str | None:
    """The image type of base64 ``data`` from its magic bytes (Anthropic checks them)."""
    try:
        head = base64.b64decode(data[:32] + "=" * (-len(data[:32]) % 4))
    except (binascii.Error, ValueError):
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def _with_cache(block: dict[str, Any], cache_control: dict[str, Any] | None) -> dict[str, Any]:
    if cache_control is not None:
        block["cache_control"] = cache_control
    return block


# --------------------------------------------------------------------------- inbound: decode


def _field(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _req_str(obj: Mapping[str, Any], key: str, where: str, *, allow_empty: bool = False) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise bad_request(f"{_field(where, key)}: expected a {'' if allow_empty else 'non-empty '}string")
    return value


def _opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def _cache_control(block: Mapping[str, Any]) -> dict[str, Any] | None:
    value = block.get("cache_control")
    return value if isinstance(value, dict) else None


def _decode_image(block: Mapping[str, Any], where: str) -> ImagePart | None:
    src = block.get("source")
    if not isinstance(src, dict):
        raise bad_request(f"{where}.source: expected an object")
    kind = src.get("type")
    cc = _cache_control(block)
    if kind == "base64":
        data = _req_str(src, "data", f"{where}.source")
        return ImagePart(media_type=_opt_str(src, "media_type"), data=data, cache_control=cc)
    if kind == "url":
        return ImagePart(url=_req_str(src, "url", f"{where}.source"), cache_control=cc)
    return None  # file ids and future source types: not representable in the IR


def _decode_document(block: Mapping[str, Any], where: str) -> DocumentPart | None:
    src = block.get("source")
    if not isinstance(src, dict):
        raise bad_request(f"{where}.source: expected an object")
    kind = src.get("type")
    title = _opt_str(block, "title")
    cc = _cache_control(block)
    media_type = _opt_str(src, "media_type")
    if kind == "base64":
        data = _req_str(src, "data", f"{where}.source")
        return DocumentPart(media_type=media_type or "application/pdf", data=data, name=title, cache_control=cc)
    if kind == "text":
        text = _req_str(src, "data", f"{where}.source", allow_empty=True)
        return DocumentPart(media_type=media_type or "text/plain", text=text, name=title, cache_control=cc)
    if kind == "url":
        return DocumentPart(url=_req_str(src, "url", f"{where}.source"), name=title, cache_control=cc)
    if kind == "content":
        content = src.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = "\n\n".join(
                b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)
            )
        else:
            raise bad_request(f"{where}.source.content: expected a string or a list of text blocks")
        return DocumentPart(media_type="text/plain", text=text, name=title, cache_control=cc)
    return None


def _decode_result_content(raw: Any, where: str) -> tuple[TextPart | ImagePart, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (TextPart(raw),) if raw else ()
    if not isinstance(raw, list):
        raise bad_request(f"{where}: expected a string or a list of content blocks")
    out: list[TextPart | ImagePart] = []
    for j, block in enumerate(raw):
        bw = f"{where}[{j}]"
        if not isinstance(block, dict):
            raise bad_request(f"{bw}: expected an object")
        kind = block.get("type")
        if kind == "text":
            text = _req_str(block, "text", bw, allow_empty=True)
            if text:
                out.append(TextPart(text, _cache_control(block)))
        elif kind == "image":
            image = _decode_image(block, bw)
            if image is not None:
                out.append(image)
        elif kind == "document":
            doc = _decode_document(block, bw)
            if doc is not None and doc.text:
                out.append(TextPart(doc.text))  # the IR's tool results hold text and images only
    return tuple(out)


def _decode_block(block: Any, role: str, where: str) -> Part | None:
    if not isinstance(block, dict):
        raise bad_request(f"{where}: expected an object")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise bad_request(f"{where}.type: expected a string")
    if kind == "text":
        text = _req_str(block, "text", where, allow_empty=True)
        return TextPart(text, _cache_control(block)) if text else None
    if kind == "image":
        return _decode_image(block, where)
    if kind == "document":
        return _decode_document(block, where)
    if kind == "thinking":
        text = _req_str(block, "thinking", where, allow_empty=True)
        return ThinkingPart(text, _opt_str(block, "signature") or None)
    if kind == "redacted_thinking":
        return RedactedThinkingPart(_req_str(block, "data", where))
    if kind == "tool_use":
        if role != "assistant":
            raise bad_request(f"{where}: tool_use blocks belong in assistant messages")
        raw_input = block.get("input")
        return ToolCallPart(
            id=_req_str(block, "id", where),
            name=_req_str(block, "name", where),
            arguments=_dumps({} if raw_input is None else raw_input),
        )
    if kind == "tool_result":
        if role != "user":
            raise bad_request(f"{where}: tool_result blocks belong in user messages")
        is_error = block.get("is_error")
        if is_error is not None and not isinstance(is_error, bool):
            raise bad_request(f"{where}.is_error: expected a boolean")
        return ToolResultPart(
            call_id=_req_str(block, "tool_use_id", where),
            content=_decode_result_content(block.get("content"), f"{where}.content"),
            is_error=bool(is_error),
        )
    return None  # server-tool blocks, search results, ...: passthrough-only


def _decode_content(raw: Any, role: str, where: str) -> tuple[Part, ...]:
    if isinstance(raw, str):
        return (TextPart(raw),) if raw else ()
    if not isinstance(raw, list):
        raise bad_request(f"{where}: expected a string or a list of content blocks")
    parts = (_decode_block(b, role, f"{where}[{j}]") for j, b in enumerate(raw))
    return tuple(p for p in parts if p is not None)


def _results_first(parts: Iterable[Part]) -> tuple[Part, ...]:
    parts = tuple(parts)
    results = tuple(p for p in parts if isinstance(p, ToolResultPart))
    return results + tuple(p for p in parts if not isinstance(p, ToolResultPart))


def merge_turns(messages: Iterable[Message]) -> tuple[Message, ...]:
    """Merge consecutive same-role messages, drop empty ones, put tool results first."""
    merged: list[tuple[str, list[Part]]] = []
    for m in messages:
        if not m.parts:
            continue
        if merged and merged[-1][0] == m.role:
            merged[-1][1].extend(m.parts)
        else:
            merged.append((m.role, list(m.parts)))
    return tuple(
        Message("user", _results_first(parts)) if role == "user" else Message("assistant", tuple(parts))
        for role, parts in merged
    )


def _decode_messages(raw: Any) -> tuple[Message, ...]:
    if not isinstance(raw, list):
        raise bad_request("messages: expected a list of messages", "messages")
    if not raw:
        raise bad_request("messages: at least one message is required", "messages")
    out: list[Message] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"{where}: expected an object", "messages")
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise bad_request(f"{where}.role: expected 'user' or 'assistant'", "messages")
        out.append(Message(role, _decode_content(m.get("content"), role, f"{where}.content")))
    return merge_turns(out)


def _decode_system(raw: Any) -> tuple[TextPart, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (TextPart(raw),) if raw else ()
    if not isinstance(raw, list):
        raise bad_request("system: expected a string or a list of text blocks", "system")
    out: list[TextPart] = []
    for i, block in enumerate(raw):
        where = f"system[{i}]"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise bad_request(f"{where}: expected a text block", "system")
        text = _req_str(block, "text", where, allow_empty=True)
        if text:
            out.append(TextPart(text, _cache_control(block)))
    return tuple(out)


def _decode_tools(raw: Any) -> tuple[Tool, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise bad_request("tools: expected a list", "tools")
    out: list[Tool] = []
    for i, t in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(t, dict):
            raise bad_request(f"{where}: expected an object", "tools")
        if t.get("type") not in (None, "custom"):
            continue  # server tools (web_search_..., bash_...): passthrough-only
        schema = t.get("input_schema")
        if schema is not None and not isinstance(schema, dict):
            raise bad_request(f"{where}.input_schema: expected an object", "tools")
        out.append(Tool(
            name=_req_str(t, "name", where),
            description=_opt_str(t, "description"),
            parameters=schema or {},
            cache_control=_cache_control(t),
        ))
    return tuple(out)


def _decode_tool_choice(raw: Any) -> tuple[ToolChoice | None, bool | None]:
    if raw is None:
        return None, None
    if not isinstance(raw, dict):
        raise bad_request("tool_choice: expected an object", "tool_choice")
    parallel = False if raw.get("disable_parallel_tool_use") is True else None
    kind = raw.get("type")
    if kind == "auto":
        return ToolChoice("auto"), parallel
    if kind == "any":
        return ToolChoice("required"), parallel
    if kind == "none":
        return ToolChoice("none"), parallel
    if kind == "tool":
        return ToolChoice("tool", _req_str(raw, "name", "tool_choice")), parallel
    raise bad_request("tool_choice.type: expected 'auto', 'any', 'tool' or 'none'", "tool_choice")


def _opt_number(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"{key}: expected a number", key)
    return float(value)


def _opt_int(body: Mapping[str, Any], key: str, *, required: bool = False) -> int | None:
    value = body.get(key)
    if value is None:
        if required:
            raise bad_request(f"{key}: required integer", key)
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_request(f"{key}: expected a non-negative integer", key)
    return value


def _decode_stop(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise bad_request("stop_sequences: expected a list of strings", "stop_sequences")
    return tuple(raw)


def _decode_user(raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise bad_request("metadata: expected an object", "metadata")
    return _opt_str(raw, "user_id")


def _decode_thinking(raw: Any, output_config: Mapping[str, Any]) -> Thinking | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise bad_request("thinking: expected an object", "thinking")
    kind = raw.get("type")
    if kind == "enabled":
        budget = raw.get("budget_tokens")
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise bad_request("thinking.budget_tokens: expected a non-negative integer", "thinking")
        return Thinking(budget_tokens=budget)
    if kind == "adaptive":
        effort = output_config.get("effort")
        return Thinking(effort=effort if isinstance(effort, str) and effort else "high")
    return None  # disabled, or a type newer than this code


def _decode_output_format(output_config: Mapping[str, Any]) -> dict[str, Any] | None:
    fmt = output_config.get("format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        return None
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True}}


def decode_request(body: Any, *, require_max_tokens: bool = True) -> ChatRequest:
    """Anthropic request JSON -> `ChatRequest`; raises `GatewayError` 400 naming the field."""
    if not isinstance(body, dict):
        raise bad_request("request body: expected a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model: required string", "model")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("stream: expected a boolean", "stream")
    output_config = body.get("output_config")
    if not isinstance(output_config, dict):
        output_config = {}
    tool_choice, parallel = _decode_tool_choice(body.get("tool_choice"))
    return ChatRequest(
        model=model,
        messages=_decode_messages(body.get("messages")),
        system=_decode_system(body.get("system")),
        tools=_decode_tools(body.get("tools")),
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        max_tokens=_opt_int(body, "max_tokens", required=require_max_tokens),
        temperature=_opt_number(body, "temperature"),
        top_p=_opt_number(body, "top_p"),
        top_k=_opt_int(body, "top_k"),
        stop=_decode_stop(body.get("stop_sequences")),
        stream=bool(stream),
        thinking=_decode_thinking(body.get("thinking"), output_config),
        user=_decode_user(body.get("metadata")),
        response_format=_decode_output_format(output_config),
    )


# --------------------------------------------------------------------------- inbound: encode


def _response_block(part: Part) -> dict[str, Any] | None:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text} if part.text else None
    if isinstance(part, ThinkingPart):
        if not part.text and not part.signature:
            return None
        return {"type": "thinking", "thinking": part.text, "signature": part.signature or ""}
    if isinstance(part, RedactedThinkingPart):
        return {"type": "redacted_thinking", "data": part.data}
    if isinstance(part, ToolCallPart):
        return {"type": "tool_use", "id": part.id, "name": part.name, "input": args_to_input(part.arguments)}
    return None


def encode_response(response: ChatResponse, model: str) -> dict[str, Any]:
    """`ChatResponse` -> Anthropic message JSON; tool ids are kept exactly as the IR has them."""
    content = [b for b in map(_response_block, response.parts) if b is not None]
    saw_tool = any(isinstance(p, ToolCallPart) for p in response.parts)
    stop_reason = anthropic_stop_reason(response.finish_reason, response.stop_sequence, saw_tool)
    return {
        "id": message_id(response.id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": response.stop_sequence if stop_reason == "stop_sequence" else None,
        "usage": usage_to_anthropic(response.usage),
    }


def error_body(err: GatewayError) -> dict[str, Any]:
    """Anthropic's error envelope."""
    return {"type": "error", "error": {"type": anthropic_error_type(err), "message": err.message}}


def _frame(kind: str, payload: dict[str, Any]) -> bytes:
    return encode_event(orjson.dumps({"type": kind, **payload}), kind)


@define
class _ToolCall:
    """One streamed tool call: ``queued`` (fragments buffered), ``open`` or ``closed``."""

    id: str
    name: str
    pending: list[str] = field(factory=list)
    written: list[str] = field(factory=list)
    state: str = "queued"

    def complete(self) -> bool:
        """Whether the written arguments already form a whole JSON object."""
        if not self.written or not self.written[-1].rstrip().endswith("}"):
            return False
        try:
            return isinstance(orjson.loads("".join(self.written)), dict)
        except orjson.JSONDecodeError:
            return False


@define
class AnthropicStreamEncoder:
    """Canonical events -> Anthropic SSE frames, in Anthropic's exact event order.

    See the module docstring for how interleaved tool calls are serialised.
    """

    model: str
    _ended: bool = field(default=False, init=False)
    _started: bool = field(default=False, init=False)
    _next_block: int = field(default=0, init=False)
    _open_kind: str | None = field(default=None, init=False)
    _open_block: int = field(default=-1, init=False)
    _open_tool: int | None = field(default=None, init=False)
    _signed: bool = field(default=False, init=False)
    _tools: dict[int, _ToolCall] = field(factory=dict, init=False)
    _queue: list[int] = field(factory=list, init=False)
    _early: dict[int, list[str]] = field(factory=dict, init=False)
    _usage: Usage = field(factory=Usage, init=False)
    _start_usage: dict[str, int] = field(factory=dict, init=False)
    _finish: Finish | None = field(default=None, init=False)
    _saw_tool: bool = field(default=False, init=False)

    def feed(self, event: Event) -> list[bytes]:
        if self._ended:
            return []
        if isinstance(event, StreamError):
            return self.error(event.error)
        out: list[bytes] = []
        if isinstance(event, MessageStart):
            if event.usage is not None:
                self._usage = self._usage.merge(event.usage)
            self._start(out, message_id(event.id))
        elif isinstance(event, UsageEvent):
            self._usage = self._usage.merge(event.usage)
        else:
            self._start(out, None)
            self._content(event, out)
        return out

    def error(self, err: GatewayError) -> list[bytes]:
        if self._ended:
            return []
        self._ended = True
        return [_frame("error", {"error": {"type": anthropic_error_type(err), "message": err.message}})]

    def keepalive(self) -> bytes:
        return _PING

    # -- internals

    def _start(self, out: list[bytes], msg_id: str | None) -> None:
        if self._started:
            return
        self._started = True
        usage = usage_to_anthropic(self._usage)
        self._start_usage = usage
        message = {
            "id": msg_id or message_id(""), "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage,
        }
        out.append(_frame("message_start", {"message": message}))

    def _content(self, event: Event, out: list[bytes]) -> None:
        if isinstance(event, TextDelta):
            if event.text:
                if self._open_kind != "text":
                    self._settle(out)
                    self._open({"type": "text", "text": ""}, "text", out)
                self._delta({"type": "text_delta", "text": event.text}, out)
        elif isinstance(event, ThinkingDelta):
            if event.text:
                if self._open_kind != "thinking" or self._signed:
                    self._settle(out)
                    self._open({"type": "thinking", "thinking": "", "signature": ""}, "thinking", out)
                self._delta({"type": "thinking_delta", "thinking": event.text}, out)
        elif isinstance(event, SignatureDelta):
            if event.signature:
                if self._open_kind != "thinking":
                    self._settle(out)
                    self._open({"type": "thinking", "thinking": "", "signature": ""}, "thinking", out)
                self._delta({"type": "signature_delta", "signature": event.signature}, out)
                self._signed = True
        elif isinstance(event, RedactedThinking):
            self._settle(out)
            self._open({"type": "redacted_thinking", "data": event.data}, "redacted", out)
            self._close(out)
        elif isinstance(event, ToolCallStart):
            self._tool_start(event, out)
        elif isinstance(event, ToolArgsDelta):
            self._tool_args(event, out)
        elif isinstance(event, Finish):
            self._settle(out)
            self._finish = self._finish or event
        elif isinstance(event, Done):
            self._settle(out)
            self._end(out)

    def _open(self, skeleton: dict[str, Any], kind: str, out: list[bytes]) -> None:
        self._open_block = self._next_block
        self._next_block += 1
        self._open_kind = kind
        self._signed = False
        out.append(_frame("content_block_start", {"index": self._open_block, "content_block": skeleton}))

    def _delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        out.append(_frame("content_block_delta", {"index": self._open_block, "delta": delta}))

    def _close(self, out: list[bytes]) -> None:
        if self._open_kind is None:
            return
        out.append(_frame("content_block_stop", {"index": self._open_block}))
        if self._open_tool is not None:
            self._tools[self._open_tool].state = "closed"
        self._open_kind = None
        self._open_tool = None

    def _open_tool_block(self, index: int, out: list[bytes]) -> None:
        call = self._tools[index]
        self._open({"type": "tool_use", "id": call.id, "name": call.name, "input": {}}, "tool", out)
        self._open_tool = index
        call.state = "open"
        if call.pending:
            joined = "".join(call.pending)
            call.pending.clear()
            call.written.append(joined)
            self._delta({"type": "input_json_delta", "partial_json": joined}, out)

    def _settle(self, out: list[bytes]) -> None:
        """Close the open block and write out every queued tool call, in order."""
        self._close(out)
        while self._queue:
            self._open_tool_block(self._queue.pop(0), out)
            self._close(out)

    def _advance(self, out: list[bytes]) -> None:
        """Open queued tool calls while the open block is not an unfinished tool call."""
        while self._queue:
            if self._open_tool is not None and not self._tools[self._open_tool].complete():
                return
            self._close(out)
            self._open_tool_block(self._queue.pop(0), out)

    def _tool_start(self, event: ToolCallStart, out: list[bytes]) -> None:
        if event.index in self._tools:
            return  # a repeated start carries nothing new
        self._saw_tool = True
        self._tools[event.index] = _ToolCall(event.id, event.name, pending=self._early.pop(event.index, []))
        self._queue.append(event.index)
        self._advance(out)

    def _tool_args(self, event: ToolArgsDelta, out: list[bytes]) -> None:
        if not event.fragment:
            return
        call = self._tools.get(event.index)
        if call is None:
            self._early.setdefault(event.index, []).append(event.fragment)
        elif call.state == "open":
            call.written.append(event.fragment)
            self._delta({"type": "input_json_delta", "partial_json": event.fragment}, out)
            if self._queue:
                self._advance(out)
        elif call.state == "queued":
            call.pending.append(event.fragment)
        # closed: the block cannot be reopened (see the module docstring)

    def _end(self, out: list[bytes]) -> None:
        finish = self._finish or Finish("stop")
        stop_reason = anthropic_stop_reason(finish.reason, finish.stop_sequence, self._saw_tool)
        final = usage_to_anthropic(self._usage)
        usage: dict[str, int] = {"output_tokens": final["output_tokens"]}
        if any(final[k] != self._start_usage.get(k) for k in _INPUT_KEYS):
            usage.update({k: final[k] for k in _INPUT_KEYS})
        delta = {
            "stop_reason": stop_reason,
            "stop_sequence": finish.stop_sequence if stop_reason == "stop_sequence" else None,
        }
        out.append(_frame("message_delta", {"delta": delta, "usage": usage}))
        out.append(_frame("message_stop", {}))
        self._ended = True


@frozen
class AnthropicInbound:
    """Serves the Anthropic Messages dialect to clients."""

    dialect: str = DIALECT

    def decode_request(self, body: dict[str, Any], *, require_max_tokens: bool = True) -> ChatRequest:
        return decode_request(body, require_max_tokens=require_max_tokens)

    def encode_response(self, response: ChatResponse, model: str) -> dict[str, Any]:
        return encode_response(response, model)

    def stream_encoder(self, model: str, request: ChatRequest) -> AnthropicStreamEncoder:
        return AnthropicStreamEncoder(model)

    def error_body(self, err: GatewayError) -> dict[str, Any]:
        return error_body(err)


# --------------------------------------------------------------------------- outbound: encode


def _keep_part(part: Part, role: str) -> bool:
    """Whether a part may be sent in a turn of ``role`` (Anthropic's placement rules)."""
    if isinstance(part, TextPart):
        return bool(part.text.strip())
    if isinstance(part, ThinkingPart):
        return role == "assistant" and bool(part.signature)  # never forge a signature
    if isinstance(part, (RedactedThinkingPart, ToolCallPart)):
        return role == "assistant"
    if isinstance(part, ToolResultPart):
        return role == "user"
    if isinstance(part, ImagePart):
        return role == "user" and bool(part.data or part.url)
    if isinstance(part, DocumentPart):
        return role == "user" and bool(part.data or part.text or part.url)
    return False


def _orphan_as_text(result: ToolResultPart) -> list[Part]:
    texts = [p.text for p in result.content if isinstance(p, TextPart) and p.text.strip()]
    label = f"[tool result {result.call_id}{' (error)' if result.is_error else ''}]"
    images: list[Part] = [p for p in result.content if isinstance(p, ImagePart)]
    return [TextPart("\n".join([label, *texts]))] + images


def _pair_results(parts: list[Part], call_ids: list[str]) -> list[Part]:
    """Results for ``call_ids`` first (synthesised when missing), orphans as text, then the rest."""
    answered: dict[str, ToolResultPart] = {}
    rest: list[Part] = []
    orphans: list[Part] = []
    for p in parts:
        if isinstance(p, ToolResultPart):
            if p.call_id in call_ids and p.call_id not in answered:
                answered[p.call_id] = p
            else:
                orphans.extend(_orphan_as_text(p))
        else:
            rest.append(p)
    results: list[Part] = [
        answered.get(cid) or ToolResultPart(cid, (TextPart(MISSING_RESULT_TEXT),), is_error=True)
        for cid in call_ids
    ]
    return results + orphans + rest


def _prepare_turns(messages: Iterable[Message]) -> list[tuple[str, list[Part]]]:
    """IR messages -> alternating turns that satisfy Anthropic's ordering rules."""
    turns: list[tuple[str, list[Part]]] = []
    for m in messages:
        parts = [p for p in m.parts if _keep_part(p, m.role)]
        if not parts:
            continue
        if turns and turns[-1][0] == m.role:
            turns[-1][1].extend(parts)
        else:
            turns.append((m.role, parts))
    out: list[tuple[str, list[Part]]] = []
    for role, parts in turns:
        if role == "assistant":
            signed = [p for p in parts if isinstance(p, (ThinkingPart, RedactedThinkingPart))]
            out.append((role, signed + [p for p in parts if not isinstance(p, (ThinkingPart, RedactedThinkingPart))]))
            continue
        prev = out[-1][1] if out and out[-1][0] == "assistant" else []
        calls = list(dict.fromkeys(p.id for p in prev if isinstance(p, ToolCallPart)))
        out.append((role, _pair_results(parts, calls)))
    if out and out[-1][0] == "assistant":
        calls = list(dict.fromkeys(p.id for p in out[-1][1] if isinstance(p, ToolCallPart)))
        if calls:
            out.append(("user", _pair_results([], calls)))
        else:
            _strip_prefill(out)
    if not out or out[0][0] != "user":
        out.insert(0, ("user", [TextPart(PLACEHOLDER_USER_TEXT)]))
    return out


def _strip_prefill(turns: list[tuple[str, list[Part]]]) -> None:
    """A final assistant turn (prefill) must not end in whitespace."""
    parts = turns[-1][1]
    last = parts[-1]
    if isinstance(last, TextPart) and last.text != last.text.rstrip():
        parts[-1] = TextPart(last.text.rstrip(), last.cache_control)


def _thinking_allowed(turns: list[tuple[str, list[Part]]]) -> bool:
    """Whether this history can be sent with thinking on (Anthropic answers 400 otherwise).

    Not with an assistant prefill (a final assistant turn), and not when the last assistant
    turn called tools without a thinking block to lead it: a client that lost the signed
    thinking (an OpenAI client, a switched model) cannot continue that loop with thinking.
    """
    if turns[-1][0] == "assistant":
        return False
    for role, parts in reversed(turns):
        if role == "assistant":
            if not any(isinstance(p, ToolCallPart) for p in parts):
                return True
            return isinstance(parts[0], (ThinkingPart, RedactedThinkingPart))
    return True


def _image_block(part: ImagePart) -> dict[str, Any] | None:
    source: dict[str, Any]
    data, media_type = part.data, part.media_type
    if data is None and part.url:
        parsed = _parse_data_url(part.url)
        if parsed is None:
            source = {"type": "url", "url": part.url}
            return _with_cache({"type": "image", "source": source}, part.cache_control)
        media_type, data = parsed[0] or media_type, parsed[1]
    if not data:
        return None
    declared = (media_type or "").lower()
    declared = "image/jpeg" if declared == "image/jpg" else declared
    media_type = _sniff_image(data) or declared or "image/png"  # Anthropic checks the magic bytes
    source = {"type": "base64", "media_type": media_type, "data": data}
    return _with_cache({"type": "image", "source": source}, part.cache_control)


def _decode_text_b64(data: str) -> str | None:
    try:
        return base64.b64decode(data, validate=False).decode("utf-8")
    except (binascii.Error, ValueError):
        return None


def _document_block(part: DocumentPart) -> dict[str, Any] | None:
    source: dict[str, Any] | None = None
    data, media_type = part.data, part.media_type
    if data is None and part.text is None and part.url:
        parsed = _parse_data_url(part.url)
        if parsed is None:
            source = {"type": "url", "url": part.url}
        else:
            media_type, data = parsed[0] or media_type, parsed[1]
    if source is None and part.text is not None:
        source = {"type": "text", "media_type": "text/plain", "data": part.text}
    elif source is None and data is not None:
        text = _decode_text_b64(data) if (media_type or "").startswith("text/") else None
        if text is not None:
            source = {"type": "text", "media_type": "text/plain", "data": text}
        else:
            source = {"type": "base64", "media_type": media_type or "application/pdf", "data": data}
    if source is None:
        return None
    block: dict[str, Any] = {"type": "document", "source": source}
    if part.name:
        block["title"] = part.name
    return _with_cache(block, part.cache_control)


def _result_block(part: ToolResultPart) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for p in part.content:
        if isinstance(p, TextPart) and p.text.strip():
            content.append(_with_cache({"type": "text", "text": p.text}, p.cache_control))
        elif isinstance(p, ImagePart):
            image = _image_block(p)
            if image is not None:
                content.append(image)
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": sanitize_tool_id(part.call_id)}
    if len(content) == 1 and content[0]["type"] == "text" and "cache_control" not in content[0]:
        block["content"] = content[0]["text"]
    elif content:
        block["content"] = content
    if part.is_error:
        block["is_error"] = True
    return block


def _request_block(part: Part) -> dict[str, Any] | None:
    if isinstance(part, TextPart):
        return _with_cache({"type": "text", "text": part.text}, part.cache_control)
    if isinstance(part, ImagePart):
        return _image_block(part)
    if isinstance(part, DocumentPart):
        return _document_block(part)
    if isinstance(part, ThinkingPart):
        return {"type": "thinking", "thinking": part.text, "signature": part.signature or ""}
    if isinstance(part, RedactedThinkingPart):
        return {"type": "redacted_thinking", "data": part.data}
    if isinstance(part, ToolCallPart):
        return {"type": "tool_use", "id": sanitize_tool_id(part.id), "name": part.name,
                "input": args_to_input(part.arguments)}
    if isinstance(part, ToolResultPart):
        return _result_block(part)
    return None


def _encode_turns(turns: list[tuple[str, list[Part]]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for role, parts in turns:
        blocks = [b for b in map(_request_block, parts) if b is not None]
        if blocks:
            out.append({"role": role, "content": blocks})
    return out


def _input_schema(parameters: Mapping[str, Any]) -> dict[str, Any]:
    if not parameters:
        return {"type": "object", "properties": {}}
    if parameters.get("type") != "object":
        return {**parameters, "type": "object"}
    return dict(parameters)


def _encode_tool(tool: Tool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name}
    if tool.description:
        out["description"] = tool.description
    out["input_schema"] = _input_schema(tool.parameters)
    return _with_cache(out, tool.cache_control)


def _encode_tool_choice(req: ChatRequest, thinking_on: bool) -> dict[str, Any] | None:
    tc = req.tool_choice
    choice: dict[str, Any] | None = None
    if tc is not None:
        if tc.mode == "none":
            choice = {"type": "none"}
        elif tc.mode == "required":
            choice = {"type": "any"}
        elif tc.mode == "tool" and tc.name:
            choice = {"type": "tool", "name": tc.name}
        else:
            choice = {"type": "auto"}
    if thinking_on and choice is not None and choice["type"] in ("any", "tool"):
        choice = {"type": "auto"}  # Anthropic: thinking may not be combined with forced tool use
    if req.parallel_tool_calls is False:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    return choice


def _fit_thinking(budget: int, max_tokens: int | None) -> tuple[int, int]:
    """(budget, max_tokens) with ``1024 <= budget < max_tokens``; 400 when impossible."""
    budget = max(budget, MIN_THINKING_BUDGET)
    if max_tokens is None:
        return budget, max(DEFAULT_MAX_TOKENS, budget + THINKING_ANSWER_ROOM)
    if max_tokens > budget:
        return budget, max_tokens
    if max_tokens <= MIN_THINKING_BUDGET:
        raise bad_request(
            f"max_tokens: {max_tokens} is too small for extended thinking: it must exceed the "
            f"minimum thinking budget of {MIN_THINKING_BUDGET} tokens",
            "max_tokens",
        )
    return max(MIN_THINKING_BUDGET, min(budget, max_tokens - THINKING_ANSWER_ROOM)), max_tokens


def _output_config(response_format: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not response_format or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        return None
    return {"format": {"type": "json_schema", "schema": schema}}


def encode_request(
    req: ChatRequest, upstream_model: str, effort_budgets: Mapping[str, int] = DEFAULT_EFFORT_BUDGETS
) -> dict[str, Any]:
    """`ChatRequest` -> Anthropic Messages body.  ``system_prefix`` is the gateway's job."""
    turns = _prepare_turns(req.messages)
    body: dict[str, Any] = {"model": upstream_model}
    system = [_with_cache({"type": "text", "text": p.text}, p.cache_control) for p in req.system if p.text.strip()]
    if system:
        body["system"] = system
    body["messages"] = _encode_turns(turns)

    budget = thinking_budget_for(req.thinking, effort_budgets)
    if budget is not None and not _thinking_allowed(turns):
        budget = None
    max_tokens = req.max_tokens
    if budget is not None:
        budget, max_tokens = _fit_thinking(budget, max_tokens)
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    body["max_tokens"] = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens

    temperature = None if req.temperature is None else min(max(req.temperature, 0.0), 1.0)
    if budget is None or temperature == 1.0:
        if temperature is not None:
            body["temperature"] = temperature
    if req.top_p is not None and (budget is None or req.top_p >= 0.95):
        body["top_p"] = req.top_p
    if req.top_k is not None and budget is None:
        body["top_k"] = req.top_k
    stop = [s for s in req.stop if s.strip()]
    if stop:
        body["stop_sequences"] = stop
    if req.tools:
        body["tools"] = [_encode_tool(t) for t in req.tools]
        choice = _encode_tool_choice(req, budget is not None)
        if choice is not None:
            body["tool_choice"] = choice
    if req.user:
        body["metadata"] = {"user_id": req.user}
    output_config = _output_config(req.response_format)
    if output_config is not None:
        body["output_config"] = output_config
    if req.stream:
        body["stream"] = True
    return body


# --------------------------------------------------------------------------- outbound: decode


def _bad_upstream(detail: str) -> GatewayError:
    return upstream_malformed(f"Anthropic message: {detail}")


def _upstream_error(data: Mapping[str, Any]) -> GatewayError:
    err = data.get("error")
    err = err if isinstance(err, dict) else {}
    etype = err.get("type") if isinstance(err.get("type"), str) else "api_error"
    message = err.get("message") if isinstance(err.get("message"), str) else "upstream error"
    status = _STATUS_FOR_TYPE.get(etype, 500)
    return GatewayError(
        status, message, type=etype, code=etype,
        retryable=status == 429 or status >= 500, upstream_status=status,
    )


def _response_part(block: Any, i: int) -> Part | None:
    if not isinstance(block, dict):
        raise _bad_upstream(f"content[{i}]: expected an object")
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            raise _bad_upstream(f"content[{i}].text: expected a string")
        return TextPart(text) if text else None
    if kind == "thinking":
        text = block.get("thinking")
        return ThinkingPart(text if isinstance(text, str) else "", _opt_str(block, "signature") or None)
    if kind == "redacted_thinking":
        data = block.get("data")
        return RedactedThinkingPart(data) if isinstance(data, str) else None
    if kind == "tool_use":
        call_id, name = block.get("id"), block.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str):
            raise _bad_upstream(f"content[{i}]: tool_use needs string id and name")
        raw_input = block.get("input")
        return ToolCallPart(call_id, name, _dumps({} if raw_input is None else raw_input))
    return None  # server-tool blocks and the like


def decode_response(body: Any) -> ChatResponse:
    """Anthropic message JSON -> `ChatResponse`; malformed bodies are a 502."""
    if not isinstance(body, dict):
        raise _bad_upstream("expected a JSON object")
    if body.get("type") == "error":
        raise _upstream_error(body)
    content = body.get("content")
    if not isinstance(content, list):
        raise _bad_upstream("content: expected a list")
    parts = tuple(p for p in (_response_part(b, i) for i, b in enumerate(content)) if p is not None)
    saw_tool = any(isinstance(p, ToolCallPart) for p in parts)
    usage = body.get("usage")
    stop_sequence = body.get("stop_sequence")
    return ChatResponse(
        id=body["id"] if isinstance(body.get("id"), str) else "",
        model=body["model"] if isinstance(body.get("model"), str) else "",
        parts=parts,
        finish_reason=ir_finish_reason(body.get("stop_reason"), saw_tool),
        stop_sequence=stop_sequence if isinstance(stop_sequence, str) else None,
        usage=usage_from_anthropic(usage) if isinstance(usage, dict) else None,
    )


class _Malformed(Exception):
    pass


def _index(data: Mapping[str, Any]) -> int:
    index = data.get("index")
    if isinstance(index, bool) or not isinstance(index, int):
        raise _Malformed(f"{data.get('type')}: missing index")
    return index


@define
class AnthropicStreamDecoder:
    """Anthropic SSE events -> canonical events.

    Tool calls are numbered 0, 1, 2... in the order their ``tool_use`` blocks start (not by
    Anthropic block index).  Usage from ``message_start`` and ``message_delta`` is merged
    field by field (``message_delta`` usage is cumulative), and every `UsageEvent` carries
    the merged total.
    """

    _tool_ordinal: dict[int, int] = field(factory=dict, init=False)
    _tool_input: dict[int, Any] = field(factory=dict, init=False)
    _streamed: set[int] = field(factory=set, init=False)
    _raw_usage: dict[str, Any] = field(factory=dict, init=False)
    _finished: bool = field(default=False, init=False)
    _done: bool = field(default=False, init=False)

    def feed(self, event: SSEEvent) -> list[Event]:
        if self._done:
            return []
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return self._fail(_bad_upstream("an SSE event is not JSON"))
        if not isinstance(data, dict):
            return self._fail(_bad_upstream("an SSE event is not a JSON object"))
        kind = data.get("type") if isinstance(data.get("type"), str) else event.event
        if kind == "error" or event.event == "error":
            return self._fail(_upstream_error(data))
        handler = self._HANDLERS.get(kind or "")
        if handler is None:
            return []  # ping and event types newer than this code
        try:
            return handler(self, data)
        except _Malformed as exc:
            return self._fail(_bad_upstream(str(exc)))

    def _fail(self, err: GatewayError) -> list[Event]:
        self._done = True
        return [StreamError(err)]

    def _usage_update(self, raw: Any) -> bool:
        if not isinstance(raw, dict):
            return False
        self._raw_usage.update({k: v for k, v in raw.items() if v is not None})
        return True

    def _message_start(self, data: Mapping[str, Any]) -> list[Event]:
        message = data.get("message")
        message = message if isinstance(message, dict) else {}
        has_usage = self._usage_update(message.get("usage"))
        return [MessageStart(
            id=message["id"] if isinstance(message.get("id"), str) else "",
            model=message["model"] if isinstance(message.get("model"), str) else "",
            usage=usage_from_anthropic(self._raw_usage) if has_usage else None,
        )]

    def _block_start(self, data: Mapping[str, Any]) -> list[Event]:
        index = _index(data)
        block = data.get("content_block")
        if not isinstance(block, dict):
            raise _Malformed("content_block_start: missing content_block")
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            return [TextDelta(text)] if isinstance(text, str) and text else []
        if kind == "thinking":
            out: list[Event] = []
            if isinstance(block.get("thinking"), str) and block["thinking"]:
                out.append(ThinkingDelta(block["thinking"]))
            if isinstance(block.get("signature"), str) and block["signature"]:
                out.append(SignatureDelta(block["signature"]))
            return out
        if kind == "redacted_thinking":
            return [RedactedThinking(block["data"])] if isinstance(block.get("data"), str) else []
        if kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise _Malformed("content_block_start: tool_use needs string id and name")
            ordinal = len(self._tool_ordinal)
            self._tool_ordinal[index] = ordinal
            if block.get("input"):
                self._tool_input[index] = block["input"]  # some servers send it whole here
            return [ToolCallStart(ordinal, call_id, name)]
        return []

    def _block_delta(self, data: Mapping[str, Any]) -> list[Event]:
        index = _index(data)
        delta = data.get("delta")
        if not isinstance(delta, dict):
            raise _Malformed("content_block_delta: missing delta")
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            return [TextDelta(text)] if isinstance(text, str) and text else []
        if kind == "thinking_delta":
            text = delta.get("thinking")
            return [ThinkingDelta(text)] if isinstance(text, str) and text else []
        if kind == "signature_delta":
            sig = delta.get("signature")
            return [SignatureDelta(sig)] if isinstance(sig, str) and sig else []
        if kind == "input_json_delta" and index in self._tool_ordinal:
            fragment = delta.get("partial_json")
            if not isinstance(fragment, str) or not fragment:
                return []
            self._streamed.add(index)
            return [ToolArgsDelta(self._tool_ordinal[index], fragment)]
        return []  # citations and server-tool deltas

    def _block_stop(self, data: Mapping[str, Any]) -> list[Event]:
        index = _index(data)
        if index in self._tool_input and index not in self._streamed:
            return [ToolArgsDelta(self._tool_ordinal[index], _dumps(self._tool_input.pop(index)))]
        return []

    def _message_delta(self, data: Mapping[str, Any]) -> list[Event]:
        out: list[Event] = []
        delta = data.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        reason = delta.get("stop_reason")
        if isinstance(reason, str) and not self._finished:
            self._finished = True
            seq = delta.get("stop_sequence")
            finish = ir_finish_reason(reason, bool(self._tool_ordinal))
            out.append(Finish(finish, seq if isinstance(seq, str) else None))
        if self._usage_update(data.get("usage")):
            out.append(UsageEvent(usage_from_anthropic(self._raw_usage)))
        return out

    def _message_stop(self, data: Mapping[str, Any]) -> list[Event]:
        out: list[Event] = []
        if not self._finished:
            self._finished = True
            out.append(Finish("tool_calls" if self._tool_ordinal else "stop"))
        self._done = True
        out.append(Done())
        return out

    _HANDLERS: ClassVar[Mapping[str, Callable[[AnthropicStreamDecoder, Mapping[str, Any]], list[Event]]]] = {
        "message_start": _message_start,
        "content_block_start": _block_start,
        "content_block_delta": _block_delta,
        "content_block_stop": _block_stop,
        "message_delta": _message_delta,
        "message_stop": _message_stop,
    }


def _extract_error(data: Any, nested: bool = False) -> tuple[str | None, str | None]:
    """(message, code) from Anthropic, OpenAI, Google (Vertex, maybe wrapping Anthropic) or AWS bodies."""
    if not isinstance(data, dict):
        return None, None
    err = data.get("error")
    if isinstance(err, dict):
        message = err.get("message") if isinstance(err.get("message"), str) else None
        code = err.get("type") or err.get("status") or err.get("code")
        if message and not nested and message.lstrip().startswith("{"):
            try:
                inner = _extract_error(orjson.loads(message), nested=True)
            except orjson.JSONDecodeError:
                inner = (None, None)
            if inner[0]:
                return inner
        return message, str(code) if code is not None else None
    if isinstance(err, str):
        return err, None
    message = data.get("message") or data.get("Message")
    return (message, None) if isinstance(message, str) else (None, None)


def error_message(status: int, body: bytes) -> tuple[str, str | None]:
    """(message, code) from an upstream error body; raw text (500 chars at most) otherwise."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    message, code = _extract_error(data)
    if message:
        return message, code
    text = body.decode("utf-8", "replace").strip()
    return (text[:500] if text else f"upstream answered HTTP {status}"), code


@frozen
class AnthropicOutbound:
    """Calls Anthropic-shaped upstreams.  ``effort_budgets`` maps efforts to thinking budgets."""

    dialect: str = DIALECT
    effort_budgets: Mapping[str, int] = field(factory=lambda: dict(DEFAULT_EFFORT_BUDGETS))

    def encode_request(self, request: ChatRequest, upstream_model: str) -> dict[str, Any]:
        return encode_request(request, upstream_model, self.effort_budgets)

    def decode_response(self, body: dict[str, Any]) -> ChatResponse:
        return decode_response(body)

    def stream_decoder(self) -> AnthropicStreamDecoder:
        return AnthropicStreamDecoder()

    def error_message(self, status: int, body: bytes) -> tuple[str, str | None]:
        return error_message(status, body)


# --------------------------------------------------------------------------- count_tokens


def _part_cost(part: Part) -> tuple[int, int]:
    """(characters, fixed tokens) of one part."""
    if isinstance(part, TextPart):
        return len(part.text), 0
    if isinstance(part, ThinkingPart):
        return len(part.text), 0
    if isinstance(part, ToolCallPart):
        return len(part.name) + len(part.arguments), 0
    if isinstance(part, ToolResultPart):
        costs = [_part_cost(p) for p in part.content]
        return sum(c for c, _ in costs), sum(f for _, f in costs)
    if isinstance(part, ImagePart):
        return 0, IMAGE_TOKENS
    if isinstance(part, DocumentPart):
        if part.text is not None:
            return len(part.text), 0
        return 0, max(DOCUMENT_TOKENS, len(part.data or "") // 40)
    return 0, 0


def count_tokens_estimate(req: ChatRequest) -> int:
    """A cheap token estimate (~4 characters a token over all text, tool schemas included)
    for ``/v1/messages/count_tokens`` when the upstream cannot count for us."""
    chars = sum(len(p.text) for p in req.system)
    fixed = 0
    for m in req.messages:
        fixed += 3  # role and separators
        for p in m.parts:
            c, f = _part_cost(p)
            chars += c
            fixed += f
    for t in req.tools:
        chars += len(t.name) + len(t.description or "") + len(_dumps(t.parameters))
    return max(1, math.ceil(chars / 4) + fixed)


INBOUND: Final = AnthropicInbound()
OUTBOUND: Final = AnthropicOutbound()
