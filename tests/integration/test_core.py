"""The gateway core end to end: the official openai SDK -> fproxy -> strict fake upstreams."""
from __future__ import annotations

import json
import socket
import time

import httpx
import openai
import pytest
import pytest_twisted
from twisted.internet import threads

from tests.fakes.upstream import free_port, start_fake
from tests.integration.harness import provider, start_gateway

CK = "sk-client-core"
PNG_URL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElF"
           "TkSuQmCC")
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


def _client(gw, key=CK, **kw):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=20, **kw)


def _in_thread(fn, *a, **kw):
    return threads.deferToThread(fn, *a, **kw)


def ahttp(method, url, **kw):
    """httpx in a thread: the gateway serves from this test's reactor, which must keep running."""
    kw.setdefault("timeout", 10)
    return threads.deferToThread(httpx.request, method, url, **kw)


async def _env(reactor, fakes, providers, routes, **extra):
    conf = {"access": {"keys": [CK]}, "provider": providers, "route": routes, **extra}
    gw = await start_gateway(reactor, conf)
    return gw


@pytest_twisted.ensureDeferred
async def test_nonstream_and_stream_passthrough(reactor):
    fake = await start_fake(reactor, "openai-chat", keys=["sk-up-1"])
    gw = await _env(reactor, [fake], [provider("oai", "openai-chat", fake.base_url, ["sk-up-1"])],
                    [{"model": "my-gpt", "to": ["oai:gpt-4o-mini"]}])
    try:
        fake.script({"text": "Hello there", "usage": {"input": 11, "output": 3}})
        msgs = [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "hi"}]
        r = await _in_thread(_client(gw).chat.completions.create, model="my-gpt", messages=msgs, seed=7,
                             metadata={"model": "client-owned"}, store=False)
        assert r.choices[0].message.content == "Hello there"
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (11, 3)
        rec = fake.requests[-1]
        assert rec.body["model"] == "gpt-4o-mini"
        assert rec.body["messages"] == msgs and rec.body["seed"] == 7
        assert rec.body["metadata"] == {"model": "client-owned"}, "only the top-level model is rewritten"
        assert rec.headers["authorization"] == "Bearer sk-up-1"

        fake.script({"text": "one two three four", "chunks": 4, "usage": {"input": 5, "output": 4}})

        def stream():
            s = _client(gw).chat.completions.create(model="my-gpt", messages=msgs, stream=True)
            return [c for c in s]

        chunks = await _in_thread(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "one two three four"
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2
        assert all(c.usage is None for c in chunks), "usage chunk shown to a client that did not ask"
        sent = fake.requests[-1].body
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}

        fake.script({"text": "x y", "chunks": 2, "usage": {"input": 5, "output": 2}})

        def stream_usage():
            s = _client(gw).chat.completions.create(model="my-gpt", messages=msgs, stream=True,
                                                    stream_options={"include_usage": True})
            return [c for c in s]

        chunks = await _in_thread(stream_usage)
        assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 7
    finally:
        await gw.stop()
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_tools_and_images_pass_through(reactor):
    fake = await start_fake(reactor, "openai-chat")
    gw = await _env(reactor, [fake], [provider("oai", "openai-chat", fake.base_url, ["k"], models=["gpt-*"])], [])
    try:
        fake.script({"tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": {"city": "Oslo"}},
                                    {"id": "call_2", "name": "get_weather", "arguments": {"city": "Rome"}}]})
        msgs = [{"role": "user", "content": [{"type": "text", "text": "weather?"},
                                             {"type": "image_url", "image_url": {"url": PNG_URL}}]}]
        r = await _in_thread(_client(gw).chat.completions.create, model="gpt-4o", messages=msgs, tools=TOOLS)
        calls = r.choices[0].message.tool_calls
        assert [c.id for c in calls] == ["call_1", "call_2"] and r.choices[0].finish_reason == "tool_calls"
        assert json.loads(calls[1].function.arguments) == {"city": "Rome"}
        assert fake.requests[-1].body["messages"] == msgs and fake.requests[-1].body["tools"] == TOOLS

        fake.script({"tool_calls": [{"id": "call_9", "name": "get_weather", "arguments": {"city": "Oslo"}}]})

        def stream():
            return list(_client(gw).chat.completions.create(model="gpt-4o", messages=msgs, tools=TOOLS, stream=True))

        chunks = await _in_thread(stream)
        deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert deltas[0].id == "call_9" and deltas[0].function.name == "get_weather"
        assert all(d.id is None for d in deltas[1:]), "the call id belongs to the first delta only"
        assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Oslo"}
    finally:
        await gw.stop()
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_key_rotation_401_and_429(reactor):
    fake = await start_fake(reactor, "openai-chat", keys=["k-a", "k-b", "k-c"])
    gw = await _env(reactor, [fake], [provider("rot", "openai-chat", fake.base_url, ["k-a", "k-b", "k-c"]),
                                      provider("bad", "openai-chat", fake.base_url, ["k-revoked", "k-a"])],
                    [{"model": "rot", "to": ["rot:gpt-4o-mini"]}, {"model": "bad", "to": ["bad:gpt-4o-mini"]}])
    c = _client(gw)
    try:
        for i in range(6):
            await _in_thread(c.chat.completions.create, model="rot", messages=[{"role": "user", "content": f"q{i}"}])
        assert [r.key for r in fake.requests] == ["k-a", "k-b", "k-c"] * 2

        # 429 with Retry-After: that key leaves rotation, the call is retried on another key, unseen
        fake.requests.clear()
        fake.script({"error": {"status": 429, "retry_after": 30}})
        for i in range(4):
            r = await _in_thread(c.chat.completions.create, model="rot", messages=[{"role": "user", "content": "x"}])
            assert r.choices[0].message.content == "Echo: x"
        limited = fake.requests[0].key
        assert fake.requests[0].status == 429
        assert limited not in [r.key for r in fake.requests[1:]] and len(fake.requests) == 5

        # 401: the revoked key is taken out of rotation for good; the client never sees it
        fake.requests.clear()
        for i in range(3):
            r = await _in_thread(c.chat.completions.create, model="bad", messages=[{"role": "user", "content": "y"}])
            assert r.choices[0].message.content == "Echo: y"
        keys = [(r.key, r.status) for r in fake.requests]
        assert keys[0] == ("k-revoked", 401) and all(k == "k-a" for k, _ in keys[1:]) and len(keys) == 4
    finally:
        await gw.stop()
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_fallback_targets_and_no_retry_on_client_mistakes(reactor):
    f1 = await start_fake(reactor, "openai-chat")
    f2 = await start_fake(reactor, "openai-chat")
    dead = free_port()
    gw = await _env(reactor, [f1, f2], [provider("p1", "openai-chat", f1.base_url, ["k1"]),
                                        provider("p2", "openai-chat", f2.base_url, ["k2"]),
                                        provider("dead", "openai-chat", f"http://127.0.0.1:{dead}/v1", ["k3"])],
                    [{"model": "fb", "to": ["p1:gpt-a", "p2:gpt-b"]}, {"model": "fbdead", "to": ["dead:x", "p2:gpt-b"]}])
    c = _client(gw)
    try:
        f1.script({"error": {"status": 500}})
        r = await _in_thread(c.chat.completions.create, model="fb", messages=[{"role": "user", "content": "a"}])
        assert r.choices[0].message.content == "Echo: a"
        assert f1.requests[-1].status == 500 and f2.requests[-1].body["model"] == "gpt-b"

        r = await _in_thread(c.chat.completions.create, model="fbdead", messages=[{"role": "user", "content": "b"}])
        assert r.choices[0].message.content == "Echo: b"

        # the client's own mistake (a 400 from the upstream) is passed through, not retried elsewhere
        n1, n2 = len(f1.requests), len(f2.requests)
        with pytest.raises(openai.BadRequestError) as e:
            await _in_thread(c.chat.completions.create, model="fb", messages=[{"role": "tool", "content": "x",
                                                                               "tool_call_id": "nope"}])
        assert "tool" in str(e.value).lower()
        assert len(f1.requests) == n1 + 1 and len(f2.requests) == n2
    finally:
        await gw.stop()
        await f1.stop()
        await f2.stop()


@pytest_twisted.ensureDeferred
async def test_client_errors_in_openai_format(reactor):
    fake = await start_fake(reactor, "openai-chat")
    gw = await _env(reactor, [fake], [provider("oai", "openai-chat", fake.base_url, ["k"], models=["gpt-*"])], [],
                    server={"max_request_bytes": 4096})

    def post(body, key=CK, content_type="application/json", path="/v1/chat/completions", method="POST"):
        h = {"authorization": f"Bearer {key}", "content-type": content_type} if key else {"content-type": content_type}
        return ahttp(method, gw.url + path, content=body, headers=h)

    try:
        cases = [
            (await post(b'{"model": "gpt-4o", "messages": ['), 400, "invalid_json"),
            (await post(b'[1, 2]'), 400, "invalid_json"),
            (await post(json.dumps({"model": "gpt-4o", "messages": []}).encode()), 400, None),
            (await post(json.dumps({"model": 5, "messages": [{"role": "user", "content": "x"}]}).encode()), 400, None),
            (await post(json.dumps({"model": "nope-model", "messages": [{"role": "user", "content": "x"}]}).encode()),
             404, "model_not_found"),
            (await post(b"{}", key=None), 401, "missing_api_key"),
            (await post(b"{}", key="sk-wrong"), 401, "invalid_api_key"),
            (await post(b"x" * 5000), 413, "request_too_large"),
            (await post(b"", path="/v1/chat/completions", method="GET"), 405, "method_not_allowed"),
            (await post(b"", path="/v1/nothing-here", method="GET"), 404, "not_found"),
        ]
        for r, status, code in cases:
            assert r.status_code == status, (status, r.text)
            err = r.json()["error"]
            assert err["message"] and err["type"]
            if code:
                assert err["code"] == code, r.text
            assert r.headers["x-request-id"].startswith("req_")
            assert float(r.headers["x-fproxy-overhead-ms"]) >= 0
        assert fake.requests == [], "nothing may reach the upstream"

        # chunked upload over the cap: refused before it is buffered
        def gen():
            for _ in range(10):
                yield b"y" * 1000

        r = await ahttp("POST", gw.url + "/v1/chat/completions", content=gen(),
                        headers={"authorization": f"Bearer {CK}"})
        assert r.status_code == 413
        ar = await ahttp("POST", gw.url + "/v1/messages", content=b"z" * 5000, headers={"x-api-key": CK})
        assert ar.status_code == 413 and ar.json()["type"] == "error"
    finally:
        await gw.stop()
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_upstream_timeout_is_504_and_midstream_drop_ends_stream(reactor):
    fake = await start_fake(reactor, "openai-chat")
    gw = await _env(reactor, [fake], [provider("slow", "openai-chat", fake.base_url, ["k"], models=["gpt-*"],
                                               timeouts={"connect": 2, "first_byte": 0.5, "idle": 0.5, "total": 20})],
                    [])
    c = _client(gw)
    try:
        fake.script({"first_byte_delay": 3})
        t0 = time.monotonic()
        with pytest.raises(openai.APIStatusError) as e:
            await _in_thread(c.chat.completions.create, model="gpt-4o", messages=[{"role": "user", "content": "a"}])
        assert e.value.status_code == 504 and time.monotonic() - t0 < 2.5

        fake.script({"text": "a b c d e f g h", "chunks": 8, "drop_after": 3, "chunk_delay": 0.05})
        r = await ahttp("POST", gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {CK}"},
                       json={"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "x"}]})
        lines = [ln for ln in r.text.split("\n\n") if ln]
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2][6:])["error"]["message"]
        assert all(json.loads(ln[6:]) for ln in lines[:-1]), "every line is whole JSON"
        assert '"finish_reason":"stop"' not in r.text

        fake.script({"text": "a b c", "chunks": 3, "stall": 1})
        t0 = time.monotonic()
        r = await ahttp("POST", gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {CK}"},
                       json={"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "x"}]})
        assert time.monotonic() - t0 < 3 and "upstream_timeout" in r.text and r.text.endswith("data: [DONE]\n\n")
    finally:
        await gw.stop()
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_client_disconnect_reaches_upstream_within_a_second(reactor):
    fake = await start_fake(reactor, "openai-chat")
    gw = await _env(reactor, [fake], [provider("oai", "openai-chat", fake.base_url, ["k"], models=["gpt-*"])], [])
    try:
        fake.script({"text": "tick " * 200, "chunks": 200, "chunk_delay": 0.05})

        def read_then_leave():
            with httpx.Client(timeout=10) as hc, hc.stream(
                    "POST", gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {CK}"},
                    json={"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
                for n, _ in enumerate(r.iter_lines()):
                    if n > 4:
                        break
            return reactor.seconds()

        left = await _in_thread(read_then_leave)
        rec = await fake.wait_for(lambda rs: rs and rs[-1].closed_by_peer_at, timeout=5)
        assert rec, "the upstream connection stayed open"
        assert fake.requests[-1].closed_by_peer_at - left < 1.0
    finally:
        await gw.stop()
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_backpressure_client_not_reading_pauses_upstream(reactor):
    """A client that reads nothing: the upstream's writes stop, whatever the stream's length.

    What is in flight is bounded by socket buffers (the kernel's, a few MB on loopback) and
    twisted's 64 kB transport buffers - never by the stream's length (here ~40 MB).
    """
    from twisted.internet.task import deferLater

    fake = await start_fake(reactor, "openai-chat")
    gw = await _env(reactor, [fake], [provider("oai", "openai-chat", fake.base_url, ["k"], models=["gpt-*"])], [])
    sock = socket.create_connection(("127.0.0.1", gw.port.getHost().port))
    try:
        fake.script({"long": {"count": 150000, "text": "x" * 200}})
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        body = json.dumps({"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "x"}]})
        sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CK}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
        await deferLater(reactor, 2.0, lambda: None)
        rec = fake.requests[-1]
        first = rec.bytes_written
        await deferLater(reactor, 1.0, lambda: None)
        assert rec.paused_count > 0, "the upstream was never paused"
        assert rec.bytes_written == first, "the upstream kept writing although the client reads nothing"
        assert rec.bytes_written < 15_000_000, f"{rec.bytes_written} bytes in flight for a client that reads nothing"
        # the client reads a little: the stream moves on, and stops again
        sock.settimeout(5)
        got = await _in_thread(sock.recv, 65536)
        assert got.startswith(b"HTTP/1.1 200")
        # the client leaves: the upstream connection is closed
        sock.close()
        closed = await fake.wait_for(lambda rs: rs[-1].closed_by_peer_at, timeout=5)
        assert closed
    finally:
        sock.close()
        await gw.stop()
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_models_health_info_cors_embeddings(reactor):
    fake = await start_fake(reactor, "openai-chat", keys=["sk-up-secret-1"])
    gw = await _env(reactor, [fake], [provider("oai", "openai-chat", fake.base_url, ["sk-up-secret-1"],
                                               models=["gpt-*", "text-embedding-3-small"])],
                    [{"model": "slot-a", "to": ["oai:gpt-4o"]}],
                    server={"cors_origins": ["https://ui.example.test"]})
    try:
        h = {"authorization": f"Bearer {CK}"}
        models = (await ahttp("GET", gw.url + "/v1/models", headers=h)).json()
        assert [m["id"] for m in models["data"]] == ["slot-a", "text-embedding-3-small"]
        assert (await ahttp("GET", gw.url + "/v1/models/slot-a", headers=h)).json()["id"] == "slot-a"
        assert (await ahttp("GET", gw.url + "/v1/models/zzz", headers=h)).status_code == 404
        ant = (await ahttp("GET", gw.url + "/v1/models", headers={**h, "anthropic-version": "2023-06-01"})).json()
        assert ant["data"][0]["type"] == "model" and "has_more" in ant
        health = await ahttp("GET", gw.url + "/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        info = await ahttp("GET", gw.url + "/api/info", headers=h)
        assert info.status_code == 200 and "sk-up-secret-1" not in info.text and CK not in info.text
        assert info.json()["providers"][0]["keys"] == {"healthy": 1, "cooling": 0, "disabled": 0}
        pre = await ahttp("OPTIONS", gw.url + "/v1/chat/completions",
                            headers={"origin": "https://ui.example.test", "access-control-request-method": "POST",
                                     "access-control-request-headers": "authorization, content-type"})
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == "https://ui.example.test"
        assert "authorization" in pre.headers["access-control-allow-headers"]
        other = await ahttp("GET", gw.url + "/health", headers={"origin": "https://evil.example.test"})
        assert "access-control-allow-origin" not in other.headers
        emb = await _in_thread(_client(gw).embeddings.create, model="text-embedding-3-small", input=["a", "b"])
        assert len(emb.data) == 2 and fake.requests[-1].path.endswith("/embeddings")
    finally:
        await gw.stop()
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_provider_concurrency_queue_full_is_429(reactor):
    fake = await start_fake(reactor, "openai-chat")
    gw = await _env(reactor, [fake], [provider("oai", "openai-chat", fake.base_url, ["k"], models=["gpt-*"],
                                               max_concurrency=1, queue_size=1)], [])
    try:
        fake.script({"first_byte_delay": 1.0, "times": 3})
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "q"}]}

        def one():
            return httpx.post(gw.url + "/v1/chat/completions", json=body,
                              headers={"authorization": f"Bearer {CK}"}, timeout=10)

        from twisted.internet.defer import gatherResults

        rs = await gatherResults([_in_thread(one) for _ in range(3)])
        codes = sorted(r.status_code for r in rs)
        assert codes == [200, 200, 429], codes
        limited = next(r for r in rs if r.status_code == 429)
        assert limited.headers.get("retry-after") and limited.json()["error"]["code"] == "queue_full"
    finally:
        await gw.stop()
        await fake.stop()
