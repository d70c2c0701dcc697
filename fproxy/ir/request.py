"""Canonical request form shared by every dialect codec.

Pure data, no I/O.  Decoders of every inbound dialect produce a `ChatRequest`; encoders of
every outbound dialect consume one.  The shape follows Anthropic's content-block model
(the richest of the dialects), with OpenAI's conventions for usage and arguments:

- ``system`` is separate from ``messages`` (OpenAI system/developer messages are hoisted).
- ``Message.role`` is ``"user"`` or ``"assistant"`` only.  Tool results are
  `ToolResultPart`s inside a user message, placed first (Anthropic's rule); the OpenAI
  encoder turns each into a ``tool`` message.
- Tool-call arguments are JSON *text* (what OpenAI carries); Anthropic codecs parse/dump.
"""
from __future__ import annotations

from typing import Any, Literal, Union

from attrs import field, frozen


@frozen
class TextPart:
    text: str
    cache_control: dict[str, Any] | None = None


@frozen
class ImagePart:
    """An image, inline (``data`` base64 + ``media_type``) or by ``url`` (http(s))."""

    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    detail: str | None = None
    cache_control: dict[str, Any] | None = None


@frozen
class DocumentPart:
    """A document (PDF or text): base64 ``data``, plain ``text``, or a ``url``."""

    media_type: str | None = None
    data: str | None = None
    text: str | None = None
    url: str | None = None
    name: str | None = None
    cache_control: dict[str, Any] | None = None


@frozen
class ThinkingPart:
    """Model reasoning; ``signature`` is opaque and only valid on the provider that made it."""

    text: str
    signature: str | None = None


@frozen
class RedactedThinkingPart:
    data: str


@frozen
class ToolCallPart:
    id: str
    name: str
    arguments: str  # JSON text, possibly invalid (model output)


@frozen
class ToolResultPart:
    call_id: str
    content: tuple[TextPart | ImagePart, ...] = ()
    is_error: bool = False
    name: str | None = None


Part = Union[
    TextPart, ImagePart, DocumentPart, ThinkingPart, RedactedThinkingPart, ToolCallPart, ToolResultPart
]


@frozen
class Message:
    role: Literal["user", "assistant"]
    parts: tuple[Part, ...]


@frozen
class Tool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(factory=dict)  # JSON Schema
    cache_control: dict[str, Any] | None = None


@frozen
class ToolChoice:
    """``mode``: auto | none | required | tool (then ``name`` is set)."""

    mode: Literal["auto", "none", "required", "tool"]
    name: str | None = None


@frozen
class Thinking:
    """Extended thinking / reasoning request.

    ``budget_tokens`` for budget-based providers (Anthropic, Gemini); ``effort`` for
    effort-based ones (OpenAI ``reasoning_effort``, Responses ``reasoning.effort``).
    ``summary`` is the Responses API's reasoning summary mode.
    """

    budget_tokens: int | None = None
    effort: str | None = None
    summary: str | None = None


@frozen
class ChatRequest:
    model: str
    messages: tuple[Message, ...]
    system: tuple[TextPart, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False  # an OpenAI client asked for the usage chunk
    thinking: Thinking | None = None
    user: str | None = None
    response_format: dict[str, Any] | None = None  # OpenAI chat shape: {"type": "json_schema", ...}
    parallel_tool_calls: bool | None = None
    metadata: dict[str, Any] | None = None
    # Sampling knobs of the OpenAI family with no canonical meaning elsewhere (seed,
    # presence_penalty, frequency_penalty, logit_bias, n, ...): OpenAI-family encoders
    # copy them, others drop them.
    extra: dict[str, Any] = field(factory=dict)
