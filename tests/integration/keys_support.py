"""Helpers for the keys / ledger / queue / metrics integration tests: the admin API over httpx
in threads (the gateway and the fakes run in the test's reactor, which must keep turning)."""
from __future__ import annotations

import time
from typing import Any

import httpx
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

ADMIN = "sk-admin-int-0001"
STATIC = "sk-static-int-0002"


def ahttp(method: str, url: str, **kw: Any) -> Deferred[httpx.Response]:
    kw.setdefault("timeout", 15)
    return threads.deferToThread(httpx.request, method, url, **kw)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def ant(key: str) -> dict[str, str]:
    return {"x-api-key": key, "anthropic-version": "2023-06-01"}


def chat(model: str, text: str = "hi", **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **kw}


def msgs(model: str, text: str = "hi", max_tokens: int = 16, **kw: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}], **kw}


async def create_key(url: str, **fields: Any) -> dict[str, Any]:
    r = await ahttp("POST", url + "/api/keys", json=fields, headers=bearer(ADMIN))
    assert r.status_code == 201, r.text
    return r.json()


async def usage(url: str, **params: Any) -> dict[str, Any]:
    r = await ahttp("GET", url + "/api/usage", params=params, headers=bearer(ADMIN))
    assert r.status_code == 200, r.text
    return r.json()


async def sleep(reactor: Any, seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def until(reactor: Any, predicate: Any, timeout: float = 5.0, interval: float = 0.05) -> Any:
    """Await ``predicate()`` (a coroutine function or plain function) until truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if hasattr(value, "__await__"):
            value = await value
        if value or time.monotonic() > deadline:
            return value
        await sleep(reactor, interval)
