"""What ``models improve`` knows of the task its base bundle was built for, and nothing more.

The next student replays the base's own queries, is checked on the base's own validation data and
reports accuracy by the base's own groups; none of that may assume a task. Two implementations of
:class:`BaseTask`:

- :class:`DatasetTask`: the base was built from a dataset folder (``models build --data``; its
  manifest's ``metadata.dataset`` records the folder, or ``--data`` says where it is now). Replay
  draws from the training split, the gate and the calibration use the validation split, answers
  match by the bundle's declared rule.
- :class:`ArithmeticTask`: a bundle of the built-in demo build (no dataset recorded), whose
  queries come from the arithmetic generator, as they always did.

:func:`base_task` picks one from the manifest.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgecloud.modelkit.arithmetic.build import BuildConfig, StudentChecks
from edgecloud.modelkit.arithmetic.task import EVAL_MIX, Split, generate
from edgecloud.modelkit.data.checks import CheckCase, CheckLimits, DataChecks
from edgecloud.modelkit.data.datasets import Dataset, read_dataset
from edgecloud.modelkit.loop.gate import GateCase
from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.bundles.answers import rule_of
from edgecloud.shared.bundles.manifest import Manifest

__all__ = ["ArithmeticTask", "BaseTask", "DatasetTask", "answer_rule", "base_task", "dataset_path", "recipe_mix"]


class BaseTask(Protocol):
    rule: str
    """How answers are compared (``exact``, ``number``, ``json``)."""
    pairs: bool
    """Whether ``improve --student fresh`` (a reasoner paired with the base) is available."""
    calibrates_on_evidence: bool
    """Whether the new student is calibrated on half the evidence (held-out escalations and the base's
    validation data; the gate measures the other half), or on the task's own draw."""

    def describe(self) -> str: ...

    def replay_queries(self, n: int, seed: int) -> list[str]:
        """Up to ``n`` training queries of the base, for replay."""
        ...

    def validation_cases(self, n: int, seed: int) -> list[GateCase]:
        """Up to ``n`` labelled validation cases of the base."""
        ...

    def progress_cases(self, seed: int) -> list[GateCase]:
        """What the progress checks during training measure (right answers per group)."""
        ...

    def feature_queries(self, n: int, seed: int) -> list[str] | None:
        """Queries to centre and rotate the features on (None: the student's default)."""
        ...

    def student_checks(self, build: BuildConfig, cases: Sequence[GateCase]) -> StudentChecks | None:
        """The int8 check, calibration and golden cases on ``cases`` (None: the demo task's own)."""
        ...


def dataset_path(manifest: Manifest) -> Path | None:
    """The dataset folder the bundle was built from, as its manifest records it."""
    dataset = manifest.metadata.get("dataset")
    if not isinstance(dataset, dict) or not isinstance(dataset.get("path"), str):
        return None
    return Path(dataset["path"])


@dataclass(frozen=True)
class DatasetTask:
    dataset: Dataset
    rule: str
    pairs: bool = False
    calibrates_on_evidence: bool = True

    def describe(self) -> str:
        return f"the dataset {self.dataset.name!r} at {self.dataset.path} (answers match by {self.rule})"

    def replay_queries(self, n: int, seed: int) -> list[str]:
        queries = [row.query for row in self.dataset.train if row.query is not None]
        return random.Random(f"edgecloud-replay/{seed}").sample(queries, min(n, len(queries)))

    def validation_cases(self, n: int, seed: int) -> list[GateCase]:
        rows = [row for row in self.dataset.validation if row.query is not None and row.answer.strip()]
        return [GateCase(row.query, row.answer, row.group or "validation") for row in rows[:n]]  # type: ignore[arg-type]

    def progress_cases(self, seed: int) -> list[GateCase]:
        return self.validation_cases(400, seed + 41)

    def feature_queries(self, n: int, seed: int) -> list[str] | None:
        return self.replay_queries(n, seed + 13)

    def student_checks(self, build: BuildConfig, cases: Sequence[GateCase]) -> StudentChecks | None:
        limits = CheckLimits(
            target_precision=build.target_precision,
            calibration_confidence=build.calibration_confidence,
            int8_max_accuracy_drop=build.int8_max_accuracy_drop,
        )
        checks = DataChecks([CheckCase(c.query, c.expected, c.group) for c in cases], self.rule, limits)
        return checks.student_checks()


def recipe_mix(metadata: dict) -> dict[int, float]:
    """The k mix an arithmetic base was trained on (its manifest's recipe), or the evaluation mix."""
    try:
        mix = {int(k): float(v) for k, v in metadata["recipe"]["mix"].items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        return dict(EVAL_MIX)
    return mix if mix and all(v >= 0 for v in mix.values()) and sum(mix.values()) > 0 else dict(EVAL_MIX)


@dataclass(frozen=True)
class ArithmeticTask:
    """The built-in demo task, for a bundle built without a dataset."""

    mix: dict[int, float]
    """The k mix the base was trained on: what replay draws."""
    rule: str = "number"
    pairs: bool = True
    calibrates_on_evidence: bool = False

    def describe(self) -> str:
        return "the built-in arithmetic task (the bundle records no dataset)"

    def replay_queries(self, n: int, seed: int) -> list[str]:
        return [p.query for p in generate(n, seed + 31, Split.TRAIN, self.mix)]

    def validation_cases(self, n: int, seed: int) -> list[GateCase]:
        return [
            GateCase(p.query, str(p.answer), f"k={p.k}") for p in generate(n, seed + 101, Split.VALIDATION, EVAL_MIX)
        ]

    def progress_cases(self, seed: int) -> list[GateCase]:
        """The same number of each k, as the demo has always reported."""
        problems = generate(400, seed + 41, Split.VALIDATION, {1: 0.25, 2: 0.25, 3: 0.25, 4: 0.25})
        return [GateCase(p.query, str(p.answer), f"k{p.k}") for p in problems]

    def feature_queries(self, n: int, seed: int) -> list[str] | None:
        return None

    def student_checks(self, build: BuildConfig, cases: Sequence[GateCase]) -> StudentChecks | None:
        return None


def answer_rule(manifest: Manifest) -> str:
    """The bundle's answer-matching rule; a bundle of the built-in arithmetic task from before
    bundles declared one (no dataset, no rule) compares numbers."""
    if "answer_match" in manifest.io or dataset_path(manifest) is not None:
        return rule_of(manifest.io)
    return "number"


def base_task(manifest: Manifest, data: Path | None = None) -> BaseTask:
    """The task of the base bundle: its dataset (``data`` overrides where the manifest says it is),
    or the built-in arithmetic task for a bundle that records none."""
    path = data or dataset_path(manifest)
    if path is None:
        if "answer_match" in manifest.io and rule_of(manifest.io) != "number":
            raise ConfigError(
                f"{manifest.name} declares answers matched by {rule_of(manifest.io)!r} but records no dataset: "
                "pass --data DIR, the dataset folder it was built from"
            )
        return ArithmeticTask(recipe_mix(manifest.metadata), rule=answer_rule(manifest))
    if not path.is_dir():
        raise ConfigError(f"the base bundle was built from the dataset {path}, which is not here; pass --data DIR")
    return DatasetTask(read_dataset(path), answer_rule(manifest))
