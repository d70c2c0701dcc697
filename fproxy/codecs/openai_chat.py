"""OpenAI Chat Completions: inbound (clients) and outbound (upstreams) codec.

Signature round trip for OpenAI clients (Anthropic thinking behind an OpenAI front door):
an assistant message carries ``reasoning_content`` (the text) and, when the upstream signed
it, ``thinking_blocks`` - ``[{"type": "thinking", "thinking": TEXT, "signature": SIG}]``
(LiteLLM's convention, so clients written for it work unchanged).  A client that sends the
assistant turn back with its ``thinking_blocks`` gets a valid signed thinking block upstream;
plain ``reasoning_content`` without a signature is kept as unsigned thinking, which the
Anthropic encoder drops rather than forges.  In streams the signature arrives as a delta
``thinking_blocks`` entry with the full thinking text and the signature, once, when known.
"""
from __future__ import annotations

from typing import Any

import orjson

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
from fproxy.codecs.sse import KEEPALIVE_COMMENT, SSEEvent
from fproxy.ir import events as ev
from fproxy.ir.errors import GatewayError, bad_request
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

DIALECT = "openai-chat"

#: OpenAI-family knobs carried in ChatRequest.extra (copied to OpenAI-dialect upstreams only)
EXTRA_KNOBS = (
    "seed", "presence_penalty", "frequency_penalty", "logit_bias", "n", "logprobs", "top_logprobs",
    "service_tier", "store", "prediction", "modalities", "audio", "verbosity", "safety_identifier",
    "prompt_cache_key", "web_search_options",
)

_FINISH_OUT: dict[str, str] = {
    "stop": "stop", "stop_sequence": "stop", "length": "length", "tool_calls": "tool_calls",
    "content_filter": "content_filter", "refusal": "content_filter", "pause_turn": "stop",
}
_FINISH_IN: dict[str, FinishReason] = {
    "stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls",
    "content_filter": "content_filter",
}
_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
}


# ---------------------------------------------------------------- usage
def usage_to_json(u: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cache_read_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }
    if u.cache_write_tokens:
        out["prompt_tokens_details"]["cache_write_tokens"] = u.cache_write_tokens
    return out


def usage_from_json(obj: Any) -> Usage | None:
    if not isinstance(obj, dict):
        return None
    ptd = obj.get("prompt_tokens_details") or {}
    ctd = obj.get("completion_tokens_details") or {}
    return Usage(
        prompt_tokens=_int(obj.get("prompt_tokens")),
        completion_tokens=_int(obj.get("completion_tokens")),
        cache_read_tokens=_int(ptd.get("cached_tokens") if isinstance(ptd, dict) else 0),
        cache_write_tokens=_int(ptd.get("cache_write_tokens") if isinstance(ptd, dict) else 0),
        reasoning_tokens=_int(ctd.get("reasoning_tokens") if isinstance(ctd, dict) else 0),
    )


def _int(v: Any) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0


# ---------------------------------------------------------------- request decoding
def _text_parts(content: Any, where: str) -> list[TextPart]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content)] if content else []
    expect_type(content, list, where, "a string or a list of text parts")
    out = []
    for j, p in enumerate(content):
        expect_type(p, dict, f"{where}[{j}]", "a content part object")
        if p.get("type") in ("text", "input_text", "output_text"):
            out.append(TextPart(expect_type(p.get("text"), str, f"{where}[{j}].text", "a string")))
        elif p.get("type") == "refusal":
            continue
        else:
            raise bad_request(f"{where}[{j}].type: only text parts are allowed here", param=f"{where}[{j}].type")
    return out


def _user_parts(content: Any, where: str) -> list[Part]:
    if isinstance(content, str):
        return [TextPart(content)]
    expect_type(content, list, where, "a string or a list of content parts")
    out: list[Part] = []
    for j, p in enumerate(content):
        w = f"{where}[{j}]"
        expect_type(p, dict, w, "a content part object")
        t = p.get("type")
        if t == "text":
            out.append(TextPart(expect_type(p.get("text"), str, f"{w}.text", "a string"), p.get("cache_control")))
        elif t == "image_url":
            iu = p.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            expect_type(url, str, f"{w}.image_url.url", "a string")
            detail = iu.get("detail") if isinstance(iu, dict) else None
            parsed = parse_data_url(url)
            if parsed:
                out.append(ImagePart(media_type=parsed[0], data=parsed[1], detail=detail))
            else:
                out.append(ImagePart(url=url, detail=detail))
        elif t == "file":
            f = expect_type(p.get("file"), dict, f"{w}.file", "an object")
            fd = f.get("file_data")
            if isinstance(fd, str):
                parsed = parse_data_url(fd) or ("application/pdf", fd)
                out.append(DocumentPart(media_type=parsed[0], data=parsed[1], name=f.get("filename")))
            else:
                raise bad_request(f"{w}.file: only inline file_data is supported (file ids are not)", param=w)
        elif t == "input_audio":
            raise bad_request(f"{w}: audio input is not supported by this gateway", param=w)
        else:
            raise bad_request(f"{w}.type: unknown content part type {t!r}", param=f"{w}.type")
    return out


def _tool_calls(raw: Any, where: str) -> list[ToolCallPart]:
    expect_type(raw, list, where, "a list")
    out = []
    for j, tc in enumerate(raw):
        w = f"{where}[{j}]"
        expect_type(tc, dict, w, "an object")
        fn = expect_type(tc.get("function"), dict, f"{w}.function", "an object")
        args = fn.get("arguments", "")
        if isinstance(args, (dict, list)):
            args = orjson.dumps(args).decode()
        expect_type(args, str, f"{w}.function.arguments", "a JSON string")
        out.append(ToolCallPart(
            id=expect_type(tc.get("id"), str, f"{w}.id", "a string"),
            name=expect_type(fn.get("name"), str, f"{w}.function.name", "a string"),
            arguments=args,
        ))
    return out


def _thinking_from_message(m: dict[str, Any]) -> list[Part]:
    blocks = m.get("thinking_blocks")
    out: list[Part] = []
    if isinstance(blocks, list) and blocks:
        for b in blocks:
            if not isinstance(b, dict):
                continue
            if b.get("type") == "thinking" and isinstance(b.get("thinking"), str):
                out.append(ThinkingPart(b["thinking"], b.get("signature")))
            elif b.get("type") == "redacted_thinking" and isinstance(b.get("data"), str):
                out.append(RedactedThinkingPart(b["data"]))
        return out
    rc = m.get("reasoning_content", m.get("reasoning"))
    if isinstance(rc, str) and rc:
        out.append(ThinkingPart(rc, None))
    return out


def _append(messages: list[Message], role: str, parts: list[Part]) -> None:
    """Append a turn, merging consecutive same-role turns (tool results first)."""
    if not parts:
        return
    if messages and messages[-1].role == role:
        prev = list(messages[-1].parts)
        merged = prev + parts
        if role == "user":
            merged = [p for p in merged if isinstance(p, ToolResultPart)] + [
                p for p in merged if not isinstance(p, ToolResultPart)
            ]
        messages[-1] = Message(role, tuple(merged))  # type: ignore[arg-type]
    else:
        messages.append(Message(role, tuple(parts)))  # type: ignore[arg-type]


def decode_messages(raw: Any) -> tuple[tuple[TextPart, ...], tuple[Message, ...]]:
    expect_type(raw, list, "messages", "a list of messages")
    if not raw:
        raise bad_request("messages: must contain at least one message", param="messages")
    system: list[TextPart] = []
    messages: list[Message] = []
    names: dict[str, str] = {}
    for i, m in enumerate(raw):
        w = f"messages[{i}]"
        expect_type(m, dict, w, "a message object")
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            system.extend(_text_parts(content, f"{w}.content"))
        elif role == "user":
            if content is None:
                raise bad_request(f"{w}.content: a user message needs content", param=f"{w}.content")
            _append(messages, "user", _user_parts(content, f"{w}.content"))
        elif role == "assistant":
            parts: list[Part] = _thinking_from_message(m)
            if isinstance(content, list):
                parts.extend(_text_parts(content, f"{w}.content"))
            elif content is not None:
                expect_type(content, str, f"{w}.content", "a string, a list of parts or null")
                if content:
                    parts.append(TextPart(content))
            if m.get("tool_calls") is not None:
                calls = _tool_calls(m["tool_calls"], f"{w}.tool_calls")
                for c in calls:
                    names[c.id] = c.name
                parts.extend(calls)
            elif isinstance(m.get("function_call"), dict):
                fc = m["function_call"]
                parts.append(ToolCallPart(new_id("call_"), str(fc.get("name", "")), str(fc.get("arguments", ""))))
            _append(messages, "assistant", parts)
        elif role in ("tool", "function"):
            call_id = m.get("tool_call_id") if role == "tool" else m.get("name")
            expect_type(call_id, str, f"{w}.tool_call_id", "a string")
            if isinstance(content, str) or content is None:
                result: tuple[TextPart | ImagePart, ...] = (TextPart(content or ""),)
            else:
                result = tuple(p for p in _user_parts(content, f"{w}.content")
                               if isinstance(p, (TextPart, ImagePart)))
            _append(messages, "user", [ToolResultPart(call_id, result, False, names.get(call_id))])
        else:
            raise bad_request(f"{w}.role: unknown role {role!r}", param=f"{w}.role")
    return tuple(system), tuple(messages)


def decode_tools(raw: Any) -> tuple[Tool, ...]:
    if raw is None:
        return ()
    expect_type(raw, list, "tools", "a list")
    out = []
    for j, t in enumerate(raw):
        w = f"tools[{j}]"
        expect_type(t, dict, w, "a tool object")
        if t.get("type", "function") != "function":
            raise bad_request(f"{w}.type: only function tools can be translated (got {t.get('type')!r})",
                              param=f"{w}.type")
        fn = expect_type(t.get("function"), dict, f"{w}.function", "an object")
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        out.append(Tool(
            name=expect_type(fn.get("name"), str, f"{w}.function.name", "a string"),
            description=fn.get("description"),
            parameters=expect_type(params, dict, f"{w}.function.parameters", "a JSON Schema object"),
        ))
    return tuple(out)


def decode_tool_choice(raw: Any) -> ToolChoice | None:
    if raw is None:
        return None
    if raw in ("auto", "none", "required"):
        return ToolChoice(raw)
    if isinstance(raw, dict) and raw.get("type") == "function":
        fn = raw.get("function")
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return ToolChoice("tool", fn["name"])
    if isinstance(raw, dict) and raw.get("type") == "allowed_tools":
        mode = (raw.get("allowed_tools") or {}).get("mode", "auto")
        return ToolChoice("required" if mode == "required" else "auto")
    raise bad_request("tool_choice: expected 'auto', 'none', 'required' or a function object", param="tool_choice")


class ChatInbound:
    """Serves OpenAI Chat Completions clients."""

    dialect = DIALECT

    def decode_request(self, body: dict[str, Any]) -> ChatRequest:
        model = expect_type(body.get("model"), str, "model", "a string")
        system, messages = decode_messages(body.get("messages"))
        stop = body.get("stop")
        if isinstance(stop, str):
            stops: tuple[str, ...] = (stop,)
        elif stop is None:
            stops = ()
        else:
            expect_type(stop, list, "stop", "a string or a list of strings")
            stops = tuple(expect_type(s, str, "stop", "a string or a list of strings") for s in stop)
        stream = bool(body.get("stream"))
        so = body.get("stream_options")
        include_usage = bool(stream and isinstance(so, dict) and so.get("include_usage"))
        effort = body.get("reasoning_effort")
        if effort is not None:
            expect_type(effort, str, "reasoning_effort", "a string")
        max_tokens = opt_int(body, "max_completion_tokens")
        if max_tokens is None:
            max_tokens = opt_int(body, "max_tokens")
        rf = body.get("response_format")
        user = body.get("user")
        return ChatRequest(
            model=model,
            messages=messages,
            system=system,
            tools=decode_tools(body.get("tools")),
            tool_choice=decode_tool_choice(body.get("tool_choice")),
            max_tokens=max_tokens,
            temperature=opt_number(body, "temperature"),
            top_p=opt_number(body, "top_p"),
            stop=stops,
            stream=stream,
            include_usage=include_usage,
            thinking=Thinking(effort=effort) if effort and effort not in ("none", "minimal") else None,
            user=user if isinstance(user, str) else None,
            response_format=rf if isinstance(rf, dict) and rf.get("type") != "text" else None,
            parallel_tool_calls=body.get("parallel_tool_calls") if isinstance(
                body.get("parallel_tool_calls"), bool) else None,
            metadata=body.get("metadata") if isinstance(body.get("metadata"), dict) else None,
            extra={k: body[k] for k in EXTRA_KNOBS if body.get(k) is not None},
        )

    def encode_response(self, response: ChatResponse, model: str) -> dict[str, Any]:
        msg = message_json(response.parts)
        finish = _FINISH_OUT.get(response.finish_reason, "stop")
        if msg.get("tool_calls"):
            finish = "tool_calls"
        out: dict[str, Any] = {
            "id": response.id if response.id.startswith("chatcmpl") else "chatcmpl-" + response.id,
            "object": "chat.completion",
            "created": response.created,
            "model": model,
            "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": finish}],
        }
        if response.usage is not None:
            out["usage"] = usage_to_json(response.usage)
        return out

    def stream_encoder(self, model: str, request: ChatRequest) -> ChatStreamEncoder:
        return ChatStreamEncoder(model, request.include_usage)

    def error_body(self, err: GatewayError) -> dict[str, Any]:
        return error_json(err)


def error_json(err: GatewayError) -> dict[str, Any]:
    return {"error": {
        "message": err.message,
        "type": _ERROR_TYPES.get(err.status, err.type if err.status < 500 else "server_error")
        if err.type in (None, "api_error", "invalid_request_error") else err.type,
        "param": err.param,
        "code": err.code,
    }}


def message_json(parts: tuple[Part, ...]) -> dict[str, Any]:
    """IR assistant parts -> an OpenAI assistant message."""
    text: list[str] = []
    reasoning: list[str] = []
    blocks: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, TextPart):
            text.append(p.text)
        elif isinstance(p, ThinkingPart):
            reasoning.append(p.text)
            if p.signature:
                blocks.append({"type": "thinking", "thinking": p.text, "signature": p.signature})
        elif isinstance(p, RedactedThinkingPart):
            blocks.append({"type": "redacted_thinking", "data": p.data})
        elif isinstance(p, ToolCallPart):
            calls.append({"id": p.id, "type": "function", "function": {"name": p.name, "arguments": p.arguments}})
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if reasoning:
        msg["reasoning_content"] = "".join(reasoning)
    if blocks:
        msg["thinking_blocks"] = blocks
    if calls:
        msg["tool_calls"] = calls
    return msg


class ChatStreamEncoder:
    """Canonical events -> ``chat.completion.chunk`` frames, ending with ``data: [DONE]``."""

    def __init__(self, model: str, include_usage: bool, id: str | None = None, created: int = 0) -> None:
        self._model = model
        self._include_usage = include_usage
        self._id = id
        self._created = created
        self._started = False
        self._saw_tools = False
        self._usage: Usage | None = None
        self._finished = False
        self._done = False
        self._thinking: list[str] = []
        self._tool_index: dict[int, int] = {}
        self._text_frame: tuple[bytes, bytes] | None = None

    def _text(self, text: str) -> bytes:
        """``_chunk({"content": text})`` byte for byte, from a head and tail made once per stream
        (text deltas are nearly every frame)."""
        if self._text_frame is None:
            head, _, tail = self._chunk({"content": ""}).partition(b'{"content":""}')
            self._text_frame = (head + b'{"content":', b"}" + tail)
        head, tail = self._text_frame
        return head + dumps(text) + tail

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + dumps({
            "id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }) + b"\n\n"

    def _start(self, out: list[bytes], id: str | None = None) -> None:
        if not self._started:
            self._started = True
            if self._id is None:
                self._id = id if id and id.startswith("chatcmpl") else new_id("chatcmpl-")
            out.append(self._chunk({"role": "assistant", "content": ""}))

    def feed(self, event: ev.Event) -> list[bytes]:
        out: list[bytes] = []
        if self._done:
            return out
        if type(event) is ev.TextDelta:  # the common case first
            if not self._started:
                self._start(out)
            if event.text:
                out.append(self._text(event.text))
        elif isinstance(event, ev.MessageStart):
            self._start(out, event.id)
            if event.usage:
                self._usage = event.usage
        elif isinstance(event, ev.ThinkingDelta):
            self._start(out)
            if event.text:
                self._thinking.append(event.text)
                out.append(self._chunk({"reasoning_content": event.text}))
        elif isinstance(event, ev.SignatureDelta):
            self._start(out)
            block = {"type": "thinking", "thinking": "".join(self._thinking), "signature": event.signature}
            self._thinking = []
            out.append(self._chunk({"thinking_blocks": [block]}))
        elif isinstance(event, ev.RedactedThinking):
            self._start(out)
            out.append(self._chunk({"thinking_blocks": [{"type": "redacted_thinking", "data": event.data}]}))
        elif isinstance(event, ev.ToolCallStart):
            self._start(out)
            self._saw_tools = True
            idx = self._tool_index.setdefault(event.index, len(self._tool_index))
            out.append(self._chunk({"tool_calls": [{"index": idx, "id": event.id, "type": "function",
                                                    "function": {"name": event.name, "arguments": ""}}]}))
        elif isinstance(event, ev.ToolArgsDelta):
            self._start(out)
            if event.fragment:
                idx = self._tool_index.setdefault(event.index, len(self._tool_index))
                out.append(self._chunk({"tool_calls": [{"index": idx, "function": {"arguments": event.fragment}}]}))
        elif isinstance(event, ev.UsageEvent):
            self._usage = self._usage.merge(event.usage) if self._usage else event.usage
        elif isinstance(event, ev.Finish):
            self._start(out)
            if not self._finished:
                self._finished = True
                reason = "tool_calls" if self._saw_tools else _FINISH_OUT.get(event.reason, "stop")
                out.append(self._chunk({}, reason))
        elif isinstance(event, ev.Done):
            self._start(out)
            if not self._finished:
                self._finished = True
                out.append(self._chunk({}, "tool_calls" if self._saw_tools else "stop"))
            if self._include_usage and self._usage is not None:
                out.append(b"data: " + dumps({
                    "id": self._id, "object": "chat.completion.chunk", "created": self._created,
                    "model": self._model, "choices": [], "usage": usage_to_json(self._usage),
                }) + b"\n\n")
            out.append(b"data: [DONE]\n\n")
            self._done = True
        elif isinstance(event, ev.StreamError):
            out.extend(self.error(event.error))
        return out

    def error(self, err: GatewayError) -> list[bytes]:
        if self._done:
            return []
        self._done = True
        return [b"data: " + dumps(error_json(err)) + b"\n\n", b"data: [DONE]\n\n"]

    def keepalive(self) -> bytes:
        return KEEPALIVE_COMMENT


# ---------------------------------------------------------------- outbound
def _content_json(parts: list[Part]) -> str | list[dict[str, Any]]:
    if all(isinstance(p, TextPart) for p in parts) and not any(
        isinstance(p, TextPart) and p.cache_control for p in parts
    ):
        return "\n\n".join(p.text for p in parts if isinstance(p, TextPart)) if len(parts) != 1 else parts[0].text  # type: ignore[union-attr]
    out: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, TextPart):
            out.append({"type": "text", "text": p.text})
        elif isinstance(p, ImagePart):
            url = data_url(p.media_type or "image/png", p.data) if p.data else p.url
            iu: dict[str, Any] = {"url": url}
            if p.detail:
                iu["detail"] = p.detail
            out.append({"type": "image_url", "image_url": iu})
        elif isinstance(p, DocumentPart):
            if p.text is not None:
                out.append({"type": "text", "text": p.text})
            elif p.data:
                f: dict[str, Any] = {"file_data": data_url(p.media_type or "application/pdf", p.data)}
                if p.name:
                    f["filename"] = p.name
                out.append({"type": "file", "file": f})
            elif p.url:
                out.append({"type": "text", "text": p.url})
    return out


def encode_messages(req: ChatRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if req.system:
        out.append({"role": "system", "content": "\n\n".join(p.text for p in req.system)})
    for m in req.messages:
        if m.role == "assistant":
            msg = message_json(m.parts)
            msg.pop("thinking_blocks", None)
            msg.pop("reasoning_content", None)
            if msg.get("content") == "" and msg.get("tool_calls"):
                msg["content"] = None
            if msg.get("content") is None and not msg.get("tool_calls"):
                msg["content"] = ""
            out.append(msg)
            continue
        rest: list[Part] = []
        for p in m.parts:
            if isinstance(p, ToolResultPart):
                texts = [c.text for c in p.content if isinstance(c, TextPart)]
                images = [c for c in p.content if isinstance(c, ImagePart)]
                content = "\n".join(texts)
                if p.is_error and not content.startswith("Error"):
                    content = "Error: " + content if content else "Error"
                out.append({"role": "tool", "tool_call_id": p.call_id, "content": content})
                rest.extend(images)
            elif isinstance(p, (ThinkingPart, RedactedThinkingPart, ToolCallPart)):
                continue
            else:
                rest.append(p)
        if rest:
            out.append({"role": "user", "content": _content_json(rest)})
    return out


def encode_tool_choice(tc: ToolChoice) -> Any:
    if tc.mode == "tool":
        return {"type": "function", "function": {"name": tc.name}}
    return tc.mode


class ChatOutbound:
    """Calls OpenAI-compatible Chat Completions upstreams."""

    dialect = DIALECT

    def encode_request(self, request: ChatRequest, upstream_model: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": upstream_model, "messages": encode_messages(request)}
        if request.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop"] = list(request.stop)
        if request.tools:
            body["tools"] = [{"type": "function", "function": {
                "name": t.name, **({"description": t.description} if t.description else {}),
                "parameters": t.parameters}} for t in request.tools]
            if request.tool_choice is not None:
                body["tool_choice"] = encode_tool_choice(request.tool_choice)
            if request.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = request.parallel_tool_calls
        elif request.tool_choice is not None and request.tool_choice.mode == "none":
            pass
        if request.user:
            body["user"] = request.user
        if request.response_format:
            body["response_format"] = request.response_format
        if request.thinking is not None and request.thinking.effort:
            body["reasoning_effort"] = request.thinking.effort
        for k, v in request.extra.items():
            body.setdefault(k, v)
        return body

    def decode_response(self, body: dict[str, Any]) -> ChatResponse:
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise upstream_malformed("no choices")
        ch = choices[0]
        msg = ch.get("message")
        if not isinstance(msg, dict):
            raise upstream_malformed("choices[0].message missing")
        parts: list[Part] = _thinking_from_message(msg)
        content = msg.get("content")
        if isinstance(content, str) and content:
            parts.append(TextPart(content))
        elif isinstance(content, list):
            parts.extend(TextPart(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        calls = msg.get("tool_calls")
        if isinstance(calls, list):
            for c in calls:
                if isinstance(c, dict) and isinstance(c.get("function"), dict):
                    fn = c["function"]
                    args = fn.get("arguments", "")
                    if not isinstance(args, str):
                        args = orjson.dumps(args).decode()
                    parts.append(ToolCallPart(str(c.get("id") or new_id("call_")), str(fn.get("name", "")), args))
        finish = _FINISH_IN.get(str(ch.get("finish_reason")), "stop")
        if any(isinstance(p, ToolCallPart) for p in parts):
            finish = "tool_calls"
        return ChatResponse(
            id=str(body.get("id") or new_id("chatcmpl-")),
            model=str(body.get("model", "")),
            parts=tuple(parts),
            finish_reason=finish,
            usage=usage_from_json(body.get("usage")),
            created=_int(body.get("created")),
        )

    def stream_decoder(self) -> ChatStreamDecoder:
        return ChatStreamDecoder()

    def error_message(self, status: int, body: bytes) -> tuple[str, str | None]:
        return error_message(body)


def error_message(body: bytes) -> tuple[str, str | None]:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text[:500] or "(empty body)"), None
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        code = err.get("code")
        return str(err.get("message") or err), (str(code) if code is not None else None)
    if isinstance(err, str):
        return err, None
    if isinstance(obj, dict) and isinstance(obj.get("message"), str):
        return obj["message"], None
    return body.decode("utf-8", "replace")[:500], None


class ChatStreamDecoder:
    """``chat.completion.chunk`` SSE events -> canonical events."""

    def __init__(self) -> None:
        self._started = False
        self._calls: dict[int, str] = {}
        self._finish: FinishReason | None = None
        self._saw_tools = False

    def feed(self, event: SSEEvent) -> list[ev.Event]:
        data = event.data
        if data == "[DONE]":
            out: list[ev.Event] = []
            if self._finish is None:
                out.append(ev.Finish("tool_calls" if self._saw_tools else "stop"))
            out.append(ev.Done())
            return out
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return [ev.StreamError(GatewayError(502, "the upstream sent a malformed stream event", retryable=True))]
        if not isinstance(obj, dict):
            return []
        if isinstance(obj.get("error"), dict):
            msg = obj["error"].get("message") or "upstream error"
            return [ev.StreamError(GatewayError(502, f"upstream error: {msg}"))]
        out = []
        if not self._started:
            self._started = True
            out.append(ev.MessageStart(str(obj.get("id") or ""), str(obj.get("model") or "")))
        choices = obj.get("choices")
        if isinstance(choices, list):
            for ch in choices:
                if not isinstance(ch, dict) or ch.get("index", 0) != 0:
                    continue
                delta = ch.get("delta") or {}
                rc = delta.get("reasoning_content", delta.get("reasoning"))
                if isinstance(rc, str) and rc:
                    out.append(ev.ThinkingDelta(rc))
                c = delta.get("content")
                if isinstance(c, str) and c:
                    out.append(ev.TextDelta(c))
                tcs = delta.get("tool_calls")
                if isinstance(tcs, list):
                    for pos, tc in enumerate(tcs):
                        if not isinstance(tc, dict):
                            continue
                        idx = tc.get("index", pos)
                        fn = tc.get("function") or {}
                        if idx not in self._calls:
                            self._saw_tools = True
                            cid = tc.get("id") or new_id("call_")
                            self._calls[idx] = cid
                            out.append(ev.ToolCallStart(idx, cid, str(fn.get("name") or "")))
                        args = fn.get("arguments")
                        if isinstance(args, str) and args:
                            out.append(ev.ToolArgsDelta(idx, args))
                        elif isinstance(args, dict):
                            out.append(ev.ToolArgsDelta(idx, orjson.dumps(args).decode()))
                fr = ch.get("finish_reason")
                if fr and self._finish is None:
                    self._finish = "tool_calls" if self._saw_tools else _FINISH_IN.get(fr, "stop")
                    out.append(ev.Finish(self._finish))
        usage = obj.get("usage")
        if isinstance(usage, dict):
            u = usage_from_json(usage)
            if u is not None:
                out.append(ev.UsageEvent(u))
        return out


INBOUND = ChatInbound()
OUTBOUND = ChatOutbound()
