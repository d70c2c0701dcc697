"""Presets end to end: each preset's request as the (strict, loopback) upstream receives it.

``base_url`` is overridden to a fake (the presets' real URLs are checked in
tests/unit/providers/test_presets.py); everything else is the preset's: dialect, auth header,
extra headers, query, URL scheme (Azure deployments, Vertex rawPredict, Factory families),
stream-only upstreams and parameter stripping.
"""
from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.internet.endpoints import serverFromString
from twisted.web.server import Request

from fproxy.catalogue import max_output_for
from tests.fakes.loopback import Leaf, TrackingSite
from tests.fakes.upstream import FakeUpstream, start_fake
from tests.integration.harness import start_gateway

CK = "sk-client-presets"
KEY = "sk-upstream-preset"


def ahttp(method: str, url: str, **kw: Any) -> Any:
    kw.setdefault("timeout", 10)
    return threads.deferToThread(httpx.request, method, url, **kw)


def chat(gw: Any, model: str, **kw: Any) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": "preset probe"}], **kw}
    return ahttp("POST", gw.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {CK}"})


async def gateway(reactor: Any, providers: list[dict[str, Any]], routes: list[dict[str, Any]] = ()) -> Any:
    return await start_gateway(reactor, {"access": {"keys": [CK]}, "provider": providers, "route": list(routes)})


class Routed:
    """One loopback origin whose paths are handed to strict fakes (rewritten to the fakes' own paths).

    ``seen`` keeps each request's original path and query, ``bodies`` its original JSON body.
    """

    def __init__(self, routes: list[tuple[str, Callable[[Request, re.Match[str]], Any]]]) -> None:
        self.routes = [(re.compile(rx), handler) for rx, handler in routes]
        self.seen: list[tuple[str, dict[str, list[str]]]] = []
        self.bodies: list[Any] = []
        self.headers: list[dict[str, str]] = []  # original headers, lower-cased names
        self.base_url = ""
        self._site: TrackingSite | None = None
        self._port: Any = None

    async def start(self, reactor: Any) -> Routed:
        self._site = TrackingSite(Leaf(self._render), reactor)
        self._port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(self._site)
        self.base_url = f"http://127.0.0.1:{self._port.getHost().port}"
        return self

    def _render(self, request: Request) -> Any:
        path, _, query = request.uri.decode("latin-1").partition("?")
        self.seen.append((path, parse_qs(query)))
        self.headers.append({k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()})
        raw = request.content.read()
        request.content = io.BytesIO(raw)
        self.bodies.append(json.loads(raw) if raw else None)
        for rx, handler in self.routes:
            m = rx.match(path)
            if m:
                return handler(request, m)
        request.setResponseCode(404)
        return b"no route"

    async def stop(self) -> None:
        await self._port.stopListening()
        await self._site.close_all()


def forward(fake: FakeUpstream, path: str, body: Callable[[dict[str, Any], re.Match[str]], Any] | None = None,
            azure: bool = False) -> Callable[[Request, re.Match[str]], Any]:
    """A handler: the request goes to ``fake`` as ``path`` (query kept), its body optionally rewritten.

    ``azure``: Azure's checks first (``api-version`` required, else 404; the ``api-key`` header),
    then the key is handed to the fake the way it reads keys.
    """

    def handle(request: Request, m: re.Match[str]) -> Any:
        if azure:
            if b"api-version=" not in request.uri:
                request.setResponseCode(404)
                return b'{"error": {"code": "404", "message": "Resource not found"}}'
            key = request.getHeader(b"api-key")
            if key:
                request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer " + key])
        query = request.uri.partition(b"?")[2]
        request.uri = path.encode() + (b"?" + query if query else b"")
        request.path = path.encode()
        if body is not None:
            data = json.loads(request.content.read())
            request.content = io.BytesIO(json.dumps(body(data, m)).encode())
        return fake.resource().render(request)

    return handle


# ------------------------------------------------------------------ OpenAI-compatible presets
CHAT_PRESETS = {
    "openai": {}, "openrouter": {}, "xai": {}, "deepseek": {}, "moonshot": {}, "zhipu": {}, "groq": {},
    "mistral": {}, "together": {}, "perplexity": {}, "cerebras": {}, "gemini-openai": {}, "qwen": {},
    "github-copilot": {"copilot-integration-id": "vscode-chat", "editor-version": "vscode/1.99.3"},
    "gitlab-duo": {}, "ollama": {}, "vllm": {}, "lmstudio": {}, "litellm": {},
}


@pytest.mark.parametrize("preset", sorted(CHAT_PRESETS))
@pytest_twisted.ensureDeferred
async def test_openai_chat_preset(reactor, preset):
    fake = await start_fake(reactor, "openai-chat", keys=[KEY])
    gw = await gateway(reactor, [{"name": "up", "preset": preset, "keys": [KEY], "base_url": fake.base_url}],
                       [{"model": "probe", "to": ["up:gpt-4o-mini"]}])
    try:
        fake.script({"text": f"hello from {preset}"})
        r = await chat(gw, "probe", max_tokens=50)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == f"hello from {preset}"
        rec = fake.requests[-1]
        assert rec.path == "/v1/chat/completions" and rec.query == {}
        assert rec.headers["authorization"] == f"Bearer {KEY}" and "x-api-key" not in rec.headers
        assert CK not in json.dumps(rec.headers), "the client key must not reach the upstream"
        for name, value in CHAT_PRESETS[preset].items():
            assert rec.headers.get(name) == value, (name, rec.headers)
        assert rec.body["model"] == "gpt-4o-mini"
    finally:
        await gw.stop()
        await fake.stop()


@pytest.mark.parametrize("preset,auth", [("anthropic", "x-api-key"), ("minimax", "authorization")])
@pytest_twisted.ensureDeferred
async def test_anthropic_dialect_preset(reactor, preset, auth):
    fake = await start_fake(reactor, "anthropic", keys=[KEY])
    gw = await gateway(reactor, [{"name": "up", "preset": preset, "keys": [KEY], "base_url": fake.base_url}],
                       [{"model": "probe", "to": ["up:claude-haiku-4-5"]}])
    try:
        fake.script({"text": "hi from anthropic dialect"})
        r = await chat(gw, "probe")
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "hi from anthropic dialect"
        rec = fake.requests[-1]
        assert rec.path == "/v1/messages" and rec.headers["anthropic-version"] == "2023-06-01"
        value = KEY if auth == "x-api-key" else f"Bearer {KEY}"
        assert rec.headers[auth] == value
        assert ({"x-api-key", "authorization"} - {auth}).isdisjoint(rec.headers)
    finally:
        await gw.stop()
        await fake.stop()


# ------------------------------------------------------------------ Azure
@pytest.mark.parametrize("base_kind", ["resource", "deployment"])
@pytest_twisted.ensureDeferred
async def test_azure_deployment_url_api_version_and_api_key(reactor, base_kind):
    fake = FakeUpstream(reactor, "openai-chat", keys=[KEY])
    az = await Routed([(r"^/openai/deployments/[^/]+/chat/completions$", forward(fake, "/v1/chat/completions",
                                                                                          azure=True))]
                      ).start(reactor)
    base = az.base_url + ("/openai/deployments/my-dep" if base_kind == "deployment" else "")
    gw = await gateway(reactor, [{"name": "azure", "preset": "azure", "keys": [KEY], "base_url": base},
                                 {"name": "az2", "preset": "azure", "keys": [KEY], "base_url": az.base_url,
                                  "api_version": "2025-04-01-preview"}],
                       [{"model": "az-gpt", "to": ["azure:my-dep"]}, {"model": "az-new", "to": ["az2:other-dep"]}])
    try:
        fake.script({"text": "hello from azure"})
        r = await chat(gw, "az-gpt")
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "hello from azure"
        assert az.seen[-1] == ("/openai/deployments/my-dep/chat/completions", {"api-version": ["2024-10-21"]})
        assert az.headers[-1]["api-key"] == KEY and "authorization" not in az.headers[-1]
        r = await chat(gw, "az-new")
        assert r.status_code == 200, r.text
        assert az.seen[-1] == ("/openai/deployments/other-dep/chat/completions",
                               {"api-version": ["2025-04-01-preview"]})
    finally:
        await gw.stop()
        await az.stop()
        await fake.stop()


# ------------------------------------------------------------------ Vertex AI (Anthropic models)
VERTEX_PATH = "/v1/projects/my-proj/locations/us-east5/publishers/anthropic/models"


def _vertex_body(body: dict[str, Any], m: re.Match[str]) -> dict[str, Any]:
    """What Vertex checks, then the body as api.anthropic.com takes it (for the strict fake)."""
    assert "model" not in body, "Vertex takes the model from the URL"
    assert body.pop("anthropic_version") == "vertex-2023-10-16"
    assert ("stream" in body and body["stream"]) == (m.group(2) == "streamRawPredict")
    return {**body, "model": m.group(1)}


@pytest_twisted.ensureDeferred
async def test_vertex_raw_predict_with_a_command_credential(reactor):
    fake = FakeUpstream(reactor, "anthropic", keys=["ya29.vertex-token"])
    vx = await Routed([(re.escape(VERTEX_PATH) + r"/([^/:]+):(rawPredict|streamRawPredict)$",
                        forward(fake, "/v1/messages", _vertex_body))]).start(reactor)
    gw = await gateway(reactor, [{"name": "vertex", "preset": "vertex-anthropic", "base_url": vx.base_url + VERTEX_PATH,
                                  "credential": "command:echo ya29.vertex-token"}],
                       [{"model": "vx", "to": ["vertex:claude-sonnet-4-5@20250929"]}])
    try:
        fake.script({"text": "hello from vertex"})
        r = await chat(gw, "vx")
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "hello from vertex"
        assert vx.seen[-1][0] == f"{VERTEX_PATH}/claude-sonnet-4-5@20250929:rawPredict"
        rec = fake.requests[-1]
        assert rec.status == 200 and rec.headers["authorization"] == "Bearer ya29.vertex-token"
        assert "x-api-key" not in rec.headers

        fake.script({"text": "streamed from vertex", "chunks": 3})
        r = await ahttp("POST", gw.url + "/v1/messages", headers={"x-api-key": CK, "anthropic-version": "2023-06-01"},
                        json={"model": "vx", "max_tokens": 64, "stream": True,
                              "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and "event: message_stop" in r.text
        deltas = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
        text = "".join(d["delta"].get("text", "") for d in deltas if d.get("type") == "content_block_delta")
        assert text == "streamed from vertex"
        assert vx.seen[-1][0] == f"{VERTEX_PATH}/claude-sonnet-4-5@20250929:streamRawPredict"
        assert vx.bodies[-1]["max_tokens"] == 64 and "model" not in vx.bodies[-1]
    finally:
        await gw.stop()
        await vx.stop()
        await fake.stop()


# ------------------------------------------------------------------ ChatGPT / Codex backend
def _jwt(account: str) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part({'https://api.openai.com/auth': {'chatgpt_account_id': account}})}.sig"


@pytest_twisted.ensureDeferred
async def test_chatgpt_codex_streams_upstream_and_strips_what_it_refuses(reactor):
    token = _jwt("acct-42")
    fake = await start_fake(reactor, "openai-responses", keys=[token])
    gw = await gateway(reactor, [{"name": "codex", "preset": "chatgpt-codex", "keys": [token],
                                  "base_url": fake.base_url}], [{"model": "cx", "to": ["codex:gpt-5-codex"]}])
    try:
        fake.script({"text": "collected from a stream", "chunks": 4, "usage": {"input": 9, "output": 4}})
        r = await chat(gw, "cx", temperature=0.3, top_p=0.9, max_tokens=300)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["object"] == "chat.completion"
        assert out["choices"][0]["message"]["content"] == "collected from a stream"
        assert out["usage"]["prompt_tokens"] == 9 and out["usage"]["completion_tokens"] == 4
        rec = fake.requests[-1]
        assert rec.path == "/v1/responses" and rec.body["stream"] is True and rec.body["store"] is False
        assert not {"temperature", "top_p", "max_output_tokens"} & set(rec.body), rec.body
        assert rec.headers["authorization"] == f"Bearer {token}"
        assert rec.headers["chatgpt-account-id"] == "acct-42"
        assert rec.headers["openai-beta"] == "responses=experimental"

        fake.script({"text": "a b c", "chunks": 3})
        r = await ahttp("POST", gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {CK}"},
                        json={"model": "cx", "stream": True, "messages": [{"role": "user", "content": "x"}]})
        chunks = [json.loads(line[6:]) for line in r.text.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "a b c"
    finally:
        await gw.stop()
        await fake.stop()


# ------------------------------------------------------------------ Factory
FK = "fk-factory-test"
FACTORY_MODELS = ["claude-*", "bedrock*", "vertex*", "gpt-*", "o3*", "gemini-*", "glm-*", "kimi-*"]
# client model, route (a/chat/resp), upstream model, x-api-provider, 1M beta
FAMILIES = [
    ("claude-sonnet-4-5-20250929", "a", "claude-sonnet-4-5-20250929", None, True),
    ("claude-opus-4-1-20250805", "a", "claude-opus-4-1-20250805", None, False),
    ("bedrock-claude-3-5-sonnet-20241022", "a", "claude-3-5-sonnet-20241022", "bedrock_anthropic", False),
    ("vertex_claude-sonnet-4-20250514", "a", "claude-sonnet-4-20250514", "vertex_anthropic", True),
    ("gemini-2.5-pro", "chat", "gemini-2.5-pro", None, False),
    ("glm-4.6", "chat", "glm-4.6", None, False),
    ("kimi-k2-0905-preview", "chat", "kimi-k2-0905-preview", None, False),
    ("gpt-5-2025-08-07", "resp", "gpt-5-2025-08-07", None, False),
    ("o3", "resp", "o3", None, False),
]


@pytest_twisted.ensureDeferred
async def test_factory_families_reach_their_paths(reactor):
    fakes = {"a": FakeUpstream(reactor, "anthropic", keys=[FK]),
             "chat": FakeUpstream(reactor, "openai-chat", keys=[FK]),
             "resp": FakeUpstream(reactor, "openai-responses", keys=[FK])}
    fac = await Routed([(r"^/api/llm/a/v1/messages$", forward(fakes["a"], "/v1/messages")),
                        (r"^/api/llm/o/v1/chat/completions$", forward(fakes["chat"], "/v1/chat/completions")),
                        (r"^/api/llm/o/v1/responses$", forward(fakes["resp"], "/v1/responses"))]).start(reactor)
    gw = await gateway(reactor, [{"name": "factory", "preset": "factory", "keys": [FK], "base_url": fac.base_url,
                                  "models": FACTORY_MODELS}])
    paths = {"a": "/api/llm/a/v1/messages", "chat": "/api/llm/o/v1/chat/completions",
             "resp": "/api/llm/o/v1/responses"}
    try:
        for model, side, upstream, api_provider, beta in FAMILIES:
            fakes[side].script({"text": f"{model} answers"})
            r = await chat(gw, model, max_tokens=1_000_000)
            assert r.status_code == 200, (model, r.text)
            assert r.json()["choices"][0]["message"]["content"] == f"{model} answers"
            assert fac.seen[-1][0] == paths[side], model
            rec = fakes[side].requests[-1]
            assert rec.status == 200 and rec.body["model"] == upstream, (model, rec.body.get("model"))
            assert rec.headers["authorization"] == f"Bearer {FK}"
            assert rec.headers.get("x-api-provider") == api_provider, model
            assert ("context-1m-2025-08-07" in rec.headers.get("anthropic-beta", "")) is beta, model
            if side == "a":
                assert rec.headers["anthropic-version"] == "2023-06-01"
            cap = rec.body.get("max_tokens") or rec.body.get("max_output_tokens")
            assert cap == max_output_for(upstream), f"{model}: max_tokens clamped to the model's output limit"

        models = (await ahttp("GET", gw.url + "/v1/models", headers={"authorization": f"Bearer {CK}"})).json()
        by_id = {m["id"]: m for m in models["data"]}
        assert by_id["claude-sonnet-4-5-20250929"]["context_window"] == 1_000_000, "Factory sends the 1M beta"
        assert by_id["claude-opus-4-1-20250805"]["max_output_tokens"] == 32_000
        assert (by_id["gpt-5-2025-08-07"]["context_window"], by_id["gpt-5-2025-08-07"]["max_output_tokens"]) == \
            (400_000, 128_000)
        assert "glm-4.6" in by_id and "grok-4" not in by_id, "only the Factory models its globs serve"
        ant = (await ahttp("GET", gw.url + "/v1/models/gemini-2.5-pro",
                           headers={"x-api-key": CK, "anthropic-version": "2023-06-01"})).json()
        assert (ant["max_input_tokens"], ant["max_tokens"]) == (1_048_576, 65_536)
    finally:
        await gw.stop()
        await fac.stop()
        for f in fakes.values():
            await f.stop()
