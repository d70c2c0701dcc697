"""OpenAI Responses API (POST /v1/responses), stateless, as api.openai.com answers it (pure).

Nothing is stored, so any ``previous_response_id`` is "not found", as it is for a response
created with ``store: false``.  Chat-style nested tools, chat parameters (``messages``,
``max_tokens``) and a ``function_call_output`` with no ``function_call`` are rejected.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

from tests.fakes.wire_common import ApiError, Reply, fragments, new_id, sse, type_name
from tests.fakes.wire_openai_chat import (  # same auth, envelope and errors as chat
    authenticate, check_headers, error_for, err, models_body, not_found, parse_error, response_headers,
)  # fmt: skip

__all__ = ["authenticate", "check_headers", "error_for", "models_body", "not_found", "parse_error",
           "response_headers"]  # fmt: skip

# openai-python ResponseCreateParams keys + stream.  Others: "Unknown parameter: 'x'."
KNOWN_PARAMS = frozenset({
    "background", "context_management", "conversation", "include", "input", "instructions",
    "max_output_tokens", "max_tool_calls", "metadata", "model", "parallel_tool_calls",
    "previous_response_id", "prompt", "prompt_cache_key", "prompt_cache_retention", "reasoning",
    "safety_identifier", "service_tier", "store", "stream", "stream_options", "temperature",
    "text", "tool_choice", "tools", "top_logprobs", "top_p", "truncation", "user",
})  # fmt: skip
ROUTES = {"/v1/responses": "generate"}
TOOL_ID_PREFIX = "call_"
USER_PARTS = ("input_text", "input_image", "input_file", "input_audio")
ASSISTANT_PARTS = ("output_text", "refusal")
GARBAGE_BODY = b'{"id": "resp_broken", "object": "response", "output": [ {"ty'
GARBAGE_STREAM = (
    b'event: response.created\ndata: {"type": "response.cre\n\n',
    b"<html><body>502 Bad Gateway</body></html>\n\n",
)


def _missing(param: str) -> ApiError:
    return err(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def _check_item(item: object, w: str, call_ids: set[str]) -> None:
    if not isinstance(item, dict):
        raise err(400, f"Invalid type for '{w}': expected an object, but got {type_name(item)} instead.",
                  param=w, code="invalid_type")  # fmt: skip
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise err(400, f"Invalid value: '{role}'. Supported values are: 'assistant', 'system', 'developer', "
                           "and 'user'.", param=f"{w}.role", code="invalid_value")  # fmt: skip
        content = item.get("content")
        if isinstance(content, str):
            return
        if not isinstance(content, list):
            raise _missing(f"{w}.content")
        allowed = ASSISTANT_PARTS if role == "assistant" else USER_PARTS
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in allowed:
                listed = ", ".join(f"'{a}'" for a in allowed)
                raise err(400, f"Invalid value: '{kind}'. Supported values are: {listed}.",
                          param=f"{w}.content[{j}]", code="invalid_value")  # fmt: skip
            if kind in ("input_text", "output_text") and not isinstance(part.get("text"), str):
                raise _missing(f"{w}.content[{j}].text")
    elif kind == "function_call":
        for name in ("call_id", "name", "arguments"):
            if not isinstance(item.get(name), str):
                raise _missing(f"{w}.{name}")
        call_ids.add(item["call_id"])
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise _missing(f"{w}.call_id")
        if "output" not in item:
            raise _missing(f"{w}.output")
        if item["call_id"] not in call_ids:
            raise err(400, f"No tool call found for function call output with call_id {item['call_id']}.",
                      param="input")  # fmt: skip
    elif kind == "reasoning":
        if not isinstance(item.get("summary"), list):
            raise _missing(f"{w}.summary")
    elif kind == "item_reference":
        raise err(404, f"Item with id '{item.get('id')}' not found.", param="input")
    else:
        raise err(400, f"Invalid value: '{kind}'. Supported values are: 'message', 'function_call', "
                       "'function_call_output', 'reasoning' and others.",
                  param=f"{w}.type", code="invalid_value")  # fmt: skip


def validate(body: Any, headers: dict[str, str]) -> None:
    """Raise the L{ApiError} api.openai.com would answer for this Responses request, if any."""
    if not isinstance(body, dict):
        raise parse_error()
    for k in body:
        if k not in KNOWN_PARAMS:
            raise err(400, f"Unknown parameter: '{k}'.", param=k, code="unknown_parameter")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _missing("model")
    if body.get("previous_response_id") is not None:
        raise err(400, f"Previous response with id '{body['previous_response_id']}' not found.",
                  param="previous_response_id", code="previous_response_not_found")  # fmt: skip
    inp = body.get("input")
    if isinstance(inp, list):
        call_ids: set[str] = set()
        for i, item in enumerate(inp):
            _check_item(item, f"input[{i}]", call_ids)
    elif inp is None:
        raise _missing("input")
    elif not isinstance(inp, str):
        raise err(400, f"Invalid type for 'input': expected one of a string or array of input items, but got "
                       f"{type_name(inp)} instead.", param="input", code="invalid_type")  # fmt: skip
    for j, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not tool.get("type"):
            raise _missing(f"tools[{j}].type")
        if tool["type"] == "function":
            if not isinstance(tool.get("name"), str):  # chat-style {"function": {...}} lands here
                raise _missing(f"tools[{j}].name")
            for k in tool:
                if k not in ("type", "name", "description", "parameters", "strict", "defer_loading"):
                    raise err(400, f"Unknown parameter: 'tools[{j}].{k}'.", param=f"tools[{j}].{k}",
                              code="unknown_parameter")  # fmt: skip
    mot = body.get("max_output_tokens")
    if mot is not None and (isinstance(mot, bool) or not isinstance(mot, int) or mot < 16):
        raise err(400, f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got "
                       f"{mot} instead.", param="max_output_tokens", code="integer_below_min_value")  # fmt: skip
    if body.get("stream_options") is not None and not body.get("stream"):
        raise err(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                  param="stream_options")  # fmt: skip


def prompt_text(body: dict[str, Any]) -> str:
    """Text of the last user input."""
    inp = body.get("input")
    if isinstance(inp, str):
        return inp
    for item in reversed(inp or []):
        if isinstance(item, dict) and item.get("role") == "user":
            c = item.get("content")
            if isinstance(c, str):
                return c
            return " ".join(p.get("text", "") for p in c or [] if isinstance(p, dict) and p.get("type") == "input_text")
    return ""


def prompt_obj(body: dict[str, Any]) -> object:
    """What counts as prompt tokens."""
    return {"instructions": body.get("instructions"), "input": body.get("input"), "tools": body.get("tools")}


def thinking_for(body: dict[str, Any], scripted: str | None) -> str | None:
    """A reasoning item (with a summary) is sent only when the behaviour scripts ``thinking``."""
    return scripted


def _usage(reply: Reply) -> dict[str, Any]:
    u = reply.usage
    prompt = u.input + u.cache_read + u.cache_write
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": u.cache_read},
            "output_tokens": u.output, "output_tokens_details": {"reasoning_tokens": u.reasoning},
            "total_tokens": prompt + u.output}  # fmt: skip


def _response(reply: Reply, body: dict[str, Any], rid: str, status: str) -> dict[str, Any]:
    return {
        "id": rid, "object": "response", "created_at": int(time.time()), "status": status, "background": False,
        "error": None, "incomplete_details": None, "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"), "model": reply.model, "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True), "previous_response_id": None,
        "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
        "service_tier": "default", "store": body.get("store", True), "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium"}, "tool_choice": body.get("tool_choice", "auto"),
        "tools": copy.deepcopy(body.get("tools") or []), "top_p": body.get("top_p", 1.0), "truncation": "disabled",
        "usage": None, "user": None, "metadata": body.get("metadata") or {},
    }  # fmt: skip


def _items(reply: Reply) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if reply.thinking:
        items.append({"id": new_id("rs_", 48), "type": "reasoning", "status": "completed", "encrypted_content": None,
                      "summary": [{"type": "summary_text", "text": reply.thinking}]})  # fmt: skip
    if reply.text or not reply.tool_calls:
        part = {"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}
        items.append({"id": new_id("msg_", 48), "type": "message", "status": "completed", "role": "assistant",
                      "content": [part]})  # fmt: skip
    for c in reply.tool_calls:
        items.append({"id": new_id("fc_", 48), "type": "function_call", "status": "completed",
                      "call_id": c.id, "name": c.name, "arguments": c.arguments})  # fmt: skip
    return items


def _final(reply: Reply, body: dict[str, Any], rid: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    resp = _response(reply, body, rid, "completed")
    resp["output"] = items
    resp["usage"] = _usage(reply)
    if reply.finish == "length":
        resp["status"], resp["incomplete_details"] = "incomplete", {"reason": "max_output_tokens"}
    return resp


def render(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    """The non-streaming Response."""
    return _final(reply, body, new_id("resp_", 48), _items(reply))


def stream(reply: Reply, body: dict[str, Any]) -> Iterator[bytes]:
    """Named events with a running sequence_number, ending in response.completed (usage)."""
    rid, seq = new_id("resp_", 48), 0

    def ev(kind: str, **data: Any) -> bytes:
        nonlocal seq
        seq += 1
        return sse({"type": kind, "sequence_number": seq - 1, **data}, kind)

    yield ev("response.created", response=_response(reply, body, rid, "in_progress"))
    yield ev("response.in_progress", response=_response(reply, body, rid, "in_progress"))
    items = _items(reply)
    for oi, item in enumerate(items):
        ids = {"item_id": item["id"], "output_index": oi}
        if item["type"] == "reasoning":
            yield ev("response.output_item.added", output_index=oi,
                     item={**item, "summary": [], "status": "in_progress"})  # fmt: skip
            yield ev("response.reasoning_summary_part.added", **ids, summary_index=0,
                     part={"type": "summary_text", "text": ""})  # fmt: skip
            for piece in reply.thinking_pieces:
                yield ev("response.reasoning_summary_text.delta", **ids, summary_index=0, delta=piece)
            yield ev("response.reasoning_summary_text.done", **ids, summary_index=0, text=reply.thinking)
            yield ev("response.reasoning_summary_part.done", **ids, summary_index=0, part=item["summary"][0])
        elif item["type"] == "message":
            yield ev("response.output_item.added", output_index=oi,
                     item={**item, "content": [], "status": "in_progress"})  # fmt: skip
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            yield ev("response.content_part.added", **ids, content_index=0, part=part)
            for piece in reply.pieces:
                yield ev("response.output_text.delta", **ids, content_index=0, delta=piece, logprobs=[])
            yield ev("response.output_text.done", **ids, content_index=0, text=reply.text, logprobs=[])
            yield ev("response.content_part.done", **ids, content_index=0, part=item["content"][0])
        else:
            yield ev("response.output_item.added", output_index=oi,
                     item={**item, "arguments": "", "status": "in_progress"})  # fmt: skip
            for frag in fragments(item["arguments"]):
                yield ev("response.function_call_arguments.delta", **ids, delta=frag)
            yield ev("response.function_call_arguments.done", **ids, name=item["name"], arguments=item["arguments"])
        yield ev("response.output_item.done", output_index=oi, item=item)
    final = _final(reply, body, rid, items)
    yield ev("response.incomplete" if final["status"] == "incomplete" else "response.completed", response=final)


def stream_error(spec: dict[str, Any]) -> bytes:
    """The in-stream ``error`` event (top-level code/message)."""
    message = spec.get("message", "The server had an error while processing your request.")
    body = {"type": "error", "code": spec.get("code", "server_error"), "message": message, "param": None,
            "sequence_number": 0}  # fmt: skip
    return sse(body, "error")

