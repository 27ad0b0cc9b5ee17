"""The gate before an improved student ships: on a fixed validation set it must not be worse
than its base.

Both students answer the same queries (a seeded validation draw of the evaluation mix, apart
from the calibration queries). Each keeps the answers its own calibration is sure of; the gate
compares the precision of the kept answers, the share kept, and the accuracy per k. Small
tolerances absorb the noise of a finite set (a precision measured on ~1,600 kept answers moves
by ~0.1 point when one answer flips); a real regression is larger, and is reported by how much.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgecloud.edge.seams import AnswerModel
from edgecloud.shared.errors import ConfigError
from edgecloud.shared.task import EVAL_MIX, Split, generate, parse_answer

__all__ = ["GateConfig", "GateResult", "ModelScore", "evaluate_gate", "score"]


@dataclass(frozen=True, kw_only=True)
class GateConfig:
    n: int = 2000
    """Validation queries both students answer."""
    precision_tolerance: float = 0.002
    """The new kept precision may be this far below ``min(base's, target_precision)``."""
    target_precision: float = 0.995
    kept_tolerance: float = 0.005
    """The new share kept may be this far below the base's."""
    accuracy_tolerance: float = 0.01
    """Each k's accuracy may be this far below the base's."""

    def __post_init__(self) -> None:
        if self.n < 100:
            raise ConfigError(f"gate n must be >= 100, got {self.n}")
        for name in ("precision_tolerance", "kept_tolerance", "accuracy_tolerance"):
            if not 0 <= getattr(self, name) < 0.5:
                raise ConfigError(f"gate {name} must be in [0, 0.5), got {getattr(self, name)}")


@dataclass(frozen=True)
class ModelScore:
    precision_kept: float
    """Share of the kept answers that are right (1.0 when nothing is kept)."""
    kept_share: float
    accuracy: dict[str, float]
    """Per k (``k1``..): share of answers right, kept or not."""
    kept_by_k: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        return {
            "precision_kept": self.precision_kept,
            "kept_share": self.kept_share,
            "accuracy": self.accuracy,
            "kept_by_k": self.kept_by_k,
        }


@dataclass(frozen=True)
class GateResult:
    base: ModelScore
    new: ModelScore
    regressions: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.regressions

    def summary(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "regressions": self.regressions,
            "base": self.base.to_dict(),
            "new": self.new.to_dict(),
        }


def score(model: AnswerModel, queries: list[str], answers: list[int], ks: list[int]) -> ModelScore:
    threshold = model.calibration.threshold if model.calibration is not None else float("inf")
    right, kept = [], []
    for query, expected in zip(queries, answers, strict=True):
        answer = model.answer(query)
        right.append(parse_answer(answer.text) == expected)
        kept.append(not answer.abstained and answer.confidence >= threshold)
    r, k, by = np.asarray(right), np.asarray(kept), np.asarray(ks)
    return ModelScore(
        precision_kept=float(r[k].mean()) if k.any() else 1.0,
        kept_share=float(k.mean()),
        accuracy={f"k{n}": float(r[by == n].mean()) for n in sorted(set(ks))},
        kept_by_k={f"k{n}": float(k[by == n].mean()) for n in sorted(set(ks))},
    )


def evaluate_gate(base: AnswerModel, new: AnswerModel, config: GateConfig, *, seed: int = 0) -> GateResult:
    """Score both students on the same fixed validation queries and list every regression."""
    problems = generate(config.n, seed + 101, Split.VALIDATION, EVAL_MIX)
    queries, answers, ks = [p.query for p in problems], [p.answer for p in problems], [p.k for p in problems]
    before, after = score(base, queries, answers, ks), score(new, queries, answers, ks)
    regressions = []
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
    for k, accuracy in before.accuracy.items():
        if after.accuracy[k] < accuracy - config.accuracy_tolerance:
            regressions.append(
                f"{k} accuracy {after.accuracy[k]:.2%}, base {accuracy:.2%}"
                f" ({100 * (after.accuracy[k] - accuracy):+.2f} points)"
            )
    return GateResult(base=before, new=after, regressions=regressions)
