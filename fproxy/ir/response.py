"""Canonical (non-streamed) response and usage."""
from __future__ import annotations

from typing import Literal

from attrs import frozen

from fproxy.ir.request import Part

FinishReason = Literal[
    "stop", "length", "tool_calls", "content_filter", "stop_sequence", "pause_turn", "refusal"
]


@frozen
class Usage:
    """Token counts with OpenAI's meaning.

    ``prompt_tokens`` counts *all* input, cache reads and cache writes included
    (Anthropic's ``input_tokens`` excludes them: codecs add/subtract).
    ``completion_tokens`` includes ``reasoning_tokens``.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def merge(self, other: Usage) -> Usage:
        """Later non-zero figures win (Anthropic sends input at start, output at the end)."""
        return Usage(
            prompt_tokens=other.prompt_tokens or self.prompt_tokens,
            completion_tokens=other.completion_tokens or self.completion_tokens,
            cache_read_tokens=other.cache_read_tokens or self.cache_read_tokens,
            cache_write_tokens=other.cache_write_tokens or self.cache_write_tokens,
            reasoning_tokens=other.reasoning_tokens or self.reasoning_tokens,
        )


@frozen
class ChatResponse:
    id: str
    model: str
    parts: tuple[Part, ...]  # TextPart, ThinkingPart, RedactedThinkingPart, ToolCallPart
    finish_reason: FinishReason = "stop"
    stop_sequence: str | None = None
    usage: Usage | None = None
    created: int = 0
