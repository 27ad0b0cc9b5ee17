"""The checks of a student of a dataset: calibration per group, golden cases, the int8 check."""

from __future__ import annotations

import numpy as np
import pytest

from edgecloud.edge.runtime import EdgeAnswer
from edgecloud.modelkit.data.checks import CheckCase, CheckLimits, DataChecks
from edgecloud.modelkit.data.datasets import Row


class _Fake:
    """An edge model that gives set answers with set log-probabilities."""

    def __init__(self, replies: dict[str, tuple[str, float]]) -> None:
        self.replies = replies

    def answer(self, query: str) -> EdgeAnswer:
        text, logprob = self.replies[query]
        return EdgeAnswer(text, (logprob, logprob), float("nan"), np.zeros(2, np.float32), 1, 2, 0.1)


def test_calibration_reports_each_group_and_golden_cases_are_right_answers() -> None:
    rows, replies = [], {}
    for i in range(200):
        group = ("easy", "hard")[i % 2]
        rows.append(Row(query=f"q{i}", answer=str(i), group=group))
        right = group == "easy" or i % 4 == 1
        replies[f"q{i}"] = (str(i) if right else "wrong", -0.001 if group == "easy" else -2.0)
    replies["q0"] = ("", -0.001)  # an abstention
    cases = [CheckCase(row.query, row.answer, row.group) for row in rows]
    checks = DataChecks(cases, "number", CheckLimits(target_precision=0.95))
    calibration = checks.calibrate(_Fake(replies))
    groups = calibration.validation["groups"]
    assert groups["easy"]["coverage"] == 0.99 and groups["easy"]["precision"] == 1.0
    assert groups["hard"]["coverage"] == 0.0 and groups["hard"]["precision"] is None
    assert calibration.validation["abstained"] == pytest.approx(0.005)
    golden = checks.golden(_Fake(replies))
    assert [case.query for case in golden] == ["q1", "q2", "q4", "q5", "q6"]
    assert all(case.expected == case.query[1:] for case in golden)


def test_the_fewest_right_answers_that_can_show_a_precision() -> None:
    from edgecloud.edge.calibration import wilson_lower_bound
    from edgecloud.modelkit.data.checks import fewest_to_show

    needed = fewest_to_show(0.995, 0.95)
    assert wilson_lower_bound(np.array([needed]), np.array([needed]), 0.95)[0] >= 0.995
    assert wilson_lower_bound(np.array([needed - 1]), np.array([needed - 1]), 0.95)[0] < 0.995
    assert 500 < needed < 1000  # why a few hundred labelled queries can never calibrate to 99.5%
    assert fewest_to_show(0.995, None) == 1
