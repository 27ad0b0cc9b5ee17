"""The budget policy, table-tested: request, then features, then hint, then default."""

from __future__ import annotations

import numpy as np
import pytest

from edgecloud.cloud.budget import BudgetConfig, BudgetPolicy
from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.reasoner.session import EdgeHint

CONFIG = BudgetConfig(default=200, minimum=32, maximum=1000, headroom=1.5, margin=10)


@pytest.mark.parametrize(
    ("requested", "hint", "expected"),
    [
        (0, None, (0, "request")),
        (50, EdgeHint(estimated_difficulty=1.0), (50, "request")),
        (5000, None, (1000, "request")),
        (None, None, (200, "default")),
        (None, EdgeHint(estimated_difficulty=0.0), (200, "default")),
        (None, EdgeHint(estimated_difficulty=0.5), (516, "hint")),
        (None, EdgeHint(estimated_difficulty=1.0), (1000, "hint")),
    ],
)
def test_choice_without_history(requested, hint, expected) -> None:  # type: ignore[no-untyped-def]
    assert BudgetPolicy(CONFIG).choose(requested, hint=hint) == expected


@pytest.mark.parametrize(
    ("requested", "hint", "expected"),
    [
        (None, EdgeHint(estimated_difficulty=0.05), (200, "hint")),  # would be 80: raised to the default
        (None, EdgeHint(estimated_difficulty=0.9), (903, "hint")),  # above the default: kept
        (None, None, (200, "default")),
        (40, EdgeHint(estimated_difficulty=0.05), (40, "request")),  # the caller's own budget wins
    ],
)
def test_a_caller_who_chose_the_cloud_never_gets_less_than_the_default(requested, hint, expected) -> None:  # type: ignore[no-untyped-def]
    policy = BudgetPolicy(CONFIG)
    assert policy.choose(requested, hint=hint, at_least_default=True) == expected
    vector = np.ones(8, dtype=np.float32)
    policy.observe(vector, "edge@1", reasoning_tokens=10, budget_reached=False)  # neighbours used 10 tokens
    assert policy.choose(None, features=vector, producer="edge@1") == (32, "features")
    assert policy.choose(None, features=vector, producer="edge@1", at_least_default=True) == (200, "features")


def test_features_of_similar_queries_set_the_budget() -> None:
    policy = BudgetPolicy(CONFIG)
    rng = np.random.default_rng(0)
    base = rng.normal(size=64).astype(np.float32)
    policy.observe(base, "m", reasoning_tokens=60, budget_reached=False)
    policy.observe(base * 2, "m", reasoning_tokens=80, budget_reached=False)
    policy.observe(base, "m", reasoning_tokens=900, budget_reached=True)  # cut short: says nothing
    near = base + 0.01 * rng.normal(size=64).astype(np.float32)
    assert policy.choose(None, features=near, producer="m") == (int(80 * 1.5) + 10, "features")
    far = rng.normal(size=64).astype(np.float32)
    assert policy.choose(None, features=far, producer="m") == (200, "default")
    assert policy.choose(None, features=near, producer="another model") == (200, "default")
    assert policy.choose(None, features=np.zeros(64, np.float32), producer="m") == (200, "default")


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        BudgetConfig(minimum=500, default=200)
    with pytest.raises(ConfigError):
        BudgetConfig(headroom=0.5)
