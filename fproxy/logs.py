"""Log observers for ``twistd --logger``: one JSON object per line, no secrets.

Use: ``twistd -n --logger=fproxy.logs.json_observer fproxy ...``.
"""
from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import IO, Any

import orjson
from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

#: event keys that are ours to ship (request context); Twisted's own keys are left out
_FIELDS = ("request_id", "status", "model", "provider", "outcome", "key", "attempts", "ms", "method", "path",
           "n", "grace", "listen", "workers")
_SECRET_HINTS = ("key", "token", "secret", "authorization", "password")


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
    return JSONObserver(sys.stdout.buffer)
