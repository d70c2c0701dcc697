"""The interfaces every dialect codec implements (pure code: no Twisted, no I/O).

A dialect module (``openai_chat``, ``anthropic``, ``openai_responses`` ...) exposes:

``INBOUND``: an `InboundCodec` - the gateway *serves* this dialect to clients.
``OUTBOUND``: an `OutboundCodec` - the gateway *calls* upstreams in this dialect.

Adding a dialect means writing one module and registering it in `fproxy.codecs.registry`.
"""
from __future__ import annotations

from typing import Any, Protocol

from fproxy.codecs.sse import SSEEvent
from fproxy.ir.errors import GatewayError
from fproxy.ir.events import Event
from fproxy.ir.request import ChatRequest
from fproxy.ir.response import ChatResponse


class StreamEncoder(Protocol):
    """Canonical events -> the client's SSE frames (stateful, one per stream)."""

    def feed(self, event: Event) -> list[bytes]:
        """Frames for one event: each item is one complete SSE event (ends in a blank line)."""

    def error(self, err: GatewayError) -> list[bytes]:
        """Frames that end the stream in-band after a failure (OpenAI: error chunk + [DONE])."""

    def keepalive(self) -> bytes:
        """A frame that keeps idle connections open without meaning anything to clients."""


class InboundCodec(Protocol):
    dialect: str

    def decode_request(self, body: dict[str, Any]) -> ChatRequest:
        """Client JSON -> canonical request; raises `GatewayError` (400) naming the field."""

    def encode_response(self, response: ChatResponse, model: str) -> dict[str, Any]:
        """Canonical response -> client JSON; ``model`` is the name the client asked for."""

    def stream_encoder(self, model: str, request: ChatRequest) -> StreamEncoder:
        """A fresh encoder for one stream answered to this client."""

    def error_body(self, err: GatewayError) -> dict[str, Any]:
        """The dialect's error JSON."""


class StreamDecoder(Protocol):
    """The upstream's SSE events -> canonical events (stateful, one per stream)."""

    def feed(self, event: SSEEvent) -> list[Event]:
        ...


class OutboundCodec(Protocol):
    dialect: str

    def encode_request(self, request: ChatRequest, upstream_model: str) -> dict[str, Any]:
        """Canonical request -> upstream JSON body (``request.stream`` says whether to stream)."""

    def decode_response(self, body: dict[str, Any]) -> ChatResponse:
        """Upstream JSON -> canonical response; raises `GatewayError` (502) when malformed."""

    def stream_decoder(self) -> StreamDecoder:
        ...

    def error_message(self, status: int, body: bytes) -> tuple[str, str | None]:
        """(message, code) out of the upstream's error body, for passing 4xx through."""
