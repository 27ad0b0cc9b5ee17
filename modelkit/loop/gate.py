"""The gate before an improved student ships: on fixed evidence it must not be worse than its base.

Both students answer the same cases (:class:`GateCase`: a query, the answer it should get, and a
group that reports break down by): queries held out of the escalation records (the cloud's answers
are the labels) and the base's own validation data. Answers are compared by the bundle's
answer-matching rule (:mod:`edgecloud.shared.bundles.answers`). Each student keeps the answers its own
calibration is sure of; the gate compares the precision of the kept answers, the share kept, and the
accuracy per group. Small tolerances absorb the noise of a finite set (a precision measured on
~1,600 kept answers moves by ~0.1 point when one answer flips); a real regression is larger, and is
reported by how much.

The gate passes nothing on no evidence: fewer than :attr:`GateConfig.min_cases` cases, or cases
that neither student answers right (two students at 0 are not "no worse", they are unmeasured).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edgecloud.edge.seams import AnswerModel
from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.bundles.answers import answers_match, check_rule

__all__ = ["GateCase", "GateConfig", "GateResult", "ModelScore", "evaluate_gate", "score"]


@dataclass(frozen=True)
class GateCase:
    query: str
    expected: str
    group: str = ""
    """What the figures break down by (the dataset's ``group``, ``escalations``, ``k=2``, ...)."""


@dataclass(frozen=True, kw_only=True)
class GateConfig:
    n: int = 2000
    """Validation cases drawn from the base's data (its dataset's validation split, or the built-in
    task's generator for a bundle built without a dataset)."""
    min_cases: int = 100
    """Fewer cases than this is no evidence: the gate refuses."""
    precision_tolerance: float = 0.002
    """The new kept precision may be this far below ``min(base's, target_precision)``."""
    target_precision: float = 0.995
    kept_tolerance: float = 0.005
    """The new share kept may be this far below the base's."""
    accuracy_tolerance: float = 0.01
    """Each group's accuracy may be this far below the base's."""

    def __post_init__(self) -> None:
        if self.n < 100:
            raise ConfigError(f"gate n must be >= 100, got {self.n}")
        if self.min_cases < 1:
            raise ConfigError(f"gate min_cases must be >= 1, got {self.min_cases}")
        for name in ("precision_tolerance", "kept_tolerance", "accuracy_tolerance"):
            if not 0 <= getattr(self, name) < 0.5:
                raise ConfigError(f"gate {name} must be in [0, 0.5), got {getattr(self, name)}")


@dataclass(frozen=True)
class ModelScore:
    precision_kept: float
    """Share of the kept answers that are right (1.0 when nothing is kept)."""
    kept_share: float
    accuracy: dict[str, float]
    """Per group: share of answers right, kept or not."""
    kept_by_group: dict[str, float]
    cases: dict[str, int] = field(default_factory=dict)
    """Per group: how many cases the figures stand on."""
    right: int = 0
    """Answers right, kept or not, over every case."""

    def to_dict(self) -> dict[str, object]:
        return {
            "precision_kept": self.precision_kept,
            "kept_share": self.kept_share,
            "accuracy": self.accuracy,
            "kept_by_group": self.kept_by_group,
            "cases": self.cases,
            "right": self.right,
        }


@dataclass(frozen=True)
class GateResult:
    base: ModelScore
    new: ModelScore
    regressions: list[str] = field(default_factory=list)
    rule: str = "exact"

    @property
    def passed(self) -> bool:
        return not self.regressions

    def summary(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "regressions": self.regressions,
            "answer_match": self.rule,
            "base": self.base.to_dict(),
            "new": self.new.to_dict(),
        }


def score(model: AnswerModel, cases: Sequence[GateCase], rule: str = "exact") -> ModelScore:
    threshold = model.calibration.threshold if model.calibration is not None else float("inf")
    right, kept = [], []
    for case in cases:
        answer = model.answer(case.query)
        right.append(not answer.abstained and answers_match(rule, answer.text, case.expected))
        kept.append(not answer.abstained and answer.confidence >= threshold)
    r, k = np.asarray(right, dtype=bool), np.asarray(kept, dtype=bool)
    groups = np.asarray([case.group for case in cases])
    names = sorted(set(groups.tolist()))
    return ModelScore(
        precision_kept=float(r[k].mean()) if k.any() else 1.0,
        kept_share=float(k.mean()) if len(k) else 0.0,
        accuracy={g: float(r[groups == g].mean()) for g in names},
        kept_by_group={g: float(k[groups == g].mean()) for g in names},
        cases={g: int((groups == g).sum()) for g in names},
        right=int(r.sum()),
    )


def evaluate_gate(
    base: AnswerModel, new: AnswerModel, config: GateConfig, cases: Sequence[GateCase], *, rule: str = "exact"
) -> GateResult:
    """Score both students on the same ``cases`` and list every regression (and a lack of evidence)."""
    check_rule(rule)
    before, after = score(base, cases, rule), score(new, cases, rule)
    regressions = []
    if len(cases) < config.min_cases:
        regressions.append(f"no evidence: {len(cases)} comparable cases, the gate needs {config.min_cases}")
    elif before.right == 0 and after.right == 0:
        regressions.append(
            f"no evidence: neither student answers any of the {len(cases)} cases right by the {rule!r} rule "
            "(are the labels of the same task?)"
        )
    floor = min(before.precision_kept, config.target_precision) - config.precision_tolerance
    if after.precision_kept < floor:
        regressions.append(
            f"kept answers {after.precision_kept:.2%} right, base {before.precision_kept:.2%}"
            f" ({100 * (after.precision_kept - before.precision_kept):+.2f} points; floor {floor:.2%})"
        )
    if after.kept_share < before.kept_share - config.kept_tolerance:
        regressions.append(
            f"kept {after.kept_share:.2%} of queries, base {before.kept_share:.2%}"
            f" ({100 * (after.kept_share - before.kept_share):+.2f} points)"
        )
    for group, accuracy in before.accuracy.items():
        if after.accuracy[group] < accuracy - config.accuracy_tolerance:
            regressions.append(
                f"{group or 'cases'} accuracy {after.accuracy[group]:.2%}, base {accuracy:.2%}"
                f" ({100 * (after.accuracy[group] - accuracy):+.2f} points, {before.cases[group]} cases)"
            )
    return GateResult(base=before, new=after, regressions=regressions, rule=rule)
