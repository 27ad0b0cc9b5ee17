"""What ``models improve`` measures a new student on, apart from what it trains on.

Two sources, both labelled by someone other than the student:

- **Escalation records held out of training** (:func:`hold_out`): the cloud's answers are the
  labels. A record is held out by a digest of the query as the student reads it, so the same query
  is on the same side in every run and never on both.
- **The base's own validation data** (:func:`base_cases`): the validation split of the dataset the
  base was built from (its manifest's ``metadata.dataset``), or, for a bundle built by the
  built-in task's ``models build`` (no dataset recorded), a draw of that task's validation queries.

:func:`answer_rule` is how answers are compared: the bundle's declared ``io.answer_match``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from edgecloud.modelkit.datasets import read_dataset
from edgecloud.modelkit.gate import GateCase
from edgecloud.modelkit.training_set import TrainingSet
from edgecloud.shared.answers import rule_of
from edgecloud.shared.bundle import Manifest
from edgecloud.shared.errors import ConfigError
from edgecloud.shared.task import EVAL_MIX, Split, generate

__all__ = ["ESCALATIONS_GROUP", "answer_rule", "base_cases", "hold_out"]

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


def _dataset_path(manifest: Manifest) -> Path | None:
    dataset = manifest.metadata.get("dataset")
    if not isinstance(dataset, dict) or not isinstance(dataset.get("path"), str):
        return None
    return Path(dataset["path"])


def base_cases(manifest: Manifest, n: int, seed: int, data: Path | None = None) -> list[GateCase]:
    """Up to ``n`` validation cases of the base's own task (see the module docstring). ``data``
    overrides the dataset folder the manifest records (a build on another machine)."""
    path = data or _dataset_path(manifest)
    if path is not None:
        if not path.is_dir():
            raise ConfigError(f"the base bundle was built from the dataset {path}, which is not here; pass --data DIR")
        rows = [row for row in read_dataset(path).validation if row.query is not None]
        return [GateCase(row.query, row.answer, row.group or "validation") for row in rows[:n]]
    problems = generate(n, seed + 101, Split.VALIDATION, EVAL_MIX)
    return [GateCase(p.query, str(p.answer), f"k={p.k}") for p in problems]


def answer_rule(manifest: Manifest) -> str:
    """The bundle's answer-matching rule; a bundle of the built-in arithmetic task from before
    bundles declared one (no dataset, no rule) compares numbers."""
    if "answer_match" in manifest.io or _dataset_path(manifest) is not None:
        return rule_of(manifest.io)
    return "number"
