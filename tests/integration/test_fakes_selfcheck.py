"""The fake upstreams answer like the real providers, validate like them, and record.

Each test starts fakes on loopback in the test's reactor and talks to them with treq or
with the real openai / anthropic SDK in a thread (a blocking SDK on the reactor thread
would deadlock against the fake it calls).
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anthropic
import openai
import pytest
import pytest_twisted
import treq
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import task, threads
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed

from tests.fakes.upstream import FakeUpstream, Record, free_port, start_fake, start_image_server
from tests.fakes.wire_common import sign_thinking

StartFake = Callable[..., Awaitable[FakeUpstream]]
USER = [{"role": "user", "content": "hello there"}]
ANTHROPIC_HEADERS = {"x-api-key": "sk-a", "anthropic-version": "2023-06-01"}


@pytest_twisted.async_yield_fixture
async def http(reactor: Any) -> AsyncIterator[HTTPClient]:
    """A treq client with its own pool, closed after the test."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    yield HTTPClient(Agent(reactor, pool=pool))
    await pool.closeCachedConnections()


@pytest_twisted.async_yield_fixture
async def fakes(reactor: Any) -> AsyncIterator[StartFake]:
    """start(dialect, keys) -> a listening fake, stopped after the test."""
    started: list[FakeUpstream] = []

    async def start(dialect: str = "openai-chat", keys: list[str] | None = None) -> FakeUpstream:
        fake = await start_fake(reactor, dialect=dialect, keys=keys)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        await fake.stop()


async def post(http: HTTPClient, url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    """POST JSON; return (status, response headers, body bytes)."""
    hdrs = {"content-type": "application/json", "authorization": "Bearer sk-a", **(headers or {})}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = await http.post(url, data=data, headers=hdrs, unbuffered=True)
    return resp.code, resp.headers, await treq.content(resp)


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) of every SSE event in a complete body."""
    out = []
    for block in raw.decode().split("\n\n"):
        name, data = None, []
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            out.append((name, "\n".join(data)))
    return out


class Reader(Protocol):
    """Collects a streamed body; can hang up after C{stop_after} SSE events."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.data, self.stop_after = b"", stop_after
        self.reason: Any = None
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.stop_after is not None and self.data.count(b"\n\n") >= self.stop_after:
            self.stop_after = None
            self.transport.stopProducing()

    def connectionLost(self, reason: Any) -> None:
        self.reason = reason
        self.done.callback(None)


async def stream_with(http: HTTPClient, url: str, body: Any, reader: Reader,
                      headers: dict[str, str] | None = None) -> int:  # fmt: skip
    """POST a streaming request and feed its body to C{reader} until the connection ends."""
    hdrs = {"content-type": "application/json", "authorization": "Bearer sk-a", **(headers or {})}
    resp = await http.post(url, data=json.dumps(body).encode(), headers=hdrs, unbuffered=True)
    resp.deliverBody(reader)
    await reader.done
    return int(resp.code)


# ------------------------------------------------------------------ openai-chat


@pytest_twisted.ensureDeferred
async def test_openai_chat_sdk_answers_and_streams_with_usage(fakes: StartFake) -> None:
    fake = await fakes("openai-chat", keys=["sk-a", "sk-b"])
    fake.script({"text": "Hi there friend", "chunks": 3, "usage": {"input": 11, "output": 7, "cache_read": 2}})

    def call() -> tuple[Any, list[Any], list[Any]]:
        with openai.OpenAI(api_key="sk-b", base_url=fake.base_url, max_retries=0) as client:
            whole = client.chat.completions.create(model="gpt-4o", messages=USER)
            with_usage = list(client.chat.completions.create(
                model="gpt-4o", messages=USER, stream=True, stream_options={"include_usage": True}))
            without = list(client.chat.completions.create(model="gpt-4o", messages=USER, stream=True))
            return whole, with_usage, without

    whole, with_usage, without = await threads.deferToThread(call)
    assert whole.choices[0].message.content == "Hi there friend"
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (13, 7)
    assert whole.usage.prompt_tokens_details.cached_tokens == 2
    assert "".join(c.choices[0].delta.content or "" for c in with_usage if c.choices) == "Echo: hello there"
    assert [c.choices[0].delta.content for c in with_usage if c.choices][1:4] == ["Echo: ", "hello ", "there"]
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens >= 1
    assert all(c.usage is None for c in without)
    first = fake.requests[0]
    assert (first.key, first.status, first.outcome, first.path) == ("sk-b", 200, "completed", "/v1/chat/completions")
    assert first.body["messages"] == USER and first.headers["authorization"] == "Bearer sk-b"
    assert fake.requests[1].events_sent == 7 and fake.requests[1].bytes_written > 0


@pytest_twisted.ensureDeferred
async def test_openai_chat_tool_calls_round_trip(fakes: StartFake) -> None:
    fake = await fakes("openai-chat")
    fake.script({"tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}]},
                {"tool_calls": [{"id": "call_2", "name": "get_weather", "arguments": {"city": "Rome"}}]})

    def call() -> tuple[Any, Any, Any]:
        with openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0) as client:
            first = client.chat.completions.create(model="m", messages=USER)
            streamed = list(client.chat.completions.create(model="m", messages=USER, stream=True))
            calls = first.choices[0].message.tool_calls
            history = [*USER, {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls]},
                       {"role": "tool", "tool_call_id": "call_1", "content": "21C"}]
            second = client.chat.completions.create(model="m", messages=history)
            return first, streamed, second

    first, streamed, second = await threads.deferToThread(call)
    tc = first.choices[0].message.tool_calls[0]
    assert (tc.id, tc.function.name, json.loads(tc.function.arguments)) == ("call_1", "get_weather", {"city": "Paris"})
    assert first.choices[0].finish_reason == "tool_calls" and first.choices[0].message.content is None
    args = "".join(c.choices[0].delta.tool_calls[0].function.arguments for c in streamed
                   if c.choices and c.choices[0].delta.tool_calls)
    assert json.loads(args) == {"city": "Rome"}
    assert second.choices[0].message.content == "Echo: hello there"  # last *user* text
    assert fake.requests[2].outcome == "completed"


CHAT_REJECTIONS = [
    ({"model": "m", "messages": USER, "foo": 1}, 400, "Unrecognized request argument supplied: foo"),
    ({"model": "m"}, 400, "Missing required parameter: 'messages'"),
    ({"model": "m", "messages": []}, 400, "empty array"),
    ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, 400, "Invalid value: 'robot'"),
    ({"model": "m", "messages": [*USER, {"role": "tool", "tool_call_id": "c", "content": "x"}]}, 400,
     "must be a response to a preceeding message with 'tool_calls'"),
    ({"model": "m", "messages": [*USER, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "zz", "content": "x"}]}, 400, "'tool_call_id' of 'zz' not found"),
    ({"model": "m", "messages": [*USER, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}]}, 400,
     "expected a string, but got object"),
    ({"model": "m", "messages": USER, "stream_options": {"include_usage": True}}, 400,
     "'stream_options' parameter is only allowed when 'stream' is enabled"),
    (b"{not json", 400, "We could not parse the JSON body"),
]


@pytest.mark.parametrize(("body", "status", "message"), CHAT_REJECTIONS)
@pytest_twisted.ensureDeferred
async def test_openai_chat_rejects_like_openai(fakes: StartFake, http: HTTPClient, body: Any, status: int,
                                               message: str) -> None:  # fmt: skip
    fake = await fakes("openai-chat")
    fake.script({"text": "never used"})
    code, _, raw = await post(http, fake.base_url + "/chat/completions", body)
    answer = json.loads(raw)
    assert code == status and message in answer["error"]["message"]
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    rec = fake.requests[0]
    assert (rec.status, rec.outcome, rec.error) == (status, "error", answer)
    assert rec.behaviour is None  # a rejected request does not consume the script
    code, _, raw = await post(http, fake.base_url + "/chat/completions", {"model": "m", "messages": USER})
    assert json.loads(raw)["choices"][0]["message"]["content"] == "never used"


@pytest_twisted.ensureDeferred
async def test_openai_chat_auth(fakes: StartFake, http: HTTPClient) -> None:
    fake = await fakes("openai-chat", keys=["sk-good-key-123"])
    url = fake.base_url + "/chat/completions"
    code, _, raw = await post(http, url, {"model": "m", "messages": USER}, {"authorization": ""})
    assert code == 401 and "You didn't provide an API key" in json.loads(raw)["error"]["message"]
    assert fake.requests[0].key is None

    def call() -> Exception:
        with openai.OpenAI(api_key="sk-wrong-key-999", base_url=fake.base_url, max_retries=0) as client:
            try:
                client.chat.completions.create(model="m", messages=USER)
            except openai.AuthenticationError as e:
                return e
        raise AssertionError("accepted a bad key")

    e = await threads.deferToThread(call)
    assert e.body["code"] == "invalid_api_key" and "sk-*********-999" in e.body["message"]
    assert (fake.requests[1].key, fake.requests[1].status) == ("sk-wrong-key-999", 401)


@pytest_twisted.ensureDeferred
async def test_scripted_errors_times_and_bare_status(fakes: StartFake, http: HTTPClient) -> None:
    fake = await fakes("openai-chat")
    fake.script({"error": {"status": 429, "retry_after": 30}, "times": 2}, {"status": 502},
                {"text": "A", "times": 0})
    url, body = fake.base_url + "/chat/completions", {"model": "m", "messages": USER}
    for _ in range(2):
        code, headers, raw = await post(http, url, body)
        assert code == 429 and headers.getRawHeaders("retry-after") == ["30"]
        assert json.loads(raw)["error"]["code"] == "rate_limit_exceeded"
    code, _, raw = await post(http, url, body)
    assert (code, raw) == (502, b"")
    for _ in range(3):
        code, _, raw = await post(http, url, body)
        assert json.loads(raw)["choices"][0]["message"]["content"] == "A"
    assert [r.status for r in fake.requests] == [429, 429, 502, 200, 200, 200]
    assert [r.outcome for r in fake.requests][:3] == ["error"] * 3


@pytest_twisted.ensureDeferred
async def test_garbage_answers(fakes: StartFake, http: HTTPClient) -> None:
    fake = await fakes("openai-chat")
    fake.script({"garbage": True}, {"garbage": True})
    code, headers, raw = await post(http, fake.base_url + "/chat/completions", {"model": "m", "messages": USER})
    assert code == 200 and headers.getRawHeaders("content-type") == ["application/json"]
    with pytest.raises(ValueError):
        json.loads(raw)
    code, _, raw = await post(http, fake.base_url + "/chat/completions",
                              {"model": "m", "messages": USER, "stream": True})
    assert code == 200 and b"<html>" in raw


# ------------------------------------------------------------------ anthropic

WEATHER_TOOL = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {}}}
THINKING = {"type": "enabled", "budget_tokens": 1024}


@pytest_twisted.ensureDeferred
async def test_anthropic_sdk_thinking_tool_loop(fakes: StartFake) -> None:
    fake = await fakes("anthropic", keys=["sk-a"])
    fake.script({"thinking": "Need the weather.", "text": "Let me look.",
                 "tool_calls": [{"id": "toolu_1", "name": "get_weather", "arguments": {"city": "Paris"}}],
                 "usage": {"input": 50, "output": 20, "cache_read": 5, "cache_write": 3}})
    common = {"model": "claude-sonnet-4-5", "max_tokens": 2048, "thinking": THINKING, "tools": [WEATHER_TOOL]}

    def call() -> tuple[Any, list[Exception]]:
        errors = []
        with anthropic.Anthropic(api_key="sk-a", base_url=fake.base_url, max_retries=0) as client:
            with client.messages.stream(messages=USER, **common) as s:
                final = s.get_final_message()
            blocks = [b.model_dump(exclude_none=True) for b in final.content]
            result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "21C"}]}
            client.messages.create(messages=[*USER, {"role": "assistant", "content": blocks}, result], **common)
            forged = [{**blocks[0], "thinking": "edited"}, *blocks[1:]]
            for assistant in (forged, blocks[1:]):
                try:
                    client.messages.create(messages=[*USER, {"role": "assistant", "content": assistant}, result],
                                           **common)
                except anthropic.BadRequestError as e:
                    errors.append(e)
        return final, errors

    final, errors = await threads.deferToThread(call)
    thinking, text, tool = final.content
    assert (thinking.type, thinking.thinking, thinking.signature) == ("thinking", "Need the weather.",
                                                                      sign_thinking("Need the weather."))
    assert (text.text, tool.name, tool.input, final.stop_reason) == ("Let me look.", "get_weather",
                                                                     {"city": "Paris"}, "tool_use")
    u = final.usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens) == (50, 20, 5, 3)
    assert [r.status for r in fake.requests] == [200, 200, 400, 400]
    assert "Invalid `signature`" in errors[0].message and "Expected `thinking`" in errors[1].message
    assert fake.requests[1].body["messages"][2]["content"][0]["type"] == "tool_result"
    assert fake.requests[0].headers["anthropic-version"] >= "2023-06-01" and fake.requests[0].key == "sk-a"


def _msgs(*turns: tuple[str, Any]) -> list[dict[str, Any]]:
    return [{"role": r, "content": c} for r, c in turns]


ANTHROPIC_REJECTIONS = [
    ({}, {"anthropic-version": ""}, 400, "anthropic-version: header is required"),
    ({}, {"x-api-key": "", "authorization": ""}, 401, "x-api-key header is required"),
    ({"max_tokens": None}, {}, 400, "max_tokens: Field required"),
    ({"frobnicate": 1}, {}, 400, "frobnicate: Extra inputs are not permitted"),
    ({"messages": _msgs(("system", "x"), ("user", "hi"))}, {}, 400, 'Unexpected role "system"'),
    ({"messages": _msgs(("assistant", "x"), ("user", "hi"))}, {}, 400, 'first message must use the "user" role'),
    ({"messages": _msgs(("user", "a"), ("user", "b"))}, {}, 400, "roles must alternate"),
    ({"messages": _msgs(("user", [{"type": "text", "text": ""}]))}, {}, 400, "text content blocks must be non-empty"),
    ({"messages": _msgs(("user", "a"), ("assistant", "b"), ("user", [
        {"type": "tool_result", "tool_use_id": "toolu_x", "content": "r"}]))}, {}, 400, "unexpected `tool_use_id`"),
    ({"messages": _msgs(("user", "a"), ("assistant", [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]),
                        ("user", [{"type": "text", "text": "first"},
                                  {"type": "tool_result", "tool_use_id": "t1", "content": "r"}]))}, {}, 400,
     "tool_result blocks must come first"),
    ({"thinking": {"type": "enabled", "budget_tokens": 500}}, {}, 400, "greater than or equal to 1024"),
    ({"thinking": {"type": "enabled", "budget_tokens": 4096}}, {}, 400, "`max_tokens` must be greater"),
    ({"thinking": THINKING, "max_tokens": 2048, "temperature": 0.5}, {}, 400, "`temperature` may only be set to 1"),
]


@pytest.mark.parametrize(("override", "headers", "status", "message"), ANTHROPIC_REJECTIONS)
@pytest_twisted.ensureDeferred
async def test_anthropic_rejects_like_anthropic(fakes: StartFake, http: HTTPClient, override: dict[str, Any],
                                                headers: dict[str, str], status: int,
                                                message: str) -> None:  # fmt: skip
    fake = await fakes("anthropic")
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": USER, **override}
    body = {k: v for k, v in body.items() if v is not None}
    code, _, raw = await post(http, fake.base_url + "/v1/messages", body, {**ANTHROPIC_HEADERS, **headers})
    answer = json.loads(raw)
    assert code == status and answer["type"] == "error" and message in answer["error"]["message"]
    assert (fake.requests[0].status, fake.requests[0].outcome) == (status, "error")


@pytest_twisted.ensureDeferred
async def test_anthropic_stream_error_event_and_extras(fakes: StartFake, http: HTTPClient) -> None:
    fake = await fakes("anthropic")
    fake.script({"stream_error": {"after": 2, "type": "overloaded_error"}})
    body = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": USER, "stream": True}
    code, headers, raw = await post(http, fake.base_url + "/v1/messages", body, ANTHROPIC_HEADERS)
    events = sse_events(raw)
    assert code == 200 and headers.getRawHeaders("content-type") == ["text/event-stream; charset=utf-8"]
    assert [name for name, _ in events] == ["message_start", "content_block_start", "error"]
    assert json.loads(events[2][1])["error"]["type"] == "overloaded_error"
    code, _, raw = await post(http, fake.base_url + "/v1/messages/count_tokens",
                              {"model": "m", "messages": USER}, ANTHROPIC_HEADERS)  # fmt: skip
    assert code == 200 and json.loads(raw)["input_tokens"] > 0
    resp = await http.get(fake.base_url + "/v1/models", headers=ANTHROPIC_HEADERS)
    assert [m["id"] for m in (await resp.json())["data"]] == ["claude-sonnet-4-5", "claude-haiku-4-5"]


# ------------------------------------------------------------------ openai-responses


@pytest_twisted.ensureDeferred
async def test_responses_sdk_stream_reasoning_and_function_calls(fakes: StartFake) -> None:
    fake = await fakes("openai-responses")
    usage = {"input": 9, "output": 12, "reasoning": 4}
    fake.script({"thinking": "Pondering.", "text": "Done thinking", "usage": usage},
                {"tool_calls": [{"id": "call_9", "name": "lookup", "arguments": {"q": "x"}}]})
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}, "strict": False}

    def call() -> tuple[Any, list[str], Any, Any]:
        with openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0) as client:
            with client.responses.stream(model="gpt-5", input="hello there", reasoning={"summary": "auto"}) as s:
                kinds = [e.type for e in s]
                streamed = s.get_final_response()
            called = client.responses.create(model="gpt-5", input="go", tools=[tool])
            fc = called.output[0]
            follow = client.responses.create(model="gpt-5", tools=[tool], input=[
                {"role": "user", "content": "go"},
                {"type": "function_call", "call_id": fc.call_id, "name": fc.name, "arguments": fc.arguments},
                {"type": "function_call_output", "call_id": fc.call_id, "output": "42"}])
            return streamed, kinds, called, follow

    streamed, kinds, called, follow = await threads.deferToThread(call)
    assert streamed.output_text == "Done thinking" and streamed.output[0].summary[0].text == "Pondering."
    assert (streamed.usage.input_tokens, streamed.usage.output_tokens) == (9, 12)
    assert streamed.usage.output_tokens_details.reasoning_tokens == 4
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "response.reasoning_summary_text.delta" in kinds and "response.output_text.delta" in kinds
    fc = called.output[0]
    assert (fc.type, fc.call_id, json.loads(fc.arguments)) == ("function_call", "call_9", {"q": "x"})
    assert follow.output_text == "Echo: go"
    assert [r.outcome for r in fake.requests] == ["completed"] * 3


RESPONSES_REJECTIONS = [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "'tools[0].name'"),
    ({"max_tokens": 100}, "Unknown parameter: 'max_tokens'."),
    ({"messages": USER}, "Unknown parameter: 'messages'."),
    ({"max_output_tokens": 8}, "Expected a value >= 16"),
    ({"previous_response_id": "resp_123"}, "Previous response with id 'resp_123' not found."),
    ({"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]},
     "No tool call found for function call output with call_id call_x."),
]


@pytest.mark.parametrize(("override", "message"), RESPONSES_REJECTIONS)
@pytest_twisted.ensureDeferred
async def test_responses_rejects_like_openai(fakes: StartFake, http: HTTPClient, override: dict[str, Any],
                                            message: str) -> None:  # fmt: skip
    fake = await fakes("openai-responses")
    code, _, raw = await post(http, fake.base_url + "/responses", {"model": "gpt-5", "input": "hi", **override})
    assert code == 400 and message in json.loads(raw)["error"]["message"]
    assert fake.requests[0].outcome == "error"


# ------------------------------------------------------------------ timing, drops, stalls, backpressure


@pytest_twisted.ensureDeferred
async def test_delays_use_reactor_time(reactor: Any, fakes: StartFake, http: HTTPClient) -> None:
    fake = await fakes("openai-chat")
    fake.script({"first_byte_delay": 0.2}, {"chunk_delay": 0.05, "chunks": 3})
    url = fake.base_url + "/chat/completions"
    start = reactor.seconds()
    await post(http, url, {"model": "m", "messages": USER})
    assert reactor.seconds() - start >= 0.2
    start = reactor.seconds()
    _, _, raw = await post(http, url, {"model": "m", "messages": USER, "stream": True})
    assert reactor.seconds() - start >= 0.25  # 6 events, 5 gaps
    assert sse_events(raw)[-1] == (None, "[DONE]")


@pytest_twisted.ensureDeferred
async def test_drop_after(fakes: StartFake, http: HTTPClient) -> None:
    fake = await fakes("openai-chat")
    fake.script({"drop_after": 2}, {"drop_after": 0})
    url = fake.base_url + "/chat/completions"
    reader = Reader()
    assert await stream_with(http, url, {"model": "m", "messages": USER, "stream": True}, reader) == 200
    assert reader.reason.check(ResponseFailed) and reader.data.count(b"\n\n") == 2
    with pytest.raises(ResponseFailed):  # treq reports the connection closed before any answer
        await http.post(url, data=json.dumps({"model": "m", "messages": USER}).encode(),
                        headers={"authorization": "Bearer k"}, unbuffered=True)  # fmt: skip
    assert [(r.outcome, r.status, r.events_sent) for r in fake.requests] == [("dropped", 200, 2), ("dropped", None, 0)]
    assert all(r.closed_by_peer_at is None for r in fake.requests)


@pytest_twisted.ensureDeferred
async def test_stall_until_the_client_closes(reactor: Any, fakes: StartFake, http: HTTPClient) -> None:
    fake = await fakes("openai-chat")
    fake.script({"stall": 2})
    url = fake.base_url + "/chat/completions"
    resp = await http.post(url, data=json.dumps({"model": "m", "messages": USER, "stream": True}).encode(),
                           headers={"authorization": "Bearer k"}, unbuffered=True)  # fmt: skip
    reader = Reader()
    resp.deliverBody(reader)
    rec = await fake.wait_for(lambda recs: recs and recs[0].outcome == "stalled" and recs[0])
    await task.deferLater(reactor, 0.2, lambda: None)
    assert reader.data.count(b"\n\n") == 2 and rec.closed_by_peer_at is None and rec.finished_at is None
    closed_at = reactor.seconds()
    reader.transport.stopProducing()
    await rec.finished
    assert rec.outcome == "stalled" and rec.closed_by_peer_at >= closed_at


@pytest_twisted.ensureDeferred
async def test_non_stream_stall_and_delay_end_when_the_client_gives_up(fakes: StartFake, http: HTTPClient) -> None:
    fake = await fakes("openai-chat")
    fake.script({"stall": 0}, {"first_byte_delay": 30})
    for n in range(2):
        d = http.post(fake.base_url + "/chat/completions", data=json.dumps({"model": "m", "messages": USER}).encode(),
                      headers={"authorization": "Bearer k"}, unbuffered=True)  # fmt: skip
        rec = await fake.wait_for(lambda recs, n=n: len(recs) > n and recs[n].behaviour is not None and recs[n])
        d.cancel()  # before any header: treq aborts the connection
        with pytest.raises(Exception):  # noqa: B017 - the request's own cancellation error
            await d
        await rec.finished
        assert rec.status is None and rec.closed_by_peer_at is not None
    assert [r.outcome for r in fake.requests] == ["stalled", "client_closed"]


@pytest_twisted.ensureDeferred
async def test_openai_models_and_embeddings(fakes: StartFake, http: HTTPClient) -> None:
    fake = await fakes("openai-chat")
    resp = await http.get(fake.base_url + "/models", headers={"authorization": "Bearer k"})
    assert "gpt-4o" in [m["id"] for m in (await resp.json())["data"]]
    code, _, raw = await post(http, fake.base_url + "/embeddings", {"model": "e", "input": ["a", "b"], "dimensions": 4})
    answer = json.loads(raw)
    assert code == 200 and [len(d["embedding"]) for d in answer["data"]] == [4, 4]
    code, _, raw = await post(http, fake.base_url + "/nope", {})
    assert code == 404 and "Invalid URL (POST /v1/nope)" in json.loads(raw)["error"]["message"]


@pytest_twisted.ensureDeferred
async def test_client_closing_mid_stream_is_recorded(fakes: StartFake, http: HTTPClient) -> None:
    fake = await fakes("anthropic")
    fake.script({"chunks": 20, "chunk_delay": 0.02})
    reader = Reader(stop_after=3)
    body = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": USER, "stream": True}
    await stream_with(http, fake.base_url + "/v1/messages", body, reader, ANTHROPIC_HEADERS)
    rec: Record = await fake.requests[0].finished
    assert rec.outcome == "client_closed" and rec.closed_by_peer_at is not None
    assert 3 <= rec.events_sent < 10


class SlowClient(Protocol):
    """Sends one request, then reads only when told to."""

    def __init__(self, request: bytes) -> None:
        self.request, self.received = request, 0
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        self.transport.write(self.request)
        self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if data.endswith(b"0\r\n\r\n"):
            self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(None)


@pytest_twisted.ensureDeferred
async def test_long_stream_stops_writing_while_paused(reactor: Any, fakes: StartFake) -> None:
    fake = await fakes("openai-chat")
    count, unit = 3000, "x" * 4096
    fake.script({"long": {"count": count, "text": unit}})
    body = json.dumps({"model": "m", "messages": USER, "stream": True}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
    client = SlowClient(request)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", fake.port), client)
    rec = await fake.wait_for(lambda recs: recs and recs[0].paused_count and recs[0])
    # The kernel takes a little more as the client's window shrinks; then writing must stop.
    before = -1
    for _ in range(50):
        if rec.bytes_written == before:
            break
        before = rec.bytes_written
        await task.deferLater(reactor, 0.1, lambda: None)
    assert rec.bytes_written == before < count * len(unit) / 2  # no writes while paused
    client.transport.resumeProducing()
    await rec.finished
    await client.done
    assert rec.outcome == "completed" and rec.events_sent == count + 3
    assert client.received > rec.bytes_written  # body plus headers and chunk framing


@pytest_twisted.ensureDeferred
async def test_stop_aborts_connections_and_frees_the_port(reactor: Any, http: HTTPClient) -> None:
    fake = await start_fake(reactor, "openai-chat")
    fake.script({"stall": 1})
    reader = Reader()
    d = Deferred.fromCoroutine(stream_with(http, fake.base_url + "/chat/completions",
                                           {"model": "m", "messages": USER, "stream": True}, reader))  # fmt: skip
    await fake.wait_for(lambda recs: recs and recs[0].outcome == "stalled")
    await fake.stop()
    await d
    assert fake.requests[0].finished.called and fake.requests[0].closed_by_peer_at is None
    with pytest.raises(ConnectionRefusedError):
        await TCP4ClientEndpoint(reactor, "127.0.0.1", fake.port).connect(_NullFactory())
    with pytest.raises(ConnectionRefusedError):
        await TCP4ClientEndpoint(reactor, "127.0.0.1", free_port()).connect(_NullFactory())


class _NullFactory:
    def doStart(self) -> None: ...
    def doStop(self) -> None: ...
    def startedConnecting(self, connector: Any) -> None: ...

    def buildProtocol(self, addr: Any) -> Protocol:
        return Protocol()


@pytest_twisted.ensureDeferred
async def test_image_server(reactor: Any, http: HTTPClient) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
    url, stop = start_image_server(reactor, png, "image/png")
    try:
        resp = await http.get(url)
        assert await resp.content() == png and resp.headers.getRawHeaders("content-type") == ["image/png"]
        assert stop.requests == ["/image.png"]
    finally:
        await stop()


def test_resource_works_under_stubtreq_and_clock() -> None:
    clock = task.Clock()
    fake = FakeUpstream(clock, "openai-chat")
    fake.script({"first_byte_delay": 5, "text": "later"})
    stub = StubTreq(fake.resource())
    d = stub.post("http://fake/v1/chat/completions", json={"model": "m", "messages": USER},
                  headers={"authorization": "Bearer k"})  # fmt: skip
    got: list[Any] = []
    d.addCallback(got.append)
    stub.flush()
    assert not got
    clock.advance(5)
    stub.flush()
    resp = got[0]
    body = stub.json_content(resp)
    stub.flush()
    assert body.result["choices"][0]["message"]["content"] == "later" and fake.requests[0].outcome == "completed"
