"""Upstream stream bytes -> client frames, with usage read on the way.

`PassthroughTranscoder` relays each SSE event's raw bytes when both sides speak the same
dialect, parsing only the few events that carry usage or mark the end.
`TranslatingTranscoder` decodes the upstream dialect into canonical events and encodes them
in the client's dialect.
"""
from __future__ import annotations

from collections.abc import Callable

import orjson
from attrs import define

from fproxy.codecs.anthropic import usage_from_anthropic
from fproxy.codecs.base import StreamDecoder, StreamEncoder
from fproxy.codecs.openai_chat import usage_from_json
from fproxy.codecs.openai_responses import usage_from_json as responses_usage_from_json
from fproxy.codecs.sse import SSEDecoder, SSEEvent
from fproxy.ir import events as ev
from fproxy.ir.errors import GatewayError
from fproxy.ir.response import Usage


@define
class StreamMeter:
    """What a stream told us, for usage records and metrics."""

    usage: Usage | None = None
    first_token: Callable[[], None] | None = None
    error: GatewayError | None = None
    finish: str | None = None
    _seen_token: bool = False

    @property
    def seen_token(self) -> bool:
        return self._seen_token

    def token(self) -> None:
        if not self._seen_token:
            self._seen_token = True
            if self.first_token is not None:
                self.first_token()

    def add_usage(self, u: Usage) -> None:
        self.usage = self.usage.merge(u) if self.usage else u


def _truncated() -> GatewayError:
    return GatewayError(502, "the upstream stream ended before its final event", code="upstream_truncated")


class TranslatingTranscoder:
    def __init__(self, decoder: StreamDecoder, encoder: StreamEncoder, meter: StreamMeter) -> None:
        self._sse = SSEDecoder()
        self._decoder = decoder
        self._encoder = encoder
        self.meter = meter
        self.terminal = False

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        for sse in self._sse.feed(data):
            for e in self._decoder.feed(sse):
                out.extend(self.feed_event(e))
        return out

    def feed_event(self, e: ev.Event) -> list[bytes]:
        if self.terminal:
            return []
        m = self.meter
        if type(e) is ev.TextDelta:  # nearly every event: straight to the encoder
            if not m.seen_token:
                m.token()
            return self._encoder.feed(e)
        if isinstance(e, (ev.TextDelta, ev.ThinkingDelta, ev.ToolCallStart)):
            m.token()
        elif isinstance(e, ev.UsageEvent):
            m.add_usage(e.usage)
        elif isinstance(e, ev.MessageStart) and e.usage is not None:
            m.add_usage(e.usage)
        elif isinstance(e, ev.Finish):
            m.finish = e.reason
        elif isinstance(e, ev.Done):
            self.terminal = True
        elif isinstance(e, ev.StreamError):
            self.terminal = True
            m.error = e.error
        return self._encoder.feed(e)

    def close(self) -> list[bytes]:
        if self.terminal:
            return []
        self.meter.error = _truncated()
        return self._encoder.error(self.meter.error)

    def error(self, err: GatewayError) -> list[bytes]:
        self.meter.error = err
        return self._encoder.error(err)

    def keepalive(self) -> bytes:
        return self._encoder.keepalive()


#: per dialect: the bytes that make an event worth parsing in passthrough (usage, the end, an
#: error), and the one that shows a token (chat counts events instead: its second is the first token)
_RELAY_MARKERS: dict[str, tuple[tuple[bytes, ...], bytes]] = {
    "openai-chat": ((b'"usage":{', b'"usage": {', b"[DONE]", b'{"error"'), b""),
    "anthropic": ((b"message_start", b"message_delta", b"message_stop", b"event: error", b"event:error"),
                  b"content_block_delta"),
    "openai-responses": ((b"response.completed", b"response.incomplete", b"response.failed", b"event: error",
                          b"event:error"), b".delta"),
}


class PassthroughTranscoder:
    """Same dialect both sides: relay raw event bytes; read usage; hide what the client did not ask for."""

    def __init__(self, dialect: str, encoder: StreamEncoder, meter: StreamMeter, include_usage: bool = True) -> None:
        self._sse = SSEDecoder()
        self._encoder = encoder  # only for in-band errors and keep-alives
        self.meter = meter
        self.terminal = False
        self._include_usage = include_usage
        self._inspect = {
            "openai-chat": self._chat, "anthropic": self._anthropic, "openai-responses": self._responses,
        }[dialect]
        self._markers, self._token_marker = _RELAY_MARKERS[dialect]
        self._data_lines = dialect == "openai-chat"
        self._events = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Events that carry nothing we read are relayed as one run of bytes, unparsed; the
        rest (usage, the end, errors, the first token) go through `_inspect`."""
        out: list[bytes] = []
        for item in self._sse.feed_relay(data, self._markers, self._data_lines):
            if self.terminal:
                break
            if type(item) is bytes:
                out.append(item)
                if self._data_lines:
                    if self._events < 2:  # the second event is the first token; later ones are not counted
                        self._events += 1 if item.find(b"\n\n") + 2 == len(item) else 2
                        if self._events >= 2:
                            self.meter.token()
                elif not self.meter.seen_token and self._token_marker in item:
                    self.meter.token()
            elif self._inspect(item):  # type: ignore[arg-type]
                out.append(item.raw)  # type: ignore[union-attr]
        return out

    def _chat(self, sse: SSEEvent) -> bool:
        data = sse.data
        self._events += 1
        if data == "[DONE]":
            self.terminal = True
            return True
        if self._events == 2:
            self.meter.token()
        if '"usage"' in data:
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                return True
            u = usage_from_json(obj.get("usage")) if isinstance(obj, dict) else None
            if u is not None:
                self.meter.add_usage(u)
                if not self._include_usage and obj.get("choices") == []:
                    return False
        if data.startswith('{"error"'):
            self.meter.error = GatewayError(502, "the upstream reported an error mid-stream")
        return True

    def _anthropic(self, sse: SSEEvent) -> bool:
        name = sse.event
        if name == "message_start" or name == "message_delta":
            try:
                obj = orjson.loads(sse.data)
            except orjson.JSONDecodeError:
                return True
            u = obj.get("message", {}).get("usage") if name == "message_start" else obj.get("usage")
            if isinstance(u, dict):
                self.meter.add_usage(usage_from_anthropic(u))
            if name == "message_delta":
                self.meter.finish = (obj.get("delta") or {}).get("stop_reason")
        elif name == "content_block_delta":
            self.meter.token()
        elif name == "message_stop":
            self.terminal = True
        elif name == "error":
            self.terminal = True
            self.meter.error = GatewayError(502, "the upstream reported an error mid-stream")
        return True

    def _responses(self, sse: SSEEvent) -> bool:
        name = sse.event or ""
        if name in ("response.completed", "response.incomplete", "response.failed"):
            self.terminal = True
            try:
                obj = orjson.loads(sse.data)
            except orjson.JSONDecodeError:
                return True
            u = (obj.get("response") or {}).get("usage")
            if isinstance(u, dict):
                self.meter.add_usage(responses_usage_from_json(u))
            if name == "response.failed":
                self.meter.error = GatewayError(502, "the upstream response failed")
        elif name == "error":
            self.terminal = True
            self.meter.error = GatewayError(502, "the upstream reported an error mid-stream")
        elif name.endswith(".delta"):
            self.meter.token()
        return True

    def close(self) -> list[bytes]:
        if self.terminal:
            return []
        self.meter.error = _truncated()
        return self._encoder.error(self.meter.error)

    def error(self, err: GatewayError) -> list[bytes]:
        self.meter.error = err
        return self._encoder.error(err)

    def keepalive(self) -> bytes:
        return self._encoder.keepalive()
