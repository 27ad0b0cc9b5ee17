"""Field quality counts: the Wilson interval, rates with their evidence, and validation of what a
device reports."""

from __future__ import annotations

import math
from typing import Any

import pytest

from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.fleetlink.quality import FieldQuality, Rate, wilson_interval


@pytest.mark.parametrize(("successes", "trials"), [(0, 10), (10, 10), (81, 263), (1, 2), (999, 1000)])
def test_the_wilson_interval_is_where_the_score_test_stops_rejecting(successes: int, trials: int) -> None:
    # Its definition: the p whose score statistic (p_hat - p) / sqrt(p (1 - p) / n) is +-1.96.
    p_hat, z = successes / trials, 1.96
    low, high = wilson_interval(successes, trials)
    for p in (low, high):
        assert (p_hat - p) ** 2 == pytest.approx(z * z * p * (1 - p) / trials, abs=1e-12)
    assert low <= p_hat <= high and (low == 0.0) == (successes == 0) and (high == 1.0) == (successes == trials)


def test_all_or_none_is_bounded_exactly_by_1_or_0_whatever_the_rounding() -> None:
    # by the formula 70 of 70 gave 0.9999999999999998: a version right on every check did not "contain" 100%
    assert all(wilson_interval(n, n)[1] == 1.0 and wilson_interval(0, n)[0] == 0.0 for n in range(1, 500))


def test_the_interval_narrows_with_evidence_and_says_nothing_without_any() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 10)[1] == pytest.approx(1.96**2 / (10 + 1.96**2))  # no successes: z^2 / (n + z^2)
    widths = [(hi - lo) for lo, hi in (wilson_interval(9 * n // 10, n) for n in (10, 100, 1000))]
    assert widths == sorted(widths, reverse=True) and widths[-1] < 0.04
    with pytest.raises(ValueError, match="successes must be in"):
        wilson_interval(3, 2)


def test_rates_carry_their_evidence() -> None:
    assert math.isnan(Rate(0, 0).value) and Rate(0, 0).to_dict() == {"value": None, "low": 0.0, "high": 1.0, "n": 0}
    assert Rate(3, 4).to_dict()["value"] == 0.75 and Rate(3, 4).to_dict()["n"] == 4


def test_counts_add_up_across_devices_and_summarise_with_intervals() -> None:
    fleet = FieldQuality("student", 6, read=10, kept=8, escalated=2, abstained=1, checks=4, agreed=4)
    fleet.add(FieldQuality("student", 6, read=30, kept=20, escalated=10, abstained=3, checks=6, agreed=3, shed=2))
    assert (fleet.read, fleet.kept, fleet.checks, fleet.agreed, fleet.shed) == (40, 28, 10, 7, 2)
    summary = fleet.summary()
    assert summary["agreement"]["value"] == 0.7 and summary["agreement"]["n"] == 10
    assert summary["escalation_rate"]["value"] == 0.3 and summary["abstention_rate"]["value"] == 0.1
    assert FieldQuality.from_dict(fleet.to_dict()) == fleet


def entry(**fields: Any) -> dict[str, Any]:
    return {**FieldQuality("student", 6, read=10, kept=8, escalated=2, abstained=1, checks=4, agreed=3).to_dict(),
            **fields}  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"agreed": 5}, "counts do not add up"),
        ({"kept": 9}, "counts do not add up"),
        ({"abstained": 3}, "counts do not add up"),
        ({"checks": -1}, r"^quality\.checks: must be >= 0"),
        ({"read": True}, r"^quality\.read: expected an integer"),
        ({"model_name": ""}, r"^quality\.model_name: must have at least 1 character"),
    ],
)
def test_a_report_that_cannot_be_true_is_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        FieldQuality.from_dict(entry(**fields))


def test_a_newer_device_may_count_more() -> None:
    assert FieldQuality.from_dict(entry(judged=3)).agreed == 3
