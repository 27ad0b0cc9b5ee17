"""What ``models improve`` measures a new student on, apart from what it trains on.

Two sources, both labelled by someone other than the student:

- **Escalation records held out of training** (:func:`hold_out`): the cloud's answers are the
  labels. A record is held out by a digest of the query as the student reads it, so the same query
  is on the same side in every run and never on both.
- **The base's own validation data** (:func:`base_cases`, :mod:`edgecloud.modelkit.loop.base_task`):
  the validation split of the dataset the base was built from (its manifest's ``metadata.dataset``),
  or, for a bundle built by the built-in task's ``models build`` (no dataset recorded), a draw of
  that task's validation queries.

For a base built from a dataset, :func:`split_evidence` halves the evidence: triage is calibrated
on one half, the gate measures the other.

:func:`answer_rule` is how answers are compared: the bundle's declared ``io.answer_match``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from edgecloud.modelkit.loop.base_task import answer_rule, base_task
from edgecloud.modelkit.loop.gate import GateCase
from edgecloud.modelkit.loop.training_set import TrainingSet
from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.bundles.manifest import Manifest

__all__ = ["ESCALATIONS_GROUP", "answer_rule", "base_cases", "hold_out", "split_evidence"]

ESCALATIONS_GROUP = "escalations"


def _held(key: str, share: float) -> bool:
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def hold_out(
    training: TrainingSet, share: float, normalize: Callable[[str], str]
) -> tuple[TrainingSet, list[GateCase]]:
    """The training set without its held-out records, and those records as gate cases."""
    if not 0 <= share < 1:
        raise ConfigError(f"holdout share must be in [0, 1), got {share}")
    kept, cases = [], []
    for example in training.examples:
        if _held(normalize(example.query), share):
            cases.append(GateCase(example.query, example.answer, ESCALATIONS_GROUP))
        else:
            kept.append(example)
    return replace(training, examples=kept, held_out=len(cases)), cases


def base_cases(manifest: Manifest, n: int, seed: int, data: Path | None = None) -> list[GateCase]:
    """Up to ``n`` validation cases of the base's own task (see the module docstring). ``data``
    overrides the dataset folder the manifest records (a build on another machine)."""
    return base_task(manifest, data).validation_cases(n, seed)


def split_evidence(cases: Sequence[GateCase], share: float = 0.5) -> tuple[list[GateCase], list[GateCase]]:
    """``cases`` split by a digest of the query into what triage is calibrated on and what the gate
    measures: a threshold chosen on the very cases the gate scores would flatter the new student."""
    calibrate, gate = [], []
    for case in cases:
        (calibrate if _held(f"calibrate/{case.query}", share) else gate).append(case)
    return calibrate, gate
