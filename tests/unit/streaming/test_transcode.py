"""Passthrough relay: the unparsed fast run and the per-event path give the same result.

The reference is the same transcoder forced onto the per-event path (an empty marker matches
at every position), fed the whole stream at once; the transcoder under test gets the stream
cut anywhere.  Relayed bytes, usage, first-token signal, finish reason and errors must agree.
"""
from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fproxy.codecs.registry import inbound_codec
from fproxy.ir.request import ChatRequest
from fproxy.streaming.transcode import PassthroughTranscoder, StreamMeter

CHAT = (
    b'data: {"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}\n\n'
    + b"".join(b'data: {"id":"c","choices":[{"index":0,"delta":{"content":" w%d"}}],"usage":null}\n\n' % i
               for i in range(6))
    + b": a comment\n\n"
    + b'data: {"id":"c",\ndata: "choices":[{"index":0,"delta":{"content":"two lines"}}]}\n\n'
    + b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}\n\n'
    + b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9,"total_tokens":14}}\n\n'
    + b"data: [DONE]\n\n"
    + b'data: {"after":"done"}\n\n'
)

ANTHROPIC = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","usage":{"input_tokens":7,'
    b'"output_tokens":1}}}\n\n'
    + b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
      b'"content_block":{"type":"text","text":""}}\n\n'
    + b"event: ping\ndata: {\"type\":\"ping\"}\n\n: upstream keep-alive\n\n"
    + b"".join(b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
               b'"delta":{"type":"text_delta","text":" w%d"}}\n\n' % i for i in range(6))
    + b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    + b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
      b'"usage":{"output_tokens":12}}\n\n'
    + b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)

RESPONSES = (
    b'event: response.created\ndata: {"type":"response.created","response":{"id":"r"}}\n\n'
    + b"".join(b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
               b'"delta":" w%d"}\n\n' % i for i in range(6))
    + b'event: response.completed\ndata: {"type":"response.completed","response":{"id":"r","usage":'
      b'{"input_tokens":3,"output_tokens":6,"total_tokens":9}}}\n\n'
)

STREAMS = {"openai-chat": CHAT, "anthropic": ANTHROPIC, "openai-responses": RESPONSES}


def _run(dialect: str, parts: list[bytes], include_usage: bool, reference: bool = False) -> tuple[Any, ...]:
    tokens: list[int] = []
    meter = StreamMeter(first_token=lambda: tokens.append(1))
    encoder = inbound_codec(dialect).stream_encoder("m", ChatRequest(model="m", messages=()))
    t = PassthroughTranscoder(dialect, encoder, meter, include_usage)
    if reference:
        t._markers = (b"",)  # every event through the per-event path
    out = b"".join(b"".join(t.feed(p)) for p in parts)
    return out, meter.usage, len(tokens), meter.finish, meter.error, t.terminal


@given(st.sampled_from(sorted(STREAMS)), st.booleans(),
       st.lists(st.integers(min_value=0, max_value=len(CHAT)), max_size=12))
def test_any_split_relays_and_meters_like_the_per_event_path(dialect: str, include_usage: bool,
                                                             cuts: list[int]) -> None:
    stream = STREAMS[dialect]
    bounds = [0, *sorted(c for c in cuts if c <= len(stream)), len(stream)]
    parts = [stream[a:b] for a, b in zip(bounds, bounds[1:])]
    got = _run(dialect, parts, include_usage)
    want = _run(dialect, [stream], include_usage, reference=True)
    assert got == want
    out, usage, tokens, _, error, terminal = got
    assert terminal and error is None and tokens == 1 and usage is not None


def test_what_the_reference_relays() -> None:
    out, usage, _, finish, _, _ = _run("openai-chat", [CHAT], include_usage=False, reference=True)
    # the comment is dropped, the usage chunk hidden (not asked for), nothing after [DONE]
    assert out == CHAT[:CHAT.index(b'data: {"id":"c","choices":[],')].replace(b": a comment\n\n", b"") \
        + b"data: [DONE]\n\n"
    assert (usage.prompt_tokens, usage.completion_tokens) == (5, 9)
    out, usage, _, finish, _, _ = _run("anthropic", [ANTHROPIC], include_usage=True, reference=True)
    assert out == ANTHROPIC.replace(b": upstream keep-alive\n\n", b"") and finish == "end_turn" and usage.completion_tokens == 12


def test_plain_events_are_relayed_in_one_piece() -> None:
    meter = StreamMeter()
    encoder = inbound_codec("openai-chat").stream_encoder("m", ChatRequest(model="m", messages=()))
    t = PassthroughTranscoder("openai-chat", encoder, meter, True)
    head = CHAT[:CHAT.index(b": a comment")]
    assert t.feed(head + b"data: {\"partial") == [head]


def test_only_marked_events_are_parsed() -> None:
    from fproxy.codecs.sse import SSEDecoder, SSEEvent

    items = SSEDecoder().feed_relay(ANTHROPIC, PassthroughTranscoder("anthropic", None, StreamMeter())._markers,
                                    False)  # type: ignore[arg-type]
    parsed = [i.event for i in items if isinstance(i, SSEEvent)]
    # the three marked events; the comment is parsed alone (and dropped)
    assert parsed == ["message_start", "message_delta", "message_stop"]
    runs = [i for i in items if isinstance(i, bytes)]
    assert len(runs) == 2 and runs[0].endswith(b'"ping"}\n\n') and runs[1].count(b"event: content_block_delta") == 6
