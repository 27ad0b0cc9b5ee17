"""Fixtures of the edge API tests."""

from __future__ import annotations

import pytest

from tests.helpers.cloud import RunningServer


@pytest.fixture
def cloud(reasoner: RunningServer) -> RunningServer:
    """The real Reasoner serving the shipped teacher on a loopback port: tests/edge/conftest.py's
    ``reasoner``, by the name the API tests give the daemon's cloud."""
    return reasoner
