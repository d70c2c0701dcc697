"""The log observers: same lines as twistd's own text observer, cheaper; JSON time format."""
from __future__ import annotations

import io
import time
from typing import Any

import orjson
from twisted.application.service import Application, IServiceCollection, MultiService
from twisted.logger import ILogObserver, LogLevel, textFileLogObserver
from twisted.python.failure import Failure

from fproxy.logs import JSONObserver, TextObserver, offer_text_observer


def _event(**kw: Any) -> dict[str, Any]:
    ev = {"log_time": 1763776670.25, "log_level": LogLevel.info, "log_namespace": "fproxy.access"}
    ev.update(kw)
    return ev


def _both(event: dict[str, Any]) -> tuple[str, str]:
    ours, theirs = io.StringIO(), io.StringIO()
    TextObserver(ours)(dict(event))
    textFileLogObserver(theirs)(dict(event))
    return ours.getvalue(), theirs.getvalue()


def test_text_lines_are_twistds() -> None:
    access = _event(log_format="{access}", access="POST /v1/chat/completions 200 0.6ms model=m provider=p",
                    status=200)
    other = _event(log_format="{n} provider(s) on {where}", n=2, where="tcp:8001", log_namespace="fproxy.service")
    system = _event(log_format="FproxySite starting on {port}", port=8001, log_system="-")
    try:
        1 / 0
    except ZeroDivisionError:
        failed = _event(log_format="boom", log_failure=Failure(), log_level=LogLevel.critical)
    for ev in (access, other, system, failed):
        ours, theirs = _both(ev)
        assert ours == theirs and ours.endswith("\n")
    assert "[fproxy.access#info] POST /v1/chat/completions 200" in _both(access)[0]


def test_text_time_is_remade_each_second() -> None:
    out = io.StringIO()
    obs = TextObserver(out)
    now = time.time()
    for t in (now, now + 0.5, now + 1.0, now + 3600 * 24):
        obs(_event(log_format="{access}", access="x", log_time=t))
    lines = out.getvalue().splitlines()
    want = io.StringIO()
    for t in (now, now + 0.5, now + 1.0, now + 3600 * 24):
        textFileLogObserver(want)(_event(log_format="{access}", access="x", log_time=t))
    assert lines == want.getvalue().splitlines()


def test_json_time_and_message() -> None:
    out = io.BytesIO()
    JSONObserver(out)(_event(log_format="{access}", access="GET /health 200", status=200, log_time=1763776670.25))
    rec = orjson.loads(out.getvalue())
    assert rec["time"] == "2025-11-22T01:57:50.250+00:00"
    assert rec["msg"] == "GET /health 200" and rec["status"] == 200 and rec["ns"] == "fproxy.access"


def test_offered_only_where_twistd_would_print_its_own_text() -> None:
    def offered(opts: dict[str, Any] | None) -> bool:
        svc = MultiService()
        offer_text_observer(svc, opts)
        app = Application("fproxy")
        svc.setServiceParent(app)
        assert svc in list(IServiceCollection(app))
        return isinstance(app.getComponent(ILogObserver, None), TextObserver)

    assert offered({"nodaemon": True, "logger": None, "logfile": None, "syslog": False})
    assert not offered({"nodaemon": True, "logger": "fproxy.logs.json_observer", "logfile": None, "syslog": False})
    assert not offered({"nodaemon": True, "logger": None, "logfile": "/var/log/fproxy.log", "syslog": False})
    assert not offered({"nodaemon": True, "logger": None, "logfile": None, "syslog": True})
    assert not offered({"nodaemon": False, "logger": None, "logfile": None, "syslog": False})
    assert not offered(None)
