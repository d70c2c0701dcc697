"""Canonical stream events -> one canonical response (for a non-stream client served from a stream)."""
from __future__ import annotations

from fproxy.ir import events as ev
from fproxy.ir.request import Part, RedactedThinkingPart, TextPart, ThinkingPart, ToolCallPart
from fproxy.ir.response import ChatResponse, FinishReason, Usage


def collect_events(events: list[ev.Event]) -> ChatResponse:
    parts: list[Part] = []
    text: list[str] = []
    thinking: list[str] = []
    signature: str | None = None
    calls: dict[int, list[str]] = {}
    order: list[int] = []
    rid, model = "", ""
    finish: FinishReason = "stop"
    stop_seq: str | None = None
    usage: Usage | None = None

    def flush_text() -> None:
        if text:
            parts.append(TextPart("".join(text)))
            text.clear()

    def flush_thinking() -> None:
        nonlocal signature
        if thinking or signature:
            parts.append(ThinkingPart("".join(thinking), signature))
            thinking.clear()
            signature = None

    for e in events:
        if isinstance(e, ev.MessageStart):
            rid, model = e.id, e.model
            if e.usage:
                usage = e.usage
        elif isinstance(e, ev.TextDelta):
            flush_thinking()
            text.append(e.text)
        elif isinstance(e, ev.ThinkingDelta):
            flush_text()
            thinking.append(e.text)
        elif isinstance(e, ev.SignatureDelta):
            signature = e.signature
        elif isinstance(e, ev.RedactedThinking):
            flush_text()
            flush_thinking()
            parts.append(RedactedThinkingPart(e.data))
        elif isinstance(e, ev.ToolCallStart):
            flush_text()
            flush_thinking()
            calls[e.index] = [e.id, e.name, ""]
            order.append(e.index)
        elif isinstance(e, ev.ToolArgsDelta):
            if e.index in calls:
                calls[e.index][2] += e.fragment
        elif isinstance(e, ev.UsageEvent):
            usage = usage.merge(e.usage) if usage else e.usage
        elif isinstance(e, ev.Finish):
            finish, stop_seq = e.reason, e.stop_sequence
        elif isinstance(e, ev.StreamError):
            raise e.error
    flush_thinking()
    flush_text()
    for i in order:
        cid, name, args = calls[i]
        parts.append(ToolCallPart(cid, name, args or "{}"))
    return ChatResponse(id=rid, model=model, parts=tuple(parts), finish_reason=finish, stop_sequence=stop_seq,
                        usage=usage)
