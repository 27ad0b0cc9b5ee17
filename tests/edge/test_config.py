"""EdgeConfig validates at construction: every bad value is refused with its name."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.edge.config import EdgeConfig
from edgecloud.shared.base.errors import ConfigError


def test_reasoning_effort_budgets_default_and_are_checked(shipped_models: Path) -> None:
    bundle = shipped_models / "edge-student"
    assert EdgeConfig(bundle=bundle).reasoning_effort_tokens == (64, 256, 1024)
    assert EdgeConfig(bundle=bundle, reasoning_effort_tokens=[10, 10, 20]).reasoning_effort_tokens == (10, 10, 20)  # type: ignore[arg-type]
    for bad in ((256, 64, 1024), (64, 256), (0, 1, 2), (64, 256, 5000)):
        with pytest.raises(ConfigError, match="reasoning_effort_tokens"):
            EdgeConfig(bundle=bundle, reasoning_effort_tokens=bad)  # type: ignore[arg-type]


def test_an_api_key_is_long_and_off_loopback_required(shipped_models: Path) -> None:
    bundle = shipped_models / "edge-student"
    with pytest.raises(ConfigError, match="at least 16 characters"):
        EdgeConfig(bundle=bundle, api_keys=("short",))
    with pytest.raises(ConfigError, match="needs an API key"):
        EdgeConfig(bundle=bundle, host="0.0.0.0")
    assert EdgeConfig(bundle=bundle, host="0.0.0.0", allow_unauthenticated=True).host == "0.0.0.0"
