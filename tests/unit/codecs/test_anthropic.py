"""Tests for the Anthropic Messages codec (fproxy.codecs.anthropic)."""
from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fproxy.codecs import anthropic as A
from fproxy.codecs.anthropic import INBOUND, OUTBOUND, count_tokens_estimate, thinking_budget_for
from fproxy.codecs.sse import SSEDecoder, SSEEvent
from fproxy.ir.errors import GatewayError
from fproxy.ir.events import (
    Done,
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
    RedactedThinkingPart,
    TextPart,
    Thinking,
    ThinkingPart,
    Tool,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
)
from fproxy.ir.response import ChatResponse, Usage

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 24).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\x00" * 24).decode()


def body(**kw: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    b.update(kw)
    return b


def req(*messages: Message, **kw: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=messages or (Message("user", (TextPart("hi"),)),), **kw)


def user(*parts: Any) -> Message:
    return Message("user", tuple(parts))


def asst(*parts: Any) -> Message:
    return Message("assistant", tuple(parts))


def bad(exc: pytest.ExceptionInfo[GatewayError], status: int, fragment: str) -> None:
    assert exc.value.status == status
    assert fragment in exc.value.message


# =========================================================================== inbound decode


class TestDecodeRequest:
    def test_minimal(self) -> None:
        r = INBOUND.decode_request(body())
        assert r.model == "claude-x" and r.max_tokens == 100
        assert r.messages == (Message("user", (TextPart("hi"),)),)
        assert r.stream is False and r.thinking is None and r.system == ()

    def test_system_string(self) -> None:
        assert INBOUND.decode_request(body(system="Be terse.")).system == (TextPart("Be terse."),)

    def test_system_blocks_keep_cache_control(self) -> None:
        cc = {"type": "ephemeral", "ttl": "1h"}
        r = INBOUND.decode_request(body(system=[{"type": "text", "text": "A"},
                                                {"type": "text", "text": "B", "cache_control": cc}]))
        assert r.system == (TextPart("A"), TextPart("B", cc))

    def test_system_bad(self) -> None:
        with pytest.raises(GatewayError) as e:
            INBOUND.decode_request(body(system=[{"type": "image"}]))
        bad(e, 400, "system[0]")
        with pytest.raises(GatewayError) as e:
            INBOUND.decode_request(body(system=5))
        bad(e, 400, "system")

    def test_every_block_type(self) -> None:
        msgs = [
            {"role": "user", "content": [
                {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
                 "title": "doc"},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain"}},
                {"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}},
                {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "c1"},
                                                                               {"type": "text", "text": "c2"}]}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "SIG"},
                {"type": "redacted_thinking", "data": "RED"},
                {"type": "text", "text": "calling"},
                {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"city": "Paris", "n": 1}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "21C"},
            ]},
        ]
        r = INBOUND.decode_request(body(messages=msgs))
        u, a, u2 = r.messages
        assert u.parts == (
            TextPart("look", {"type": "ephemeral"}),
            ImagePart(media_type="image/png", data=PNG),
            ImagePart(url="https://x/y.png"),
            DocumentPart(media_type="application/pdf", data="JVBE", name="doc"),
            DocumentPart(media_type="text/plain", text="plain"),
            DocumentPart(url="https://x/a.pdf"),
            DocumentPart(media_type="text/plain", text="c1\n\nc2"),
        )
        assert a.parts == (
            ThinkingPart("hmm", "SIG"),
            RedactedThinkingPart("RED"),
            TextPart("calling"),
            ToolCallPart("toolu_1", "get", '{"city":"Paris","n":1}'),
        )
        assert u2.parts == (ToolResultPart("toolu_1", (TextPart("21C"),)),)

    def test_tool_result_blocks_and_error(self) -> None:
        msgs = [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": True, "content": [
                {"type": "text", "text": "boom"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}]},
        ]
        r = INBOUND.decode_request(body(messages=msgs))
        assert r.messages[1].parts == (ToolCallPart("t1", "f", "{}"),)
        assert r.messages[2].parts == (
            ToolResultPart("t1", (TextPart("boom"), ImagePart(media_type="image/png", data=PNG)), is_error=True),
        )

    def test_unsigned_thinking_kept_without_signature(self) -> None:
        msgs = [{"role": "user", "content": "q"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": ""}]}]
        assert INBOUND.decode_request(body(messages=msgs)).messages[1].parts == (ThinkingPart("t", None),)

    def test_merges_same_role_and_puts_tool_results_first(self) -> None:
        msgs = [
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t2", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "text", "text": "after"},
                                         {"type": "tool_result", "tool_use_id": "t1", "content": "r1"}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t2", "content": "r2"}]},
        ]
        r = INBOUND.decode_request(body(messages=msgs))
        assert [m.role for m in r.messages] == ["user", "assistant", "user"]
        assert r.messages[0].parts == (TextPart("a"), TextPart("b"))
        assert [p.id for p in r.messages[1].parts if isinstance(p, ToolCallPart)] == ["t1", "t2"]
        assert r.messages[2].parts == (
            ToolResultPart("t1", (TextPart("r1"),)), ToolResultPart("t2", (TextPart("r2"),)), TextPart("after"),
        )

    def test_tools_and_server_tools(self) -> None:
        cc = {"type": "ephemeral"}
        schema = {"type": "object", "properties": {"q": {"type": "string"}}}
        r = INBOUND.decode_request(body(tools=[
            {"name": "search", "description": "Find", "input_schema": schema, "cache_control": cc},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        ]))
        assert r.tools == (Tool("search", "Find", schema, cc),)

    @pytest.mark.parametrize("wire,mode,name", [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "tool", "name": "f"}, "tool", "f"),
        ({"type": "none"}, "none", None),
    ])
    def test_tool_choice(self, wire: dict[str, Any], mode: str, name: str | None) -> None:
        r = INBOUND.decode_request(body(tool_choice=wire))
        assert r.tool_choice == ToolChoice(mode, name)  # type: ignore[arg-type]
        assert r.parallel_tool_calls is None

    def test_disable_parallel(self) -> None:
        r = INBOUND.decode_request(body(tool_choice={"type": "auto", "disable_parallel_tool_use": True}))
        assert r.parallel_tool_calls is False

    def test_tool_choice_bad(self) -> None:
        with pytest.raises(GatewayError) as e:
            INBOUND.decode_request(body(tool_choice={"type": "tool"}))
        bad(e, 400, "tool_choice.name")
        with pytest.raises(GatewayError) as e:
            INBOUND.decode_request(body(tool_choice={"type": "sometimes"}))
        bad(e, 400, "tool_choice.type")

    def test_sampling_and_misc(self) -> None:
        r = INBOUND.decode_request(body(temperature=0.3, top_p=0.9, top_k=40, stop_sequences=["END", "##"],
                                        stream=True, metadata={"user_id": "u-1"}))
        assert (r.temperature, r.top_p, r.top_k, r.stop, r.stream, r.user) == (0.3, 0.9, 40, ("END", "##"), True, "u-1")

    def test_max_tokens_required(self) -> None:
        b = body()
        del b["max_tokens"]
        with pytest.raises(GatewayError) as e:
            INBOUND.decode_request(b)
        bad(e, 400, "max_tokens")
        assert INBOUND.decode_request(b, require_max_tokens=False).max_tokens is None

    def test_thinking(self) -> None:
        r = INBOUND.decode_request(body(thinking={"type": "enabled", "budget_tokens": 2000}))
        assert r.thinking == Thinking(budget_tokens=2000)
        assert INBOUND.decode_request(body(thinking={"type": "disabled"})).thinking is None
        assert INBOUND.decode_request(body(thinking={"type": "adaptive"})).thinking == Thinking(effort="high")
        r = INBOUND.decode_request(body(thinking={"type": "adaptive"}, output_config={"effort": "low"}))
        assert r.thinking == Thinking(effort="low")
        with pytest.raises(GatewayError) as e:
            INBOUND.decode_request(body(thinking={"type": "enabled"}))
        bad(e, 400, "thinking.budget_tokens")

    def test_unknown_top_level_fields_ignored(self) -> None:
        r = INBOUND.decode_request(body(context_management={"edits": []}, betas=["x"], service_tier="auto",
                                        output_config={"effort": "high"}))
        assert r.model == "claude-x" and r.response_format is None

    def test_output_format_becomes_response_format(self) -> None:
        schema = {"type": "object", "properties": {}}
        r = INBOUND.decode_request(body(output_config={"format": {"type": "json_schema", "schema": schema}}))
        assert r.response_format == {"type": "json_schema",
                                     "json_schema": {"name": "output", "schema": schema, "strict": True}}

    @pytest.mark.parametrize("b,fragment", [
        ([], "request body"),
        ({"messages": []}, "model"),
        (body(messages="hi"), "messages"),
        (body(messages=[]), "messages"),
        (body(messages=[{"role": "system", "content": "x"}]), "messages[0].role"),
        (body(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
        (body(messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages[0].content[0].text"),
        (body(messages=[{"role": "user", "content": [{"text": "x"}]}]), "messages[0].content[0].type"),
        (body(messages=[{"role": "user", "content": [{"type": "image", "source": "x"}]}]),
         "messages[0].content[0].source"),
        (body(messages=[{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b"}]}]), "tool_use"),
        (body(messages=[{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "a"}]}]),
         "tool_result"),
        (body(max_tokens="10"), "max_tokens"),
        (body(temperature="hot"), "temperature"),
        (body(top_k=1.5), "top_k"),
        (body(stop_sequences="END"), "stop_sequences"),
        (body(stream="yes"), "stream"),
        (body(metadata="u"), "metadata"),
        (body(tools=[{"description": "no name"}]), "tools[0].name"),
    ])
    def test_malformed_is_400_naming_the_field(self, b: Any, fragment: str) -> None:
        with pytest.raises(GatewayError) as e:
            INBOUND.decode_request(b)
        bad(e, 400, fragment)

    def test_unknown_block_types_skipped(self) -> None:
        msgs = [{"role": "user", "content": "q"},
                {"role": "assistant", "content": [
                    {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
                    {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
                    {"type": "text", "text": "found"}]}]
        assert INBOUND.decode_request(body(messages=msgs)).messages[1].parts == (TextPart("found"),)

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(
            st.sampled_from(["type", "text", "content", "role", "source", "id", "name", "input", "data"]), c,
            max_size=4),
        max_leaves=12,
    )

    @given(st.fixed_dictionaries({"model": st.just("m"), "max_tokens": st.just(5)}, optional={
        "messages": json_values, "system": json_values, "tools": json_values, "tool_choice": json_values,
        "thinking": json_values, "metadata": json_values}))
    @settings(max_examples=300)
    def test_fuzz_never_crashes(self, b: dict[str, Any]) -> None:
        try:
            INBOUND.decode_request(b)
        except GatewayError as e:
            assert e.status == 400


# =========================================================================== inbound encode


class TestEncodeResponse:
    def test_blocks_usage_and_ids(self) -> None:
        resp = ChatResponse(
            id="chatcmpl-abc", model="gpt",
            parts=(ThinkingPart("think", "SIG"), RedactedThinkingPart("RED"), TextPart(""), TextPart("Hello"),
                   ToolCallPart("call_123", "get", '{"a":1}'), ToolCallPart("toolu_9", "f", "{not json")),
            finish_reason="tool_calls",
            usage=Usage(prompt_tokens=100, completion_tokens=20, cache_read_tokens=30, cache_write_tokens=10),
        )
        out = INBOUND.encode_response(resp, "claude-client-name")
        assert out == {
            "id": "msg_chatcmpl-abc", "type": "message", "role": "assistant", "model": "claude-client-name",
            "content": [
                {"type": "thinking", "thinking": "think", "signature": "SIG"},
                {"type": "redacted_thinking", "data": "RED"},
                {"type": "text", "text": "Hello"},
                {"type": "tool_use", "id": "call_123", "name": "get", "input": {"a": 1}},
                {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {"raw_input": "{not json"}},
            ],
            "stop_reason": "tool_use", "stop_sequence": None,
            "usage": {"input_tokens": 60, "cache_creation_input_tokens": 10, "cache_read_input_tokens": 30,
                      "output_tokens": 20},
        }

    def test_never_empty_text_block(self) -> None:
        out = INBOUND.encode_response(ChatResponse(id="msg_1", model="m", parts=(TextPart(""),)), "m")
        assert out["content"] == [] and out["id"] == "msg_1"
        assert out["usage"]["input_tokens"] == 0

    @pytest.mark.parametrize("reason,expected", [
        ("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"),
        ("stop_sequence", "stop_sequence"), ("content_filter", "refusal"), ("pause_turn", "pause_turn"),
        ("refusal", "refusal"),
    ])
    def test_stop_reason_table(self, reason: Any, expected: str) -> None:
        seq = "##" if reason in ("stop_sequence", "length") else None
        out = INBOUND.encode_response(ChatResponse(id="x", model="m", parts=(TextPart("a"),),
                                                   finish_reason=reason, stop_sequence=seq), "m")
        assert out["stop_reason"] == expected
        assert out["stop_sequence"] == ("##" if expected == "stop_sequence" else None)

    def test_stop_with_known_sequence_is_stop_sequence(self) -> None:
        out = INBOUND.encode_response(ChatResponse(id="x", model="m", parts=(TextPart("a"),), stop_sequence="##"), "m")
        assert (out["stop_reason"], out["stop_sequence"]) == ("stop_sequence", "##")

    def test_stop_with_tool_calls_is_tool_use(self) -> None:
        out = INBOUND.encode_response(ChatResponse(id="x", model="m", parts=(ToolCallPart("c", "f", "{}"),)), "m")
        assert out["stop_reason"] == "tool_use"

    @pytest.mark.parametrize("status,type_,expected", [
        (400, None, "invalid_request_error"), (401, None, "authentication_error"), (429, None, "rate_limit_error"),
        (503, None, "overloaded_error"), (529, None, "overloaded_error"), (500, "server_error", "api_error"),
        (404, "not_found_error", "not_found_error"), (504, None, "timeout_error"),
    ])
    def test_error_body(self, status: int, type_: str | None, expected: str) -> None:
        assert INBOUND.error_body(GatewayError(status, "nope", type=type_)) == {
            "type": "error", "error": {"type": expected, "message": "nope"}}


# =========================================================================== stream encoder


def frames(chunks: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) per frame, checking each is one complete SSE event with an event: line."""
    out = []
    for c in chunks:
        assert c.endswith(b"\n\n")
        lines = c.decode().rstrip("\n").split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), c
        name, data = lines[0][7:], json.loads(lines[1][6:])
        assert data["type"] == name
        out.append((name, data))
    return out


def run(events: list[Any], model: str = "claude-client") -> list[tuple[str, dict[str, Any]]]:
    enc = INBOUND.stream_encoder(model, req())
    chunks: list[bytes] = []
    for ev in events:
        chunks.extend(enc.feed(ev))
    return frames(chunks)


def shape(fr: list[tuple[str, dict[str, Any]]]) -> list[tuple[Any, ...]]:
    """A compact view: event name + the parts that matter."""
    out: list[tuple[Any, ...]] = []
    for name, d in fr:
        if name == "content_block_start":
            out.append((name, d["index"], d["content_block"]))
        elif name == "content_block_delta":
            out.append((name, d["index"], d["delta"]))
        elif name == "content_block_stop":
            out.append((name, d["index"]))
        elif name == "message_delta":
            out.append((name, d["delta"], d["usage"]))
        else:
            out.append((name,))
    return out


class TestStreamEncoder:
    def test_text(self) -> None:
        fr = run([MessageStart("msg_abc", "up", Usage(prompt_tokens=12, cache_read_tokens=2)),
                  TextDelta("Hel"), TextDelta(""), TextDelta("lo"), Finish("stop"),
                  UsageEvent(Usage(completion_tokens=5)), Done()])
        assert fr[0] == ("message_start", {"type": "message_start", "message": {
            "id": "msg_abc", "type": "message", "role": "assistant", "model": "claude-client", "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 10, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2,
                      "output_tokens": 0}}})
        assert shape(fr[1:]) == [
            ("content_block_start", 0, {"type": "text", "text": ""}),
            ("content_block_delta", 0, {"type": "text_delta", "text": "Hel"}),
            ("content_block_delta", 0, {"type": "text_delta", "text": "lo"}),
            ("content_block_stop", 0),
            ("message_delta", {"stop_reason": "end_turn", "stop_sequence": None}, {"output_tokens": 5}),
            ("message_stop",),
        ]

    def test_thinking_signature_then_text(self) -> None:
        fr = run([MessageStart("msg_1", "up"), ThinkingDelta("Let me"), ThinkingDelta(" think"),
                  SignatureDelta("SIG=="), TextDelta("42"), Finish("stop"), Done()])
        assert shape(fr) == [
            ("message_start",),
            ("content_block_start", 0, {"type": "thinking", "thinking": "", "signature": ""}),
            ("content_block_delta", 0, {"type": "thinking_delta", "thinking": "Let me"}),
            ("content_block_delta", 0, {"type": "thinking_delta", "thinking": " think"}),
            ("content_block_delta", 0, {"type": "signature_delta", "signature": "SIG=="}),
            ("content_block_stop", 0),
            ("content_block_start", 1, {"type": "text", "text": ""}),
            ("content_block_delta", 1, {"type": "text_delta", "text": "42"}),
            ("content_block_stop", 1),
            ("message_delta", {"stop_reason": "end_turn", "stop_sequence": None}, {"output_tokens": 0}),
            ("message_stop",),
        ]

    def test_redacted_thinking(self) -> None:
        fr = run([MessageStart("msg_1", "up"), RedactedThinking("EmwK"), TextDelta("x"), Finish("stop"), Done()])
        assert shape(fr)[1:4] == [
            ("content_block_start", 0, {"type": "redacted_thinking", "data": "EmwK"}),
            ("content_block_stop", 0),
            ("content_block_start", 1, {"type": "text", "text": ""}),
        ]

    def test_two_parallel_tool_calls_sequential_fragments(self) -> None:
        fr = run([MessageStart("msg_1", "up"), TextDelta("Checking."),
                  ToolCallStart(0, "call_a", "get_weather"), ToolArgsDelta(0, '{"city":'), ToolArgsDelta(0, '"Paris"}'),
                  ToolCallStart(1, "call_b", "get_time"), ToolArgsDelta(1, ""), ToolArgsDelta(1, '{"tz":'),
                  ToolArgsDelta(1, '"CET"}'), Finish("tool_calls"),
                  UsageEvent(Usage(prompt_tokens=7, completion_tokens=9)), Done()])
        assert shape(fr) == [
            ("message_start",),
            ("content_block_start", 0, {"type": "text", "text": ""}),
            ("content_block_delta", 0, {"type": "text_delta", "text": "Checking."}),
            ("content_block_stop", 0),
            ("content_block_start", 1, {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}}),
            ("content_block_delta", 1, {"type": "input_json_delta", "partial_json": '{"city":'}),
            ("content_block_delta", 1, {"type": "input_json_delta", "partial_json": '"Paris"}'}),
            ("content_block_stop", 1),
            ("content_block_start", 2, {"type": "tool_use", "id": "call_b", "name": "get_time", "input": {}}),
            ("content_block_delta", 2, {"type": "input_json_delta", "partial_json": '{"tz":'}),
            ("content_block_delta", 2, {"type": "input_json_delta", "partial_json": '"CET"}'}),
            ("content_block_stop", 2),
            # input known only at the end: message_delta carries it
            ("message_delta", {"stop_reason": "tool_use", "stop_sequence": None},
             {"output_tokens": 9, "input_tokens": 7, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}),
            ("message_stop",),
        ]

    def test_interleaved_tool_calls_are_serialised(self) -> None:
        fr = run([MessageStart("msg_1", "up"),
                  ToolCallStart(0, "call_a", "f"), ToolCallStart(1, "call_b", "g"),
                  ToolArgsDelta(0, '{"x":'), ToolArgsDelta(1, '{"y":'), ToolArgsDelta(1, "2}"),
                  ToolArgsDelta(0, "1}"), Finish("tool_calls"), Done()])
        assert shape(fr) == [
            ("message_start",),
            ("content_block_start", 0, {"type": "tool_use", "id": "call_a", "name": "f", "input": {}}),
            ("content_block_delta", 0, {"type": "input_json_delta", "partial_json": '{"x":'}),
            ("content_block_delta", 0, {"type": "input_json_delta", "partial_json": "1}"}),
            ("content_block_stop", 0),
            ("content_block_start", 1, {"type": "tool_use", "id": "call_b", "name": "g", "input": {}}),
            ("content_block_delta", 1, {"type": "input_json_delta", "partial_json": '{"y":2}'}),
            ("content_block_stop", 1),
            ("message_delta", {"stop_reason": "tool_use", "stop_sequence": None}, {"output_tokens": 0}),
            ("message_stop",),
        ]

    def test_queued_call_flushed_at_finish_when_first_never_completes(self) -> None:
        fr = run([ToolCallStart(0, "a", "f"), ToolArgsDelta(0, '{"x":'), ToolCallStart(1, "b", "g"),
                  ToolArgsDelta(1, "{}"), Finish("length"), Done()])
        assert [x[:2] for x in shape(fr)] == [
            ("message_start",), ("content_block_start", 0), ("content_block_delta", 0), ("content_block_stop", 0),
            ("content_block_start", 1), ("content_block_delta", 1), ("content_block_stop", 1),
            ("message_delta", {"stop_reason": "max_tokens", "stop_sequence": None}), ("message_stop",),
        ]

    def test_synthesised_message_start(self) -> None:
        fr = run([TextDelta("hi"), Finish("stop"), Done()])
        assert fr[0][0] == "message_start"
        msg = fr[0][1]["message"]
        assert msg["id"].startswith("msg_") and len(msg["id"]) > 4 and msg["model"] == "claude-client"
        assert [n for n, _ in fr] == ["message_start", "content_block_start", "content_block_delta",
                                      "content_block_stop", "message_delta", "message_stop"]

    def test_done_without_finish_and_stop_sequence(self) -> None:
        fr = run([TextDelta("a"), Finish("stop_sequence", "##"), Done()])
        assert fr[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "##"}
        fr = run([TextDelta("a"), Done()])
        assert fr[-2][1]["delta"]["stop_reason"] == "end_turn"

    def test_error_frame_and_nothing_after(self) -> None:
        enc = INBOUND.stream_encoder("m", req())
        enc.feed(TextDelta("partial"))
        out = frames(enc.error(GatewayError(503, "upstream overloaded")))
        assert out == [("error", {"type": "error",
                                  "error": {"type": "overloaded_error", "message": "upstream overloaded"}})]
        assert enc.feed(Done()) == [] and enc.error(GatewayError(500, "x")) == []

    def test_stream_error_event(self) -> None:
        fr = run([TextDelta("a"), StreamError(GatewayError(429, "slow down"))])
        assert fr[-1] == ("error", {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})

    def test_keepalive_is_ping_event(self) -> None:
        assert INBOUND.stream_encoder("m", req()).keepalive() == b'event: ping\ndata: {"type":"ping"}\n\n'

    def test_signature_without_thinking_text(self) -> None:
        fr = run([SignatureDelta("S"), TextDelta("t"), Done()])
        assert shape(fr)[1:4] == [
            ("content_block_start", 0, {"type": "thinking", "thinking": "", "signature": ""}),
            ("content_block_delta", 0, {"type": "signature_delta", "signature": "S"}),
            ("content_block_stop", 0),
        ]


# =========================================================================== outbound encode


def enc(r: ChatRequest) -> dict[str, Any]:
    return OUTBOUND.encode_request(r, "claude-up")


class TestEncodeRequest:
    def test_basic(self) -> None:
        cc = {"type": "ephemeral"}
        b = enc(req(system=(TextPart("S1"), TextPart(" "), TextPart("S2", cc)), stream=True))
        assert b == {
            "model": "claude-up",
            "system": [{"type": "text", "text": "S1"}, {"type": "text", "text": "S2", "cache_control": cc}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_tokens": 4096,
            "stream": True,
        }

    def test_sampling_stop_user_and_extras(self) -> None:
        b = enc(req(max_tokens=300, temperature=1.7, top_p=0.5, top_k=3, stop=("END", "\n"), user="u1",
                    extra={"seed": 1, "presence_penalty": 0.2}, include_usage=True))
        assert b["max_tokens"] == 300 and b["temperature"] == 1.0 and b["top_p"] == 0.5 and b["top_k"] == 3
        assert b["stop_sequences"] == ["END"]
        assert b["metadata"] == {"user_id": "u1"}
        assert not {"seed", "presence_penalty", "stream", "include_usage"} & set(b)

    def test_merges_roles_and_inserts_leading_user(self) -> None:
        b = enc(req(asst(TextPart("earlier answer")), asst(TextPart("more")), user(TextPart("q1")),
                    user(TextPart("  ")), user(TextPart("q2"))))
        assert b["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "(continued)"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "earlier answer"},
                                              {"type": "text", "text": "more"}]},
            {"role": "user", "content": [{"type": "text", "text": "q1"}, {"type": "text", "text": "q2"}]},
        ]

    def test_empty_turn_dropped_then_merged(self) -> None:
        b = enc(req(user(TextPart("a")), asst(TextPart("")), user(TextPart("b"))))
        assert b["messages"] == [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                              {"type": "text", "text": "b"}]}]

    def test_tool_loop(self) -> None:
        b = enc(req(
            user(TextPart("weather?")),
            asst(TextPart(""), ToolCallPart("call_1", "get", '{"city":"Paris"}'), ToolCallPart("call_2", "get", "")),
            user(TextPart("and be quick")),
            user(ToolResultPart("call_2", (TextPart("rain"),)), ToolResultPart("call_1", (TextPart("sun"),),
                                                                             is_error=True)),
        ))
        assert b["messages"][1] == {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_1", "name": "get", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get", "input": {}}]}
        assert b["messages"][2] == {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "sun", "is_error": True},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "rain"},
            {"type": "text", "text": "and be quick"}]}

    def test_invalid_arguments_kept_raw(self) -> None:
        b = enc(req(user(TextPart("q")), asst(ToolCallPart("c", "f", '{"a": 1')), user(ToolResultPart("c"))))
        assert b["messages"][1]["content"][0]["input"] == {"raw_input": '{"a": 1'}
        b = enc(req(user(TextPart("q")), asst(ToolCallPart("c", "f", "[1,2]")), user(ToolResultPart("c"))))
        assert b["messages"][1]["content"][0]["input"] == {"raw_input": "[1,2]"}

    def test_orphan_result_becomes_text_and_missing_result_synthesised(self) -> None:
        b = enc(req(
            user(ToolResultPart("ghost", (TextPart("old output"),))),
            asst(ToolCallPart("c1", "f", "{}"), ToolCallPart("c2", "f", "{}")),
            user(ToolResultPart("c1", (TextPart("ok"),)), ToolResultPart("c1", (TextPart("dup"),))),
        ))
        assert b["messages"][0] == {"role": "user", "content": [
            {"type": "text", "text": "[tool result ghost]\nold output"}]}
        assert b["messages"][2] == {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "c1", "content": "ok"},
            {"type": "tool_result", "tool_use_id": "c2", "content": "(no result)", "is_error": True},
            {"type": "text", "text": "[tool result c1]\ndup"}]}

    def test_trailing_tool_calls_get_results(self) -> None:
        b = enc(req(user(TextPart("q")), asst(ToolCallPart("c1", "f", "{}"))))
        assert b["messages"][-1] == {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "c1", "content": "(no result)", "is_error": True}]}

    def test_prefill_trailing_whitespace_stripped(self) -> None:
        b = enc(req(user(TextPart("q")), asst(TextPart("The answer is "))))
        assert b["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "The answer is"}]}

    def test_tool_ids_sanitised_consistently(self) -> None:
        b = enc(req(user(TextPart("q")), asst(ToolCallPart("call.1:x", "f", "{}")),
                    user(ToolResultPart("call.1:x", (TextPart("r"),)))))
        use_id = b["messages"][1]["content"][0]["id"]
        assert use_id.startswith("toolu_") and use_id == b["messages"][2]["content"][0]["tool_use_id"]
        assert A.sanitize_tool_id("toolu_01AbC-d_e") == "toolu_01AbC-d_e"

    def test_images(self) -> None:
        b = enc(req(user(
            ImagePart(media_type="image/jpeg", data=PNG),  # wrong declared type: bytes win
            ImagePart(data=JPEG, cache_control={"type": "ephemeral"}),
            ImagePart(url="https://example.com/cat.png"),
            ImagePart(url="data:image/png;base64," + PNG, detail="high"),
            ImagePart(),
        )))
        assert b["messages"][0]["content"] == [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": JPEG},
             "cache_control": {"type": "ephemeral"}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        ]

    def test_documents(self) -> None:
        txt = base64.b64encode("héllo".encode()).decode()
        b = enc(req(user(
            DocumentPart(media_type="application/pdf", data="JVBERi0", name="report.pdf"),
            DocumentPart(text="plain words"),
            DocumentPart(media_type="text/plain", data=txt),
            DocumentPart(url="https://x/a.pdf"),
            DocumentPart(url="data:application/pdf;base64,JVBERi0"),
            TextPart("summarise"),
        )))
        assert b["messages"][0]["content"] == [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0"},
             "title": "report.pdf"},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain words"}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "héllo"}},
            {"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0"}},
            {"type": "text", "text": "summarise"},
        ]

    def test_tools_and_choice(self) -> None:
        tools = (Tool("f", "does f", {"type": "object", "properties": {"a": {"type": "string"}}}),
                 Tool("g", cache_control={"type": "ephemeral"}))
        b = enc(req(tools=tools, tool_choice=ToolChoice("required")))
        assert b["tools"] == [
            {"name": "f", "description": "does f",
             "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}}},
            {"name": "g", "input_schema": {"type": "object", "properties": {}}, "cache_control": {"type": "ephemeral"}},
        ]
        assert b["tool_choice"] == {"type": "any"}

    @pytest.mark.parametrize("choice,parallel,expected", [
        (ToolChoice("auto"), None, {"type": "auto"}),
        (ToolChoice("none"), None, {"type": "none"}),
        (ToolChoice("required"), False, {"type": "any", "disable_parallel_tool_use": True}),
        (ToolChoice("tool", "f"), None, {"type": "tool", "name": "f"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, None, None),
    ])
    def test_tool_choice_table(self, choice: ToolChoice | None, parallel: bool | None, expected: Any) -> None:
        b = enc(req(tools=(Tool("f"),), tool_choice=choice, parallel_tool_calls=parallel))
        assert b.get("tool_choice") == expected

    def test_tool_choice_without_tools_omitted(self) -> None:
        assert "tool_choice" not in enc(req(tool_choice=ToolChoice("required")))

    def test_response_format_json_schema(self) -> None:
        schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
        b = enc(req(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}))
        assert b["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
        assert "output_config" not in enc(req(response_format={"type": "json_object"}))

    def test_assistant_thinking_signed_first_unsigned_dropped(self) -> None:
        b = enc(req(user(TextPart("q")),
                    asst(TextPart("Let me look."), ThinkingPart("unsigned musing"), ThinkingPart("deep", "SIG"),
                         RedactedThinkingPart("RED"), ToolCallPart("c", "f", "{}")),
                    user(ToolResultPart("c", (TextPart("r"),)))))
        assert b["messages"][1]["content"] == [
            {"type": "thinking", "thinking": "deep", "signature": "SIG"},
            {"type": "redacted_thinking", "data": "RED"},
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "c", "name": "f", "input": {}},
        ]

    def test_thinking_in_user_turn_dropped(self) -> None:
        b = enc(req(user(TextPart("q"), ThinkingPart("x", "S"))))
        assert b["messages"][0]["content"] == [{"type": "text", "text": "q"}]


class TestThinking:
    @pytest.mark.parametrize("thinking,expected", [
        (None, None),
        (Thinking(budget_tokens=5000), 5000),
        (Thinking(budget_tokens=0), None),
        (Thinking(effort="low"), 2048),
        (Thinking(effort="medium"), 8192),
        (Thinking(effort="HIGH"), 16384),
        (Thinking(effort="none"), None),
        (Thinking(budget_tokens=3000, effort="high"), 3000),
        (Thinking(summary="auto"), 8192),
        (Thinking(effort="ultra"), 32768),
    ])
    def test_thinking_budget_for(self, thinking: Thinking | None, expected: int | None) -> None:
        assert thinking_budget_for(thinking) == expected

    def test_custom_defaults(self) -> None:
        assert thinking_budget_for(Thinking(effort="low"), {"low": 1500, "high": 9000}) == 1500
        assert A.AnthropicOutbound(effort_budgets={"low": 3000}).encode_request(
            req(thinking=Thinking(effort="low")), "c")["thinking"] == {"type": "enabled", "budget_tokens": 3000}

    def test_budget_500_raised_to_1024(self) -> None:
        b = enc(req(thinking=Thinking(budget_tokens=500)))
        assert b["thinking"] == {"type": "enabled", "budget_tokens": 1024}
        assert b["max_tokens"] == 1024 + 4096

    def test_default_max_tokens_makes_room(self) -> None:
        b = enc(req(thinking=Thinking(effort="high")))
        assert b["thinking"]["budget_tokens"] == 16384 and b["max_tokens"] == 16384 + 4096

    def test_explicit_max_tokens_kept_when_it_fits(self) -> None:
        b = enc(req(max_tokens=3000, thinking=Thinking(effort="low")))
        assert (b["thinking"]["budget_tokens"], b["max_tokens"]) == (2048, 3000)

    def test_explicit_max_tokens_caps_budget(self) -> None:
        b = enc(req(max_tokens=10000, thinking=Thinking(budget_tokens=16000)))
        assert (b["thinking"]["budget_tokens"], b["max_tokens"]) == (10000 - 4096, 10000)
        b = enc(req(max_tokens=2000, thinking=Thinking(budget_tokens=16000)))
        assert (b["thinking"]["budget_tokens"], b["max_tokens"]) == (1024, 2000)

    @pytest.mark.parametrize("max_tokens", [0, 500, 1024])
    def test_explicit_max_tokens_too_small_is_400(self, max_tokens: int) -> None:
        with pytest.raises(GatewayError) as e:
            enc(req(max_tokens=max_tokens, thinking=Thinking(budget_tokens=500)))
        bad(e, 400, "max_tokens")

    def test_incompatible_knobs_dropped(self) -> None:
        b = enc(req(thinking=Thinking(effort="low"), temperature=0.2, top_k=5, top_p=0.5,
                    tools=(Tool("f"),), tool_choice=ToolChoice("tool", "f"), parallel_tool_calls=False))
        assert not {"temperature", "top_k", "top_p"} & set(b)
        assert b["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
        b = enc(req(thinking=Thinking(effort="low"), temperature=1.0, top_p=0.97, tools=(Tool("f"),),
                    tool_choice=ToolChoice("required")))
        assert b["temperature"] == 1.0 and b["top_p"] == 0.97 and b["tool_choice"] == {"type": "auto"}

    def test_thinking_dropped_when_tool_turn_lost_its_thinking(self) -> None:
        history = (user(TextPart("q")), asst(ToolCallPart("c", "f", "{}")), user(ToolResultPart("c")))
        b = enc(req(*history, thinking=Thinking(effort="low"), temperature=0.5))
        assert "thinking" not in b and b["temperature"] == 0.5 and b["max_tokens"] == 4096
        signed = (history[0], asst(ThinkingPart("t", "S"), ToolCallPart("c", "f", "{}")), history[2])
        assert enc(req(*signed, thinking=Thinking(effort="low")))["thinking"]["budget_tokens"] == 2048

    def test_thinking_dropped_with_prefill(self) -> None:
        b = enc(req(user(TextPart("q")), asst(TextPart("Sure:")), thinking=Thinking(budget_tokens=2000)))
        assert "thinking" not in b and b["messages"][-1]["role"] == "assistant"


# =========================================================================== outbound decode


class TestDecodeResponse:
    def test_full(self) -> None:
        r = OUTBOUND.decode_response({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4",
            "content": [{"type": "thinking", "thinking": "hmm", "signature": "SIG"},
                        {"type": "redacted_thinking", "data": "RED"},
                        {"type": "text", "text": "Let me check."},
                        {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"city": "Zürich", "n": [1, 2]}},
                        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}],
            "stop_reason": "tool_use", "stop_sequence": None,
            "usage": {"input_tokens": 100, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 30,
                      "output_tokens": 65, "service_tier": "standard"},
        })
        assert r == ChatResponse(
            id="msg_01", model="claude-sonnet-4",
            parts=(ThinkingPart("hmm", "SIG"), RedactedThinkingPart("RED"), TextPart("Let me check."),
                   ToolCallPart("toolu_1", "get", '{"city":"Zürich","n":[1,2]}')),
            finish_reason="tool_calls",
            usage=Usage(prompt_tokens=150, completion_tokens=65, cache_read_tokens=30, cache_write_tokens=20),
        )

    @pytest.mark.parametrize("wire,ir", [
        ("end_turn", "stop"), ("max_tokens", "length"), ("stop_sequence", "stop_sequence"),
        ("tool_use", "tool_calls"), ("pause_turn", "pause_turn"), ("refusal", "refusal"),
        ("model_context_window_exceeded", "length"), (None, "stop"), ("something_new", "stop"),
    ])
    def test_stop_reason_table(self, wire: str | None, ir: str) -> None:
        r = OUTBOUND.decode_response({"id": "m", "model": "c", "content": [{"type": "text", "text": "x"}],
                                      "stop_reason": wire, "stop_sequence": "##" if wire == "stop_sequence" else None})
        assert r.finish_reason == ir
        assert r.stop_sequence == ("##" if wire == "stop_sequence" else None)

    def test_usage_roundtrip(self) -> None:
        u = Usage(prompt_tokens=1000, completion_tokens=50, cache_read_tokens=700, cache_write_tokens=200)
        wire = A.usage_to_anthropic(u)
        assert wire == {"input_tokens": 100, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 700,
                        "output_tokens": 50}
        assert A.usage_from_anthropic(wire) == u
        assert A.usage_from_anthropic({"output_tokens": 9, "output_tokens_details": {"thinking_tokens": 4}}) == \
            Usage(completion_tokens=9, reasoning_tokens=4)

    @pytest.mark.parametrize("b", [
        [], {"content": "text"}, {"content": [5]}, {"content": [{"type": "text"}]},
        {"content": [{"type": "tool_use", "input": {}}]},
    ])
    def test_malformed_is_502(self, b: Any) -> None:
        with pytest.raises(GatewayError) as e:
            OUTBOUND.decode_response(b)
        assert e.value.status == 502

    def test_error_body(self) -> None:
        with pytest.raises(GatewayError) as e:
            OUTBOUND.decode_response({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        assert (e.value.status, e.value.message, e.value.retryable) == (529, "Overloaded", True)


# =========================================================================== stream decoder

RECORDED = (
    'event: message_start\n'
    'data: {"type":"message_start","message":{"id":"msg_019Q","type":"message","role":"assistant",'
    '"model":"claude-sonnet-4-20250514","content":[],"stop_reason":null,"stop_sequence":null,'
    '"usage":{"input_tokens":377,"cache_creation_input_tokens":3,"cache_read_input_tokens":20,"output_tokens":1,'
    '"service_tier":"standard"}}}\n\n'
    'event: content_block_start\n'
    'data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}\n\n'
    'event: ping\n'
    'data: {"type": "ping"}\n\n'
    'event: content_block_delta\n'
    'data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Weather tool."}}\n\n'
    'event: content_block_delta\n'
    'data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAh=="}}\n\n'
    'event: content_block_stop\n'
    'data: {"type":"content_block_stop","index":0}\n\n'
    'event: content_block_start\n'
    'data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}\n\n'
    'event: content_block_delta\n'
    'data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"I\'ll check the weather."}}\n\n'
    'event: content_block_stop\n'
    'data: {"type":"content_block_stop","index":1}\n\n'
    'event: content_block_start\n'
    'data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_01NR",'
    '"name":"get_weather","input":{}}}\n\n'
    'event: content_block_delta\n'
    'data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":""}}\n\n'
    'event: content_block_delta\n'
    'data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\\"locati"}}\n\n'
    'event: content_block_delta\n'
    'data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"on\\": \\"Paris\\"}"}}\n\n'
    'event: content_block_stop\n'
    'data: {"type":"content_block_stop","index":2}\n\n'
    'event: content_block_start\n'
    'data: {"type":"content_block_start","index":3,"content_block":{"type":"tool_use","id":"toolu_02XY",'
    '"name":"get_time","input":{}}}\n\n'
    'event: content_block_delta\n'
    'data: {"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{}"}}\n\n'
    'event: content_block_stop\n'
    'data: {"type":"content_block_stop","index":3}\n\n'
    'event: message_delta\n'
    'data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":65}}\n\n'
    'event: message_stop\n'
    'data: {"type":"message_stop"}\n\n'
).encode()

RECORDED_EVENTS = [
    MessageStart("msg_019Q", "claude-sonnet-4-20250514",
                 Usage(prompt_tokens=400, completion_tokens=1, cache_read_tokens=20, cache_write_tokens=3)),
    ThinkingDelta("Weather tool."),
    SignatureDelta("EqQBCgIYAh=="),
    TextDelta("I'll check the weather."),
    ToolCallStart(0, "toolu_01NR", "get_weather"),
    ToolArgsDelta(0, '{"locati'),
    ToolArgsDelta(0, 'on": "Paris"}'),
    ToolCallStart(1, "toolu_02XY", "get_time"),
    ToolArgsDelta(1, "{}"),
    Finish("tool_calls"),
    UsageEvent(Usage(prompt_tokens=400, completion_tokens=65, cache_read_tokens=20, cache_write_tokens=3)),
    Done(),
]


def decode_stream(raw: bytes, cuts: list[int]) -> list[Any]:
    sse, dec = SSEDecoder(), OUTBOUND.stream_decoder()
    out: list[Any] = []
    points = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    for a, b in zip(points, points[1:]):
        for ev in sse.feed(raw[a:b]):
            out.extend(dec.feed(ev))
    return out


def sse(kind: str, data: dict[str, Any]) -> SSEEvent:
    return SSEEvent(kind, orjson.dumps(data).decode())


class TestStreamDecoder:
    def test_recorded_stream(self) -> None:
        assert decode_stream(RECORDED, []) == RECORDED_EVENTS

    @given(st.lists(st.integers(min_value=0, max_value=len(RECORDED)), max_size=30))
    @settings(max_examples=60)
    def test_recorded_stream_any_split(self, cuts: list[int]) -> None:
        assert decode_stream(RECORDED, cuts) == RECORDED_EVENTS

    def test_recorded_stream_through_encoder_gives_anthropic_again(self) -> None:
        fr = run(RECORDED_EVENTS, model="claude-sonnet-4-20250514")
        names = [n for n, _ in fr]
        assert names == ["message_start",
                         "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
                         "content_block_start", "content_block_delta", "content_block_stop",
                         "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
                         "content_block_start", "content_block_delta", "content_block_stop",
                         "message_delta", "message_stop"]
        assert fr[0][1]["message"]["usage"]["input_tokens"] == 377
        assert fr[-2][1]["usage"] == {"output_tokens": 65}

    def test_error_event(self) -> None:
        dec = OUTBOUND.stream_decoder()
        out = dec.feed(sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
        assert len(out) == 1 and isinstance(out[0], StreamError)
        assert (out[0].error.status, out[0].error.message, out[0].error.retryable) == (529, "Overloaded", True)
        assert dec.feed(sse("message_stop", {"type": "message_stop"})) == []

    @pytest.mark.parametrize("etype,status", [("rate_limit_error", 429), ("api_error", 500),
                                              ("invalid_request_error", 400), ("mystery", 500)])
    def test_error_status(self, etype: str, status: int) -> None:
        out = OUTBOUND.stream_decoder().feed(sse("error", {"type": "error", "error": {"type": etype, "message": "m"}}))
        assert isinstance(out[0], StreamError) and out[0].error.status == status

    def test_ping_unknown_and_citations_ignored(self) -> None:
        dec = OUTBOUND.stream_decoder()
        assert dec.feed(sse("ping", {"type": "ping"})) == []
        assert dec.feed(sse("brand_new", {"type": "brand_new", "x": 1})) == []
        dec.feed(sse("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}}))
        assert dec.feed(sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "citations_delta", "citation": {}}})) == []

    def test_invalid_json_is_502(self) -> None:
        out = OUTBOUND.stream_decoder().feed(SSEEvent("content_block_delta", "nonsense"))
        assert isinstance(out[0], StreamError) and out[0].error.status == 502

    def test_malformed_known_event_is_502(self) -> None:
        out = OUTBOUND.stream_decoder().feed(sse("content_block_delta", {"type": "content_block_delta"}))
        assert isinstance(out[0], StreamError) and out[0].error.status == 502

    def test_redacted_and_input_in_start(self) -> None:
        dec = OUTBOUND.stream_decoder()
        events: list[Any] = []
        for ev in [
            sse("content_block_start", {"type": "content_block_start", "index": 0,
                                        "content_block": {"type": "redacted_thinking", "data": "EmwK"}}),
            sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            sse("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
                "type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}}),
            sse("content_block_stop", {"type": "content_block_stop", "index": 1}),
            sse("message_stop", {"type": "message_stop"}),
        ]:
            events.extend(dec.feed(ev))
        assert events == [RedactedThinking("EmwK"), ToolCallStart(0, "t", "f"), ToolArgsDelta(0, '{"a":1}'),
                          Finish("tool_calls"), Done()]

    def test_message_delta_usage_merges_late_input(self) -> None:
        dec = OUTBOUND.stream_decoder()
        dec.feed(sse("message_start", {"type": "message_start", "message": {"id": "m", "model": "c", "usage": {
            "input_tokens": 10, "output_tokens": 1}}}))
        out = dec.feed(sse("message_delta", {"type": "message_delta",
                                             "delta": {"stop_reason": "stop_sequence", "stop_sequence": "##"},
                                             "usage": {"output_tokens": 30, "cache_read_input_tokens": 5}}))
        assert out == [Finish("stop_sequence", "##"),
                       UsageEvent(Usage(prompt_tokens=15, completion_tokens=30, cache_read_tokens=5))]


# =========================================================================== error_message, count_tokens


class TestErrorMessage:
    def test_anthropic_body(self) -> None:
        b = b'{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 300000 tokens"}}'
        assert OUTBOUND.error_message(400, b) == ("prompt is too long: 300000 tokens", "invalid_request_error")

    def test_vertex_wrapped(self) -> None:
        inner = json.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": "bad tool"}})
        b = json.dumps({"error": {"code": 400, "message": inner, "status": "INVALID_ARGUMENT"}}).encode()
        assert OUTBOUND.error_message(400, b) == ("bad tool", "invalid_request_error")
        b = b'{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}'
        assert OUTBOUND.error_message(429, b) == ("Quota exceeded", "RESOURCE_EXHAUSTED")

    def test_raw_text_truncated(self) -> None:
        msg, code = OUTBOUND.error_message(502, b"<html>" + b"x" * 1000)
        assert code is None and len(msg) == 500 and msg.startswith("<html>")
        assert OUTBOUND.error_message(503, b"") == ("upstream answered HTTP 503", None)


def test_count_tokens_estimate() -> None:
    r = ChatRequest(model="m", system=(TextPart("x" * 40),),
                    messages=(user(TextPart("y" * 400)), asst(ToolCallPart("c", "f", "{}"))),
                    tools=(Tool("tool", "d" * 36, {}),))
    # 40 + 400 + (1 + 2) + (4 + 36 + 2) = 485 chars -> 122 tokens, + 3 per message
    assert count_tokens_estimate(r) == 122 + 6
    with_image = ChatRequest(model="m", messages=(user(ImagePart(url="https://x")),))
    assert count_tokens_estimate(with_image) == A.IMAGE_TOKENS + 3


# =========================================================================== round trip (Hypothesis)

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20).map(
    lambda s: s.strip()).filter(bool)
names = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_-]{0,15}", fullmatch=True)
arg_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | texts,
                          lambda c: st.lists(c, max_size=3) | st.dictionaries(names, c, max_size=3), max_leaves=8)
args = st.dictionaries(names, arg_values, max_size=4)


@st.composite
def conversations(draw: st.DrawFn) -> tuple[Message, ...]:
    """Canonical conversations: alternating turns, each tool call answered first in the next user turn."""
    counter = iter(range(10**6))
    msgs: list[Message] = [user(*[TextPart(t) for t in draw(st.lists(texts, min_size=1, max_size=2))])]
    for _ in range(draw(st.integers(0, 3))):
        texts_a = [TextPart(t) for t in draw(st.lists(texts, max_size=2))]
        calls = [ToolCallPart(f"toolu_{next(counter)}x", draw(names), orjson.dumps(draw(args)).decode())
                 for _ in range(draw(st.integers(0 if texts_a else 1, 3)))]
        msgs.append(asst(*texts_a, *calls))
        results = [ToolResultPart(c.id, tuple(TextPart(t) for t in draw(st.lists(texts, max_size=1))),
                                  is_error=draw(st.booleans())) for c in calls]
        follow = [TextPart(t) for t in draw(st.lists(texts, min_size=0 if results else 1, max_size=2))]
        msgs.append(user(*results, *follow))
    return tuple(msgs)


@given(conversations())
@settings(max_examples=150)
def test_roundtrip_outbound_then_inbound(msgs: tuple[Message, ...]) -> None:
    wire = OUTBOUND.encode_request(ChatRequest(model="m", messages=msgs, max_tokens=50), "claude-up")
    back = INBOUND.decode_request(json.loads(json.dumps(wire))).messages
    assert [m.role for m in back] == [m.role for m in msgs]
    for orig, got in zip(msgs, back):
        assert [p.text for p in orig.parts if isinstance(p, TextPart)] == \
            [p.text for p in got.parts if isinstance(p, TextPart)]
        assert [(c.id, c.name, json.loads(c.arguments)) for c in orig.parts if isinstance(c, ToolCallPart)] == \
            [(c.id, c.name, json.loads(c.arguments)) for c in got.parts if isinstance(c, ToolCallPart)]
        assert [r for r in orig.parts if isinstance(r, ToolResultPart)] == \
            [r for r in got.parts if isinstance(r, ToolResultPart)]
    assert back == msgs  # canonical input survives exactly
