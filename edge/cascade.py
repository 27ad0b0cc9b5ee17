"""Two students on the edge: the base answers first, a reasoner takes what the base is unsure of.

The base answers simple queries directly in a millisecond or two. A reasoner (a student that
writes a short scratchpad, ``<think>`` ... ``</think>``, before its answer) learns the multi-step
queries the cloud answered for the base; run on every query it would cost tens of milliseconds
where the base needs one, and it is weaker than the base on what the base already does well. As a
pair, each does what it is good at: the reasoner runs only on the base's unsure answers (below
the base's calibrated threshold), and the pair's answer is the reasoner's then.

Each stage keeps its own calibration, fitted on the queries it sees (the reasoner's on those the
base hands off). Triage has one threshold, the bundle's (the base's), so the reasoner's
confidence is carried onto the base's scale by a shift in log-odds that sends the reasoner's own
threshold to the base's: an answer is kept exactly when the stage that gave it is confident by
its own calibration. Both are in one signed bundle (``io.reasoner``, see docs/models.md), so they
are swapped, verified and rolled back together.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from edgecloud.edge.calibration import Calibration

if TYPE_CHECKING:
    from edgecloud.edge.runtime import EdgeAnswer, EdgeModel

__all__ = ["CascadeModel", "on_scale_of"]

_EPSILON = 1e-12


def _logit(p: float) -> float:
    p = min(max(p, _EPSILON), 1 - _EPSILON)
    return math.log(p / (1 - p))


def on_scale_of(calibration: Calibration, threshold: float) -> Calibration:
    """``calibration`` with its bias shifted so that its threshold becomes ``threshold``: the
    same answers clear it. A calibration that keeps nothing (threshold 1) keeps nothing after."""
    if calibration.threshold >= 1.0:
        return dataclasses.replace(calibration, bias=-1e6, threshold=threshold)
    shift = _logit(threshold) - _logit(calibration.threshold)
    return dataclasses.replace(calibration, bias=calibration.bias + shift, threshold=threshold)


class CascadeModel:
    """An :class:`~edgecloud.edge.seams.AnswerModel` of two :class:`EdgeModel`: ``base``, then
    ``reasoner`` on what ``base`` is not sure of. Thread-safe, as each stage is."""

    def __init__(self, base: EdgeModel, reasoner: EdgeModel) -> None:
        if base.calibration is None or reasoner.calibration is None:
            raise ValueError("both stages of a cascade need a calibration: it decides the handoff")
        self.base = base
        self.reasoner = reasoner
        self.handoff = base.calibration.threshold
        """The base's answers below this confidence go to the reasoner."""
        self.reasoner_calibration = reasoner.calibration
        """As fitted, on the queries the base hands off."""
        reasoner.calibration = on_scale_of(reasoner.calibration, self.handoff)

    @property
    def calibration(self) -> Calibration | None:
        """The triage calibration: the base's (the reasoner's confidence is on its scale)."""
        return self.base.calibration

    @property
    def decoding(self) -> dict[str, object]:
        return self.base.decoding

    def answer(self, query: str) -> EdgeAnswer:
        """The base's answer when it is sure of it; otherwise the reasoner's, with the base's
        feature vector (the cloud reads the bundle's declared features) and both stages' time."""
        first = self.base.answer(query)
        if first.confidence >= self.handoff:  # False for NaN
            return first
        second = self.reasoner.answer(query)
        return dataclasses.replace(
            second,
            features=first.features,
            latency_ms=first.latency_ms + second.latency_ms,
        )
