"""How a student of a dataset is checked before it ships: int8 against fp32, triage calibration and
golden self-test cases, all on labelled rows compared by the dataset's answer-matching rule.

Shared by ``models build --data`` (the validation split, labelled by the rows or the teacher) and
``models improve`` on a bundle built from a dataset (held-out escalation records, labelled by the
cloud, and the base's validation split). :meth:`DataChecks.student_checks` plugs them into
:func:`edgecloud.modelkit.arithmetic.build.package_student`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from edgecloud.edge.calibration import Calibration, wilson_lower_bound
from edgecloud.edge.runtime import EdgeAnswer, EdgeModel
from edgecloud.modelkit.arithmetic.build import StudentChecks
from edgecloud.modelkit.calibrate import fit_triage
from edgecloud.shared.bundles.answers import answers_match
from edgecloud.shared.bundles.manifest import GoldenCase

__all__ = ["CheckCase", "CheckLimits", "DataChecks", "fewest_to_show"]

log = logging.getLogger(__name__)

NO_GROUP = "(none)"


@dataclass(frozen=True)
class CheckCase:
    """A query the student reads, the answer it should give, and what reports break it down by."""

    query: str
    expected: str
    group: str | None = None


@dataclass(frozen=True, kw_only=True)
class CheckLimits:
    target_precision: float = 0.995
    calibration_confidence: float | None = 0.95
    int8_max_accuracy_drop: float = 0.05
    int8_check_n: int = 500


def fewest_to_show(target_precision: float, confidence_level: float | None) -> int:
    """The fewest kept answers, all right, whose precision's lower bound reaches ``target_precision``."""
    if confidence_level is None:
        return 1
    n = 1
    while wilson_lower_bound(np.array([n]), np.array([n]), confidence_level)[0] < target_precision:
        n *= 2
    low, high = n // 2, n
    while low + 1 < high:
        mid = (low + high) // 2
        if wilson_lower_bound(np.array([mid]), np.array([mid]), confidence_level)[0] >= target_precision:
            high = mid
        else:
            low = mid
    return high


class DataChecks:
    """The int8 check, the calibration and the golden cases of a student on ``cases``."""

    def __init__(self, cases: Sequence[CheckCase], rule: str, limits: CheckLimits) -> None:
        if not cases:
            raise ValueError("no labelled cases to check the student on")
        self.cases, self.rule, self.limits = list(cases), rule, limits
        self._answers: list[EdgeAnswer] = []

    def student_checks(self) -> StudentChecks:
        return StudentChecks(int8_check=self.int8_check, calibrate=self.calibrate, golden=self.golden)

    def _right(self, answers: Sequence[EdgeAnswer]) -> list[bool]:
        return [answers_match(self.rule, a.text, c.expected) for a, c in zip(answers, self.cases, strict=False)]

    @staticmethod
    def _answer(model: EdgeModel, cases: Sequence[CheckCase], desc: str) -> list[EdgeAnswer]:
        bar = tqdm(cases, desc=desc, unit="q", dynamic_ncols=True, mininterval=2.0)
        return [model.answer(case.query) for case in bar]

    def int8_check(self, fp32: EdgeModel, int8: EdgeModel) -> dict[str, float]:
        cases = self.cases[: self.limits.int8_check_n]
        a, b = self._answer(fp32, cases, "fp32 check"), self._answer(int8, cases, "int8 check")
        check = {
            "n": float(len(cases)),
            "answer_agreement": float(np.mean([x.text == y.text for x, y in zip(a, b, strict=True)])),
            "accuracy_fp32": float(np.mean(self._right(a))),
            "accuracy_int8": float(np.mean(self._right(b))),
        }
        log.info("int8 vs fp32: %s", check)
        drop = check["accuracy_fp32"] - check["accuracy_int8"]
        if drop > self.limits.int8_max_accuracy_drop:
            raise RuntimeError(
                f"int8 graph is {drop:.1%} less accurate than fp32 "
                f"(allowed {self.limits.int8_max_accuracy_drop:.0%}): {check}"
            )
        return check

    def calibrate(self, int8: EdgeModel) -> Calibration:
        log.info("calibrating triage on %d labelled queries", len(self.cases))
        self._answers = self._answer(int8, self.cases, "calibration")
        fit = fit_triage(
            self._answers,
            self._right(self._answers),
            target_precision=self.limits.target_precision,
            confidence_level=self.limits.calibration_confidence,
        )
        groups = {}
        names = np.array([case.group or NO_GROUP for case in self.cases])
        for group in sorted(set(names)):
            mask = names == group
            kept = fit.kept & mask
            groups[str(group)] = {
                "n": float(mask.sum()),
                "accuracy": float(fit.correct[mask].mean()),
                "coverage": float(kept.sum() / mask.sum()),
                "precision": float(fit.correct[kept].mean()) if kept.any() else None,
            }
        validation = {**fit.validation(), "groups": groups}
        log.info("calibration: threshold %.4f, %s", fit.threshold, validation)
        if not fit.kept.any():
            self._warn_keeps_nothing()
        return fit.calibration(self.limits.target_precision, validation)

    def _warn_keeps_nothing(self) -> None:
        """Say why triage keeps nothing: too few labelled queries can never show the target precision."""
        target, level = self.limits.target_precision, self.limits.calibration_confidence
        needed = fewest_to_show(target, level)
        if level is not None and len(self.cases) < needed:
            log.warning(
                "calibration keeps nothing: %d labelled queries, but even %d right answers in a row are needed to "
                "show precision >= %.3f at confidence %.2f; give it more labelled queries (validation rows, escalations)",
                len(self.cases),
                needed,
                target,
                level,
            )
        else:
            log.warning("calibration keeps nothing: no confidence threshold reaches precision >= %.3f", target)

    def golden(self, int8: EdgeModel, n: int = 5) -> list[GoldenCase]:
        """Cases the int8 student answers right (any it answers, when none)."""
        answers = self._answers or self._answer(int8, self.cases[:60], "golden")
        triples = list(zip(self.cases, answers, self._right(answers), strict=False))
        chosen = [t for t in triples if t[2]] or [t for t in triples if t[1].text] or triples
        return [GoldenCase(query=case.query, expected=answer.text) for case, answer, _ in chosen[:n]]
