"""Triage calibration of an edge student: Platt scaling on its answers, then the threshold.

The rules every build uses (``models build``, from the demo task or from a dataset): abstentions
(empty answers, confidence 0 at run time) are left out of the Platt fit, and the threshold is the
lowest whose kept answers reach the target precision, as a one-sided Wilson lower bound at the
configured confidence (:func:`edgecloud.edge.calibration.choose_threshold`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgecloud.edge.calibration import Calibration, choose_threshold, confidence_signals, fit_platt
from edgecloud.edge.runtime import EdgeAnswer

__all__ = ["TriageFit", "fit_triage"]


@dataclass(frozen=True)
class TriageFit:
    """Platt weights and the triage threshold fitted on one set of answers, with what they give there."""

    w_sum: float
    w_min: float
    bias: float
    threshold: float
    at: dict[str, float | None]
    """:func:`choose_threshold`'s figures at ``threshold``."""
    confidence: np.ndarray
    """Each answer's calibrated confidence (0 for an abstention); ``correct`` and ``answered`` per answer too."""
    correct: np.ndarray
    answered: np.ndarray

    @property
    def kept(self) -> np.ndarray:
        return self.confidence >= self.threshold

    def validation(self) -> dict[str, float | None]:
        """The figures every build reports: n, accuracy, abstained, precision and share kept."""
        at = self.at
        return {
            "n": float(len(self.correct)),
            "accuracy": float(self.correct.mean()),
            "abstained": float(1 - self.answered.mean()),
            "precision_kept": at["precision"],
            **({"precision_lower_bound": at["precision_lower_bound"]} if "precision_lower_bound" in at else {}),
            "kept_share": at["coverage"],
        }

    def calibration(self, target_precision: float, validation: dict) -> Calibration:
        return Calibration(
            w_sum=float(self.w_sum),
            w_min=float(self.w_min),
            bias=float(self.bias),
            threshold=float(self.threshold),
            target_precision=target_precision,
            validation=validation,
        )


def fit_triage(
    answers: Sequence[EdgeAnswer],
    correct: Sequence[bool],
    *,
    target_precision: float,
    confidence_level: float | None,
    weights: Sequence[float] | np.ndarray | None = None,
) -> TriageFit:
    """Fit Platt scaling on the answers the model gave (abstentions left out) and choose the
    lowest threshold whose kept answers reach ``target_precision`` (as a Wilson lower bound at
    ``confidence_level``; None: on the answers themselves). ``weights``: how many answers of the
    traffic each one stands for (:func:`~edgecloud.edge.calibration.choose_threshold`)."""
    x = np.asarray([confidence_signals(a.token_logprobs) for a in answers])
    y = np.asarray(correct, dtype=float)
    gave = np.asarray([not a.abstained for a in answers])
    v = None if weights is None else np.asarray(weights, dtype=np.float64)
    # An abstention (empty answer) has confidence 0 at run time whatever its signals say
    # (edgecloud.edge.runtime); fitted with them, its near-certain stop token would read as a sure wrong answer.
    fitted = fit_platt(x[gave], y[gave], weights=None if v is None else v[gave]) if gave.any() else (0.0, 0.0, 0.0)
    w_sum, w_min, bias = fitted
    confidence = np.where(gave, 1 / (1 + np.exp(-(x @ np.array([w_sum, w_min]) + bias))), 0.0)
    threshold, at = choose_threshold(
        confidence, y, target_precision=target_precision, confidence_level=confidence_level, weights=v
    )
    return TriageFit(float(w_sum), float(w_min), float(bias), float(threshold), at, confidence, y, gave)
