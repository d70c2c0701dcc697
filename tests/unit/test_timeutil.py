"""RFC 3339 / Unix seconds in and out; UTC budget periods."""
from __future__ import annotations

import datetime

import pytest

from fproxy.ir.errors import GatewayError
from fproxy.timeutil import bucket_label, parse_time, period_end, period_label, period_start, rfc3339

UTC = datetime.timezone.utc
T = datetime.datetime(2024, 12, 31, 23, 59, 30, tzinfo=UTC).timestamp()


def test_rfc3339_round_trip():
    assert rfc3339(T) == "2024-12-31T23:59:30Z" and rfc3339(None) is None
    assert parse_time("2024-12-31T23:59:30Z", "x") == T
    assert parse_time("2024-12-31T23:59:30+00:00", "x") == T
    assert parse_time("2025-01-01T00:59:30+01:00", "x") == T
    assert parse_time("2024-12-31T23:59:30", "x") == T  # naive = UTC
    assert parse_time("2024-12-31", "x") == T - 86370
    assert parse_time(str(int(T)), "x") == T and parse_time(T, "x") == T


@pytest.mark.parametrize("bad", ["yesterday", "", True, [1], "2024-13-01"])
def test_bad_times_name_the_field(bad):
    with pytest.raises(GatewayError) as e:
        parse_time(bad, "since")
    assert e.value.status == 400 and e.value.param == "since" and e.value.message.startswith("since:")


def test_periods_roll_over_in_utc():
    assert period_label("day", T) == "d:2024-12-31" and period_label("month", T) == "m:2024-12"
    assert period_label(None, T) == "all" and period_start(None, T) == 0 and period_end(None, T) is None
    assert period_end("day", T) == T + 30 and period_end("month", T) == T + 30
    assert period_start("month", T) == datetime.datetime(2024, 12, 1, tzinfo=UTC).timestamp()
    feb = datetime.datetime(2024, 2, 10, tzinfo=UTC).timestamp()
    assert period_end("month", feb) == datetime.datetime(2024, 3, 1, tzinfo=UTC).timestamp()


def test_bucket_labels():
    assert bucket_label(T - 3570, 3600) == "2024-12-31T23:00:00Z"
    assert bucket_label(T - 86370, 86400) == "2024-12-31"
