"""Log observers: twistd's classic text lines (the default) and JSON lines (``--logger``).

JSON: ``twistd -n --logger=fproxy.logs.json_observer fproxy ...``: one object per line, no secrets.
Text: what twistd prints by default, made cheaper per line (`TextObserver`); fproxy offers it
to twistd as the application's log observer when no ``--logger``, ``--logfile`` or ``--syslog``
was given (`offer_text_observer`), so those options keep their meaning.
"""
from __future__ import annotations

import atexit
import sys
import threading
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from twisted.logger import ILogObserver, formatEvent, formatEventAsClassicLogText, formatTime
from zope.interface import implementer

#: event keys that are ours to ship (request context); Twisted's own keys are left out
_FIELDS = ("request_id", "status", "model", "provider", "outcome", "key", "attempts", "ms", "method", "path",
           "n", "grace", "listen", "workers")


def _safe(v: Any) -> Any:
    if v is None or isinstance(v, (int, float, bool)):
        return v
    return str(v)


def _access_text(event: dict[str, Any]) -> str | None:
    """An access line's text (``"{access}"``, built by the request), used as it is: Twisted's
    formatter, string.Formatter in Python, was most of a line's cost.  None for other events."""
    if event.get("log_format") == "{access}" and "access" in event:
        return str(event["access"])
    return None


def _message(event: dict[str, Any]) -> str:
    text = _access_text(event)
    return text if text is not None else formatEvent(event)


@implementer(ILogObserver)
class TextObserver:
    """twistd's classic lines, ``TIME [namespace#level] message``, as its default observer writes
    them; the timestamp is formatted once per second (per line it cost a datetime, a time zone
    object and a strftime through Python callbacks)."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._second: int | None = None
        self._stamp = ""

    def _time(self, when: float | None) -> str:
        if when is None:
            return formatTime(when)
        second = int(when)
        if second != self._second:
            self._second, self._stamp = second, formatTime(when)
        return self._stamp

    def __call__(self, event: dict[str, Any]) -> None:
        access = _access_text(event) if "log_failure" not in event else None
        if access is not None:
            level = event.get("log_level")
            system = event.get("log_system") or f"{event.get('log_namespace', '-')}#{level.name if level else '-'}"
            text = f"{self._time(event.get('log_time'))} [{system}] {access}\n"
        else:
            text = formatEventAsClassicLogText(event, formatTime=self._time)
            if text is None:
                return
        self._out.write(text)
        self._out.flush()


def offer_text_observer(service: Any, twistd_options: Any) -> None:
    """Make `TextObserver` twistd's observer where twistd would print its own text to stdout.

    twistd takes an application's ``ILogObserver`` component when no ``--logger`` is given (the
    ``.tac`` way); the component is set as twistd adds ``service`` to its application, and only
    when neither ``--logger``, ``--logfile`` nor ``--syslog`` chose otherwise.
    """
    if twistd_options is None or not twistd_options.get("nodaemon"):
        return
    if twistd_options.get("logger") or twistd_options.get("logfile") or twistd_options.get("syslog"):
        return
    attach = service.setServiceParent

    def set_parent(parent: Any) -> Any:
        if hasattr(parent, "setComponent") and parent.getComponent(ILogObserver, None) is None:
            parent.setComponent(ILogObserver, TextObserver(sys.stdout))
        return attach(parent)

    service.setServiceParent = set_parent


@implementer(ILogObserver)
class JSONObserver:
    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._second: int | None = None
        self._stamp = ""

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        when = event.get("log_time", 0)
        second = int(when)
        if second != self._second:  # the date and time to the second, made once per second
            self._second = second
            self._stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        rec: dict[str, Any] = {
            "time": f"{self._stamp}.{int((when - second) * 1000):03d}+00:00",
            "level": level.name if level is not None else "info",
            "ns": event.get("log_namespace"),
            "msg": _message(event),
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
