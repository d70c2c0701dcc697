"""Shared pytest fixtures (conventions §10)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def reactor() -> Any:
    """The global reactor that pytest-twisted installs and runs."""
    from twisted.internet import reactor as global_reactor

    return global_reactor
