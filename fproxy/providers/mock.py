"""The built-in ``mock`` provider: an in-process upstream speaking OpenAI Chat Completions.

It answers like a real upstream (status, headers, a body delivered to a protocol, paced
stream chunks that honour pause/resume), so every gateway path - passthrough, translation,
the streaming pipe and its backpressure - runs exactly as it does against a network peer.
"""
from __future__ import annotations

from typing import Any

import orjson
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from zope.interface import implementer

DEFAULT_REPLY = "Hello from fproxy's built-in mock model! Your gateway works. You said: {prompt}"


def _last_user_text(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c
            if isinstance(c, list):
                return " ".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text")
    return ""


def reply_for(body: dict[str, Any], template: str | None) -> str:
    return (template or DEFAULT_REPLY).replace("{prompt}", _last_user_text(body))


def _usage(body: dict[str, Any], text: str) -> dict[str, int]:
    prompt = max(1, len(orjson.dumps(body.get("messages", []))) // 4)
    completion = max(1, len(text) // 4)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chunks_for(body: dict[str, Any], model: str, text: str, rid: str) -> list[bytes]:
    """The SSE byte chunks of a streamed reply, one word per chunk."""
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + orjson.dumps({
            "id": rid, "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + b"\n\n"

    words = text.split(" ")
    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
    out.append(chunk({}, "stop"))
    so = body.get("stream_options")
    if isinstance(so, dict) and so.get("include_usage"):
        out.append(b"data: " + orjson.dumps({"id": rid, "object": "chat.completion.chunk", "created": 0,
                                              "model": model, "choices": [], "usage": _usage(body, text)}) + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


def completion_for(body: dict[str, Any], model: str, text: str, rid: str) -> bytes:
    return orjson.dumps({
        "id": rid, "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": _usage(body, text),
    })


@implementer(IPushProducer)
class _Transport:
    """Delivers the chunks to a protocol at ``delay`` intervals; pausable; stoppable."""

    def __init__(self, clock: IReactorTime, protocol: Protocol, chunks: list[bytes], delay: float) -> None:
        self._clock = clock
        self._protocol = protocol
        self._chunks = chunks
        self._delay = delay
        self._pos = 0
        self._call: IDelayedCall | None = None
        self._paused = False
        self._stopped = False

    def start(self) -> None:
        self._protocol.makeConnection(self)  # type: ignore[arg-type]
        self._schedule(0)

    def _schedule(self, delay: float) -> None:
        if not self._stopped and not self._paused and self._call is None:
            self._call = self._clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._call = None
        if self._stopped or self._paused:
            return
        if self._pos < len(self._chunks):
            data = self._chunks[self._pos]
            self._pos += 1
            self._protocol.dataReceived(data)
            self._schedule(self._delay)
        else:
            self._stopped = True
            self._protocol.connectionLost(Failure(ResponseDone()))

    def pauseProducing(self) -> None:
        self._paused = True
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def resumeProducing(self) -> None:
        self._paused = False
        self._schedule(self._delay)

    def stopProducing(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
        self._stopped = True


class MockResponse:
    """Quacks like `twisted.web.iweb.IResponse` for the gateway's purposes."""

    code = 200
    phrase = b"OK"

    def __init__(self, clock: IReactorTime, chunks: list[bytes], delay: float, stream: bool) -> None:
        self._clock = clock
        self._chunks = chunks
        self._delay = delay
        ctype = b"text/event-stream" if stream else b"application/json"
        self.headers = Headers({b"content-type": [ctype]})
        self.length = sum(map(len, chunks))

    def deliverBody(self, protocol: Protocol) -> None:
        _Transport(self._clock, protocol, self._chunks, self._delay).start()


def respond(clock: IReactorTime, body: dict[str, Any], model: str, template: str | None, delay: float,
            rid: str) -> MockResponse:
    text = reply_for(body, template)
    if body.get("stream"):
        return MockResponse(clock, chunks_for(body, model, text, rid), delay, True)
    return MockResponse(clock, [completion_for(body, model, text, rid)], 0, False)
