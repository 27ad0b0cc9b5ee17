"""The gate, table-tested on answer models with fixed answers (pure logic: no model runs here; the
real students go through it in tests/modelkit/loop/test_improve.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from edgecloud.edge.calibration import Calibration
from edgecloud.modelkit.loop.gate import GateCase, GateConfig, evaluate_gate, score


@dataclass(frozen=True)
class _Answer:
    text: str
    confidence: float

    @property
    def abstained(self) -> bool:
        return not self.text


class Fixed:
    """Answers from a table; confidence 0.9 on every answer, kept at threshold 0.5."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.calibration = Calibration(w_sum=1, w_min=0, bias=0, threshold=0.5, target_precision=0.99, validation={})

    def answer(self, query: str) -> _Answer:
        text = self.answers.get(query, "")
        return _Answer(text, 0.9 if text else 0.0)


CONFIG = GateConfig(n=100, min_cases=4)
CASES = [GateCase(f"q{i}", f'{{"n": {i}}}', "even" if i % 2 == 0 else "odd") for i in range(8)]
RIGHT = {c.query: c.expected for c in CASES}


def test_a_student_as_good_as_its_base_passes_with_figures_per_group() -> None:
    result = evaluate_gate(Fixed(RIGHT), Fixed(RIGHT), CONFIG, CASES, rule="json")
    assert result.passed, result.regressions
    assert result.new.accuracy == {"even": 1.0, "odd": 1.0} and result.new.cases == {"even": 4, "odd": 4}


def test_answers_are_compared_by_the_bundles_rule() -> None:
    spaced = {q: a.replace(": ", ":") for q, a in RIGHT.items()}  # the same JSON, written differently
    assert score(Fixed(spaced), CASES, "json").right == 8
    assert score(Fixed(spaced), CASES, "exact").right == 0


@pytest.mark.parametrize(
    ("cases", "base", "new", "message"),
    [
        ([], RIGHT, RIGHT, "no evidence: 0 comparable cases"),
        (CASES[:3], RIGHT, RIGHT, "no evidence: 3 comparable cases, the gate needs 4"),
        (CASES, {}, {}, "no evidence: neither student answers any of the 8 cases right"),
        (CASES, {q: "wrong" for q in RIGHT}, {q: "wrong" for q in RIGHT}, "no evidence: neither student"),
        (CASES, RIGHT, {**RIGHT, "q1": "", "q3": ""}, "odd accuracy 50.00%, base 100.00%"),
        (CASES, RIGHT, {**RIGHT, "q0": "no"}, "kept answers 87.50% right"),
    ],
    ids=["no-cases", "too-few", "both-abstain", "both-wrong", "a-group-regresses", "precision-drops"],
)
def test_the_gate_refuses(cases, base, new, message) -> None:  # type: ignore[no-untyped-def]
    result = evaluate_gate(Fixed(base), Fixed(new), CONFIG, cases, rule="json")
    assert not result.passed
    assert any(message in r for r in result.regressions), result.regressions


def test_an_unknown_rule_is_refused() -> None:
    from edgecloud.shared.base.errors import InvalidInputError

    with pytest.raises(InvalidInputError):
        evaluate_gate(Fixed(RIGHT), Fixed(RIGHT), CONFIG, CASES, rule="fuzzy")
    assert math.isclose(score(Fixed(RIGHT), CASES, "json").kept_share, 1.0)
