"""OpenAI chat codec: decoding client requests, encoding answers, both stream directions."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fproxy.codecs.openai_chat import INBOUND, OUTBOUND, ChatStreamEncoder
from fproxy.codecs.sse import SSEDecoder
from fproxy.ir import events as ev
from fproxy.ir.errors import GatewayError
from fproxy.ir.request import ImagePart, TextPart, ThinkingPart, ToolCallPart, ToolResultPart
from fproxy.ir.response import ChatResponse, Usage

PNG = "iVBORw0KGgo="


def test_decode_hoists_system_merges_tool_results_and_reads_parts():
    req = INBOUND.decode_request({
        "model": "m", "max_completion_tokens": 50, "stop": "END", "stream": True,
        "stream_options": {"include_usage": True}, "reasoning_effort": "low", "seed": 3,
        "messages": [
            {"role": "system", "content": "A"}, {"role": "developer", "content": [{"type": "text", "text": "B"}]},
            {"role": "user", "content": [{"type": "text", "text": "look"},
                                         {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                                         {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]},
            {"role": "assistant", "content": None, "reasoning_content": "hmm",
             "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": "sig"}],
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "r1"},
            {"role": "tool", "tool_call_id": "c2", "content": "r2"},
            {"role": "user", "content": "thanks"},
        ]})
    assert [p.text for p in req.system] == ["A", "B"]
    assert [m.role for m in req.messages] == ["user", "assistant", "user"]
    u0 = req.messages[0].parts
    assert u0[1] == ImagePart(media_type="image/png", data=PNG) and u0[2].url == "https://x.test/a.png"
    a = req.messages[1].parts
    assert a[0] == ThinkingPart("hmm", "sig") and a[1] == ToolCallPart("c1", "f", "{}")
    last = req.messages[2].parts
    assert [type(p) for p in last] == [ToolResultPart, ToolResultPart, TextPart]
    assert last[1].call_id == "c2" and last[1].name == "g" and last[1].content == (TextPart("r2"),)
    assert req.max_tokens == 50 and req.stop == ("END",) and req.include_usage and req.thinking.effort == "low"
    assert req.extra == {"seed": 3}


@pytest.mark.parametrize("body, where", [
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
     "tools[0].function"),
    ({"model": 1, "messages": [{"role": "user", "content": "x"}]}, "model"),
])
def test_decode_errors_name_the_field(body, where):
    with pytest.raises(GatewayError) as e:
        INBOUND.decode_request(body)
    assert e.value.status == 400 and e.value.message.startswith(where)


def test_encode_response_with_usage_thinking_and_tools():
    resp = ChatResponse(id="x1", model="up", parts=(ThinkingPart("t", "s"), TextPart("hi"),
                                                    ToolCallPart("c", "f", "{}")),
                        finish_reason="stop", usage=Usage(10, 5, cache_read_tokens=4, reasoning_tokens=2))
    out = INBOUND.encode_response(resp, "client-model")
    msg = out["choices"][0]["message"]
    assert out["model"] == "client-model" and out["choices"][0]["finish_reason"] == "tool_calls"
    assert msg["content"] == "hi" and msg["reasoning_content"] == "t"
    assert msg["thinking_blocks"] == [{"type": "thinking", "thinking": "t", "signature": "s"}]
    assert out["usage"]["total_tokens"] == 15 and out["usage"]["prompt_tokens_details"]["cached_tokens"] == 4
    assert out["usage"]["completion_tokens_details"]["reasoning_tokens"] == 2


def _frames(enc, events):
    out = []
    for e in events:
        out.extend(enc.feed(e))
    return out


def _payloads(frames):
    return [f.decode()[6:-2] for f in frames]


def test_stream_encoder_tool_calls_ids_once_and_usage_chunk():
    enc = ChatStreamEncoder("m", include_usage=True)
    frames = _frames(enc, [ev.MessageStart("msg_1", "up"), ev.TextDelta("a"), ev.ToolCallStart(0, "toolu_1", "f"),
                           ev.ToolArgsDelta(0, '{"x"'), ev.ToolArgsDelta(0, ":1}"), ev.Finish("tool_calls"),
                           ev.UsageEvent(Usage(3, 2)), ev.Done()])
    p = _payloads(frames)
    assert p[-1] == "[DONE]"
    chunks = [json.loads(x) for x in p[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tcs = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if c["choices"] and
           "tool_calls" in c["choices"][0]["delta"]]
    assert tcs[0]["id"] == "toolu_1" and tcs[0]["function"]["name"] == "f"
    assert all("id" not in t for t in tcs[1:])
    assert "".join(t["function"]["arguments"] for t in tcs) == '{"x":1}'
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 5
    assert len({c["id"] for c in chunks}) == 1


def test_stream_encoder_error_ends_with_done():
    enc = ChatStreamEncoder("m", include_usage=False)
    frames = enc.feed(ev.TextDelta("a")) + enc.error(GatewayError(502, "boom"))
    p = _payloads(frames)
    assert json.loads(p[-2])["error"]["message"] == "boom" and p[-1] == "[DONE]"
    assert enc.feed(ev.TextDelta("late")) == []


def test_outbound_encode_splits_tool_results_into_tool_messages():
    req = INBOUND.decode_request({"model": "m", "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "res"}], "stream": True})
    body = OUTBOUND.encode_request(req, "up-model")
    assert body["model"] == "up-model" and body["stream_options"] == {"include_usage": True}
    assert body["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    assert body["messages"][2] == {"role": "tool", "tool_call_id": "c1", "content": "res"}


def test_stream_decoder_handles_fragments_usage_and_done():
    wire = (
        b'data: {"id":"c","model":"up","choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}\n\n'
        b': OPENROUTER PROCESSING\n\n'
        b'data: {"id":"c","choices":[{"index":0,"delta":{"reasoning_content":"think"}}]}\n\n'
        b'data: {"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function",'
        b'"function":{"name":"f","arguments":""}}]}}]}\n\n'
        b'data: {"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]}\n\n'
        b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
        b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,'
        b'"prompt_tokens_details":{"cached_tokens":2}}}\n\n'
        b'data: [DONE]\n\n')
    dec = OUTBOUND.stream_decoder()
    events = [e for s in SSEDecoder().feed(wire) for e in dec.feed(s)]
    assert events == [ev.MessageStart("c", "up"), ev.ThinkingDelta("think"), ev.ToolCallStart(0, "call_1", "f"),
                      ev.ToolArgsDelta(0, "{}"), ev.Finish("tool_calls"),
                      ev.UsageEvent(Usage(9, 4, cache_read_tokens=2)), ev.Done()]


def test_decode_response_malformed_is_502():
    with pytest.raises(GatewayError) as e:
        OUTBOUND.decode_response({"choices": []})
    assert e.value.status == 502


@given(st.text(max_size=40))
def test_text_frames_are_the_general_chunk_byte_for_byte(text: str) -> None:
    enc = ChatStreamEncoder('m"odel\u00e9', False, id="chatcmpl-x", created=7)
    assert enc._text(text) == enc._chunk({"content": text})
    assert enc._text(text + "!") == enc._chunk({"content": text + "!"})  # the cached head and tail
