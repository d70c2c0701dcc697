"""OpenAI Chat Completions (+ embeddings, models) as api.openai.com answers them (pure).

Validation follows the real API closely enough that a gateway bug shows up as the 400 the
real provider would send: unknown top-level parameters, bad roles, tool messages that answer
nothing, ``stream_options`` without ``stream``, non-string tool arguments, bad keys.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Iterator
from typing import Any

from tests.fakes.wire_common import ApiError, Reply, dumps, estimate_tokens, fragments, new_id, sse, type_name

# Top-level parameters of POST /v1/chat/completions (openai-python CompletionCreateParams
# plus ``stream``).  Anything else: "Unrecognized request argument supplied: X".
KNOWN_PARAMS = frozenset({
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "messages", "metadata", "modalities", "model",
    "moderation", "n", "parallel_tool_calls", "prediction", "presence_penalty",
    "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention", "reasoning_effort",
    "response_format", "safety_identifier", "seed", "service_tier", "stop", "store",
    "stream", "stream_options", "temperature", "tool_choice", "tools", "top_logprobs",
    "top_p", "user", "verbosity", "web_search_options",
})  # fmt: skip
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
ROUTES = {"/v1/chat/completions": "generate", "/v1/embeddings": "embeddings"}
TOOL_ID_PREFIX = "call_"
FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter"}
GARBAGE_BODY = b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [ {"mess'
GARBAGE_STREAM = (
    b'data: {"id":"chatcmpl-broken","object":"chat.compl\n\n',
    b"<html><body>upstream proxy error</body></html>\n\n",
    b"data: not json at all\n\n",
)


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The OpenAI error envelope."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def err(status: int, message: str, param: str | None = None, code: str | None = None,
        type_: str = "invalid_request_error") -> ApiError:  # fmt: skip
    """An L{ApiError} carrying an OpenAI error body."""
    return ApiError(status, error_body(message, type_, param, code))


def response_headers() -> dict[str, str]:
    """Headers OpenAI puts on every answer."""
    return {"x-request-id": new_id("req_", 32), "openai-processing-ms": "12"}


def authenticate(headers: dict[str, str], keys: list[str] | None) -> str:
    """The Bearer key, or the 401 OpenAI answers for a missing or unknown one."""
    auth = headers.get("authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if not key:
        raise err(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                       "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")  # fmt: skip
    if keys is not None and key not in keys:
        masked = key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 8 else "*" * len(key)
        raise err(401, f"Incorrect API key provided: {masked}. You can find your API key at "
                       "https://platform.openai.com/account/api-keys.", code="invalid_api_key")  # fmt: skip
    return key


def check_headers(headers: dict[str, str]) -> None:
    """OpenAI needs no header besides auth."""


def parse_error() -> ApiError:
    """The 400 for a body that is not a JSON object."""
    return err(400, "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
                    "sent was not valid JSON.)")  # fmt: skip


def not_found(method: str, path: str) -> ApiError:
    """The 404 for an unknown path."""
    return err(404, f"Invalid URL ({method} {path})")


def _check_parts(parts: object, where: str, allowed: tuple[str, ...]) -> None:
    if not isinstance(parts, list) or not parts:
        raise err(400, f"Invalid '{where}': expected a string or a non-empty array of objects, got "
                       f"{type_name(parts)}.", param=where, code="invalid_type")  # fmt: skip
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in allowed:
            listed = ", ".join(f"'{a}'" for a in allowed)
            raise err(400, f"Invalid value: '{kind}'. Supported values are: {listed}.",
                      param=f"{where}[{j}].type", code="invalid_value")  # fmt: skip
        if kind == "text" and not isinstance(part.get("text"), str):
            raise err(400, f"Missing required parameter: '{where}[{j}].text'.", param=f"{where}[{j}].text",
                      code="missing_required_parameter")  # fmt: skip
        if kind == "image_url":
            url = (part.get("image_url") or {}).get("url") if isinstance(part.get("image_url"), dict) else None
            if not isinstance(url, str) or not url.startswith(("http://", "https://", "data:image/")):
                raise err(400, "Invalid 'image_url': Expected a base64-encoded data URL with an image MIME "
                               "type (e.g. 'data:image/png;base64,...'), or a URL.",
                          param=f"{where}[{j}].image_url.url", code="invalid_image_url")  # fmt: skip


def _check_assistant(m: dict[str, Any], w: str) -> list[str]:
    """Validate one assistant message; return the ids of its tool calls."""
    calls = m.get("tool_calls")
    content = m.get("content")
    if content is None and not calls and not m.get("function_call"):
        raise err(400, "Invalid value for 'content': expected a string, got null.", param=f"{w}.content")
    if content is not None and not isinstance(content, str):
        _check_parts(content, f"{w}.content", ("text", "refusal"))
    if calls is None:
        return []
    if not isinstance(calls, list) or not calls:
        raise err(400, f"Invalid '{w}.tool_calls': empty array. Expected an array with minimum length 1, but "
                       "got an empty array instead.", param=f"{w}.tool_calls", code="empty_array")  # fmt: skip
    ids = []
    for j, call in enumerate(calls):
        cw = f"{w}.tool_calls[{j}]"
        if not isinstance(call, dict) or not isinstance(call.get("id"), str) or not call["id"]:
            raise err(400, f"Missing required parameter: '{cw}.id'.", param=f"{cw}.id",
                      code="missing_required_parameter")  # fmt: skip
        fn = call.get("function")
        if call.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise err(400, f"Missing required parameter: '{cw}.function.name'.", param=f"{cw}.function.name",
                      code="missing_required_parameter")  # fmt: skip
        if not isinstance(fn.get("arguments"), str):
            raise err(400, f"Invalid type for '{cw}.function.arguments': expected a string, but got "
                           f"{type_name(fn.get('arguments'))} instead.", param=f"{cw}.function.arguments",
                      code="invalid_type")  # fmt: skip
        ids.append(call["id"])
    return ids


def _check_messages(msgs: object) -> None:
    if not isinstance(msgs, list):
        raise err(400, f"Invalid type for 'messages': expected an array, but got {type_name(msgs)} instead.",
                  param="messages", code="invalid_type")  # fmt: skip
    if not msgs:
        raise err(400, "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an "
                       "empty array instead.", param="messages", code="empty_array")  # fmt: skip
    pending: list[str] = []  # tool_call ids of the last assistant turn not yet answered
    answerable: set[str] = set()
    for i, m in enumerate(msgs):
        w = f"messages[{i}]"
        if not isinstance(m, dict):
            raise err(400, f"Invalid type for '{w}': expected an object, but got {type_name(m)} instead.",
                      param=w, code="invalid_type")  # fmt: skip
        role = m.get("role")
        if role not in ROLES:
            raise err(400, f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', "
                           "'function', 'tool', and 'developer'.", param=f"{w}.role", code="invalid_value")  # fmt: skip
        if role != "tool" and pending:
            raise err(400, "An assistant message with 'tool_calls' must be followed by tool messages responding "
                           "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                           + ", ".join(pending), param=f"messages.[{i}].role")  # fmt: skip
        content = m.get("content")
        if role == "assistant":
            pending = _check_assistant(m, w)
            answerable = set(pending)
            continue
        if role == "tool":
            tcid = m.get("tool_call_id")
            if not answerable:
                raise err(400, "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                               "message with 'tool_calls'.", param=f"messages.[{i}].role")  # fmt: skip
            if tcid not in answerable:
                raise err(400, f"Invalid parameter: 'tool_call_id' of '{tcid}' not found in 'tool_calls' of "
                               "previous message.", param=f"messages.[{i}].tool_call_id")  # fmt: skip
            pending = [p for p in pending if p != tcid]
        else:
            answerable = set()
        if content is None:
            raise err(400, "Invalid value for 'content': expected a string, got null.", param=f"{w}.content")
        if not isinstance(content, str):
            allowed = ("text", "image_url", "input_audio", "file") if role == "user" else ("text",)
            _check_parts(content, f"{w}.content", allowed)
    if pending:
        raise err(400, "An assistant message with 'tool_calls' must be followed by tool messages responding to "
                       "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                       + ", ".join(pending), param="messages")  # fmt: skip


def _check_number(body: dict[str, Any], name: str, lo: float, hi: float) -> None:
    v = body.get(name)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise err(400, f"Invalid type for '{name}': expected a decimal, but got {type_name(v)} instead.",
                  param=name, code="invalid_type")  # fmt: skip
    if not lo <= v <= hi:
        raise err(400, f"Invalid '{name}': Expected a value between {lo} and {hi}, but got {v} instead.",
                  param=name, code="decimal_above_max_value" if v > hi else "decimal_below_min_value")  # fmt: skip


def validate(body: Any, headers: dict[str, str]) -> None:
    """Raise the L{ApiError} api.openai.com would answer for this chat request, if any."""
    if not isinstance(body, dict):
        raise parse_error()
    for k in body:
        if k not in KNOWN_PARAMS:
            raise err(400, f"Unrecognized request argument supplied: {k}")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise err(400, "you must provide a model parameter")
    if "messages" not in body:
        raise err(400, "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter")
    _check_messages(body["messages"])
    for j, tool in enumerate(body.get("tools") or []):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise err(400, f"Missing required parameter: 'tools[{j}].function'.", param=f"tools[{j}].function",
                      code="missing_required_parameter")  # fmt: skip
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise err(400, f"Missing required parameter: 'tools[{j}].function.name'.",
                      param=f"tools[{j}].function.name", code="missing_required_parameter")  # fmt: skip
    if body.get("stream_options") is not None and not body.get("stream"):
        raise err(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                  param="stream_options")  # fmt: skip
    _check_number(body, "temperature", 0, 2)
    _check_number(body, "top_p", 0, 1)
    for name in ("max_tokens", "max_completion_tokens", "n"):
        v = body.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise err(400, f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {v} "
                           "instead.", param=name, code="integer_below_min_value")  # fmt: skip


def prompt_text(body: dict[str, Any]) -> str:
    """Text of the last user message (the echo default answers it)."""
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, list):
                return " ".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text")
            return c if isinstance(c, str) else ""
    return ""


def prompt_obj(body: dict[str, Any]) -> object:
    """What counts as prompt tokens."""
    return {"messages": body.get("messages"), "tools": body.get("tools")}


def thinking_for(body: dict[str, Any], scripted: str | None) -> str | None:
    """Chat answers ``reasoning_content`` (DeepSeek style) only when the behaviour scripts it."""
    return scripted


def usage_object(reply: Reply) -> dict[str, Any]:
    """Chat usage: prompt includes cached tokens, completion includes reasoning."""
    u = reply.usage
    prompt = u.input + u.cache_read + u.cache_write
    return {
        "prompt_tokens": prompt,
        "completion_tokens": u.output,
        "total_tokens": prompt + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cache_read, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }  # fmt: skip


def render(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    """The non-streaming ChatCompletion."""
    msg: dict[str, Any] = {"role": "assistant", "content": reply.text if (reply.text or not reply.tool_calls) else None,
                           "refusal": None, "annotations": []}  # fmt: skip
    if reply.thinking:
        msg["reasoning_content"] = reply.thinking
    if reply.tool_calls:
        msg["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                             for c in reply.tool_calls]  # fmt: skip
    return {
        "id": new_id("chatcmpl-", 29), "object": "chat.completion", "created": int(time.time()),
        "model": reply.model, "service_tier": "default", "system_fingerprint": "fp_f4k3",
        "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": FINISH[reply.finish]}],
        "usage": usage_object(reply),
    }  # fmt: skip


def stream(reply: Reply, body: dict[str, Any]) -> Iterator[bytes]:
    """The chunk events, a usage chunk when ``stream_options.include_usage``, then [DONE]."""
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    head = {"id": new_id("chatcmpl-", 29), "object": "chat.completion.chunk", "created": int(time.time()),
            "model": reply.model, "service_tier": "default", "system_fingerprint": "fp_f4k3"}  # fmt: skip

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        c = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            c["usage"] = None
        return sse(c)

    text_turn = bool(reply.text) or not reply.tool_calls
    yield chunk({"role": "assistant", "content": "" if text_turn else None, "refusal": None})
    for piece in reply.thinking_pieces:
        yield chunk({"content": None, "reasoning_content": piece})
    for piece in reply.pieces:
        yield chunk({"content": piece})
    for j, call in enumerate(reply.tool_calls):
        start = {"index": j, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        yield chunk({"tool_calls": [start]})
        for frag in fragments(call.arguments):
            yield chunk({"tool_calls": [{"index": j, "function": {"arguments": frag}}]})
    yield chunk({}, FINISH[reply.finish])
    if include_usage:
        yield sse({**head, "choices": [], "usage": usage_object(reply)})
    yield sse("[DONE]")


def stream_error(spec: dict[str, Any]) -> bytes:
    """An in-stream error (the SDK raises on any chunk with a top-level ``error``)."""
    return sse(error_body(spec.get("message", "The server had an error while processing your request."),
                          spec.get("type", "server_error"), None, spec.get("code")))  # fmt: skip


_ERRORS = {
    400: ("invalid_request_error", "Invalid request.", None),
    401: ("invalid_request_error", "Incorrect API key provided.", "invalid_api_key"),
    403: ("invalid_request_error", "You are not allowed to sample from this model", None),
    404: ("invalid_request_error", "The model does not exist or you do not have access to it.", "model_not_found"),
    429: ("requests", "Rate limit reached for requests. Please try again in 20s.", "rate_limit_exceeded"),
    500: ("server_error", "The server had an error while processing your request. Sorry about that!", None),
    503: ("server_error", "The engine is currently overloaded, please try again later.", None),
}


def error_for(spec: dict[str, Any]) -> ApiError:
    """The scripted error: its status, OpenAI body and Retry-After."""
    status = int(spec.get("status", 500))
    type_, message, code = _ERRORS.get(status, ("server_error", "Error.", None))
    headers = {}
    if spec.get("retry_after") is not None:
        headers["retry-after"] = str(spec["retry_after"])
    if status == 429:
        headers["x-ratelimit-remaining-requests"] = "0"
    body = error_body(spec.get("message", message), spec.get("type", type_), spec.get("param"), spec.get("code", code))
    return ApiError(status, body, headers)


def models_body(models: list[str]) -> dict[str, Any]:
    """GET /v1/models."""
    return {"object": "list", "data": [{"id": m, "object": "model", "created": 1700000000, "owned_by": "system"}
                                       for m in models]}  # fmt: skip


def embeddings(body: Any) -> dict[str, Any]:
    """POST /v1/embeddings: validate, then answer deterministic vectors (8 dims by default)."""
    if not isinstance(body, dict):
        raise parse_error()
    for k in body:
        if k not in ("dimensions", "encoding_format", "input", "model", "user"):
            raise err(400, f"Unrecognized request argument supplied: {k}")
    items = body.get("input")
    items = [items] if isinstance(items, str) else items
    if not isinstance(body.get("model"), str) or not isinstance(items, list) or not items:
        raise err(400, "'$.input' is invalid. Please check the API reference: "
                       "https://platform.openai.com/docs/api-reference.")  # fmt: skip
    dims = int(body.get("dimensions") or 8)
    data = []
    for i, item in enumerate(items):
        digest = hashlib.sha256(dumps(item).encode()).digest() * (dims // 8 + 1)
        vec = [round(v / 0xFFFFFFFF * 2 - 1, 6) for v in struct.unpack(f"<{dims}I", digest[: dims * 4])]
        data.append({"object": "embedding", "index": i, "embedding": vec})
    tokens = estimate_tokens(items)
    return {"object": "list", "data": data, "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip
