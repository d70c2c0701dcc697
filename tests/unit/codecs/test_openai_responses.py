"""Tests for fproxy.codecs.openai_responses (both directions, streams, SDK acceptance)."""
from __future__ import annotations

import base64
import json
from typing import Any

import httpx2
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from fproxy.codecs import openai_responses as R
from fproxy.codecs.sse import SSEDecoder
from fproxy.ir import events as ev
from fproxy.ir.errors import GatewayError
from fproxy.ir.request import (
    ChatRequest,
    DocumentPart,
    ImagePart,
    Message,
    TextPart,
    Thinking,
    ThinkingPart,
    Tool,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
)
from fproxy.ir.response import ChatResponse, Usage

STREAM_EVENT = TypeAdapter(ResponseStreamEvent)
PNG_B64 = base64.b64encode(b"\x89PNG fake").decode()


def decode(body: dict[str, Any]) -> ChatRequest:
    return R.INBOUND.decode_request(body)


def bad(body: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        R.INBOUND.decode_request(body)
    assert info.value.status == 400
    return info.value


def parse_frames(frames: list[bytes]) -> list[dict[str, Any]]:
    """Frames -> JSON payloads, checking the SSE framing on the way."""
    out = []
    dec = SSEDecoder()
    events = dec.feed(b"".join(frames))
    assert len(events) == len(frames), "every frame is exactly one SSE event"
    for e in events:
        obj = orjson.loads(e.data)
        assert e.event == obj["type"], "the event: line equals the JSON type"
        out.append(obj)
    return out


def run_encoder(events: list[ev.Event], request: ChatRequest | None = None,
                model: str = "client-model") -> list[dict[str, Any]]:
    enc = R.ResponsesStreamEncoder(model, request)
    frames: list[bytes] = []
    for e in events:
        frames.extend(enc.feed(e))
    assert all(b"[DONE]" not in f for f in frames)
    objs = parse_frames(frames)
    assert [o["sequence_number"] for o in objs] == list(range(len(objs)))
    for o in objs:
        STREAM_EVENT.validate_python(o)  # the SDK's own event models accept every event
    return objs


def sdk_client(body: bytes) -> openai.OpenAI:
    """A real OpenAI SDK client whose transport answers ``body`` as an SSE stream (no sockets)."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return openai.OpenAI(api_key="test", base_url="http://gateway.test/v1", max_retries=0,
                         http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


def decode_stream(raw: bytes, chunks: list[int] | None = None) -> list[ev.Event]:
    sse = SSEDecoder()
    dec = R.OUTBOUND.stream_decoder()
    out: list[ev.Event] = []
    pieces = [raw] if chunks is None else _split(raw, chunks)
    for piece in pieces:
        for e in sse.feed(piece):
            out.extend(dec.feed(e))
    return out


def _split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(raw) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(raw[prev:p])
        prev = p
    out.append(raw[prev:])
    return out


# ====================================================================== inbound: decode_request
def test_string_input_and_instructions() -> None:
    req = decode({"model": "gpt-5", "input": "hello", "instructions": "Be brief."})
    assert req.model == "gpt-5"
    assert req.system == (TextPart("Be brief."),)
    assert req.messages == (Message("user", (TextPart("hello"),)),)
    assert req.stream is False


def test_message_items_all_part_types() -> None:
    req = decode({"model": "m", "instructions": "I1", "input": [
        {"role": "developer", "content": "D1"},
        {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "S1"}]},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": f"data:image/png;base64,{PNG_B64}", "detail": "high"},
            {"type": "input_image", "image_url": "https://example.com/a.jpg", "detail": "auto"},
            {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,QUJD"},
            {"type": "input_file", "file_url": "https://example.com/b.pdf"},
        ]},
        {"type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": "Earlier answer", "annotations": []},
            {"type": "refusal", "refusal": "I can't"},
        ]},
    ]})
    assert req.system == (TextPart("I1"), TextPart("D1"), TextPart("S1"))
    user, assistant = req.messages
    assert user == Message("user", (
        TextPart("look"),
        ImagePart(media_type="image/png", data=PNG_B64, detail="high"),
        ImagePart(url="https://example.com/a.jpg", detail="auto"),
        DocumentPart(media_type="application/pdf", data="QUJD", name="a.pdf"),
        DocumentPart(url="https://example.com/b.pdf"),
    ))
    assert assistant == Message("assistant", (TextPart("Earlier answer"), TextPart("I can't")))


def test_function_calls_outputs_and_reasoning() -> None:
    req = decode({"model": "m", "input": [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Need two"},
                                                         {"type": "summary_text", "text": "calls"}],
         "encrypted_content": "gAAAAenc"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "weather",
         "arguments": "{\"city\":\"Paris\"}"},
        {"type": "function_call", "call_id": "call_2", "name": "weather", "arguments": "{\"city\":\"Rome\"}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "{\"temp\":21}"},
        {"type": "function_call_output", "call_id": "call_2", "output": [
            {"type": "input_text", "text": "sunny"},
            {"type": "input_image", "image_url": f"data:image/png;base64,{PNG_B64}"},
        ]},
        {"role": "user", "content": "thanks"},
    ]})
    assert req.messages == (
        Message("user", (TextPart("weather in Paris and Rome?"),)),
        Message("assistant", (
            ThinkingPart("Need two\n\ncalls", "gAAAAenc"),
            TextPart("Checking."),
            ToolCallPart("call_1", "weather", "{\"city\":\"Paris\"}"),
            ToolCallPart("call_2", "weather", "{\"city\":\"Rome\"}"),
        )),
        Message("user", (
            ToolResultPart("call_1", (TextPart("{\"temp\":21}"),), False, "weather"),
            ToolResultPart("call_2", (TextPart("sunny"), ImagePart(media_type="image/png", data=PNG_B64)),
                           False, "weather"),
            TextPart("thanks"),
        )),
    )


def test_tool_results_go_first_when_merged_after_user_text() -> None:
    req = decode({"model": "m", "input": [
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"role": "user", "content": "also this"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
    ]})
    assert req.messages[1] == Message("user", (ToolResultPart("c1", (TextPart("ok"),), False, "f"),
                                               TextPart("also this")))


def test_reasoning_without_summary_or_signature_is_dropped() -> None:
    req = decode({"model": "m", "input": [
        {"role": "user", "content": "q"},
        {"type": "reasoning", "summary": []},
        {"role": "assistant", "content": "a"},
    ]})
    assert req.messages[1] == Message("assistant", (TextPart("a"),))


def test_tools_tool_choice_and_knobs() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    req = decode({
        "model": "m", "input": "hi", "stream": True, "store": True,
        "tools": [{"type": "function", "name": "f", "description": "does f", "parameters": schema, "strict": True},
                  {"type": "function", "name": "g", "parameters": None, "strict": None}],
        "tool_choice": {"type": "function", "name": "f"},
        "parallel_tool_calls": False, "temperature": 0.5, "top_p": 0.9, "max_output_tokens": 300,
        "reasoning": {"effort": "high", "summary": "auto"},
        "text": {"format": {"type": "json_schema", "name": "out", "schema": schema, "strict": True},
                 "verbosity": "low"},
        "user": "u-1", "safety_identifier": "sid", "metadata": {"k": "v"},
        "service_tier": "flex", "prompt_cache_key": "pck", "include": ["reasoning.encrypted_content"],
        "truncation": "auto",
    })
    assert req.tools == (Tool("f", "does f", schema), Tool("g", None, {"type": "object", "properties": {}}))
    assert req.tool_choice == ToolChoice("tool", "f")
    assert req.parallel_tool_calls is False
    assert (req.temperature, req.top_p, req.max_tokens) == (0.5, 0.9, 300)
    assert req.thinking == Thinking(effort="high", summary="auto")
    assert req.response_format == {"type": "json_schema",
                                   "json_schema": {"name": "out", "schema": schema, "strict": True}}
    assert req.user == "u-1"
    assert req.metadata == {"k": "v"}
    assert req.stream is True
    assert req.extra == {"service_tier": "flex", "prompt_cache_key": "pck", "safety_identifier": "sid",
                         "verbosity": "low"}


@pytest.mark.parametrize(("raw", "expected"), [
    ("auto", ToolChoice("auto")),
    ("none", ToolChoice("none")),
    ("required", ToolChoice("required")),
    ({"type": "function", "name": "x"}, ToolChoice("tool", "x")),
    ({"type": "allowed_tools", "mode": "required", "tools": []}, ToolChoice("required")),
])
def test_tool_choice_forms(raw: Any, expected: ToolChoice) -> None:
    assert decode({"model": "m", "input": "q", "tool_choice": raw}).tool_choice == expected


def test_misc_request_mappings() -> None:
    assert decode({"model": "m", "input": "q", "text": {"format": {"type": "json_object"}}}).response_format == {
        "type": "json_object"}
    assert decode({"model": "m", "input": "q", "text": {"format": {"type": "text"}}}).response_format is None
    assert decode({"model": "m", "input": "q", "reasoning": {"effort": "none"}}).thinking is None
    assert decode({"model": "m", "input": "q", "reasoning": {"generate_summary": "concise"}}).thinking == Thinking(
        summary="concise")
    assert decode({"model": "m", "input": "q", "safety_identifier": "sid"}).user == "sid"
    assert decode({"model": "m", "input": "q", "store": False}).messages[0].parts == (TextPart("q"),)


def test_previous_response_id_is_a_clear_400() -> None:
    err = bad({"model": "m", "input": "q", "previous_response_id": "resp_123"})
    assert err.code == "previous_response_not_supported"
    assert err.param == "previous_response_id"
    assert "stateless" in err.message and "full conversation" in err.message
    assert R.INBOUND.error_body(err) == {"error": {
        "message": err.message, "type": "invalid_request_error", "param": "previous_response_id",
        "code": "previous_response_not_supported"}}


@pytest.mark.parametrize(("body", "names"), [
    ([], "body"),
    ({"input": "q"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": 5}, "input"),
    ({"model": "m", "input": ["x"]}, "input[0]"),
    ({"model": "m", "input": [{"role": "user", "content": 3}]}, "input[0].content"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "bogus"}]}]}, "input[0].content[0].type"),
    ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"model": "m", "input": [{"type": "web_search_call", "id": "ws"}]}, "input[0].type"),
    ({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
     "input[0].content[0].file_id"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
     "input[0].content[0].file_id"),
    ({"model": "m", "input": [{"type": "reasoning", "summary": "x"}]}, "input[0].summary"),
    ({"model": "m", "input": [{"role": "system", "content": "only system"}]}, "input"),
    ({"model": "m", "input": "q", "tools": [{"type": "function", "name": "f"}, {"type": "web_search"}]},
     "tools[1].type"),
    ({"model": "m", "input": "q", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"model": "m", "input": "q", "tool_choice": "sometimes"}, "tool_choice"),
    ({"model": "m", "input": "q", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"model": "m", "input": "q", "reasoning": {"effort": 3}}, "reasoning.effort"),
    ({"model": "m", "input": "q", "max_output_tokens": "many"}, "max_output_tokens"),
    ({"model": "m", "input": "q", "temperature": "hot"}, "temperature"),
    ({"model": "m", "input": "q", "instructions": ["x"]}, "instructions"),
    ({"model": "m", "input": "q", "conversation": "conv_1"}, "conversation"),
    ({"model": "m", "input": "q", "background": True}, "background"),
])
def test_malformed_requests_name_the_field(body: Any, names: str) -> None:
    err = bad(body)
    assert err.message.startswith(names), err.message


# ====================================================================== inbound: encode_response
def test_encode_response_is_accepted_by_the_sdk() -> None:
    resp = ChatResponse(
        id="chatcmpl-1", model="upstream-model", created=1742424515,
        parts=(ThinkingPart("Thought about X", "sig-1"), TextPart("Hello"), TextPart(" world"),
               ToolCallPart("call_1", "get_weather", "{\"city\":\"Paris\"}")),
        finish_reason="tool_calls",
        usage=Usage(prompt_tokens=36, completion_tokens=87, cache_read_tokens=6, reasoning_tokens=64),
    )
    body = R.INBOUND.encode_response(resp, "client-model")
    sdk = Response.model_validate(body)
    assert sdk.id == "resp_chatcmpl-1" and sdk.object == "response"
    assert sdk.model == "client-model" and sdk.status == "completed" and sdk.created_at == 1742424515
    assert sdk.output_text == "Hello world"
    assert [o.type for o in sdk.output] == ["reasoning", "message", "function_call"]
    rs, msg, fc = body["output"]
    assert rs["id"].startswith("rs_") and rs["summary"] == [{"type": "summary_text", "text": "Thought about X"}]
    assert rs["encrypted_content"] == "sig-1"
    assert msg["id"].startswith("msg_") and msg["content"] == [
        {"type": "output_text", "text": "Hello world", "annotations": []}]
    assert fc["id"].startswith("fc_") and fc["call_id"] == "call_1" and fc["status"] == "completed"
    assert fc["arguments"] == "{\"city\":\"Paris\"}" and fc["name"] == "get_weather"
    assert body["usage"] == {
        "input_tokens": 36, "input_tokens_details": {"cached_tokens": 6, "cache_write_tokens": 0},
        "output_tokens": 87, "output_tokens_details": {"reasoning_tokens": 64}, "total_tokens": 123}
    assert body["incomplete_details"] is None and body["error"] is None


def test_encode_response_length_is_incomplete() -> None:
    body = R.INBOUND.encode_response(ChatResponse("resp_abc", "m", (TextPart("cut"),), "length"), "cm")
    sdk = Response.model_validate(body)
    assert body["id"] == "resp_abc"
    assert sdk.status == "incomplete" and sdk.incomplete_details.reason == "max_output_tokens"
    assert body["output"][0]["status"] == "incomplete" and sdk.output_text == "cut"
    assert body["usage"] is None


def test_encode_response_empty_has_an_empty_message() -> None:
    body = R.INBOUND.encode_response(ChatResponse("x", "m", ()), "cm")
    assert Response.model_validate(body).output_text == ""
    assert [o["type"] for o in body["output"]] == ["message"]


def test_error_body_shapes() -> None:
    assert R.INBOUND.error_body(GatewayError(502, "upstream broke")) == {
        "error": {"message": "upstream broke", "type": "server_error", "param": None, "code": None}}
    assert R.INBOUND.error_body(GatewayError(429, "slow down", code="rate_limit_exceeded"))["error"] == {
        "message": "slow down", "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}


# ====================================================================== inbound: stream encoder
def test_stream_text_answer_exact_sequence() -> None:
    objs = run_encoder([ev.MessageStart("up-1", "upstream"), ev.TextDelta("Hel"), ev.TextDelta(""),
                        ev.TextDelta("lo!"), ev.Finish("stop"), ev.UsageEvent(Usage(10, 3)), ev.Done()])
    assert [o["type"] for o in objs] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    created = objs[0]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None
    assert created["id"] == "resp_up-1" and created["model"] == "client-model"
    msg_id = objs[2]["item"]["id"]
    assert msg_id.startswith("msg_")
    assert objs[2] == {"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
                       "item": {"id": msg_id, "type": "message", "status": "in_progress", "role": "assistant",
                                "content": []}}
    assert objs[3]["part"] == {"type": "output_text", "text": "", "annotations": []}
    assert [o["delta"] for o in objs[4:6]] == ["Hel", "lo!"]
    assert all(o["item_id"] == msg_id and o["output_index"] == 0 and o["content_index"] == 0 for o in objs[3:8])
    assert objs[6]["text"] == "Hello!"
    assert objs[7]["part"] == {"type": "output_text", "text": "Hello!", "annotations": []}
    assert objs[8]["item"]["status"] == "completed"
    final = objs[9]["response"]
    assert final["id"] == "resp_up-1" and final["status"] == "completed"
    assert final["output"] == [objs[8]["item"]]
    assert final["usage"]["input_tokens"] == 10 and final["usage"]["total_tokens"] == 13
    assert Response.model_validate(final).output_text == "Hello!"


def test_stream_function_call_with_fragmented_args() -> None:
    objs = run_encoder([
        ev.MessageStart("r", "u"), ev.TextDelta("Let me check."), ev.ToolCallStart(0, "call_1", "get_weather"),
        ev.ToolArgsDelta(0, "{\"ci"), ev.ToolArgsDelta(0, ""), ev.ToolArgsDelta(0, "ty\":"),
        ev.ToolArgsDelta(0, "\"Paris\"}"), ev.Finish("tool_calls"), ev.Done(),
    ])
    types = [o["type"] for o in objs]
    assert types == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed",
    ]
    added = objs[8]
    assert added["output_index"] == 1
    fc_id = added["item"]["id"]
    assert fc_id.startswith("fc_")
    assert added["item"] == {"id": fc_id, "type": "function_call", "status": "in_progress", "call_id": "call_1",
                             "name": "get_weather", "arguments": ""}
    assert [o["delta"] for o in objs[9:12]] == ["{\"ci", "ty\":", "\"Paris\"}"]
    assert all(o["item_id"] == fc_id and o["output_index"] == 1 for o in objs[9:13])
    assert objs[12]["arguments"] == "{\"city\":\"Paris\"}" and objs[12]["name"] == "get_weather"
    assert objs[13]["item"]["status"] == "completed" and objs[13]["item"]["arguments"] == "{\"city\":\"Paris\"}"
    final = Response.model_validate(objs[14]["response"])
    assert final.status == "completed"
    assert [(o.type, getattr(o, "call_id", None)) for o in final.output] == [("message", None),
                                                                             ("function_call", "call_1")]


def test_finish_closes_items_before_usage_arrives() -> None:
    enc = R.ResponsesStreamEncoder("cm")
    enc.feed(ev.ToolCallStart(0, "c", "f"))
    enc.feed(ev.ToolArgsDelta(0, "{}"))
    types = [o["type"] for o in parse_frames(enc.feed(ev.Finish("tool_calls")))]
    assert types == ["response.function_call_arguments.done", "response.output_item.done"]
    assert [o["type"] for o in parse_frames(enc.feed(ev.UsageEvent(Usage(1, 1))))] == []
    assert [o["type"] for o in parse_frames(enc.feed(ev.Done()))] == ["response.completed"]


def test_stream_interleaved_tool_calls() -> None:
    objs = run_encoder([
        ev.ToolCallStart(0, "call_a", "f"), ev.ToolCallStart(1, "call_b", "g"),
        ev.ToolArgsDelta(1, "{\"b\":"), ev.ToolArgsDelta(0, "{\"a\":"), ev.ToolArgsDelta(0, "1}"),
        ev.ToolArgsDelta(1, "2}"), ev.Finish("tool_calls"), ev.Done(),
    ])
    done = {o["item_id"]: o["arguments"] for o in objs if o["type"] == "response.function_call_arguments.done"}
    items = {o["item"]["call_id"]: o["item"]["id"] for o in objs if o["type"] == "response.output_item.added"}
    assert done == {items["call_a"]: "{\"a\":1}", items["call_b"]: "{\"b\":2}"}
    final = objs[-1]["response"]
    assert [(i["call_id"], i["arguments"], i["status"]) for i in final["output"]] == [
        ("call_a", "{\"a\":1}", "completed"), ("call_b", "{\"b\":2}", "completed")]
    # items close in output order
    assert [o["output_index"] for o in objs if o["type"] == "response.output_item.done"] == [0, 1]


def test_stream_reasoning_summary() -> None:
    req = ChatRequest(model="m", messages=(), thinking=Thinking(effort="high", summary="auto"))
    objs = run_encoder([ev.MessageStart("r", "u"), ev.ThinkingDelta("Thinking "), ev.ThinkingDelta("hard."),
                        ev.SignatureDelta("enc-1"), ev.TextDelta("42"), ev.Finish("stop"), ev.Done()], req)
    assert [o["type"] for o in objs] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.reasoning_summary_part.added", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]
    rs_id = objs[2]["item"]["id"]
    assert rs_id.startswith("rs_") and objs[2]["item"] == {"id": rs_id, "type": "reasoning", "summary": []}
    assert objs[3]["part"] == {"type": "summary_text", "text": ""} and objs[3]["summary_index"] == 0
    assert objs[6]["text"] == "Thinking hard."
    assert objs[7]["part"] == {"type": "summary_text", "text": "Thinking hard."}
    assert objs[8]["item"] == {"id": rs_id, "type": "reasoning",
                               "summary": [{"type": "summary_text", "text": "Thinking hard."}],
                               "encrypted_content": "enc-1", "status": "completed"}
    assert objs[9]["output_index"] == 1
    final = objs[-1]["response"]
    assert final["reasoning"] == {"effort": "high", "summary": "auto"}
    assert Response.model_validate(final).output_text == "42"


def test_stream_reasoning_closed_by_text_without_signature() -> None:
    objs = run_encoder([ev.ThinkingDelta("t"), ev.TextDelta("x"), ev.Done()])
    rs_done = next(o for o in objs if o["type"] == "response.output_item.done")
    assert rs_done["item"]["encrypted_content"] is None
    assert rs_done["item"]["summary"] == [{"type": "summary_text", "text": "t"}]


def test_stream_signature_without_thinking_text() -> None:
    objs = run_encoder([ev.SignatureDelta("only-sig"), ev.TextDelta("x"), ev.Done()])
    assert [o["type"] for o in objs[2:4]] == ["response.output_item.added", "response.output_item.done"]
    assert objs[3]["item"]["summary"] == [] and objs[3]["item"]["encrypted_content"] == "only-sig"


def test_stream_length_is_incomplete() -> None:
    objs = run_encoder([ev.MessageStart("r", "u"), ev.TextDelta("trunc"), ev.Finish("length"),
                        ev.UsageEvent(Usage(5, 16)), ev.Done()])
    last = objs[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["status"] == "incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert last["response"]["usage"]["output_tokens"] == 16


def test_stream_echoes_request_fields() -> None:
    req = ChatRequest(model="m", messages=(), tools=(Tool("f", "d", {"type": "object"}),),
                      tool_choice=ToolChoice("tool", "f"), parallel_tool_calls=False, max_tokens=99,
                      temperature=0.2, response_format={"type": "json_object"}, metadata={"a": "b"})
    created = run_encoder([ev.Done()], req)[0]["response"]
    assert created["tools"] == [{"type": "function", "name": "f", "description": "d",
                                 "parameters": {"type": "object"}, "strict": None}]
    assert created["tool_choice"] == {"type": "function", "name": "f"}
    assert created["parallel_tool_calls"] is False and created["max_output_tokens"] == 99
    assert created["text"] == {"format": {"type": "json_object"}} and created["metadata"] == {"a": "b"}
    Response.model_validate(created)


def test_stream_error_mid_stream() -> None:
    enc = R.ResponsesStreamEncoder("cm")
    frames = enc.feed(ev.MessageStart("r", "u")) + enc.feed(ev.TextDelta("partial"))
    frames += enc.error(GatewayError(502, "upstream died"))
    assert enc.feed(ev.Done()) == [] and enc.error(GatewayError(502, "again")) == []
    objs = parse_frames(frames)
    assert [o["type"] for o in objs][-2:] == ["response.failed", "error"]
    failed = objs[-2]["response"]
    assert failed["status"] == "failed" and failed["error"] == {"code": "server_error", "message": "upstream died"}
    assert failed["output"][0]["content"][0]["text"] == "partial"
    assert failed["output"][0]["status"] == "incomplete"
    err = objs[-1]
    assert err["message"] == "upstream died" and err["code"] == "server_error"
    for o in objs:
        STREAM_EVENT.validate_python(o)
    assert Response.model_validate(failed).status == "failed"


def test_stream_error_before_start_and_via_stream_error_event() -> None:
    enc = R.ResponsesStreamEncoder("cm")
    objs = parse_frames(enc.feed(ev.StreamError(GatewayError(429, "slow down", code="rate_limit_exceeded"))))
    assert [o["type"] for o in objs] == ["response.created", "response.in_progress", "response.failed", "error"]
    assert objs[2]["response"]["error"] == {"code": "rate_limit_exceeded", "message": "slow down"}
    assert objs[3]["code"] == "rate_limit_exceeded"
    assert [o["sequence_number"] for o in objs] == [0, 1, 2, 3]


def test_keepalive_and_nothing_after_done() -> None:
    enc = R.INBOUND.stream_encoder("cm", ChatRequest(model="m", messages=()))
    assert enc.keepalive() == b": keep-alive\n\n"
    enc.feed(ev.Done())
    assert enc.feed(ev.TextDelta("late")) == []


def test_sdk_stream_helper_reads_our_stream() -> None:
    enc = R.ResponsesStreamEncoder("cm")
    frames: list[bytes] = []
    for e in [ev.MessageStart("r1", "u"), ev.ThinkingDelta("hmm"), ev.SignatureDelta("enc"),
              ev.TextDelta("helper "), ev.TextDelta("text"), ev.ToolCallStart(0, "call_9", "f"),
              ev.ToolArgsDelta(0, "{\"x\""), ev.ToolArgsDelta(0, ":1}"), ev.Finish("tool_calls"),
              ev.UsageEvent(Usage(3, 4)), ev.Done()]:
        frames.extend(enc.feed(e))
    client = sdk_client(b"".join(frames))
    with client.responses.stream(model="cm", input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "helper text"
    assert final.output_text == "helper text"
    calls = [o for o in final.output if o.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [("call_9", "f", "{\"x\":1}")]
    assert final.usage is not None and final.usage.total_tokens == 7


def test_sdk_raises_on_our_stream_error() -> None:
    enc = R.ResponsesStreamEncoder("cm")
    frames = enc.feed(ev.TextDelta("half")) + enc.error(GatewayError(502, "upstream exploded"))
    client = sdk_client(b"".join(frames))
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="upstream exploded"):
        with client.responses.stream(model="cm", input="hi") as stream:
            for e in stream:
                seen.append(e.type)
    assert seen[-1] == "response.failed"
    with pytest.raises(openai.APIError, match="upstream exploded"):
        for _ in sdk_client(b"".join(frames)).responses.create(model="cm", input="hi", stream=True):
            pass


# ====================================================================== outbound: encode_request
def full_request(**kw: Any) -> ChatRequest:
    base: dict[str, Any] = dict(
        model="client",
        system=(TextPart("Rule one."), TextPart("Rule two.")),
        messages=(
            Message("user", (TextPart("look"), ImagePart(media_type="image/png", data=PNG_B64),
                             ImagePart(url="https://e.com/i.jpg", detail="low"),
                             DocumentPart(media_type="application/pdf", data="QUJD", name="a.pdf"),
                             DocumentPart(text="plain doc"))),
            Message("assistant", (ThinkingPart("unsigned"), ThinkingPart("signed", "gAAAAenc"), TextPart("ok"),
                                  ToolCallPart("call_1", "f", "{\"a\":1}"))),
            Message("user", (ToolResultPart("call_1", (TextPart("done"),)), TextPart("next"))),
        ),
        tools=(Tool("f", "does f", {"type": "object", "properties": {}}), Tool("g")),
        tool_choice=ToolChoice("required"),
        max_tokens=200, temperature=0.3, top_p=0.8, top_k=5, stop=("END",), stream=True,
        thinking=Thinking(budget_tokens=10000),
        user="u1", response_format={"type": "json_schema", "json_schema": {"name": "o", "schema": {
            "type": "object"}, "strict": True}},
        parallel_tool_calls=True, metadata={"k": "v"},
        extra={"seed": 1, "presence_penalty": 0.5, "n": 1, "logit_bias": {}, "service_tier": "flex",
               "verbosity": "high", "max_tokens": 5, "messages": []},
    )
    base.update(kw)
    return ChatRequest(**base)


def test_encode_request_full_mapping() -> None:
    body = R.OUTBOUND.encode_request(full_request(), "gpt-5")
    assert body["model"] == "gpt-5"
    assert body["instructions"] == "Rule one.\n\nRule two."
    assert body["input"] == [
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": f"data:image/png;base64,{PNG_B64}", "detail": "auto"},
            {"type": "input_image", "image_url": "https://e.com/i.jpg", "detail": "low"},
            {"type": "input_file", "file_data": "data:application/pdf;base64,QUJD", "filename": "a.pdf"},
            {"type": "input_text", "text": "plain doc"},
        ]},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "signed"}],
         "encrypted_content": "gAAAAenc"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{\"a\":1}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "done"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "next"}]},
    ]
    assert body["tools"] == [
        {"type": "function", "name": "f", "description": "does f", "parameters": {"type": "object", "properties": {}},
         "strict": False},
        {"type": "function", "name": "g", "parameters": {"type": "object", "properties": {}}, "strict": False},
    ]
    assert body["tool_choice"] == "required"
    assert body["max_output_tokens"] == 200
    assert body["reasoning"] == {"effort": "medium"}
    assert body["include"] == ["reasoning.encrypted_content"]
    assert body["text"] == {"format": {"type": "json_schema", "name": "o", "schema": {"type": "object"},
                                       "strict": True}, "verbosity": "high"}
    assert body["parallel_tool_calls"] is True and body["stream"] is True and body["store"] is False
    assert (body["temperature"], body["top_p"]) == (0.3, 0.8)
    assert body["user"] == "u1" and body["metadata"] == {"k": "v"} and body["service_tier"] == "flex"
    for absent in ("messages", "max_tokens", "seed", "presence_penalty", "n", "logit_bias", "stop", "top_k",
                   "stream_options", "max_completion_tokens", "verbosity"):
        assert absent not in body


def test_encode_request_minimal() -> None:
    body = R.OUTBOUND.encode_request(ChatRequest(model="c", messages=(Message("user", (TextPart("hi"),)),)), "up")
    assert body == {"model": "up", "stream": False, "store": False,
                    "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}


@pytest.mark.parametrize(("asked", "sent"), [(1, 16), (15, 16), (16, 16), (17, 17), (4096, 4096)])
def test_max_output_tokens_floor(asked: int, sent: int) -> None:
    req = ChatRequest(model="c", messages=(Message("user", (TextPart("hi"),)),), max_tokens=asked)
    assert R.OUTBOUND.encode_request(req, "up")["max_output_tokens"] == sent


@pytest.mark.parametrize(("thinking", "reasoning"), [
    (Thinking(budget_tokens=1024), {"effort": "low"}),
    (Thinking(budget_tokens=4095), {"effort": "low"}),
    (Thinking(budget_tokens=4096), {"effort": "medium"}),
    (Thinking(budget_tokens=16383), {"effort": "medium"}),
    (Thinking(budget_tokens=16384), {"effort": "high"}),
    (Thinking(effort="minimal", budget_tokens=50000), {"effort": "minimal"}),
    (Thinking(effort="high", summary="detailed"), {"effort": "high", "summary": "detailed"}),
])
def test_thinking_to_reasoning(thinking: Thinking, reasoning: dict[str, str]) -> None:
    req = ChatRequest(model="c", messages=(Message("user", (TextPart("hi"),)),), thinking=thinking)
    assert R.OUTBOUND.encode_request(req, "up")["reasoning"] == reasoning


def test_effort_none_asks_for_no_encrypted_reasoning() -> None:
    req = ChatRequest(model="c", messages=(Message("user", (TextPart("hi"),)),), thinking=Thinking(effort="none"))
    body = R.OUTBOUND.encode_request(req, "up")
    assert body["reasoning"] == {"effort": "none"} and "include" not in body
    with_thinking = R.OUTBOUND.encode_request(
        ChatRequest(model="c", messages=req.messages, thinking=Thinking(effort="low")), "up")
    assert with_thinking["include"] == ["reasoning.encrypted_content"]


def test_encode_request_tool_choice_and_results() -> None:
    req = ChatRequest(model="c", tools=(Tool("f"),), tool_choice=ToolChoice("tool", "f"), messages=(
        Message("assistant", (ToolCallPart("c1", "f", "{}"), ToolCallPart("c2", "f", "{}"))),
        Message("user", (ToolResultPart("c1", (TextPart("bad"),), is_error=True),
                         ToolResultPart("c2", (TextPart("a"), ImagePart(media_type="image/png", data=PNG_B64)))))))
    body = R.OUTBOUND.encode_request(req, "up")
    assert body["tool_choice"] == {"type": "function", "name": "f"}
    assert body["input"][2:] == [
        {"type": "function_call_output", "call_id": "c1", "output": "Error: bad"},
        {"type": "function_call_output", "call_id": "c2", "output": [
            {"type": "input_text", "text": "a"},
            {"type": "input_image", "image_url": f"data:image/png;base64,{PNG_B64}", "detail": "auto"}]},
    ]


def test_encode_request_json_object_and_no_tools_no_tool_choice() -> None:
    req = ChatRequest(model="c", messages=(Message("user", (TextPart("hi"),)),), tool_choice=ToolChoice("none"),
                      response_format={"type": "json_object"})
    body = R.OUTBOUND.encode_request(req, "up")
    assert body["text"] == {"format": {"type": "json_object"}}
    assert "tool_choice" not in body and "tools" not in body


# ====================================================================== outbound: decode_response
def test_decode_response_full() -> None:
    body = {
        "id": "resp_1", "object": "response", "created_at": 1742424515, "status": "completed", "model": "gpt-5",
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "A"},
                                                            {"type": "summary_text", "text": "B"}],
             "encrypted_content": "gAAenc"},
            {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": "Hello!", "annotations": []}]},
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},
            {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "w", "arguments": "{\"c\":1}",
             "status": "completed"},
        ],
        "usage": {"input_tokens": 36, "input_tokens_details": {"cached_tokens": 10},
                  "output_tokens": 87, "output_tokens_details": {"reasoning_tokens": 64}, "total_tokens": 123},
    }
    resp = R.OUTBOUND.decode_response(body)
    assert resp == ChatResponse(
        id="resp_1", model="gpt-5", created=1742424515, finish_reason="tool_calls",
        parts=(ThinkingPart("A\n\nB", "gAAenc"), TextPart("Hello!"), ToolCallPart("call_1", "w", "{\"c\":1}")),
        usage=Usage(prompt_tokens=36, completion_tokens=87, cache_read_tokens=10, reasoning_tokens=64),
    )


@pytest.mark.parametrize(("status", "details", "finish"), [
    ("completed", None, "stop"),
    ("incomplete", {"reason": "max_output_tokens"}, "length"),
    ("incomplete", {"reason": "content_filter"}, "content_filter"),
])
def test_decode_response_finish(status: str, details: Any, finish: str) -> None:
    body = {"id": "r", "status": status, "incomplete_details": details, "output": [
        {"type": "message", "content": [{"type": "output_text", "text": "x"}]}]}
    assert R.OUTBOUND.decode_response(body).finish_reason == finish


def test_decode_response_failures() -> None:
    for body in ([], {"id": "r"}, {"output": "nope"}):
        with pytest.raises(GatewayError) as info:
            R.OUTBOUND.decode_response(body)  # type: ignore[arg-type]
        assert info.value.status == 502
    with pytest.raises(GatewayError) as info:
        R.OUTBOUND.decode_response({"status": "failed", "output": [],
                                    "error": {"code": "rate_limit_exceeded", "message": "Too many"}})
    assert info.value.status == 429 and "Too many" in info.value.message


def test_error_message() -> None:
    msg = b'{"error":{"message":"Invalid max_output_tokens","type":"invalid_request_error","code":"bad_value"}}'
    assert R.OUTBOUND.error_message(400, msg) == ("Invalid max_output_tokens", "bad_value")
    assert R.OUTBOUND.error_message(400, b'{"error":{"message":"x","type":"t","code":null}}') == ("x", "t")
    assert R.OUTBOUND.error_message(400, b'{"detail":"Unsupported model"}') == ("Unsupported model", None)
    assert R.OUTBOUND.error_message(502, b"<html>bad gateway</html>") == ("<html>bad gateway</html>", None)
    assert R.OUTBOUND.error_message(502, b"") == ("(empty body)", None)


# ====================================================================== outbound: stream decoder
def sse(obj: dict[str, Any]) -> bytes:
    return b"event: " + obj["type"].encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def recorded_stream() -> bytes:
    """A recorded-style stream: reasoning, text, three calls (args by delta / in .done / in item.done)."""
    resp = {"id": "resp_9", "object": "response", "created_at": 1, "status": "in_progress", "model": "gpt-5",
            "output": [], "usage": None}
    ev_: list[dict[str, Any]] = [
        {"type": "response.created", "response": resp},
        {"type": "response.in_progress", "response": resp},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"id": "rs_1", "type": "reasoning", "summary": []}},
        {"type": "response.reasoning_summary_part.added", "item_id": "rs_1", "output_index": 0, "summary_index": 0,
         "part": {"type": "summary_text", "text": ""}},
        {"type": "response.reasoning_summary_text.delta", "item_id": "rs_1", "output_index": 0, "summary_index": 0,
         "delta": "Plan"},
        {"type": "response.reasoning_summary_text.done", "item_id": "rs_1", "output_index": 0, "summary_index": 0,
         "text": "Plan"},
        {"type": "response.reasoning_summary_part.added", "item_id": "rs_1", "output_index": 0, "summary_index": 1,
         "part": {"type": "summary_text", "text": ""}},
        {"type": "response.reasoning_summary_text.delta", "item_id": "rs_1", "output_index": 0, "summary_index": 1,
         "delta": "More"},
        {"type": "response.output_item.done", "output_index": 0,
         "item": {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Plan"},
                                                                 {"type": "summary_text", "text": "More"}],
                  "encrypted_content": "gAAAA-secret"}},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {"id": "msg_1", "type": "message", "status": "in_progress", "role": "assistant", "content": []}},
        {"type": "response.content_part.added", "item_id": "msg_1", "output_index": 1, "content_index": 0,
         "part": {"type": "output_text", "text": "", "annotations": []}},
        {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 1, "content_index": 0,
         "delta": "Hel", "logprobs": []},
        {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 1, "content_index": 0,
         "delta": "lo", "logprobs": []},
        {"type": "response.output_text.done", "item_id": "msg_1", "output_index": 1, "content_index": 0,
         "text": "Hello", "logprobs": []},
        {"type": "response.output_item.done", "output_index": 1,
         "item": {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                  "content": [{"type": "output_text", "text": "Hello", "annotations": []}]}},
        {"type": "response.output_item.added", "output_index": 2,
         "item": {"id": "fc_1", "type": "function_call", "status": "in_progress", "call_id": "call_A",
                  "name": "a", "arguments": ""}},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 2, "delta": "{\"x\""},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 2, "delta": ""},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 2, "delta": ":1}"},
        {"type": "response.function_call_arguments.done", "item_id": "fc_1", "output_index": 2,
         "arguments": "{\"x\":1}", "name": "a"},
        {"type": "response.output_item.done", "output_index": 2,
         "item": {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_A", "name": "a",
                  "arguments": "{\"x\":1}"}},
        {"type": "response.output_item.added", "output_index": 3,
         "item": {"id": "fc_2", "type": "function_call", "status": "in_progress", "call_id": "call_B",
                  "name": "b", "arguments": ""}},
        {"type": "response.function_call_arguments.done", "item_id": "fc_2", "output_index": 3,
         "arguments": "{\"y\":2}", "name": "b"},
        {"type": "response.output_item.done", "output_index": 3,
         "item": {"id": "fc_2", "type": "function_call", "status": "completed", "call_id": "call_B", "name": "b",
                  "arguments": "{\"y\":2}"}},
        {"type": "response.output_item.added", "output_index": 4,
         "item": {"id": "fc_3", "type": "function_call", "status": "in_progress", "call_id": "call_C",
                  "name": "c", "arguments": ""}},
        {"type": "response.output_item.done", "output_index": 4,
         "item": {"id": "fc_3", "type": "function_call", "status": "completed", "call_id": "call_C", "name": "c",
                  "arguments": "{\"z\":3}"}},
        {"type": "response.completed", "response": {**resp, "status": "completed", "output": [], "usage": {
            "input_tokens": 50, "input_tokens_details": {"cached_tokens": 20}, "output_tokens": 30,
            "output_tokens_details": {"reasoning_tokens": 12}, "total_tokens": 80}}},
    ]
    return b"".join(sse({**e, "sequence_number": i}) for i, e in enumerate(ev_))


EXPECTED_RECORDED = [
    ev.MessageStart("resp_9", "gpt-5"),
    ev.ThinkingDelta("Plan"), ev.ThinkingDelta("\n\n"), ev.ThinkingDelta("More"), ev.SignatureDelta("gAAAA-secret"),
    ev.TextDelta("Hel"), ev.TextDelta("lo"),
    ev.ToolCallStart(0, "call_A", "a"), ev.ToolArgsDelta(0, "{\"x\""), ev.ToolArgsDelta(0, ":1}"),
    ev.ToolCallStart(1, "call_B", "b"), ev.ToolArgsDelta(1, "{\"y\":2}"),
    ev.ToolCallStart(2, "call_C", "c"), ev.ToolArgsDelta(2, "{\"z\":3}"),
    ev.Finish("tool_calls"),
    ev.UsageEvent(Usage(prompt_tokens=50, completion_tokens=30, cache_read_tokens=20, reasoning_tokens=12)),
    ev.Done(),
]


def test_decoder_recorded_stream() -> None:
    assert decode_stream(recorded_stream()) == EXPECTED_RECORDED


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_decoder_chunk_boundaries_do_not_matter(cuts: list[int]) -> None:
    assert decode_stream(recorded_stream(), cuts) == EXPECTED_RECORDED


def test_decoder_arguments_only_in_arguments_done() -> None:
    """Pitfall 1: a call whose arguments come only in function_call_arguments.done (no item.done)."""
    raw = sse({"type": "response.created", "response": {"id": "r", "model": "m"}})
    raw += sse({"type": "response.output_item.added", "output_index": 0, "item": {
        "id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f", "arguments": ""}})
    raw += sse({"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 0,
                "delta": ""})
    raw += sse({"type": "response.function_call_arguments.done", "item_id": "fc_1", "output_index": 0,
                "arguments": "{\"k\":true}"})
    raw += sse({"type": "response.completed", "response": {"id": "r", "status": "completed", "output": []}})
    assert decode_stream(raw) == [ev.MessageStart("r", "m"), ev.ToolCallStart(0, "call_1", "f"),
                                  ev.ToolArgsDelta(0, "{\"k\":true}"), ev.Finish("tool_calls"), ev.Done()]


def test_decoder_arguments_sent_once() -> None:
    """Arguments streamed as deltas are not repeated from .done / item.done / the final output."""
    item = {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}
    raw = sse({"type": "response.output_item.added", "output_index": 0, "item": {**item, "arguments": ""}})
    raw += sse({"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 0,
                "delta": "{}"})
    raw += sse({"type": "response.function_call_arguments.done", "item_id": "fc_1", "output_index": 0,
                "arguments": "{}"})
    raw += sse({"type": "response.output_item.done", "output_index": 0, "item": item})
    raw += sse({"type": "response.completed", "response": {"id": "r", "status": "completed", "output": [item]}})
    out = decode_stream(raw)
    assert [e for e in out if isinstance(e, ev.ToolArgsDelta)] == [ev.ToolArgsDelta(0, "{}")]
    assert [e for e in out if isinstance(e, ev.ToolCallStart)] == [ev.ToolCallStart(0, "call_1", "f")]


def test_decoder_incomplete_and_done_marker() -> None:
    raw = sse({"type": "response.created", "sequence_number": 0, "response": {"id": "r", "model": "m"}})
    raw += sse({"type": "response.output_text.delta", "sequence_number": 1, "item_id": "m1", "output_index": 0,
                "content_index": 0, "delta": "cut"})
    raw += sse({"type": "response.incomplete", "sequence_number": 2, "response": {
        "id": "r", "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}, "output": [
            {"id": "m1", "type": "message", "content": [{"type": "output_text", "text": "cut"}]}]}})
    raw += b"data: [DONE]\n\n"
    assert decode_stream(raw) == [ev.MessageStart("r", "m"), ev.TextDelta("cut"), ev.Finish("length"), ev.Done()]


def test_decoder_completed_without_deltas_emits_the_output() -> None:
    raw = sse({"type": "response.created", "response": {"id": "r", "model": "m"}})
    raw += sse({"type": "response.completed", "response": {"id": "r", "status": "completed", "output": [
        {"id": "rs", "type": "reasoning", "summary": [{"type": "summary_text", "text": "why"}]},
        {"id": "m1", "type": "message", "content": [{"type": "output_text", "text": "all at once"}]},
        {"id": "fc", "type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}]}})
    assert decode_stream(raw) == [
        ev.MessageStart("r", "m"), ev.ThinkingDelta("why"), ev.TextDelta("all at once"),
        ev.ToolCallStart(0, "c1", "f"), ev.ToolArgsDelta(0, "{}"), ev.Finish("tool_calls"), ev.Done()]


def test_decoder_failed_and_error_events() -> None:
    created = sse({"type": "response.created", "response": {"id": "r", "model": "m"}})
    failed = decode_stream(created + sse({"type": "response.failed", "response": {
        "id": "r", "status": "failed", "error": {"code": "server_error", "message": "The server had an error"}}}))
    assert isinstance(failed[-1], ev.StreamError)
    assert failed[-1].error.status == 502 and "The server had an error" in failed[-1].error.message
    limited = decode_stream(sse({"type": "error", "code": "rate_limit_exceeded", "message": "Slow down",
                                 "param": None, "sequence_number": 0}))
    assert len(limited) == 1 and isinstance(limited[0], ev.StreamError)
    assert limited[0].error.status == 429 and "Slow down" in limited[0].error.message
    invalid = decode_stream(sse({"type": "error", "code": "context_length_exceeded", "message": "too long"}))
    assert invalid[0].error.status == 400  # type: ignore[union-attr]
    nested = decode_stream(sse({"type": "error", "error": {"code": "server_error", "message": "nested"}}))
    assert "nested" in nested[0].error.message  # type: ignore[union-attr]
    garbage = decode_stream(b"event: response.created\ndata: {\"type\": \"response.cre\n\n")
    assert isinstance(garbage[0], ev.StreamError) and garbage[0].error.status == 502


def test_decoder_ignores_events_after_the_end() -> None:
    dec = R.OUTBOUND.stream_decoder()
    sse_dec = SSEDecoder()
    raw = sse({"type": "response.completed", "response": {"id": "r", "model": "m", "status": "completed",
                                                          "output": []}})
    out = [e for s in sse_dec.feed(raw) for e in dec.feed(s)]
    assert out == [ev.MessageStart("r", "m"), ev.Finish("stop"), ev.Done()]
    late = sse({"type": "response.output_text.delta", "delta": "late"})
    assert [e for s in sse_dec.feed(late) for e in dec.feed(s)] == []


def test_encoder_then_decoder_round_trip() -> None:
    events: list[ev.Event] = [
        ev.MessageStart("x", "u"), ev.ThinkingDelta("why"), ev.SignatureDelta("sig"), ev.TextDelta("a"),
        ev.TextDelta("b"), ev.ToolCallStart(0, "call_1", "f"), ev.ToolArgsDelta(0, "{\"q\":"),
        ev.ToolArgsDelta(0, "1}"), ev.ToolCallStart(1, "call_2", "g"), ev.Finish("tool_calls"),
        ev.UsageEvent(Usage(7, 8, cache_read_tokens=2, reasoning_tokens=3)), ev.Done(),
    ]
    enc = R.ResponsesStreamEncoder("cm")
    raw = b"".join(f for e in events for f in enc.feed(e))
    assert decode_stream(raw) == [ev.MessageStart("resp_x", "cm"), *events[1:]]


# ====================================================================== round trip (Hypothesis)
TEXT = st.text(min_size=1, max_size=12)
NAME = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_-]{0,8}", fullmatch=True)
ARGS = st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=4), max_size=3).map(json.dumps)
SIG = st.from_regex(r"gAAAA[A-Za-z0-9_=-]{1,12}", fullmatch=True)
IMAGE = st.builds(ImagePart, media_type=st.sampled_from(["image/png", "image/jpeg"]),
                  data=st.binary(min_size=1, max_size=8).map(lambda b: base64.b64encode(b).decode()),
                  detail=st.sampled_from(["auto", "low", "high"]))


@st.composite
def conversations(draw: st.DrawFn) -> ChatRequest:
    messages: list[Message] = []
    pending: list[tuple[str, str]] = []
    counter = 0
    for turn in range(draw(st.integers(1, 6))):
        if turn % 2 == 0:
            parts: list[Any] = []
            for cid, name in pending:
                content = draw(st.lists(TEXT.map(TextPart) | IMAGE, min_size=1, max_size=2))
                parts.append(ToolResultPart(cid, tuple(content), False, name))
            parts += draw(st.lists(TEXT.map(TextPart) | IMAGE, min_size=0 if pending else 1, max_size=3))
            pending = []
            messages.append(Message("user", tuple(parts)))
        else:
            parts = []
            if draw(st.booleans()):
                parts.append(ThinkingPart(draw(TEXT), draw(SIG)))
            parts += [TextPart(t) for t in draw(st.lists(TEXT, max_size=2))]
            for _ in range(draw(st.integers(0, 2))):
                counter += 1
                call = ToolCallPart(f"call_{counter}", draw(NAME), draw(ARGS))
                pending.append((call.id, call.name))
                parts.append(call)
            if not parts:
                parts.append(TextPart(draw(TEXT)))
            messages.append(Message("assistant", tuple(parts)))
    system = tuple(TextPart(t) for t in draw(st.lists(TEXT, max_size=2)))
    return ChatRequest(model="client", messages=tuple(messages), system=system,
                       tools=tuple(Tool(n, None, {"type": "object", "properties": {}})
                                   for n in sorted({name for m in messages for p in m.parts
                                                    if isinstance(p, ToolCallPart) for name in [p.name]})))


@settings(max_examples=150, deadline=None)
@given(conversations())
def test_round_trip_outbound_then_inbound(req: ChatRequest) -> None:
    wire = orjson.loads(orjson.dumps(R.OUTBOUND.encode_request(req, "gpt-5")))
    back = R.INBOUND.decode_request(wire)
    assert back.messages == req.messages
    assert "\n\n".join(p.text for p in back.system) == "\n\n".join(p.text for p in req.system)
    assert back.tools == req.tools
    assert back.model == "gpt-5"
