"""OpenAI Responses API (``POST /v1/responses``): inbound (clients) and outbound (upstreams).

The gateway is stateless: ``previous_response_id``, ``conversation``, ``background`` and
stored ``prompt`` templates are answered with a 400 telling the client to send the whole
conversation in ``input``; ``store: true`` is accepted and ignored (nothing is kept).

Reasoning round trip: a ``reasoning`` output item becomes a `ThinkingPart` whose ``text`` is
the item's summary texts joined with blank lines (or its raw ``reasoning_text`` content when
there is no summary) and whose ``signature`` is the item's ``encrypted_content``.  Going out,
a `ThinkingPart` becomes a reasoning item only when it carries a signature: without
``encrypted_content`` (we always send ``store: false``) OpenAI cannot use the item, and an
unsigned summary is not something the model may be fed back as its own reasoning.  The item
``id`` (``rs_...``) is not kept in the IR, so replayed reasoning items carry no ``id`` (what
Codex CLI sends with ``store: false``).  Redacted thinking (an Anthropic notion) has no slot
in this dialect and is dropped.

Thinking budgets become an effort for Responses upstreams: < 4096 tokens ``low``,
< 16384 ``medium``, otherwise ``high`` (a budget is a cap, the effort a tendency; these cut
points sit between the common presets).  ``reasoning.summary`` is only sent when the client
asked for one (some organisations are not allowed summaries and get a 400 otherwise).
"""
from __future__ import annotations

from typing import Any

import orjson
from attrs import define, field

from fproxy.codecs.common import (
    data_url,
    dumps,
    expect_type,
    new_id,
    opt_int,
    opt_number,
    parse_data_url,
    upstream_malformed,
)
from fproxy.codecs.openai_chat import error_json  # the same OpenAI error shape on both endpoints
from fproxy.codecs.sse import KEEPALIVE_COMMENT, SSEEvent, encode_event
from fproxy.ir import events as ev
from fproxy.ir.errors import GatewayError, bad_request
from fproxy.ir.request import (
    ChatRequest,
    DocumentPart,
    ImagePart,
    Message,
    Part,
    TextPart,
    Thinking,
    ThinkingPart,
    Tool,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
)
from fproxy.ir.response import ChatResponse, FinishReason, Usage

DIALECT = "openai-responses"

#: Minimum ``max_output_tokens`` OpenAI accepts (smaller values are a 400 upstream).
MIN_OUTPUT_TOKENS = 16

#: Request knobs that Responses and Chat share with the same meaning; kept in
#: ``ChatRequest.extra`` (OpenAI-family encoders copy extra).  ``verbosity`` is
#: ``text.verbosity`` here and top-level ``verbosity`` in Chat.
SHARED_KNOBS = ("service_tier", "prompt_cache_key", "prompt_cache_retention", "safety_identifier")

_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}

#: error.code values the SDK's ``ResponseError`` accepts that we can produce
_FAILED_CODES = {429: "rate_limit_exceeded"}


# ---------------------------------------------------------------- usage
def usage_to_json(u: Usage) -> dict[str, Any]:
    """Canonical usage -> Responses ``usage`` (input includes cached, output includes reasoning)."""
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cache_read_tokens, "cache_write_tokens": u.cache_write_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total_tokens,
    }


def usage_from_json(obj: Any) -> Usage | None:
    """Responses ``usage`` -> canonical usage; None when absent or not an object."""
    if not isinstance(obj, dict):
        return None
    itd = obj.get("input_tokens_details")
    otd = obj.get("output_tokens_details")
    itd = itd if isinstance(itd, dict) else {}
    otd = otd if isinstance(otd, dict) else {}
    return Usage(
        prompt_tokens=_int(obj.get("input_tokens")),
        completion_tokens=_int(obj.get("output_tokens")),
        cache_read_tokens=_int(itd.get("cached_tokens")),
        cache_write_tokens=_int(itd.get("cache_write_tokens")),
        reasoning_tokens=_int(otd.get("reasoning_tokens")),
    )


def _int(v: Any) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) else None


# ---------------------------------------------------------------- inbound: request decoding
def _reject_stateful(body: dict[str, Any]) -> None:
    """Features that need server-side state are refused with a message saying what to do."""
    if body.get("previous_response_id") is not None:
        raise GatewayError(
            400,
            "previous_response_id: this gateway is stateless and does not store responses; "
            "send the full conversation in `input` instead (and set store: false)",
            param="previous_response_id", code="previous_response_not_supported",
        )
    if body.get("conversation") is not None:
        raise GatewayError(
            400,
            "conversation: this gateway is stateless and keeps no conversations; "
            "send the full conversation in `input` instead",
            param="conversation", code="conversation_not_supported",
        )
    if body.get("background") is True:
        raise bad_request("background: background responses are not supported by this gateway",
                          param="background", code="background_not_supported")
    if body.get("prompt") is not None:
        raise bad_request("prompt: stored prompt templates are not supported by this gateway; "
                          "send the prompt text in `instructions` / `input`", param="prompt",
                          code="prompt_not_supported")


def _image_part(p: dict[str, Any], where: str) -> ImagePart:
    detail = _str_or_none(p.get("detail"))
    url = p.get("image_url")
    if url is None and p.get("file_id") is not None:
        raise bad_request(f"{where}.file_id: file ids need OpenAI's Files API; send the image as a data URL "
                          "or an http(s) URL in image_url", param=f"{where}.file_id", code="file_id_not_supported")
    if isinstance(url, dict):  # lenient: the chat shape {"url": ...}
        url = url.get("url")
    expect_type(url, str, f"{where}.image_url", "a string (data URL or http(s) URL)")
    parsed = parse_data_url(url)
    if parsed:
        return ImagePart(media_type=parsed[0], data=parsed[1], detail=detail)
    return ImagePart(url=url, detail=detail)


def _file_part(p: dict[str, Any], where: str) -> DocumentPart:
    name = _str_or_none(p.get("filename"))
    fd = p.get("file_data")
    if isinstance(fd, str):
        parsed = parse_data_url(fd) or ("application/pdf", fd)
        return DocumentPart(media_type=parsed[0], data=parsed[1], name=name)
    if isinstance(p.get("file_url"), str):
        return DocumentPart(url=p["file_url"], name=name)
    if p.get("file_id") is not None:
        raise bad_request(f"{where}.file_id: file ids need OpenAI's Files API; send the file inline in file_data",
                          param=f"{where}.file_id", code="file_id_not_supported")
    raise bad_request(f"{where}: an input_file needs file_data or file_url", param=where)


def _content_parts(content: Any, where: str) -> list[Part]:
    """Message content (string or list of parts) -> canonical parts."""
    if isinstance(content, str):
        return [TextPart(content)]
    expect_type(content, list, where, "a string or a list of content parts")
    out: list[Part] = []
    for j, p in enumerate(content):
        w = f"{where}[{j}]"
        expect_type(p, dict, w, "a content part object")
        t = p.get("type")
        if t in ("input_text", "output_text", "text"):
            out.append(TextPart(expect_type(p.get("text"), str, f"{w}.text", "a string")))
        elif t == "refusal":
            out.append(TextPart(expect_type(p.get("refusal"), str, f"{w}.refusal", "a string")))
        elif t == "input_image":
            out.append(_image_part(p, w))
        elif t == "input_file":
            out.append(_file_part(p, w))
        elif t == "input_audio":
            raise bad_request(f"{w}: audio input is not supported by this gateway", param=w)
        else:
            raise bad_request(f"{w}.type: unknown content part type {t!r}", param=f"{w}.type")
    return out


def _tool_output(output: Any, where: str) -> tuple[TextPart | ImagePart, ...]:
    if isinstance(output, str):
        return (TextPart(output),)
    if output is None:
        return ()
    parts = _content_parts(output, where)
    for j, p in enumerate(parts):
        if not isinstance(p, (TextPart, ImagePart)):
            raise bad_request(f"{where}[{j}]: a function_call_output may hold only text and images here",
                              param=f"{where}[{j}]")
    return tuple(p for p in parts if isinstance(p, (TextPart, ImagePart)))


def _reasoning_part(item: dict[str, Any], where: str) -> ThinkingPart | None:
    texts: list[str] = []
    summary = item.get("summary")
    if summary is not None:
        expect_type(summary, list, f"{where}.summary", "a list of summary_text parts")
        for j, s in enumerate(summary):
            expect_type(s, dict, f"{where}.summary[{j}]", "a summary_text object")
            texts.append(expect_type(s.get("text"), str, f"{where}.summary[{j}].text", "a string"))
    if not texts and isinstance(item.get("content"), list):
        texts = [c["text"] for c in item["content"] if isinstance(c, dict) and isinstance(c.get("text"), str)]
    sig = item.get("encrypted_content")
    if sig is not None:
        expect_type(sig, str, f"{where}.encrypted_content", "a string")
    text = "\n\n".join(texts)
    if not text and not sig:
        return None
    return ThinkingPart(text, sig or None)


def _append(messages: list[Message], role: str, parts: list[Part]) -> None:
    """Append a turn, merging consecutive same-role turns (tool results first in user turns)."""
    if not parts:
        return
    if messages and messages[-1].role == role:
        merged = list(messages[-1].parts) + parts
        if role == "user":
            merged = [p for p in merged if isinstance(p, ToolResultPart)] + [
                p for p in merged if not isinstance(p, ToolResultPart)
            ]
        messages[-1] = Message(role, tuple(merged))  # type: ignore[arg-type]
    else:
        messages.append(Message(role, tuple(parts)))  # type: ignore[arg-type]


def decode_input(raw: Any) -> tuple[list[TextPart], tuple[Message, ...]]:
    """``input`` -> (system parts hoisted from system/developer messages, messages)."""
    if raw is None:
        raise bad_request("input: required", param="input", code="missing_required_parameter")
    if isinstance(raw, str):
        return [], (Message("user", (TextPart(raw),)),)
    expect_type(raw, list, "input", "a string or a list of input items")
    system: list[TextPart] = []
    messages: list[Message] = []
    names: dict[str, str] = {}
    for i, item in enumerate(raw):
        w = f"input[{i}]"
        expect_type(item, dict, w, "an input item object")
        t = item.get("type", "message" if "role" in item else None)
        if t == "message":
            role = item.get("role")
            parts = _content_parts(item.get("content"), f"{w}.content")
            if role in ("system", "developer"):
                for j, p in enumerate(parts):
                    if not isinstance(p, TextPart):
                        raise bad_request(f"{w}.content[{j}]: a {role} message may hold only text",
                                          param=f"{w}.content[{j}]")
                    if p.text:
                        system.append(p)
            elif role == "user":
                _append(messages, "user", parts)
            elif role == "assistant":
                _append(messages, "assistant", [p for p in parts if not (isinstance(p, TextPart) and not p.text)])
            else:
                raise bad_request(f"{w}.role: expected user, assistant, system or developer, got {role!r}",
                                  param=f"{w}.role")
        elif t == "function_call":
            args = item.get("arguments", "")
            if isinstance(args, (dict, list)):
                args = orjson.dumps(args).decode()
            call = ToolCallPart(
                id=expect_type(item.get("call_id"), str, f"{w}.call_id", "a string"),
                name=expect_type(item.get("name"), str, f"{w}.name", "a string"),
                arguments=expect_type(args, str, f"{w}.arguments", "a JSON string"),
            )
            names[call.id] = call.name
            _append(messages, "assistant", [call])
        elif t == "function_call_output":
            call_id = expect_type(item.get("call_id"), str, f"{w}.call_id", "a string")
            content = _tool_output(item.get("output"), f"{w}.output")
            _append(messages, "user", [ToolResultPart(call_id, content, False, names.get(call_id))])
        elif t == "reasoning":
            part = _reasoning_part(item, w)
            if part is not None:
                _append(messages, "assistant", [part])
        elif t == "item_reference":
            raise bad_request(f"{w}: item references need stored responses; this gateway is stateless, "
                              "send the referenced item itself", param=w, code="item_reference_not_supported")
        else:
            raise bad_request(f"{w}.type: input items of type {t!r} cannot be translated by this gateway "
                              "(supported: message, function_call, function_call_output, reasoning)",
                              param=f"{w}.type")
    if not messages:
        raise bad_request("input: contains no user or assistant content", param="input")
    return system, tuple(messages)


def _instructions(raw: Any) -> list[TextPart]:
    if raw is None:
        return []
    text = expect_type(raw, str, "instructions", "a string")
    return [TextPart(text)] if text else []


def decode_tools(raw: Any) -> tuple[Tool, ...]:
    """Flat Responses function tools -> canonical tools; hosted tools are a 400."""
    if raw is None:
        return ()
    expect_type(raw, list, "tools", "a list of tools")
    out = []
    for j, t in enumerate(raw):
        w = f"tools[{j}]"
        expect_type(t, dict, w, "a tool object")
        if t.get("type") != "function":
            raise bad_request(f"{w}.type: {t.get('type')!r} tools are hosted by OpenAI and cannot be served "
                              "through this gateway; only function tools are supported",
                              param=f"{w}.type", code="unsupported_tool_type")
        fn = t.get("function") if "name" not in t and isinstance(t.get("function"), dict) else t  # chat shape
        params = fn.get("parameters")
        desc = fn.get("description")
        out.append(Tool(
            name=expect_type(fn.get("name"), str, f"{w}.name", "a string"),
            description=expect_type(desc, str, f"{w}.description", "a string") if desc is not None else None,
            parameters=expect_type(params, dict, f"{w}.parameters", "a JSON Schema object")
            if params is not None else dict(_EMPTY_SCHEMA),
        ))
    return tuple(out)


def decode_tool_choice(raw: Any) -> ToolChoice | None:
    if raw is None:
        return None
    if raw in ("auto", "none", "required"):
        return ToolChoice(raw)
    if isinstance(raw, dict) and raw.get("type") == "function":
        name = raw.get("name")
        if name is None and isinstance(raw.get("function"), dict):  # chat shape
            name = raw["function"].get("name")
        if isinstance(name, str):
            return ToolChoice("tool", name)
    if isinstance(raw, dict) and raw.get("type") == "allowed_tools":
        return ToolChoice("required" if raw.get("mode") == "required" else "auto")
    raise bad_request("tool_choice: expected 'auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...}",
                      param="tool_choice")


def decode_text_format(raw: Any) -> dict[str, Any] | None:
    """``text.format`` (flat) -> ``response_format`` in the OpenAI chat shape."""
    if raw is None:
        return None
    expect_type(raw, dict, "text.format", "an object")
    t = raw.get("type")
    if t == "text":
        return None
    if t == "json_object":
        return {"type": "json_object"}
    if t == "json_schema":
        schema = expect_type(raw.get("schema"), dict, "text.format.schema", "a JSON Schema object")
        js: dict[str, Any] = {"name": raw.get("name") if isinstance(raw.get("name"), str) else "response",
                              "schema": schema}
        if isinstance(raw.get("strict"), bool):
            js["strict"] = raw["strict"]
        if isinstance(raw.get("description"), str):
            js["description"] = raw["description"]
        return {"type": "json_schema", "json_schema": js}
    raise bad_request(f"text.format.type: expected text, json_object or json_schema, got {t!r}",
                      param="text.format.type")


def decode_reasoning(raw: Any) -> Thinking | None:
    """``reasoning`` -> Thinking; effort ``none`` means no reasoning (as in the chat codec)."""
    if raw is None:
        return None
    expect_type(raw, dict, "reasoning", "an object")
    effort = raw.get("effort")
    summary = raw.get("summary", raw.get("generate_summary"))
    if effort is not None:
        expect_type(effort, str, "reasoning.effort", "a string")
    if summary is not None:
        expect_type(summary, str, "reasoning.summary", "a string")
    if effort == "none":
        return None
    if effort is None and summary is None:
        return None
    return Thinking(effort=effort, summary=summary)


def decode_request(body: Any) -> ChatRequest:
    """A ``POST /v1/responses`` body -> canonical request; 400 naming the field on bad input."""
    expect_type(body, dict, "body", "a JSON object")
    _reject_stateful(body)
    model = expect_type(body.get("model"), str, "model", "a string")
    input_system, messages = decode_input(body.get("input"))
    text = body.get("text")
    if text is not None:
        expect_type(text, dict, "text", "an object")
    text = text or {}
    extra = {k: body[k] for k in SHARED_KNOBS if body.get(k) is not None}
    if isinstance(text.get("verbosity"), str):
        extra["verbosity"] = text["verbosity"]
    user = body.get("user")
    if not isinstance(user, str):
        user = _str_or_none(body.get("safety_identifier"))
    metadata = body.get("metadata")
    if metadata is not None:
        expect_type(metadata, dict, "metadata", "an object")
    ptc = body.get("parallel_tool_calls")
    if ptc is not None:
        expect_type(ptc, bool, "parallel_tool_calls", "a boolean")
    stream = body.get("stream")
    if stream is not None:
        expect_type(stream, bool, "stream", "a boolean")
    max_tokens = opt_int(body, "max_output_tokens")
    if max_tokens is not None and max_tokens < 1:
        raise bad_request("max_output_tokens: must be a positive integer", param="max_output_tokens")
    return ChatRequest(
        model=model,
        messages=messages,
        system=tuple(_instructions(body.get("instructions")) + input_system),
        tools=decode_tools(body.get("tools")),
        tool_choice=decode_tool_choice(body.get("tool_choice")),
        max_tokens=max_tokens,
        temperature=opt_number(body, "temperature"),
        top_p=opt_number(body, "top_p"),
        stream=bool(stream),
        thinking=decode_reasoning(body.get("reasoning")),
        user=user,
        response_format=decode_text_format(text.get("format")),
        parallel_tool_calls=ptc,
        metadata=metadata or None,
        extra=extra,
    )


# ---------------------------------------------------------------- inbound: response encoding
def _format_json(rf: dict[str, Any] | None) -> dict[str, Any]:
    """Chat-shaped ``response_format`` -> flat Responses ``text.format``."""
    if not rf or rf.get("type") not in ("json_object", "json_schema"):
        return {"type": "text"}
    if rf["type"] == "json_object":
        return {"type": "json_object"}
    js = rf.get("json_schema") if isinstance(rf.get("json_schema"), dict) else {}
    out: dict[str, Any] = {"type": "json_schema", "name": js.get("name") or "response",
                           "schema": js.get("schema") if isinstance(js.get("schema"), dict) else {}}
    if isinstance(js.get("strict"), bool):
        out["strict"] = js["strict"]
    if isinstance(js.get("description"), str):
        out["description"] = js["description"]
    return out


def _tool_choice_json(tc: ToolChoice | None) -> Any:
    if tc is None:
        return "auto"
    if tc.mode == "tool":
        return {"type": "function", "name": tc.name}
    return tc.mode


def _tool_json(t: Tool, strict: bool | None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "function", "name": t.name, "parameters": t.parameters or dict(_EMPTY_SCHEMA),
                           "strict": strict}
    if t.description:
        out["description"] = t.description
    return out


def _response_json(
    rid: str,
    created: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: Usage | None,
    request: ChatRequest | None,
    incomplete_reason: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A full ``response`` object, echoing what the client asked for when known."""
    req = request
    th = req.thinking if req is not None else None
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "instructions": None,
        "max_output_tokens": req.max_tokens if req is not None else None,
        "model": model,
        "output": output,
        "parallel_tool_calls": req.parallel_tool_calls if req is not None and req.parallel_tool_calls is not None
        else True,
        "previous_response_id": None,
        "reasoning": {"effort": th.effort, "summary": th.summary} if th is not None else None,
        "store": False,
        "temperature": req.temperature if req is not None else None,
        "text": {"format": _format_json(req.response_format if req is not None else None)},
        "tool_choice": _tool_choice_json(req.tool_choice if req is not None else None),
        "tools": [_tool_json(t, None) for t in req.tools] if req is not None else [],
        "top_p": req.top_p if req is not None else None,
        "truncation": "disabled",
        "usage": usage_to_json(usage) if usage is not None else None,
        "user": req.user if req is not None else None,
        "metadata": (req.metadata if req is not None else None) or {},
    }


def _response_id(upstream_id: str | None) -> str:
    if upstream_id and upstream_id.startswith("resp_"):
        return upstream_id
    return "resp_" + upstream_id if upstream_id else new_id("resp_", 32)


def _status_for(reason: FinishReason | None) -> tuple[str, str | None]:
    """(response status, incomplete_details.reason) for a canonical finish reason."""
    if reason == "length":
        return "incomplete", "max_output_tokens"
    if reason in ("content_filter", "refusal"):
        return "incomplete", "content_filter"
    return "completed", None


def _message_item(text: str, status: str, item_id: str | None = None) -> dict[str, Any]:
    return {"id": item_id or new_id("msg_", 32), "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _reasoning_item(text: str | None, signature: str | None, item_id: str | None = None,
                    status: str = "completed") -> dict[str, Any]:
    return {"id": item_id or new_id("rs_", 32), "type": "reasoning",
            "summary": [{"type": "summary_text", "text": text}] if text else [],
            "encrypted_content": signature, "status": status}


def _call_item(call_id: str, name: str, arguments: str, status: str = "completed",
               item_id: str | None = None) -> dict[str, Any]:
    return {"id": item_id or new_id("fc_", 32), "type": "function_call", "status": status,
            "call_id": call_id, "name": name, "arguments": arguments}


def output_items(parts: tuple[Part, ...], status: str = "completed") -> list[dict[str, Any]]:
    """Canonical response parts -> Responses output items, in order.

    Consecutive text parts form one message item; each thinking part one reasoning item;
    each tool call one function_call item.  A response with nothing else gets an empty
    message so that clients always find one.
    """
    out: list[dict[str, Any]] = []
    text: list[str] = []
    msg_status = "incomplete" if status == "incomplete" else "completed"

    def flush() -> None:
        if text:
            out.append(_message_item("".join(text), msg_status))
            text.clear()

    for p in parts:
        if isinstance(p, TextPart):
            text.append(p.text)
            continue
        flush()
        if isinstance(p, ThinkingPart):
            out.append(_reasoning_item(p.text, p.signature))
        elif isinstance(p, ToolCallPart):
            out.append(_call_item(p.id, p.name, p.arguments))
    flush()
    if not out:
        out.append(_message_item("", msg_status))
    return out


class ResponsesInbound:
    """Serves OpenAI Responses API clients (OpenAI SDK ``client.responses``, Codex CLI)."""

    dialect = DIALECT

    def decode_request(self, body: dict[str, Any]) -> ChatRequest:
        return decode_request(body)

    def encode_response(self, response: ChatResponse, model: str) -> dict[str, Any]:
        status, reason = _status_for(response.finish_reason)
        return _response_json(
            _response_id(response.id), response.created, model, status,
            output_items(response.parts, status), response.usage, None, reason,
        )

    def stream_encoder(self, model: str, request: ChatRequest) -> ResponsesStreamEncoder:
        return ResponsesStreamEncoder(model, request)

    def error_body(self, err: GatewayError) -> dict[str, Any]:
        return error_json(err)


# ---------------------------------------------------------------- inbound: stream encoding
@define
class _OpenItem:
    """An output item whose events are still being streamed."""

    kind: str  # "message" | "reasoning" | "function_call"
    index: int  # output_index
    id: str
    chunks: list[str] = field(factory=list)
    part_open: bool = False  # reasoning: summary part added
    signature: str | None = None
    call_id: str = ""
    name: str = ""


class ResponsesStreamEncoder:
    """Canonical events -> Responses SSE events (``event:`` line + JSON with ``sequence_number``).

    Text and reasoning items are closed as soon as another kind of output starts; function
    call items stay open until the end so that interleaved argument fragments of several
    calls (some providers send them) are never lost.  Nothing is sent after the terminal
    ``response.completed`` / ``response.incomplete`` / ``response.failed``.
    """

    def __init__(self, model: str, request: ChatRequest | None = None, *, created: int = 0,
                 response_id: str | None = None) -> None:
        self._model = model
        self._request = request
        self._created = created
        self._id = response_id
        self._seq = 0
        self._started = False
        self._done = False
        self._output: list[dict[str, Any]] = []  # by output_index (latest snapshot of each item)
        self._text: _OpenItem | None = None
        self._reasoning: _OpenItem | None = None
        self._calls: dict[int, _OpenItem] = {}  # open function calls by canonical tool index
        self._finish: FinishReason | None = None
        self._usage: Usage | None = None

    # -- framing
    def _emit(self, out: list[bytes], type_: str, **fields: Any) -> None:
        obj = {"type": type_, "sequence_number": self._seq, **fields}
        self._seq += 1
        out.append(encode_event(dumps(obj), type_))

    def _response(self, status: str, reason: str | None = None, error: dict[str, Any] | None = None,
                  usage: Usage | None = None) -> dict[str, Any]:
        assert self._id is not None
        return _response_json(self._id, self._created, self._model, status, list(self._output), usage,
                              self._request, reason, error)

    def _start(self, out: list[bytes], upstream_id: str | None = None) -> None:
        if self._started:
            return
        self._started = True
        if self._id is None:
            self._id = _response_id(upstream_id)
        self._emit(out, "response.created", response=self._response("in_progress"))
        self._emit(out, "response.in_progress", response=self._response("in_progress"))

    # -- items
    def _add_item(self, out: list[bytes], kind: str, prefix: str, item: dict[str, Any]) -> _OpenItem:
        open_item = _OpenItem(kind, len(self._output), new_id(prefix, 32))
        item = {"id": open_item.id, **item}
        self._output.append(item)
        self._emit(out, "response.output_item.added", output_index=open_item.index, item=item)
        return open_item

    def _open_text(self, out: list[bytes]) -> _OpenItem:
        self._close_reasoning(out)
        it = self._add_item(out, "message", "msg_",
                            {"type": "message", "status": "in_progress", "role": "assistant", "content": []})
        self._emit(out, "response.content_part.added", item_id=it.id, output_index=it.index, content_index=0,
                   part={"type": "output_text", "text": "", "annotations": []})
        self._text = it
        return it

    def _close_text(self, out: list[bytes]) -> None:
        it, self._text = self._text, None
        if it is None:
            return
        text = "".join(it.chunks)
        part = {"type": "output_text", "text": text, "annotations": []}
        self._emit(out, "response.output_text.done", item_id=it.id, output_index=it.index, content_index=0,
                   text=text, logprobs=[])
        self._emit(out, "response.content_part.done", item_id=it.id, output_index=it.index, content_index=0,
                   part=part)
        status = "incomplete" if self._finish == "length" else "completed"
        item = _message_item(text, status, it.id)
        self._output[it.index] = item
        self._emit(out, "response.output_item.done", output_index=it.index, item=item)

    def _open_reasoning(self, out: list[bytes]) -> _OpenItem:
        self._close_text(out)
        it = self._add_item(out, "reasoning", "rs_", {"type": "reasoning", "summary": []})
        self._reasoning = it
        return it

    def _close_reasoning(self, out: list[bytes]) -> None:
        it, self._reasoning = self._reasoning, None
        if it is None:
            return
        text = "".join(it.chunks)
        if it.part_open:
            self._emit(out, "response.reasoning_summary_text.done", item_id=it.id, output_index=it.index,
                       summary_index=0, text=text)
            self._emit(out, "response.reasoning_summary_part.done", item_id=it.id, output_index=it.index,
                       summary_index=0, part={"type": "summary_text", "text": text})
        item = _reasoning_item(text if it.part_open else None, it.signature, it.id)
        self._output[it.index] = item
        self._emit(out, "response.output_item.done", output_index=it.index, item=item)

    def _open_call(self, out: list[bytes], index: int, call_id: str, name: str) -> _OpenItem:
        self._close_text(out)
        self._close_reasoning(out)
        it = self._add_item(out, "function_call", "fc_", {"type": "function_call", "status": "in_progress",
                                                         "call_id": call_id, "name": name, "arguments": ""})
        it.call_id, it.name = call_id, name
        self._calls[index] = it
        return it

    def _close_call(self, out: list[bytes], it: _OpenItem) -> None:
        args = "".join(it.chunks)
        self._emit(out, "response.function_call_arguments.done", item_id=it.id, output_index=it.index,
                   arguments=args, name=it.name)
        item = _call_item(it.call_id, it.name, args, "completed", it.id)
        self._output[it.index] = item
        self._emit(out, "response.output_item.done", output_index=it.index, item=item)

    def _close_all(self, out: list[bytes]) -> None:
        """Close every open item in output order."""
        pending: list[tuple[int, str, _OpenItem]] = [(c.index, "call", c) for c in self._calls.values()]
        self._calls = {}
        if self._text is not None:
            pending.append((self._text.index, "text", self._text))
        if self._reasoning is not None:
            pending.append((self._reasoning.index, "reasoning", self._reasoning))
        for _, kind, it in sorted(pending, key=lambda x: x[0]):
            if kind == "call":
                self._close_call(out, it)
            elif kind == "text":
                self._close_text(out)
            else:
                self._close_reasoning(out)

    # -- events
    def feed(self, event: ev.Event) -> list[bytes]:
        out: list[bytes] = []
        if self._done:
            return out
        if isinstance(event, ev.StreamError):
            return self.error(event.error)
        self._start(out, event.id if isinstance(event, ev.MessageStart) else None)
        if isinstance(event, ev.MessageStart):
            if event.usage is not None:
                self._usage = event.usage
        elif isinstance(event, ev.TextDelta):
            if event.text:
                it = self._text or self._open_text(out)
                it.chunks.append(event.text)
                self._emit(out, "response.output_text.delta", item_id=it.id, output_index=it.index,
                           content_index=0, delta=event.text, logprobs=[])
        elif isinstance(event, ev.ThinkingDelta):
            if event.text:
                it = self._reasoning or self._open_reasoning(out)
                if not it.part_open:
                    it.part_open = True
                    self._emit(out, "response.reasoning_summary_part.added", item_id=it.id, output_index=it.index,
                               summary_index=0, part={"type": "summary_text", "text": ""})
                it.chunks.append(event.text)
                self._emit(out, "response.reasoning_summary_text.delta", item_id=it.id, output_index=it.index,
                           summary_index=0, delta=event.text)
        elif isinstance(event, ev.SignatureDelta):
            # a signature ends a thinking block in every dialect: attach it and close the item
            it = self._reasoning or self._open_reasoning(out)
            it.signature = event.signature
            self._close_reasoning(out)
        elif isinstance(event, ev.ToolCallStart):
            if event.index not in self._calls:
                self._open_call(out, event.index, event.id, event.name)
        elif isinstance(event, ev.ToolArgsDelta):
            if event.fragment:
                it = self._calls.get(event.index) or self._open_call(out, event.index, new_id("call_"), "")
                it.chunks.append(event.fragment)
                self._emit(out, "response.function_call_arguments.delta", item_id=it.id, output_index=it.index,
                           delta=event.fragment)
        elif isinstance(event, ev.UsageEvent):
            self._usage = self._usage.merge(event.usage) if self._usage is not None else event.usage
        elif isinstance(event, ev.Finish):
            if self._finish is None:
                self._finish = event.reason
            self._close_all(out)
        elif isinstance(event, ev.Done):
            self._close_all(out)
            status, reason = _status_for(self._finish)
            terminal = "response.incomplete" if status == "incomplete" else "response.completed"
            self._emit(out, terminal, response=self._response(status, reason, usage=self._usage))
            self._done = True
        # RedactedThinking: no slot in this dialect (see the module docstring)
        return out

    def error(self, err: GatewayError) -> list[bytes]:
        """``response.failed`` (what Codex and the SDK's accumulator read), then an ``error`` event.

        The ``error`` event also carries a nested ``error`` object: the OpenAI SDK raises
        `openai.APIError` with its message when an event has one, so SDK users get an
        exception rather than a silently short stream.
        """
        out: list[bytes] = []
        if self._done:
            return out
        self._start(out)
        for it in [*self._calls.values(), self._text, self._reasoning]:
            if it is None:
                continue
            text = "".join(it.chunks)
            if it.kind == "message":
                self._output[it.index] = _message_item(text, "incomplete", it.id)
            elif it.kind == "reasoning":
                self._output[it.index] = _reasoning_item(text or None, it.signature, it.id, "incomplete")
            else:
                self._output[it.index] = _call_item(it.call_id, it.name, text, "incomplete", it.id)
        self._calls, self._text, self._reasoning = {}, None, None
        failed_code = _FAILED_CODES.get(err.status, "server_error")
        self._emit(out, "response.failed", response=self._response(
            "failed", error={"code": failed_code, "message": err.message}, usage=self._usage))
        body = error_json(err)["error"]
        code = err.code or failed_code
        self._emit(out, "error", code=code, message=err.message, param=err.param, error={**body, "code": code})
        self._done = True
        return out

    def keepalive(self) -> bytes:
        return KEEPALIVE_COMMENT


# ---------------------------------------------------------------- outbound: request encoding
def effort_for_budget(budget: int) -> str:
    """Thinking budget -> Responses effort (< 4096 low, < 16384 medium, else high)."""
    if budget < 4096:
        return "low"
    if budget < 16384:
        return "medium"
    return "high"


def _input_content(parts: list[Part]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, TextPart):
            out.append({"type": "input_text", "text": p.text})
        elif isinstance(p, ImagePart):
            url = data_url(p.media_type or "image/png", p.data) if p.data else p.url
            out.append({"type": "input_image", "image_url": url, "detail": p.detail or "auto"})
        elif isinstance(p, DocumentPart):
            if p.text is not None:
                out.append({"type": "input_text", "text": p.text})
                continue
            f: dict[str, Any] = {"type": "input_file"}
            if p.data:
                f["file_data"] = data_url(p.media_type or "application/pdf", p.data)
            elif p.url:
                f["file_url"] = p.url
            else:
                continue
            if p.name:
                f["filename"] = p.name
            elif p.data:
                f["filename"] = "document.pdf" if (p.media_type or "application/pdf") == "application/pdf" \
                    else "document"
            out.append(f)
    return out


def _tool_result_item(p: ToolResultPart) -> dict[str, Any]:
    content = list(p.content)
    if p.is_error:
        if content and isinstance(content[0], TextPart):
            content[0] = TextPart("Error: " + content[0].text)
        else:
            content.insert(0, TextPart("Error"))
    output: Any
    if len(content) == 1 and isinstance(content[0], TextPart):
        output = content[0].text
    elif not content:
        output = ""
    else:
        output = _input_content(list(content))
    return {"type": "function_call_output", "call_id": p.call_id, "output": output}


def encode_input(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """Canonical messages -> Responses input items."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "user":
            rest: list[Part] = []
            for p in m.parts:
                if isinstance(p, ToolResultPart):
                    out.append(_tool_result_item(p))
                else:
                    rest.append(p)
            content = _input_content(rest)
            if content:
                out.append({"type": "message", "role": "user", "content": content})
            continue
        texts: list[dict[str, Any]] = []

        def flush() -> None:
            if texts:
                out.append({"type": "message", "role": "assistant", "content": list(texts)})
                texts.clear()

        for p in m.parts:
            if isinstance(p, TextPart):
                if p.text:
                    texts.append({"type": "output_text", "text": p.text})
                continue
            if isinstance(p, ThinkingPart):
                if not p.signature:
                    continue  # unsigned reasoning cannot be replayed (module docstring)
                flush()
                out.append({"type": "reasoning",
                            "summary": [{"type": "summary_text", "text": p.text}] if p.text else [],
                            "encrypted_content": p.signature})
            elif isinstance(p, ToolCallPart):
                flush()
                out.append({"type": "function_call", "call_id": p.id, "name": p.name, "arguments": p.arguments})
        flush()
    return out


def _reasoning_json(th: Thinking) -> dict[str, Any]:
    out: dict[str, Any] = {}
    effort = th.effort or (effort_for_budget(th.budget_tokens) if th.budget_tokens is not None else None)
    if effort:
        out["effort"] = effort
    if th.summary:
        out["summary"] = th.summary
    return out


def encode_request(request: ChatRequest, upstream_model: str) -> dict[str, Any]:
    """Canonical request -> a ``/v1/responses`` body (always ``store: false``)."""
    body: dict[str, Any] = {"model": upstream_model, "input": encode_input(request.messages),
                            "stream": request.stream, "store": False}
    if request.system:
        body["instructions"] = "\n\n".join(p.text for p in request.system)
    if request.max_tokens is not None:
        body["max_output_tokens"] = max(MIN_OUTPUT_TOKENS, request.max_tokens)
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.tools:
        body["tools"] = [_tool_json(t, False) for t in request.tools]
        if request.tool_choice is not None:
            body["tool_choice"] = _tool_choice_json(request.tool_choice)
    if request.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.thinking is not None:
        reasoning = _reasoning_json(request.thinking)
        if reasoning:
            body["reasoning"] = reasoning
        if reasoning.get("effort") != "none":
            body["include"] = ["reasoning.encrypted_content"]  # store:false -> needed to replay reasoning
    text: dict[str, Any] = {}
    if request.response_format:
        fmt = _format_json(request.response_format)
        if fmt["type"] != "text":
            text["format"] = fmt
    verbosity = request.extra.get("verbosity")
    if isinstance(verbosity, str):
        text["verbosity"] = verbosity
    if text:
        body["text"] = text
    if request.user:
        body["user"] = request.user
    if request.metadata and all(isinstance(v, str) for v in request.metadata.values()):
        body["metadata"] = dict(request.metadata)
    for k in SHARED_KNOBS:
        if request.extra.get(k) is not None:
            body[k] = request.extra[k]
    return body


# ---------------------------------------------------------------- outbound: response decoding
def _item_parts(item: dict[str, Any]) -> list[Part]:
    """One output item -> canonical parts (hosted-tool items are ignored)."""
    t = item.get("type")
    if t == "message":
        out: list[Part] = []
        content = item.get("content")
        for c in content if isinstance(content, list) else []:
            if not isinstance(c, dict):
                continue
            if c.get("type") == "output_text" and isinstance(c.get("text"), str):
                out.append(TextPart(c["text"]))
            elif c.get("type") == "refusal" and isinstance(c.get("refusal"), str):
                out.append(TextPart(c["refusal"]))
        return out
    if t == "reasoning":
        texts = [s["text"] for s in item.get("summary") or [] if isinstance(s, dict) and isinstance(s.get("text"), str)]
        if not texts:
            texts = [c["text"] for c in item.get("content") or []
                     if isinstance(c, dict) and isinstance(c.get("text"), str)]
        sig = _str_or_none(item.get("encrypted_content"))
        text = "\n\n".join(texts)
        return [ThinkingPart(text, sig or None)] if text or sig else []
    if t == "function_call":
        args = item.get("arguments", "")
        if not isinstance(args, str):
            args = orjson.dumps(args).decode()
        return [ToolCallPart(str(item.get("call_id") or item.get("id") or new_id("call_")),
                             str(item.get("name") or ""), args)]
    return []


def _finish_for(body: dict[str, Any], saw_calls: bool) -> FinishReason:
    if body.get("status") == "incomplete":
        details = body.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        return "content_filter" if reason == "content_filter" else "length"
    return "tool_calls" if saw_calls else "stop"


def _upstream_error(code: Any, message: Any, what: str = "upstream error") -> GatewayError:
    """An upstream failure reported in-band (``response.failed`` / ``error``) -> GatewayError."""
    code_s = str(code) if code is not None else None
    msg = f"{what}: {message}" if isinstance(message, str) and message else what
    if code_s in ("rate_limit_exceeded", "insufficient_quota", "rate_limit_error"):
        return GatewayError(429, msg, code=code_s, retryable=code_s != "insufficient_quota")
    if code_s and (code_s.startswith("invalid") or code_s in ("context_length_exceeded", "bio_policy",
                                                               "misalignment_policy_violation")):
        return GatewayError(400, msg, code=code_s)
    return GatewayError(502, msg, code=code_s, retryable=True)


def decode_response(body: Any) -> ChatResponse:
    """A Responses ``response`` object -> canonical response; 502 when malformed or failed."""
    if not isinstance(body, dict):
        raise upstream_malformed("not a JSON object")
    if body.get("status") == "failed":
        err = body.get("error") if isinstance(body.get("error"), dict) else {}
        raise _upstream_error(err.get("code"), err.get("message"), "the upstream response failed")
    output = body.get("output")
    if not isinstance(output, list):
        raise upstream_malformed("response.output missing")
    parts: list[Part] = []
    for item in output:
        if isinstance(item, dict):
            parts.extend(_item_parts(item))
    saw_calls = any(isinstance(p, ToolCallPart) for p in parts)
    return ChatResponse(
        id=str(body.get("id") or new_id("resp_", 32)),
        model=str(body.get("model") or ""),
        parts=tuple(parts),
        finish_reason=_finish_for(body, saw_calls),
        usage=usage_from_json(body.get("usage")),
        created=_int(body.get("created_at")),
    )


def error_message(body: bytes) -> tuple[str, str | None]:
    """(message, code) from an upstream error body (OpenAI shape, or ChatGPT's ``detail``)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return (body.decode("utf-8", "replace").strip()[:500] or "(empty body)"), None
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        code = err.get("code") if err.get("code") is not None else err.get("type")
        return str(err.get("message") or err), (str(code) if code is not None else None)
    if isinstance(err, str):
        return err, None
    if isinstance(obj, dict):
        for k in ("message", "detail"):
            if isinstance(obj.get(k), str):
                return obj[k], None
    return body.decode("utf-8", "replace")[:500], None


class ResponsesOutbound:
    """Calls upstreams that speak the Responses API (OpenAI, ChatGPT/Codex, Factory GPT models)."""

    dialect = DIALECT

    def encode_request(self, request: ChatRequest, upstream_model: str) -> dict[str, Any]:
        return encode_request(request, upstream_model)

    def decode_response(self, body: dict[str, Any]) -> ChatResponse:
        return decode_response(body)

    def stream_decoder(self) -> ResponsesStreamDecoder:
        return ResponsesStreamDecoder()

    def error_message(self, status: int, body: bytes) -> tuple[str, str | None]:
        return error_message(body)


# ---------------------------------------------------------------- outbound: stream decoding
@define
class _Call:
    ordinal: int
    got_args: bool = False


class ResponsesStreamDecoder:
    """Responses SSE events -> canonical events.

    Function calls are numbered in order of appearance (``ToolCallStart.index``).  Arguments
    that never came as deltas are taken from ``function_call_arguments.done`` or the item's
    ``output_item.done`` and sent as one fragment.  Text or reasoning found only in a
    ``*.done`` item or in the final response (proxies that skip deltas) is emitted whole.
    """

    def __init__(self) -> None:
        self._started = False
        self._done = False
        self._calls: dict[str, _Call] = {}  # by item id (or "#<output_index>" when the id is missing)
        self._call_keys_by_index: dict[int, str] = {}
        self._delta_items: set[str] = set()  # message / reasoning items that streamed deltas
        self._seen_items: set[str] = set()  # items already turned into events
        self._summary_parts: dict[str, int] = {}

    def feed(self, event: SSEEvent) -> list[ev.Event]:
        if self._done:
            return []
        data = event.data
        if data.strip() == "[DONE]":
            return []  # terminal events decide; a proxy-added [DONE] is harmless
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._done = True
            return [ev.StreamError(upstream_malformed("a stream event is not JSON"))]
        if not isinstance(obj, dict):
            return []
        t = obj.get("type") if isinstance(obj.get("type"), str) else event.event
        out: list[ev.Event] = []
        if t == "error":
            self._done = True
            err = obj.get("error") if isinstance(obj.get("error"), dict) else obj
            return [ev.StreamError(_upstream_error(err.get("code"), err.get("message")))]
        resp = obj.get("response") if isinstance(obj.get("response"), dict) else None
        if not self._started:
            self._started = True
            rid = resp.get("id") if resp else None
            model = resp.get("model") if resp else None
            out.append(ev.MessageStart(str(rid or ""), str(model or "")))
        handler = _HANDLERS.get(t or "")
        if handler is not None:
            handler(self, obj, out)
        return out

    # -- helpers
    def _key(self, obj: dict[str, Any]) -> str:
        item_id = obj.get("item_id")
        if isinstance(item_id, str) and item_id:
            return item_id
        idx = obj.get("output_index")
        return self._call_keys_by_index.get(idx, f"#{idx}") if isinstance(idx, int) else "#?"

    def _item_key(self, item: dict[str, Any], output_index: Any) -> str:
        item_id = item.get("id")
        if isinstance(item_id, str) and item_id:
            return item_id
        return f"#{output_index}"

    def _start_call(self, key: str, item: dict[str, Any], output_index: Any, out: list[ev.Event]) -> _Call:
        call = self._calls.get(key)
        if call is None:
            call = _Call(len(self._calls))
            self._calls[key] = call
            if isinstance(output_index, int):
                self._call_keys_by_index[output_index] = key
            call_id = item.get("call_id") or item.get("id") or new_id("call_")
            out.append(ev.ToolCallStart(call.ordinal, str(call_id), str(item.get("name") or "")))
        return call

    def _args(self, call: _Call, args: Any, out: list[ev.Event]) -> None:
        if call.got_args:
            return
        if not isinstance(args, str):
            args = orjson.dumps(args).decode() if args is not None else ""
        if args:
            call.got_args = True
            out.append(ev.ToolArgsDelta(call.ordinal, args))

    def _whole_item(self, item: dict[str, Any], key: str, output_index: Any, out: list[ev.Event]) -> None:
        """Events for an item whose content did not arrive as deltas."""
        t = item.get("type")
        if t == "function_call":
            call = self._start_call(key, item, output_index, out)
            self._args(call, item.get("arguments"), out)
        elif t in ("message", "reasoning") and not (
            key in self._delta_items or f"#{output_index}" in self._delta_items
        ):
            for p in _item_parts(item):
                if isinstance(p, TextPart) and p.text:
                    out.append(ev.TextDelta(p.text))
                elif isinstance(p, ThinkingPart) and p.text:
                    out.append(ev.ThinkingDelta(p.text))
        if t == "reasoning" and isinstance(item.get("encrypted_content"), str) and item["encrypted_content"]:
            out.append(ev.SignatureDelta(item["encrypted_content"]))
        self._seen_items.add(key)

    # -- handlers
    def _on_item_added(self, obj: dict[str, Any], out: list[ev.Event]) -> None:
        item = obj.get("item")
        if isinstance(item, dict) and item.get("type") == "function_call":
            key = self._item_key(item, obj.get("output_index"))
            call = self._start_call(key, item, obj.get("output_index"), out)
            self._args(call, item.get("arguments"), out)

    def _mark_streamed(self, obj: dict[str, Any]) -> None:
        item_id, idx = obj.get("item_id"), obj.get("output_index")
        if isinstance(item_id, str):
            self._delta_items.add(item_id)
        if isinstance(idx, int):
            self._delta_items.add(f"#{idx}")

    def _on_text_delta(self, obj: dict[str, Any], out: list[ev.Event]) -> None:
        delta = obj.get("delta")
        if isinstance(delta, str) and delta:
            self._mark_streamed(obj)
            out.append(ev.TextDelta(delta))

    def _on_summary_part_added(self, obj: dict[str, Any], out: list[ev.Event]) -> None:
        key = self._key(obj)
        n = self._summary_parts.get(key, 0)
        self._summary_parts[key] = n + 1
        if n > 0:
            out.append(ev.ThinkingDelta("\n\n"))  # parts are joined with blank lines, as in decode_response

    def _on_thinking_delta(self, obj: dict[str, Any], out: list[ev.Event]) -> None:
        delta = obj.get("delta")
        if isinstance(delta, str) and delta:
            self._mark_streamed(obj)
            out.append(ev.ThinkingDelta(delta))

    def _on_args_delta(self, obj: dict[str, Any], out: list[ev.Event]) -> None:
        delta = obj.get("delta")
        if not isinstance(delta, str) or not delta:
            return
        key = self._key(obj)
        call = self._calls.get(key) or self._start_call(key, {}, obj.get("output_index"), out)
        call.got_args = True
        out.append(ev.ToolArgsDelta(call.ordinal, delta))

    def _on_args_done(self, obj: dict[str, Any], out: list[ev.Event]) -> None:
        key = self._key(obj)
        call = self._calls.get(key) or self._start_call(key, {"name": obj.get("name")}, obj.get("output_index"), out)
        self._args(call, obj.get("arguments"), out)

    def _on_item_done(self, obj: dict[str, Any], out: list[ev.Event]) -> None:
        item = obj.get("item")
        if isinstance(item, dict):
            self._whole_item(item, self._item_key(item, obj.get("output_index")), obj.get("output_index"), out)

    def _on_terminal(self, obj: dict[str, Any], out: list[ev.Event]) -> None:
        resp = obj.get("response") if isinstance(obj.get("response"), dict) else {}
        output = resp.get("output") if isinstance(resp.get("output"), list) else []
        for i, item in enumerate(output):
            if isinstance(item, dict):
                key = self._item_key(item, i)
                if key not in self._seen_items:
                    self._whole_item(item, key, i, out)
        if obj.get("type") == "response.incomplete" and resp.get("status") is None:
            resp = {**resp, "status": "incomplete"}
        out.append(ev.Finish(_finish_for(resp, bool(self._calls))))
        usage = usage_from_json(resp.get("usage"))
        if usage is not None:
            out.append(ev.UsageEvent(usage))
        out.append(ev.Done())
        self._done = True

    def _on_failed(self, obj: dict[str, Any], out: list[ev.Event]) -> None:
        resp = obj.get("response") if isinstance(obj.get("response"), dict) else {}
        err = resp.get("error") if isinstance(resp.get("error"), dict) else {}
        out.append(ev.StreamError(_upstream_error(err.get("code"), err.get("message"))))
        self._done = True


_HANDLERS = {
    "response.output_item.added": ResponsesStreamDecoder._on_item_added,
    "response.output_text.delta": ResponsesStreamDecoder._on_text_delta,
    "response.refusal.delta": ResponsesStreamDecoder._on_text_delta,
    "response.reasoning_summary_part.added": ResponsesStreamDecoder._on_summary_part_added,
    "response.reasoning_summary_text.delta": ResponsesStreamDecoder._on_thinking_delta,
    "response.reasoning_text.delta": ResponsesStreamDecoder._on_thinking_delta,
    "response.function_call_arguments.delta": ResponsesStreamDecoder._on_args_delta,
    "response.function_call_arguments.done": ResponsesStreamDecoder._on_args_done,
    "response.output_item.done": ResponsesStreamDecoder._on_item_done,
    "response.completed": ResponsesStreamDecoder._on_terminal,
    "response.incomplete": ResponsesStreamDecoder._on_terminal,
    "response.failed": ResponsesStreamDecoder._on_failed,
}

INBOUND = ResponsesInbound()
OUTBOUND = ResponsesOutbound()
