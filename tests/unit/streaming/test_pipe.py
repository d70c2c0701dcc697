"""StreamPipe: backpressure both ways, timers, endings - with StringTransport and task.Clock."""
from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed

from fproxy.codecs.openai_chat import INBOUND
from fproxy.ir.request import ChatRequest
from fproxy.streaming.pipe import StreamPipe
from fproxy.streaming.transcode import PassthroughTranscoder, StreamMeter
from tests.fakes.request import FakeRequest

CHUNK = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
USAGE = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}\n\n'
DONE = b"data: [DONE]\n\n"


def _pipe(clock, include_usage=False, idle=10.0, total=100.0, keepalive=5.0):
    req = FakeRequest()
    meter = StreamMeter()
    enc = INBOUND.stream_encoder("m", ChatRequest(model="m", messages=(), include_usage=include_usage))
    pipe = StreamPipe(req, PassthroughTranscoder("openai-chat", enc, meter, include_usage), clock, idle, total,
                      keepalive)
    upstream = StringTransport()
    pipe.makeConnection(upstream)
    return req, pipe, upstream, meter


def test_relays_bytes_unchanged_and_finishes():
    clock = Clock()
    req, pipe, up, meter = _pipe(clock, include_usage=True)
    assert req.producer is pipe and req.streaming is True
    pipe.dataReceived(CHUNK + CHUNK[:20])
    pipe.dataReceived(CHUNK[20:] + USAGE + DONE)
    pipe.connectionLost(Failure(ResponseDone()))
    assert req.body == CHUNK + CHUNK + USAGE + DONE
    assert req.finished and pipe.done.called and pipe.outcome == "completed"
    assert meter.usage.prompt_tokens == 3 and meter.usage.completion_tokens == 4
    assert clock.getDelayedCalls() == []


def test_usage_chunk_hidden_when_client_did_not_ask():
    clock = Clock()
    req, pipe, up, meter = _pipe(clock, include_usage=False)
    pipe.dataReceived(CHUNK + USAGE + DONE)
    pipe.connectionLost(Failure(ResponseDone()))
    assert req.body == CHUNK + DONE
    assert meter.usage.total_tokens == 7  # still recorded


def test_client_pause_pauses_upstream_and_resume_resumes():
    req, pipe, up, _ = _pipe(Clock())
    req.producer.pauseProducing()
    assert up.producerState == "paused"
    req.producer.resumeProducing()
    assert up.producerState == "producing"


def test_client_disconnect_stops_upstream_and_fires_done():
    req, pipe, up, _ = _pipe(Clock())
    pipe.dataReceived(CHUNK)
    req.producer.stopProducing()
    assert up.producerState == "stopped"
    assert pipe.done.called and pipe.outcome == "client_closed"
    assert not req.finished  # never finish() a request whose client left
    pipe.dataReceived(CHUNK)  # late bytes are dropped, not written
    pipe.connectionLost(Failure(ResponseFailed([])))
    assert req.body == CHUNK


def test_upstream_drop_ends_with_error_chunk_and_done():
    req, pipe, up, _ = _pipe(Clock())
    pipe.dataReceived(CHUNK)
    pipe.connectionLost(Failure(ResponseFailed([])))
    body = req.body.decode()
    assert body.startswith(CHUNK.decode())
    assert '"error"' in body and body.endswith("data: [DONE]\n\n")
    assert req.finished and pipe.outcome == "error"


def test_truncated_stream_without_done_is_an_error():
    req, pipe, up, _ = _pipe(Clock())
    pipe.dataReceived(CHUNK)
    pipe.connectionLost(Failure(ResponseDone()))
    assert req.body.endswith(b"data: [DONE]\n\n") and b'"error"' in req.body
    assert pipe.outcome == "error"


def test_idle_timeout_ends_stream_and_closes_upstream():
    clock = Clock()
    req, pipe, up, _ = _pipe(clock, idle=10.0, keepalive=0)
    pipe.dataReceived(CHUNK)
    clock.advance(9)
    pipe.dataReceived(CHUNK)  # resets the idle timer
    clock.advance(9)
    assert not req.finished
    clock.advance(2)
    assert req.finished and b"upstream_timeout" in req.body and up.producerState == "stopped"


def test_total_timeout():
    clock = Clock()
    req, pipe, up, _ = _pipe(clock, idle=5, total=12, keepalive=0)
    for _ in range(4):
        clock.advance(4)
        if not req.finished:
            pipe.dataReceived(CHUNK)
    assert req.finished and b"total timeout" in req.body


def test_keepalive_comments_while_upstream_is_silent():
    clock = Clock()
    req, pipe, up, _ = _pipe(clock, idle=60, keepalive=5)
    clock.advance(5)
    clock.advance(5)
    assert req.written == [b": keep-alive\n\n", b": keep-alive\n\n"]
    pipe.dataReceived(CHUNK + DONE)
    pipe.connectionLost(Failure(ResponseDone()))
    assert clock.getDelayedCalls() == []


def test_client_gone_before_connection():
    req = FakeRequest()
    req.registerProducer(object(), True)  # registering again raises, as when the client already left
    enc = INBOUND.stream_encoder("m", ChatRequest(model="m", messages=()))
    pipe = StreamPipe(req, PassthroughTranscoder("openai-chat", enc, StreamMeter()), Clock(), 1, 1, 1)
    up = StringTransport()
    pipe.makeConnection(up)
    assert up.producerState == "stopped" and pipe.done.called
