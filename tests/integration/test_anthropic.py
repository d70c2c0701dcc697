"""Anthropic Messages both ways, end to end with the official SDKs and strict fakes.

- the anthropic SDK -> fproxy -> OpenAI-dialect fake (translation);
- the openai SDK -> fproxy -> Anthropic-dialect fake (translation; the fake validates like Anthropic);
- the anthropic SDK -> fproxy -> Anthropic fake (passthrough: bytes unchanged but for `model`).
"""
from __future__ import annotations

import base64
import json

import anthropic
import httpx
import openai
import pytest
import pytest_twisted
from twisted.internet import threads

from tests.fakes.upstream import start_fake, start_image_server
from tests.integration.harness import provider, start_gateway

CK = "sk-client-anth"
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
OAI_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER}}]
ANT_TOOLS = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER}]


def _t(fn, *a, **kw):
    return threads.deferToThread(fn, *a, **kw)


def _ant(gw):
    return anthropic.Anthropic(base_url=gw.url, api_key=CK, max_retries=0, timeout=20)


def _oai(gw):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=CK, max_retries=0, timeout=20)


async def _gateway(reactor, providers, routes=(), **extra):
    return await start_gateway(reactor, {"access": {"keys": [CK]}, "provider": providers, "route": list(routes),
                                         **extra})


# ------------------------------------------------------------------ anthropic client -> openai upstream
@pytest_twisted.ensureDeferred
async def test_anthropic_client_to_openai_upstream(reactor):
    fake = await start_fake(reactor, "openai-chat", keys=["sk-up"])
    gw = await _gateway(reactor, [provider("oai", "openai-chat", fake.base_url, ["sk-up"])],
                        [{"model": "claude-sonnet-*", "to": ["oai:gpt-4o"]}, {"model": "slot-x", "to": ["oai:gpt-4o"]}])
    c = _ant(gw)
    try:
        # text, system blocks, multi-turn (consecutive user turns merged), usage with cached tokens
        fake.script({"text": "Bonjour", "usage": {"input": 100, "output": 7, "cache_read": 40}})
        m = await _t(c.messages.create, model="claude-sonnet-4-5", max_tokens=300,
                     system=[{"type": "text", "text": "Terse."}],
                     messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello."},
                               {"role": "user", "content": "French?"}], stop_sequences=["END"],
                     metadata={"user_id": "u-1"})
        assert m.content[0].text == "Bonjour" and m.stop_reason == "end_turn"
        assert (m.usage.input_tokens, m.usage.cache_read_input_tokens, m.usage.output_tokens) == (100, 40, 7)
        body = fake.requests[-1].body
        assert body["model"] == "gpt-4o" and body["max_tokens"] == 300 and body["stop"] == ["END"]
        assert body["user"] == "u-1"
        assert [(x["role"], x["content"]) for x in body["messages"]] == [
            ("system", "Terse."), ("user", "hi"), ("assistant", "Hello."), ("user", "French?")]

        # max_tokens stop reason
        fake.script({"text": "cut", "finish": "length"})
        m = await _t(c.messages.create, model="claude-sonnet-4-5", max_tokens=5,
                     messages=[{"role": "user", "content": "long story"}])
        assert m.stop_reason == "max_tokens"

        # parallel tool calls streamed with fragmented arguments -> tool_use blocks
        fake.script({"tool_calls": [{"id": "call_a", "name": "get_weather", "arguments": {"city": "Lyon"}},
                                    {"id": "call_b", "name": "get_weather", "arguments": {"city": "Nice"}}],
                     "chunks": 4})

        def stream_tools():
            with c.messages.stream(model="claude-sonnet-4-5", max_tokens=200, tools=ANT_TOOLS,
                                   messages=[{"role": "user", "content": "Weather in Lyon and Nice?"}]) as s:
                events = [e.type for e in s]
                return events, s.get_final_message()

        events, final = await _t(stream_tools)
        uses = [b for b in final.content if b.type == "tool_use"]
        assert [(u.id, u.input) for u in uses] == [("call_a", {"city": "Lyon"}), ("call_b", {"city": "Nice"})]
        assert final.stop_reason == "tool_use" and "input_json" in events
        assert fake.requests[-1].body["tools"] == OAI_TOOLS

        # tool results go back as tool messages answering the calls
        fake.script({"text": "Sunny in both."})
        history = [{"role": "user", "content": "Weather in Lyon and Nice?"},
                   {"role": "assistant", "content": [u.model_dump(exclude_none=True) for u in uses]},
                   {"role": "user", "content": [
                       {"type": "tool_result", "tool_use_id": "call_a", "content": "sunny"},
                       {"type": "tool_result", "tool_use_id": "call_b", "content": [{"type": "text", "text": "sunny"}]},
                       {"type": "text", "text": "Summarise."}]}]
        m = await _t(c.messages.create, model="claude-sonnet-4-5", max_tokens=100, tools=ANT_TOOLS, messages=history)
        assert m.content[0].text == "Sunny in both."
        sent = fake.requests[-1].body["messages"]
        assert [x["role"] for x in sent] == ["user", "assistant", "tool", "tool", "user"]
        assert [x.get("tool_call_id") for x in sent[2:4]] == ["call_a", "call_b"]

        # count_tokens is estimated for a non-Anthropic upstream
        ct = await _t(c.messages.count_tokens, model="claude-sonnet-4-5",
                      messages=[{"role": "user", "content": "count me " * 40}])
        assert 40 < ct.input_tokens < 200

        # models in Anthropic format
        r = await _t(httpx.get, gw.url + "/v1/models", headers={"x-api-key": CK, "anthropic-version": "2023-06-01"})
        assert r.json()["data"] == [{"type": "model", "id": "slot-x", "display_name": "slot-x",
                                     "created_at": "1970-01-01T00:00:00Z",
                                     "max_input_tokens": 128000, "max_tokens": 16384}]  # gpt-4o's, from the catalogue
    finally:
        await gw.stop()
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_anthropic_client_errors_in_anthropic_format(reactor):
    fake = await start_fake(reactor, "openai-chat", keys=["sk-up"])
    bad = await start_fake(reactor, "openai-chat", keys=["sk-other"])
    gw = await _gateway(reactor, [provider("oai", "openai-chat", fake.base_url, ["sk-up"], models=["m-*"]),
                                  provider("bad", "openai-chat", bad.base_url, ["sk-up"], models=["b-*"]),
                                  provider("rl", "openai-chat", fake.base_url, ["sk-up"], models=["r-*"])])
    h = {"x-api-key": CK, "anthropic-version": "2023-06-01"}

    def post(body, **kw):
        return httpx.post(gw.url + "/v1/messages?beta=true", json=body, headers={**h, **kw}, timeout=10)

    msg = {"max_tokens": 20, "messages": [{"role": "user", "content": "x"}]}
    try:
        cases = []
        fake.script({"error": {"status": 400, "message": "bad thing"}})
        cases.append((await _t(post, {"model": "m-1", **msg}), 400, "invalid_request_error"))
        cases.append((await _t(post, {"model": "b-1", **msg}), 503, "overloaded_error"))  # upstream refuses our key
        fake.script({"error": {"status": 429, "retry_after": 7}})
        cases.append((await _t(post, {"model": "r-1", **msg}), 429, "rate_limit_error"))
        cases.append((await _t(post, {"model": "nope", **msg}), 404, "not_found_error"))
        cases.append((await _t(post, {"model": "m-1", "messages": "x", "max_tokens": 5}), 400,
                      "invalid_request_error"))
        r = await _t(httpx.post, gw.url + "/v1/messages", content=b"{", headers=h, timeout=10)
        cases.append((r, 400, "invalid_request_error"))
        for r, status, typ in cases:
            assert r.status_code == status, (status, r.text)
            assert r.json()["type"] == "error" and r.json()["error"]["type"] == typ, r.text
        assert cases[0][0].json()["error"]["message"] == "bad thing", "upstream 4xx messages are passed through"
        assert cases[2][0].headers["retry-after"] == "7"
        assert "upstream" in cases[1][0].json()["error"]["message"]

        # 529 overloaded
        fake.script({"error": {"status": 529, "message": "busy"}})
        r = await _t(post, {"model": "m-1", **msg})
        assert r.status_code == 503 and r.json()["error"]["type"] == "overloaded_error"

        # an upstream dropping mid-stream ends the Anthropic stream with an error event
        fake.script({"text": "a b c d e f", "chunks": 6, "drop_after": 3})
        r = await _t(post, {"model": "m-1", "stream": True, **msg})
        events = [blk.split("\n")[0] for blk in r.text.strip().split("\n\n")]
        assert events[0] == "event: message_start" and events[-1] == "event: error"
        assert "event: message_stop" not in events
        with pytest.raises(anthropic.APIStatusError):
            fake.script({"text": "a b c d e f", "chunks": 6, "drop_after": 3})

            def sdk_stream():
                with _ant(gw).messages.stream(model="m-1", max_tokens=20,
                                              messages=[{"role": "user", "content": "x"}]) as s:
                    return "".join(s.text_stream)

            await _t(sdk_stream)

        # HEAD / probes are tolerated
        r = await _t(httpx.head, gw.url + "/")
        assert r.status_code == 200
    finally:
        await gw.stop()
        await fake.stop()
        await bad.stop()


# ------------------------------------------------------------------ openai client -> anthropic upstream
@pytest_twisted.ensureDeferred
async def test_openai_client_to_anthropic_upstream(reactor):
    fake = await start_fake(reactor, "anthropic", keys=["sk-ant-up"])
    img_url, img_server = start_image_server(reactor, PNG, "image/png")
    gw = await _gateway(reactor, [provider("ant", "anthropic", fake.base_url, ["sk-ant-up"], models=["claude-*"],
                                           system_prefix=["You are served through fproxy."])],
                        images={"allow_private": True})
    c = _oai(gw)
    try:
        fake.script({"text": "A red pixel.", "usage": {"input": 50, "output": 5, "cache_read": 20, "cache_write": 10}})
        msgs = [{"role": "system", "content": "Describe images."},
                {"role": "user", "content": [{"type": "text", "text": "What are these?"},
                                             {"type": "image_url", "image_url": {"url": PNG_URL}},
                                             {"type": "image_url", "image_url": {"url": img_url}}]}]
        r = await _t(c.chat.completions.create, model="claude-sonnet-4-5", messages=msgs, user="u-9", stop=["###"])
        assert r.choices[0].message.content == "A red pixel." and r.choices[0].finish_reason == "stop"
        # OpenAI prompt_tokens include cached tokens; Anthropic input_tokens exclude them
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (80, 5)
        assert r.usage.prompt_tokens_details.cached_tokens == 20
        rec = fake.requests[-1]
        assert rec.headers["x-api-key"] == "sk-ant-up" and rec.headers["anthropic-version"]
        body = rec.body
        assert body["model"] == "claude-sonnet-4-5" and body["max_tokens"] >= 1
        assert [b["text"] for b in body["system"]] == ["You are served through fproxy.", "Describe images."]
        assert body["stop_sequences"] == ["###"] and body["metadata"] == {"user_id": "u-9"}
        imgs = [b for b in body["messages"][0]["content"] if b["type"] == "image"]
        assert [i["source"]["type"] for i in imgs] == ["base64", "base64"], "URL images are fetched and inlined"
        assert all(base64.b64decode(i["source"]["data"]) == PNG for i in imgs)
        assert img_server.requests, "the gateway fetched the image URL"

        # streamed parallel tool calls: id and name only on a call's first delta, arguments in fragments
        fake.script({"tool_calls": [{"id": "toolu_01", "name": "get_weather", "arguments": {"city": "Paris"}},
                                    {"id": "toolu_02", "name": "get_weather", "arguments": {"city": "Oslo"}}],
                     "chunks": 4})

        def stream():
            return list(c.chat.completions.create(model="claude-sonnet-4-5", messages=[
                {"role": "user", "content": "Weather in Paris and Oslo?"}], tools=OAI_TOOLS, stream=True,
                stream_options={"include_usage": True}))

        chunks = await _t(stream)
        calls: dict[int, dict] = {}
        for ch in chunks:
            for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
                d = calls.setdefault(tc.index, {"ids": [], "name": None, "args": "", "n": 0})
                if tc.id:
                    d["ids"].append(tc.id)
                if tc.function and tc.function.name:
                    d["name"] = tc.function.name
                d["args"] += (tc.function.arguments or "") if tc.function else ""
                d["n"] += 1
        assert [(d["ids"], json.loads(d["args"])) for d in calls.values()] == [
            (["toolu_01"], {"city": "Paris"}), (["toolu_02"], {"city": "Oslo"})]
        assert max(d["n"] for d in calls.values()) >= 2
        finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        assert finishes == ["tool_calls"] and chunks[-1].usage is not None
        assert fake.requests[-1].body["tools"] == ANT_TOOLS

        # tool results answer the calls (the strict fake checks the pairing)
        fake.script({"text": "Both sunny."})
        hist = [{"role": "user", "content": "Weather in Paris and Oslo?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "toolu_01", "type": "function", "function": {"name": "get_weather",
                                                                       "arguments": '{"city":"Paris"}'}},
                    {"id": "toolu_02", "type": "function", "function": {"name": "get_weather",
                                                                       "arguments": '{"city":"Oslo"}'}}]},
                {"role": "tool", "tool_call_id": "toolu_01", "content": "sunny"},
                {"role": "tool", "tool_call_id": "toolu_02", "content": "sunny too"}]
        r = await _t(c.chat.completions.create, model="claude-sonnet-4-5", messages=hist, tools=OAI_TOOLS,
                     tool_choice="required")
        assert r.choices[0].message.content == "Both sunny."
        sent = fake.requests[-1].body
        assert sent["tool_choice"] == {"type": "any"}
        results = [b for b in sent["messages"][-1]["content"] if b["type"] == "tool_result"]
        assert [b["tool_use_id"] for b in results] == ["toolu_01", "toolu_02"]
        assert sent["messages"][1]["content"][0]["input"] == {"city": "Paris"}

        # streamed text and usage
        fake.script({"text": "one two three", "chunks": 3, "usage": {"input": 9, "output": 3}})

        def text_stream():
            return list(c.chat.completions.create(model="claude-sonnet-4-5", stream=True,
                                                  stream_options={"include_usage": True},
                                                  messages=[{"role": "user", "content": "count"}]))

        chunks = await _t(text_stream)
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "one two three"
        assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (9, 3)
    finally:
        await gw.stop()
        await fake.stop()
        await img_server()


@pytest_twisted.ensureDeferred
async def test_private_image_urls_refused_by_default(reactor):
    fake = await start_fake(reactor, "anthropic")
    img_url, img_server = start_image_server(reactor, PNG, "image/png")
    gw = await _gateway(reactor, [provider("ant", "anthropic", fake.base_url, ["k"], models=["claude-*"])])
    try:
        with pytest.raises(openai.BadRequestError) as e:
            await _t(_oai(gw).chat.completions.create, model="claude-x", messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": img_url}}]}])
        assert "private or local" in str(e.value)
        assert not img_server.requests and not fake.requests
    finally:
        await gw.stop()
        await fake.stop()
        await img_server()


@pytest_twisted.ensureDeferred
async def test_thinking_signature_round_trip_through_openai_client(reactor):
    fake = await start_fake(reactor, "anthropic")
    gw = await _gateway(reactor, [provider("ant", "anthropic", fake.base_url, ["k"], models=["claude-*"])],
                        thinking={"low": 1500})
    c = _oai(gw)
    try:
        fake.script({"thinking": "I should call the tool.",
                     "tool_calls": [{"id": "toolu_9", "name": "get_weather", "arguments": {"city": "Rome"}}]})
        q = {"role": "user", "content": "Weather in Rome?"}
        r = await _t(c.chat.completions.create, model="claude-sonnet-4-5", messages=[q], tools=OAI_TOOLS,
                     reasoning_effort="low", max_tokens=1000)
        th = fake.requests[-1].body["thinking"]
        assert th == {"type": "enabled", "budget_tokens": 1500} and fake.requests[-1].body["max_tokens"] > 1500
        msg = r.choices[0].message
        extra = msg.model_extra
        assert extra["reasoning_content"] == "I should call the tool."
        (block,) = extra["thinking_blocks"]
        assert block["signature"], "the signature is returned to the client"

        # the client sends the assistant turn back with its thinking_blocks: a valid signed block upstream
        fake.script({"thinking": "Now answer.", "text": "Sunny in Rome."})
        hist = [q, {"role": "assistant", "content": None, "reasoning_content": extra["reasoning_content"],
                    "thinking_blocks": extra["thinking_blocks"],
                    "tool_calls": [tc.model_dump() for tc in msg.tool_calls]},
                {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "sunny"}]
        r2 = await _t(c.chat.completions.create, model="claude-sonnet-4-5", messages=hist, tools=OAI_TOOLS,
                      reasoning_effort="low", max_tokens=1000)
        assert r2.choices[0].message.content == "Sunny in Rome.", "the fake rejects unsigned or forged thinking"
        asst = fake.requests[-1].body["messages"][1]["content"]
        assert asst[0] == {"type": "thinking", "thinking": "I should call the tool.", "signature": block["signature"]}

        # streamed thinking comes back as reasoning_content deltas (the -thinking suffix)
        fake.script({"thinking": "Streaming thoughts.", "text": "42", "chunks": 2})

        def stream():
            return list(c.chat.completions.create(model="claude-sonnet-4-5-thinking", stream=True,
                                                  messages=[{"role": "user", "content": "6x7?"}]))

        chunks = await _t(stream)
        reasoning = "".join((ch.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                            for ch in chunks if ch.choices)
        assert reasoning == "Streaming thoughts."
        assert fake.requests[-1].body["thinking"]["budget_tokens"] == 16000
        assert fake.requests[-1].body["model"] == "claude-sonnet-4-5"
    finally:
        await gw.stop()
        await fake.stop()


# ------------------------------------------------------------------ anthropic passthrough
@pytest_twisted.ensureDeferred
async def test_anthropic_passthrough_bytes_unchanged_but_model(reactor):
    fake = await start_fake(reactor, "anthropic")
    gw = await _gateway(reactor, [provider("ant", "anthropic", fake.base_url, ["k"])],
                        [{"model": "slot-opus", "to": ["ant:claude-opus-4-1"]}])
    try:
        body = {"model": "slot-opus", "max_tokens": 50, "stream": True,
                "messages": [{"role": "user", "content": "hello"}],
                "tools": [{"name": "t", "description": "d", "input_schema": {"type": "object"}}],
                "metadata": {"user_id": "x"}, "context_management": {"edits": []}}
        fake.script({"text": "relayed as is", "chunks": 3})
        r = await _t(httpx.post, gw.url + "/v1/messages?beta=true", json=body, timeout=10,
                     headers={"x-api-key": CK, "anthropic-version": "2023-06-01", "anthropic-beta": "some-beta-1"})
        rec = fake.requests[-1]
        assert rec.body == {**body, "model": "claude-opus-4-1"}, "only the top-level model is rewritten"
        assert rec.headers["anthropic-beta"] == "some-beta-1"
        assert r.content == bytes(rec.sent), "the client receives the upstream's event bytes unchanged"
        assert r.headers["content-type"].startswith("text/event-stream")
    finally:
        await gw.stop()
        await fake.stop()
