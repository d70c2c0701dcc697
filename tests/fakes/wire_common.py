"""Dialect-neutral pieces of the fake upstream providers (pure: no Twisted, no I/O).

A *behaviour* is a plain dict telling a fake how to answer one request (see
L{tests.fakes.upstream} for the list of keys).  L{build_reply} turns a behaviour and the
request into a neutral L{Reply}; each ``wire_*`` module renders a L{Reply} in its provider's
real wire format, so every dialect shares one meaning for ``text``, ``chunks``, ``usage`` ...
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import secrets
import string
from collections.abc import Iterable, Iterator
from typing import Any

from attrs import define, field, frozen

# One secret for every fake: a thinking block signed by one fake verifies on another, as
# signatures of one Anthropic organisation do.
SIGNING_SECRET = b"fproxy-tests-fake-upstream-thinking"

_ALNUM = string.ascii_letters + string.digits


class ApiError(Exception):
    """A provider-format error answer: raised by validators, written by the server."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}: {json.dumps(body)[:200]}")
        self.status = status
        self.body = body
        self.headers = headers or {}


def new_id(prefix: str, n: int = 24) -> str:
    """A random id that looks like the provider's (``chatcmpl-...``, ``toolu_01...``)."""
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(n))


def type_name(value: object) -> str:
    """JSON type name of a value, for OpenAI-style "expected X, got Y" messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def dumps(obj: object) -> str:
    """Compact JSON (one line: safe inside an SSE ``data:`` field)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def sse(data: object, event: str | None = None) -> bytes:
    """One SSE event, ``event:`` line optional, ended by the blank line."""
    payload = data if isinstance(data, str) else dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def estimate_tokens(obj: object) -> int:
    """Deterministic rough token count (~4 characters a token), never 0."""
    text = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, ensure_ascii=False)
    return max(1, (len(text) + 3) // 4)


def split_text(text: str, n: int) -> list[str]:
    """Split C{text} into C{n} non-empty pieces (fewer when the text is shorter)."""
    if not text:
        return []
    n = max(1, min(int(n), len(text)))
    size, extra = divmod(len(text), n)
    pieces, pos = [], 0
    for i in range(n):
        step = size + (1 if i < extra else 0)
        pieces.append(text[pos : pos + step])
        pos += step
    return pieces


def sign_thinking(thinking: str) -> str:
    """The fake's thinking signature: base64 of an HMAC of the text (opaque, like the real)."""
    mac = hmac.new(SIGNING_SECRET, thinking.encode(), hashlib.sha256).digest()
    return base64.b64encode(b"EqQB" + mac + mac[:16]).decode("ascii")


def signature_ok(thinking: object, signature: object) -> bool:
    """Whether C{signature} is this fake family's signature of C{thinking}."""
    if not isinstance(thinking, str) or not isinstance(signature, str):
        return False
    return hmac.compare_digest(sign_thinking(thinking), signature)


@frozen
class ToolCall:
    """One tool call to answer with; C{arguments} is the JSON text sent on the wire."""

    id: str
    name: str
    arguments: str

    def input_object(self) -> Any:
        """The arguments as an object (Anthropic wants an object; bad JSON gives {})."""
        try:
            value = json.loads(self.arguments)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


@frozen
class Usage:
    """Token counts in neutral terms; each dialect maps them to its own fields.

    C{input} excludes cache reads and writes; C{output} includes C{reasoning}.
    """

    input: int
    output: int
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0


@define
class Reply:
    """What the fake answers, before a dialect renders it.

    C{pieces} yields the text deltas of a stream (a generator for C{long} streams, so a
    huge stream is produced event by event).
    """

    model: str
    text: str
    pieces: Iterable[str]
    thinking: str | None
    tool_calls: list[ToolCall]
    usage: Usage
    finish: str  # "stop" | "length" | "tool_calls" (neutral; dialects map it)
    thinking_pieces: list[str] = field(factory=list)


def _tool_calls(beh: dict[str, Any], id_prefix: str) -> list[ToolCall]:
    calls = []
    for spec in beh.get("tool_calls") or []:
        args = spec.get("arguments", {})
        text = args if isinstance(args, str) else json.dumps(args, separators=(", ", ": "))
        calls.append(ToolCall(id=spec.get("id") or new_id(id_prefix), name=spec["name"], arguments=text))
    return calls


def _long_spec(beh: dict[str, Any]) -> tuple[int, str] | None:
    spec = beh.get("long")
    if spec is None or spec is False:
        return None
    if isinstance(spec, dict):
        return int(spec.get("count", 100)), str(spec.get("text", beh.get("text") or "x" * 64))
    return int(spec), str(beh.get("text") or "x" * 64)


def build_reply(
    beh: dict[str, Any],
    *,
    model: str,
    prompt: str,
    prompt_obj: object,
    id_prefix: str,
    thinking: str | None = None,
) -> Reply:
    """Turn a behaviour into a L{Reply} for a request whose last user text is C{prompt}.

    @param prompt_obj: the part of the request that counts as prompt tokens.
    @param thinking: the thinking / reasoning text to answer with (the dialect decides, from
        the behaviour and the request), or L{None}.
    """
    calls = _tool_calls(beh, id_prefix)
    long = _long_spec(beh)
    if long is not None:
        count, unit = long
        text = unit * count
        pieces: Iterable[str] = itertools.repeat(unit, count)
    else:
        text = beh["text"] if "text" in beh else ("" if calls else f"Echo: {prompt}")
        pieces = split_text(text, beh.get("chunks", 3))
    spec = beh.get("usage") or {}
    reasoning = spec.get("reasoning", estimate_tokens(thinking) if thinking else 0)
    produced = text + "".join(c.arguments for c in calls)
    output = spec.get("output", (estimate_tokens(produced) if produced else 1) + reasoning)
    usage = Usage(
        input=int(spec.get("input", estimate_tokens(prompt_obj))),
        output=int(output),
        cache_read=int(spec.get("cache_read", 0)),
        cache_write=int(spec.get("cache_write", 0)),
        reasoning=int(reasoning),
    )
    return Reply(
        model=beh.get("model") or model,
        text=text,
        pieces=pieces,
        thinking=thinking,
        tool_calls=calls,
        usage=usage,
        finish=beh.get("finish") or ("tool_calls" if calls else "stop"),
        thinking_pieces=split_text(thinking or "", beh.get("chunks", 3)),
    )


def fragments(text: str, n: int = 3) -> Iterator[str]:
    """Tool-argument fragments of a stream (arbitrary slices of the JSON text)."""
    yield from split_text(text, n)
