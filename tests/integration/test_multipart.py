"""multipart/form-data chat requests: a `payload` JSON field plus files, appended to the last user message."""
from __future__ import annotations

import base64

import httpx
import pytest_twisted
from twisted.internet import threads

from tests.fakes.upstream import start_fake
from tests.integration.harness import provider, start_gateway

CK = "sk-client-mp"
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")


def _post(url, payload, files, **kw):
    parts = [("payload", (None, payload, "application/json"))] + files
    return threads.deferToThread(httpx.post, url + "/v1/chat/completions", files=parts,
                                 headers={"authorization": f"Bearer {CK}"}, timeout=10, **kw)


@pytest_twisted.ensureDeferred
async def test_files_reach_the_last_user_message_in_order(reactor):
    fake = await start_fake(reactor, "openai-chat")
    gw = await start_gateway(reactor, {"access": {"keys": [CK]},
                                       "provider": [provider("oai", "openai-chat", fake.base_url, ["k"],
                                                             models=["gpt-*"])]})
    try:
        payload = ('{"model": "gpt-4o", "messages": [{"role": "system", "content": "S"}, '
                   '{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"}, '
                   '{"role": "user", "content": "Describe."}]}')
        r = await _post(gw.url, payload, [("img", ("a.png", PNG, "image/png")),
                                          ("doc", ("notes.md", b"# Title\nbody", "text/markdown")),
                                          ("bin", ("blob.bin", b"\x00\x01\x02", "application/octet-stream"))])
        assert r.status_code == 200, r.text
        msgs = fake.requests[-1].body["messages"]
        assert msgs[:3] == [{"role": "system", "content": "S"}, {"role": "user", "content": "first"},
                            {"role": "assistant", "content": "ok"}]
        parts = msgs[3]["content"]
        assert parts[0] == {"type": "text", "text": "Describe."}
        assert parts[1] == {"type": "image_url",
                            "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()}}
        assert parts[2]["type"] == "text" and parts[2]["text"].startswith("File: notes.md (text/markdown)\n```\n")
        assert "# Title\nbody" in parts[2]["text"]
        assert parts[3]["text"] == "File: blob.bin (application/octet-stream, base64)\nAAEC"

        # no user message at all: one is created for the files
        r = await _post(gw.url, '{"model": "gpt-4o", "messages": [{"role": "system", "content": "S"}]}',
                        [("doc", ("a.txt", b"hello", "text/plain"))])
        assert r.status_code == 200, r.text
        last = fake.requests[-1].body["messages"][-1]
        assert last["role"] == "user" and "hello" in last["content"][0]["text"]

        # a multipart request without payload is a clear 400
        r = await _post(gw.url, "not json", [])
        assert r.status_code == 400 and r.json()["error"]["param"] == "payload"
    finally:
        await gw.stop()
        await fake.stop()
