"""The fake upstream's answers: fixed OpenAI and Anthropic bodies, static and paced SSE streams.

Shared by the nginx config generator (static files), the paced server (frames built on the
fly) and the sanity checks (what a correct relay must hand back).  No ``$`` anywhere: nginx
would read it as a variable.
"""
from __future__ import annotations

import json

CHAT_TEXT = "Hello from the bench upstream. This answer is fixed."
CREATED = 1700000000


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def stream_words(n: int) -> list[str]:
    """The text pieces of an ``n``-chunk stream (first chunk: role only, last: finish only)."""
    return [f" w{i}" for i in range(1, max(n - 1, 1))]


def stream_text(n: int) -> str:
    return "".join(stream_words(n))


# ---------------------------------------------------------------- OpenAI chat
def openai_json(model: str = "gpt-bench") -> bytes:
    return _dumps({
        "id": "chatcmpl-bench0001", "object": "chat.completion", "created": CREATED, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": CHAT_TEXT},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 11, "total_tokens": 23},
        "system_fingerprint": "fp_bench",
    })


def openai_chunk(delta: dict, finish: str | None = None, model: str = "gpt-stream") -> bytes:
    return b"data: " + _dumps({
        "id": "chatcmpl-bench0002", "object": "chat.completion.chunk", "created": CREATED, "model": model,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }) + b"\n\n"


def openai_usage_chunk(n: int, model: str = "gpt-stream") -> bytes:
    return b"data: " + _dumps({
        "id": "chatcmpl-bench0002", "object": "chat.completion.chunk", "created": CREATED, "model": model,
        "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n},
    }) + b"\n\n"


OPENAI_DONE = b"data: [DONE]\n\n"


def openai_frames(n: int) -> list[bytes]:
    """``n`` chunks (role, n-2 words, finish), then the usage chunk and ``[DONE]``."""
    frames = [openai_chunk({"role": "assistant", "content": ""})]
    frames += [openai_chunk({"content": w}) for w in stream_words(n)]
    frames.append(openai_chunk({}, "stop"))
    frames.append(openai_usage_chunk(n) + OPENAI_DONE)
    return frames


def openai_sse(n: int = 50) -> bytes:
    return b"".join(openai_frames(n))


# ---------------------------------------------------------------- Anthropic messages
def anthropic_json(model: str = "claude-bench") -> bytes:
    return _dumps({
        "id": "msg_bench0001", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": CHAT_TEXT}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 11, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0},
    })


def _event(name: str, data: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _dumps(data) + b"\n\n"


def anthropic_frames(n: int, model: str = "claude-stream") -> list[bytes]:
    """message_start, block start, n-2 text deltas, block stop, message_delta, message_stop."""
    frames = [_event("message_start", {"type": "message_start", "message": {
        "id": "msg_bench0002", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0}}}),
        _event("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}})]
    frames += [_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "text_delta", "text": w}})
               for w in stream_words(n)]
    frames.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    frames.append(_event("message_delta", {"type": "message_delta",
                                           "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                           "usage": {"output_tokens": n}}))
    frames.append(_event("message_stop", {"type": "message_stop"}))
    return frames


def anthropic_sse(n: int = 50) -> bytes:
    return b"".join(anthropic_frames(n))


# ---------------------------------------------------------------- client request bodies
USER_MESSAGE = "Say something short; this is a benchmark request of a typical small size."


def openai_request(model: str, stream: bool) -> bytes:
    body: dict = {"model": model, "messages": [{"role": "system", "content": "You are terse."},
                                               {"role": "user", "content": USER_MESSAGE}],
                  "max_tokens": 64, "temperature": 0.2}
    if stream:
        body["stream"] = True
    return _dumps(body)


def anthropic_request(model: str, stream: bool) -> bytes:
    body: dict = {"model": model, "max_tokens": 64, "system": "You are terse.",
                  "messages": [{"role": "user", "content": USER_MESSAGE}], "temperature": 0.2}
    if stream:
        body["stream"] = True
    return _dumps(body)


# ---------------------------------------------------------------- sanity checks
def parse_sse(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) pairs of an SSE body; comments skipped."""
    out: list[tuple[str | None, str]] = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, data = None, []
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data.append(line[5:].lstrip().decode())
        if data:
            out.append((name, "\n".join(data)))
    return out


def check_openai_json(raw: bytes, expect: str = CHAT_TEXT) -> str | None:
    """None when ``raw`` is a chat.completion carrying ``expect``; else what is wrong."""
    try:
        obj = json.loads(raw)
        got = obj["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        return f"not a chat.completion ({type(e).__name__}): {raw[:200]!r}"
    return None if got == expect else f"content {got!r} != {expect!r}"


def check_anthropic_json(raw: bytes, expect: str = CHAT_TEXT) -> str | None:
    try:
        obj = json.loads(raw)
        got = "".join(b.get("text", "") for b in obj["content"] if b.get("type") == "text")
        if obj.get("type") != "message":
            return f"type {obj.get('type')!r} != 'message'"
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return f"not an Anthropic message ({type(e).__name__}): {raw[:200]!r}"
    return None if got == expect else f"text {got!r} != {expect!r}"


def check_openai_sse(raw: bytes, n: int) -> str | None:
    events = parse_sse(raw)
    if not events or events[-1][1] != "[DONE]":
        return f"no final [DONE] ({len(events)} events): {raw[-200:]!r}"
    text = []
    for _, data in events[:-1]:
        try:
            obj = json.loads(data)
        except ValueError:
            return f"undecodable event {data[:100]!r}"
        for ch in obj.get("choices") or []:
            text.append((ch.get("delta") or {}).get("content") or "")
    got, want = "".join(text), stream_text(n)
    return None if got == want else f"text {got[:80]!r}... != {want[:80]!r}..."


def check_anthropic_sse(raw: bytes, n: int) -> str | None:
    events = parse_sse(raw)
    names = [e for e, _ in events]
    if "message_start" not in names or not names or names[-1] != "message_stop":
        return f"not an Anthropic stream (events {names[:4]}...{names[-2:]})"
    text = []
    for name, data in events:
        if name == "content_block_delta":
            d = json.loads(data).get("delta") or {}
            text.append(d.get("text") or "")
    got, want = "".join(text), stream_text(n)
    return None if got == want else f"text {got[:80]!r}... != {want[:80]!r}..."
