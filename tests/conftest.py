"""Shared pytest fixtures (conventions §10)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# No test may fail on wall-clock time: no Hypothesis deadline, no "too slow" health check
# (a cold machine generates inputs slowly on the first run).
settings.register_profile("fproxy", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("fproxy")


@pytest.fixture
def reactor() -> Any:
    """The global reactor that pytest-twisted installs and runs."""
    from twisted.internet import reactor as global_reactor

    return global_reactor
