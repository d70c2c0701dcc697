"""Time on the wire: RFC 3339 out, RFC 3339 or Unix seconds in, UTC periods for budgets.

All times inside fproxy are Unix seconds (floats) read from an injected clock; this module
only converts.  Pure functions, no clock of their own.
"""
from __future__ import annotations

import datetime
from typing import Any

from fproxy.ir.errors import GatewayError

UTC = datetime.UTC


def rfc3339(ts: float | None) -> str | None:
    """``1735787045.2`` -> ``"2025-01-02T03:04:05Z"`` (whole seconds, UTC); None stays None."""
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any, field: str) -> float:
    """RFC 3339 (``2025-01-02T03:04:05Z``, a date alone means its midnight UTC) or Unix seconds.

    @raise GatewayError: 400 naming ``field`` when the value is neither.
    """
    if isinstance(value, bool):
        raise GatewayError(400, f"{field}: expected an RFC 3339 time or Unix seconds", param=field)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        s = value.strip()
        try:
            return float(s)
        except ValueError:
            pass
        try:
            dt = datetime.datetime.fromisoformat(s)
        except ValueError:
            raise GatewayError(400, f"{field}: {value!r} is not an RFC 3339 time (e.g. 2025-01-02T03:04:05Z) "
                               "or Unix seconds", param=field) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    raise GatewayError(400, f"{field}: expected an RFC 3339 time or Unix seconds", param=field)


def period_start(period: str | None, now: float) -> float:
    """Start of the budget period holding ``now``: UTC midnight, the 1st of the month, or 0."""
    if period is None:
        return 0.0
    d = datetime.datetime.fromtimestamp(now, UTC)
    if period == "day":
        start = d.replace(hour=0, minute=0, second=0, microsecond=0)
    elif period == "month":
        start = d.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    else:
        raise ValueError(f"unknown budget period {period!r}")
    return start.timestamp()


def period_end(period: str | None, now: float) -> float | None:
    """End of the budget period holding ``now`` (None for a budget that never resets)."""
    if period is None:
        return None
    d = datetime.datetime.fromtimestamp(period_start(period, now), UTC)
    if period == "day":
        return (d + datetime.timedelta(days=1)).timestamp()
    nxt = d.replace(year=d.year + 1, month=1) if d.month == 12 else d.replace(month=d.month + 1)
    return nxt.timestamp()


def period_label(period: str | None, now: float) -> str:
    """A name for the period holding ``now``: ``all``, ``d:2025-01-02`` or ``m:2025-01``."""
    if period is None:
        return "all"
    d = datetime.datetime.fromtimestamp(now, UTC)
    return d.strftime("d:%Y-%m-%d") if period == "day" else d.strftime("m:%Y-%m")


def bucket_label(bucket_start: float, seconds: int) -> str:
    """A usage group for ``group_by=hour`` (``2025-01-02T13:00:00Z``) or ``day`` (``2025-01-02``)."""
    d = datetime.datetime.fromtimestamp(bucket_start, UTC)
    return d.strftime("%Y-%m-%d") if seconds >= 86400 else d.strftime("%Y-%m-%dT%H:00:00Z")
