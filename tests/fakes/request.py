"""`FakeRequest`: a recorder standing in for twisted.web's Request with push producers.

(twisted.web.test.requesthelper.DummyRequest spins push producers as pull producers, so
it cannot show backpressure: conventions §10.)
"""
from __future__ import annotations

from typing import Any


class FakeRequest:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.finished = False
        self.producer: Any = None
        self.streaming: bool | None = None
        self.headers: dict[bytes, bytes] = {}
        self.code = 200
        self._disconnected = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError("a producer is already registered")
        self.producer, self.streaming = producer, streaming

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        if self.finished:
            raise RuntimeError("write after finish")
        self.written.append(data)

    def finish(self) -> None:
        if self.finished:
            raise RuntimeError("finish called twice")
        self.finished = True

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def setResponseCode(self, code: int) -> None:
        self.code = code

    @property
    def body(self) -> bytes:
        return b"".join(self.written)
