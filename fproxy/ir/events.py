"""Canonical stream events.

An outbound stream decoder turns the upstream's SSE events into these; an inbound stream
encoder turns these into the client's SSE frames.  Order within one stream:

    MessageStart, then any of (TextDelta | ThinkingDelta | SignatureDelta | RedactedThinking
    | ToolCallStart | ToolArgsDelta | UsageEvent)*, then Finish, UsageEvent*, then Done.

``StreamError`` may replace the tail at any point.  ``ToolCallStart`` carries the call's
id and name exactly once; ``ToolArgsDelta`` carries argument fragments for that ``index``
(indices may interleave).  A decoder emits ``Done`` only when it saw the upstream's terminal
event; a stream that closes without it is truncated, an error.
"""
from __future__ import annotations

from typing import Union

from attrs import frozen

from fproxy.ir.errors import GatewayError
from fproxy.ir.response import FinishReason, Usage


@frozen
class MessageStart:
    id: str
    model: str
    usage: Usage | None = None


@frozen
class TextDelta:
    text: str


@frozen
class ThinkingDelta:
    text: str


@frozen
class SignatureDelta:
    signature: str


@frozen
class RedactedThinking:
    data: str


@frozen
class ToolCallStart:
    index: int
    id: str
    name: str


@frozen
class ToolArgsDelta:
    index: int
    fragment: str


@frozen
class UsageEvent:
    usage: Usage


@frozen
class Finish:
    reason: FinishReason
    stop_sequence: str | None = None


@frozen
class Done:
    pass


@frozen
class StreamError:
    error: GatewayError


Event = Union[
    MessageStart, TextDelta, ThinkingDelta, SignatureDelta, RedactedThinking, ToolCallStart,
    ToolArgsDelta, UsageEvent, Finish, Done, StreamError,
]
