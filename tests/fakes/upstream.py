"""Fake upstream providers on loopback, served by the test's own reactor.

    fake = await start_fake(reactor, dialect="anthropic", keys=["sk-a"])
    fake.script({"text": "hi", "chunks": 2}, {"error": {"status": 429, "retry_after": 3}})
    ...  # point fproxy (or an SDK in a thread) at fake.base_url
    assert fake.requests[0].key == "sk-a"
    await fake.stop()

Each fake speaks one dialect (``openai-chat``, ``anthropic``, ``openai-responses``) in the real
provider's wire format and validates requests the way the provider does (see the ``wire_*``
modules): a rejected request is answered with the provider's error body and recorded.

Behaviours (``fake.script(*behaviours)``, consumed one per valid generation request, FIFO;
when none is queued the fake echoes).  All keys are optional:

- ``text``: reply text (default ``"Echo: <last user text>"``, or ``""`` with tool calls);
  ``chunks``: number of stream deltas the text is split into (default 3).
- ``tool_calls``: ``[{"id"?, "name", "arguments": dict | str}]``.
- ``thinking``: Anthropic: a thinking block signed by the fake (sent whenever the request
  enables thinking; default text then); Responses: a reasoning item with a summary; chat:
  ``reasoning_content``.
- ``usage``: ``{"input", "output", "cache_read", "cache_write", "reasoning"}``; by default
  input and output are rough token estimates of the prompt and of the reply.
- ``model``: model name to report; ``finish``: ``"length"`` to report a truncated answer.
- ``first_byte_delay``: seconds before the response headers; ``chunk_delay``: seconds
  between stream events.
- ``error``: ``{"status", "retry_after"?, "message"?, "type"?, "code"?}``: the provider's
  error body and a Retry-After header.  ``status`` alone (top level): that bare status,
  empty body (``retry_after`` at top level adds Retry-After).
- ``drop_after``: stream: close the connection after N events (no terminator);
  non-stream: close it without an answer.
- ``stall``: stream: N events, then silence until the client closes; non-stream: never
  answer (no headers) until the client closes.
- ``stream_error``: ``{"after": N, "message"?, "type"?}``: after N events send the dialect's
  in-stream error event and end the stream.
- ``garbage``: answer 200 with bytes that are not the dialect's format.
- ``long``: ``{"count": N, "text": s}`` (or an int, with ``text``): a stream of N deltas of
  ``s``, written with flow control (the fake stops writing while the transport pauses it).
- ``times``: how many requests this behaviour answers (default 1; 0 = every one after).

``Record.outcome``: ``None`` while in flight, then ``"completed"``, ``"error"`` (an error
status, or an in-stream error event), ``"dropped"`` (the fake closed the connection),
``"client_closed"`` (the client went away first; ``closed_by_peer_at`` is set) or
``"stalled"`` (stays so; ``closed_by_peer_at`` tells when the client gave up).
"""

from __future__ import annotations

import copy
import itertools
import json
from collections import deque
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from tests.fakes import wire_anthropic, wire_openai_chat, wire_openai_responses
from tests.fakes.loopback import ImageServer, Leaf, TrackingSite, free_port, start_image_server
from tests.fakes.wire_common import ApiError, build_reply, dumps

__all__ = ["FakeUpstream", "ImageServer", "Record", "free_port", "start_fake", "start_image_server"]

log = Logger()

DIALECTS: dict[str, ModuleType] = {
    "openai-chat": wire_openai_chat,
    "anthropic": wire_anthropic,
    "openai-responses": wire_openai_responses,
}
DEFAULT_MODELS = {
    "openai-chat": ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"],
    "anthropic": ["claude-sonnet-4-5", "claude-haiku-4-5"],
    "openai-responses": ["gpt-5", "gpt-5-mini"],
}
SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


@define(eq=False)
class Record:
    """One request the fake received, and what it did with it (see the module docstring)."""

    method: str
    path: str
    query: dict[str, str]  # first value of each query parameter
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    raw: bytes
    body: Any  # parsed JSON, or None when absent or not JSON
    started_at: float
    key: str | None = None  # the credential presented (Bearer token or x-api-key), even a bad one
    status: int | None = None
    outcome: str | None = None
    closed_by_peer_at: float | None = None
    bytes_written: int = 0  # body bytes (headers excluded)
    events_sent: int = 0
    paused_count: int = 0
    behaviour: dict[str, Any] | None = None
    error: dict[str, Any] | None = None  # the error body answered, if any
    finished_at: float | None = None
    finished: Deferred[Record] = field(factory=Deferred, repr=False)  # fires when the fake is done
    sent: bytearray = field(factory=bytearray, repr=False)  # the body bytes written, the first MB of them

    def keep(self, data: bytes) -> None:
        if len(self.sent) < 1_000_000:
            self.sent.extend(data[: 1_000_000 - len(self.sent)])


@implementer(IPushProducer)
class _Flow:
    """The producer a stream registers on its request: tracks pausing, wakes the writer."""

    def __init__(self, record: Record, wake: Callable[[], None], gone: Callable[[], None]) -> None:
        self.paused = False
        self._record, self._wake, self._gone = record, wake, gone

    def pauseProducing(self) -> None:
        self.paused = True
        self._record.paused_count += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self._wake()

    def stopProducing(self) -> None:
        self._gone()


class _Exchange:
    """One request being answered: its record, and waits that end early if the peer leaves."""

    def __init__(self, request: Request, record: Record, clock: IReactorTime, stopping: Callable[[], bool]) -> None:
        self.request, self.record, self.clock = request, record, clock
        self.closed = False
        self._ours = False  # we closed it (drop), or the fake is stopping
        self._stopping = stopping
        self._waiters: list[Deferred[None]] = []
        self.flow = _Flow(record, self._wake, self._peer_gone)
        request.notifyFinish().addErrback(lambda _: self._peer_gone())

    def _peer_gone(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self._ours and not self._stopping():
            self.record.closed_by_peer_at = self.clock.seconds()
            if self.record.outcome is None:
                self.record.outcome = "client_closed"
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)

    async def _wait(self, call: IDelayedCall | None = None) -> None:
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        try:
            await d
        finally:
            if call is not None and call.active():
                call.cancel()

    async def sleep(self, seconds: float) -> bool:
        """Wait C{seconds} (reactor time); L{False} at once if the peer leaves meanwhile."""
        deadline = self.clock.seconds() + seconds
        while not self.closed and self.clock.seconds() < deadline:
            await self._wait(self.clock.callLater(deadline - self.clock.seconds(), self._wake))
        return not self.closed

    async def wait_closed(self) -> None:
        """Go silent until the peer (or the fake's stop) closes the connection."""
        while not self.closed:
            await self._wait()

    def answer(self, status: int, data: bytes, headers: dict[str, str], content_type: str = "application/json") -> None:
        """A complete, non-streamed answer."""
        if self.closed:
            return
        self.record.status = status
        self.request.setResponseCode(status)
        for name, value in {"content-type": content_type, **headers, "content-length": str(len(data))}.items():
            self.request.setHeader(name, value)
        self.request.write(data)
        self.record.bytes_written += len(data)
        self.record.keep(data)
        self.request.finish()

    def start_stream(self, headers: dict[str, str]) -> None:
        """Send 200 and the SSE headers now; register our producer for flow control."""
        self.record.status = 200
        self.request.setResponseCode(200)
        for name, value in {**SSE_HEADERS, **headers}.items():
            self.request.setHeader(name, value)
        self.request.registerProducer(self.flow, True)
        self.request.write(b"")  # commits the status line and headers

    async def write(self, data: bytes) -> bool:
        """Write one event once the transport lets us; L{False} if the peer has left."""
        while self.flow.paused and not self.closed:
            await self._wait()
        if self.closed:
            return False
        self.request.write(data)
        self.record.bytes_written += len(data)
        self.record.keep(data)
        self.record.events_sent += 1
        return True

    def finish(self) -> None:
        """End the response normally (the chunked terminator)."""
        if not self.closed:
            self.request.unregisterProducer()
            self.request.finish()

    def drop(self) -> None:
        """Close the connection without ending the response (after flushing what was written)."""
        self._ours = True
        self.record.outcome = "dropped"
        if self.request.channel is not None:
            self.request.channel.loseConnection()


def _lower_headers(request: Request) -> dict[str, str]:
    out = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        out[name.decode("latin-1").lower()] = ", ".join(v.decode("latin-1") for v in values)
    return out


def _presented_key(headers: dict[str, str]) -> str | None:
    if headers.get("x-api-key"):
        return headers["x-api-key"]
    auth = headers.get("authorization", "")
    return auth[7:].strip() or None if auth.lower().startswith("bearer ") else None


class FakeUpstream:
    """One fake provider: a twisted.web resource plus its records and behaviour queue.

    L{start_fake} listens with it on loopback; unit tests may instead wrap L{resource} in
    C{treq.testing.StubTreq} and drive a C{task.Clock}.
    """

    def __init__(self, clock: IReactorTime, dialect: str, keys: list[str] | None = None,
                 models: list[str] | None = None) -> None:  # fmt: skip
        if dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {dialect!r}; expected one of {sorted(DIALECTS)}")
        self.dialect = dialect
        self.keys = keys
        self.models = models or DEFAULT_MODELS[dialect]
        self.requests: list[Record] = []
        self.base_url = ""  # set by start_fake
        self.port = 0  # the loopback port, set by start_fake
        self._clock = clock
        self._wire = DIALECTS[dialect]
        self._queue: deque[list[Any]] = deque()  # [behaviour, remaining or None]
        self._inflight: set[Deferred[None]] = set()
        self._stopping = False
        self._site: TrackingSite | None = None
        self._port: Any = None

    def script(self, *behaviours: dict[str, Any]) -> None:
        """Queue behaviours; each answers ``times`` requests (default 1, 0 = forever)."""
        for beh in behaviours:
            beh = copy.deepcopy(beh)
            times = beh.pop("times", 1)
            self._queue.append([beh, times or None])

    def resource(self) -> Resource:
        """The twisted.web resource serving this fake."""
        return Leaf(self._render)

    async def wait_for(self, predicate: Callable[[list[Record]], Any], timeout: float = 5.0) -> Any:
        """Poll the records until C{predicate(records)} is truthy; return its value.

        @raise AssertionError: when C{timeout} seconds pass first.
        """
        deadline = self._clock.seconds() + timeout
        while True:
            value = predicate(self.requests)
            if value:
                return value
            if self._clock.seconds() > deadline:
                raise AssertionError(f"fake {self.dialect}: condition not met within {timeout}s: {self.requests}")
            await deferLater(self._clock, 0.01, lambda: None)

    async def stop(self) -> None:
        """Stop listening, abort every open connection, and wait for in-flight answers."""
        self._stopping = True
        port, self._port = self._port, None  # a second stop() is a no-op
        if port is not None:
            await port.stopListening()
        if self._site is not None:
            await self._site.close_all()
        pending = list(self._inflight)
        for d in pending:
            d.cancel()
        await DeferredList(pending)

    # ----------------------------------------------------------------- serving

    def _take_behaviour(self) -> dict[str, Any]:
        if not self._queue:
            return {}
        entry = self._queue[0]
        if entry[1] is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                self._queue.popleft()
        return copy.deepcopy(entry[0])

    def _render(self, request: Request) -> Any:
        raw = request.content.read() if request.content is not None else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        uri = urlsplit(request.uri.decode("latin-1"))
        record = Record(method=request.method.decode("ascii"), path=uri.path, query=dict(parse_qsl(uri.query)),
                        headers=_lower_headers(request), raw=raw, body=body,
                        started_at=self._clock.seconds())  # fmt: skip
        self.requests.append(record)
        exchange = _Exchange(request, record, self._clock, lambda: self._stopping)
        d = Deferred.fromCoroutine(self._answer(exchange))
        self._inflight.add(d)
        d.addBoth(self._forget, d)
        d.addErrback(lambda f: f.trap(CancelledError))  # stop() cancelled it
        d.addErrback(lambda f: log.failure("fake upstream answer failed", f))
        return NOT_DONE_YET

    def _forget(self, result: object, d: Deferred[None]) -> object:
        self._inflight.discard(d)
        return result

    async def _answer(self, ex: _Exchange) -> None:
        rec = ex.record
        try:
            await self._dispatch(ex)
        except ApiError as e:
            rec.outcome, rec.error = "error", e.body
            ex.answer(e.status, dumps(e.body).encode(), {**self._wire.response_headers(), **e.headers})
        except CancelledError:
            raise
        except Exception as e:  # a bug in the fake: answer loudly, log, keep serving
            log.failure("fake upstream crashed answering {path}", path=rec.path)
            rec.outcome, rec.error = "error", {"fake_crash": repr(e)}
            ex.answer(500, dumps({"error": {"message": f"FAKE CRASH: {e!r}", "type": "fake_crash"}}).encode(), {})
        finally:
            rec.finished_at = self._clock.seconds()
            rec.finished.callback(rec)

    async def _dispatch(self, ex: _Exchange) -> None:
        rec, wire = ex.record, self._wire
        kind = wire.ROUTES.get(rec.path) if rec.method == "POST" else None
        if rec.method == "GET" and (rec.path == "/v1/models" or rec.path.startswith("/v1/models/")):
            kind = "models"
        if kind is None:
            raise wire.not_found(rec.method, rec.path)
        rec.key = _presented_key(rec.headers)
        wire.authenticate(rec.headers, self.keys)
        wire.check_headers(rec.headers)
        if kind == "models":
            self._answer_models(ex)
        elif kind == "embeddings":
            ex.answer(200, dumps(wire.embeddings(rec.body)).encode(), wire.response_headers())
            rec.outcome = "completed"
        elif kind == "count_tokens":
            ex.answer(200, dumps(wire.count_tokens(rec.body, rec.headers)).encode(), wire.response_headers())
            rec.outcome = "completed"
        else:
            wire.validate(rec.body, rec.headers)
            rec.behaviour = self._take_behaviour()
            await self._generate(ex, rec.behaviour)

    def _answer_models(self, ex: _Exchange) -> None:
        rec, wire = ex.record, self._wire
        if rec.path == "/v1/models":
            ex.answer(200, dumps(wire.models_body(self.models)).encode(), wire.response_headers())
        else:
            model = rec.path[len("/v1/models/") :]
            if model not in self.models:
                raise wire.error_for({"status": 404, "message": f"model: {model}"})
            ex.answer(200, dumps(wire.models_body([model])["data"][0]).encode(), wire.response_headers())
        rec.outcome = "completed"

    async def _generate(self, ex: _Exchange, beh: dict[str, Any]) -> None:
        rec, wire, body = ex.record, self._wire, ex.record.body
        if beh.get("first_byte_delay") and not await ex.sleep(float(beh["first_byte_delay"])):
            return
        if beh.get("error"):
            raise wire.error_for(beh["error"])
        if "status" in beh:
            headers = {"retry-after": str(beh["retry_after"])} if beh.get("retry_after") is not None else {}
            rec.outcome = "error" if beh["status"] >= 400 else "completed"
            ex.answer(int(beh["status"]), b"", headers, "text/plain")
            return
        streaming = body.get("stream") is True
        if not streaming:
            await self._answer_whole(ex, beh)
            return
        if beh.get("garbage"):
            events: Iterable[bytes] = wire.GARBAGE_STREAM
        else:
            events = wire.stream(self._reply(beh, body), body)
        ex.start_stream(wire.response_headers())
        await self._stream(ex, beh, events)

    def _reply(self, beh: dict[str, Any], body: dict[str, Any]) -> Any:
        wire = self._wire
        thinking = wire.thinking_for(body, beh.get("thinking"))
        return build_reply(beh, model=body["model"], prompt=wire.prompt_text(body), prompt_obj=wire.prompt_obj(body),
                           id_prefix=wire.TOOL_ID_PREFIX, thinking=thinking)  # fmt: skip

    async def _answer_whole(self, ex: _Exchange, beh: dict[str, Any]) -> None:
        rec, wire = ex.record, self._wire
        if "drop_after" in beh:
            ex.drop()
        elif "stall" in beh:
            rec.outcome = "stalled"
            await ex.wait_closed()
        elif beh.get("garbage"):
            ex.answer(200, wire.GARBAGE_BODY, wire.response_headers())
            rec.outcome = "completed"
        else:
            answer = wire.render(self._reply(beh, rec.body), rec.body)
            ex.answer(200, dumps(answer).encode(), wire.response_headers())
            rec.outcome = "completed"

    async def _stream(self, ex: _Exchange, beh: dict[str, Any], events: Iterable[bytes]) -> None:
        rec = ex.record
        drop_after, stall, fail = beh.get("drop_after"), beh.get("stall"), beh.get("stream_error")
        delay = float(beh.get("chunk_delay") or 0)
        for sent, event in enumerate(itertools.chain(events, [None])):
            if drop_after is not None and sent >= drop_after:
                ex.drop()
                return
            if stall is not None and sent >= stall:
                rec.outcome = "stalled"
                await ex.wait_closed()
                return
            if fail is not None and sent >= fail.get("after", 0):
                if await ex.write(self._wire.stream_error(fail)):
                    rec.outcome, rec.error = "error", fail
                    ex.finish()
                return
            if event is None:
                break
            if sent and delay and not await ex.sleep(delay):
                return
            if not await ex.write(event):
                return
        rec.outcome = "completed"
        ex.finish()


async def start_fake(reactor: Any, dialect: str = "openai-chat", keys: list[str] | None = None,
                     models: list[str] | None = None) -> FakeUpstream:  # fmt: skip
    """Listen on 127.0.0.1 (a free port) with a new L{FakeUpstream}.

    C{base_url} is written the way the provider's SDK takes it: ending in ``/v1`` for the
    OpenAI dialects, the bare origin for Anthropic.  Always ``await fake.stop()``.

    @param keys: the API keys accepted (401 for others); L{None} accepts any non-empty key.
    @param models: what ``GET /v1/models`` lists.
    """
    fake = FakeUpstream(reactor, dialect, keys, models)
    fake._site = TrackingSite(fake.resource(), reactor)
    fake._port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(fake._site)
    fake.port = fake._port.getHost().port
    origin = f"http://127.0.0.1:{fake.port}"
    fake.base_url = origin if dialect == "anthropic" else origin + "/v1"
    return fake
