"""Log observers for ``twistd --logger``: one JSON object per line, no secrets.

Use: ``twistd -n --logger=fproxy.logs.json_observer fproxy ...``.
"""
from __future__ import annotations

import atexit
import sys
import threading
from datetime import datetime, timezone
from typing import IO, Any

import orjson
from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

#: event keys that are ours to ship (request context); Twisted's own keys are left out
_FIELDS = ("request_id", "status", "model", "provider", "outcome", "key", "attempts", "ms", "method", "path",
           "n", "grace", "listen", "workers")


def _safe(v: Any) -> Any:
    if v is None or isinstance(v, (int, float, bool)):
        return v
    return str(v)


@implementer(ILogObserver)
class JSONObserver:
    def __init__(self, out: IO[bytes]) -> None:
        self._out = out

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        rec: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc).isoformat(timespec="milliseconds"),
            "level": level.name if level is not None else "info",
            "ns": event.get("log_namespace"),
            "msg": formatEvent(event),
        }
        for k in _FIELDS:
            if k in event and event[k] is not None:
                rec[k] = _safe(event[k])
        if "log_failure" in event:
            rec["failure"] = event["log_failure"].getTraceback()
        self._out.write(orjson.dumps(rec) + b"\n")
        self._out.flush()


def json_observer() -> ILogObserver:
    """Factory for ``twistd --logger=fproxy.logs.json_observer``."""
    return JSONObserver(_BytesOut(sys.stdout))


class _BytesOut:
    """Bytes in, through ``sys.stdout`` as it is when used (so `CoalescedFlush` applies)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, data: bytes) -> None:
        self._stream.write(data.decode("utf-8", "replace"))

    def flush(self) -> None:
        self._stream.flush()


class CoalescedFlush:
    """Wraps a text stream (twistd's stdout) so a log line costs a buffered write, not a syscall.

    Twisted's file log observers flush after every event; at a thousand requests a second
    that flush (one per access-log line) was a third of the gateway's CPU (bench/RESULTS.md).
    Here a flush from the reactor thread only schedules a real one ``delay`` seconds later,
    so lines reach the file at most that late; flushes from other threads, `flush_now`
    (reactor shutdown) and process exit write at once.
    """

    def __init__(self, stream: Any, clock: Any, delay: float = 0.05) -> None:
        self._stream = stream
        self._clock = clock
        self._delay = delay
        self._call: Any = None
        self._reactor_thread = threading.get_ident()

    def write(self, text: str) -> int:
        return self._stream.write(text)

    def flush(self) -> None:
        if threading.get_ident() != self._reactor_thread:
            self._stream.flush()
        elif self._call is None:
            self._call = self._clock.callLater(self._delay, self.flush_now)

    def flush_now(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def coalesce_stdout(clock: Any) -> None:
    """Install `CoalescedFlush` on ``sys.stdout`` (idempotent); flushed at shutdown and exit."""
    if isinstance(sys.stdout, CoalescedFlush):
        return
    wrapped = CoalescedFlush(sys.stdout, clock)
    sys.stdout = wrapped  # type: ignore[assignment]
    clock.addSystemEventTrigger("after", "shutdown", wrapped.flush_now)
    atexit.register(wrapped.flush_now)
