"""What ``models improve`` knows of its base's task: read from the base's manifest (the dataset it
was built from, or the built-in arithmetic task), and what each task gives the turn (replay queries,
validation cases, progress checks, the checks of the new student). (Which task a manifest gives is
also checked through ``base_cases`` in tests/modelkit/loop/test_evidence.py.)"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from edgecloud.edge.runtime import EdgeModel
from edgecloud.modelkit.arithmetic.build import BuildConfig
from edgecloud.modelkit.arithmetic.task import EVAL_MIX, Split, generate, parse_answer
from edgecloud.modelkit.data.datasets import Row, read_dataset, write_dataset
from edgecloud.modelkit.loop.base_task import (
    ArithmeticTask,
    DatasetTask,
    answer_rule,
    base_task,
    dataset_path,
    recipe_mix,
)
from edgecloud.modelkit.loop.gate import GateCase
from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.bundles.manifest import Manifest


def manifest(io: dict | None = None, metadata: dict | None = None) -> Manifest:
    return Manifest(
        name="x-student", kind="edge", version=1, created_at="2026-01-01T00:00:00Z", files=(),
        io={"inputs": [], "outputs": [], "feature_dim": 8, "tokenizer": "t.json", **(io or {})},
        metadata=metadata or {},
    )  # fmt: skip


def lamps(path: Path) -> Path:
    """A dataset folder: training queries and conversations, validation rows some without an answer or group."""
    train = [Row(query=f"dim lamp {i}", answer=str(i)) for i in range(30)]
    train.append(Row(messages=({"role": "user", "content": "dim lamp 99"},), answer="99"))
    validation = [Row(query=f"brighten lamp {i}", answer=str(i), group="bright" if i % 2 else None) for i in range(10)]
    validation.insert(3, Row(query="brighten lamp unknown", answer=""))  # unlabelled: no case to check against
    validation.append(Row(messages=({"role": "user", "content": "brighten lamp 11"},), answer="11"))
    return write_dataset(path, name="lamps", answer_match="exact", train=train, validation=validation, test=train)


def test_the_dataset_a_bundle_was_built_from_is_read_from_its_metadata() -> None:
    assert dataset_path(manifest(metadata={"dataset": {"path": "/data/lamps", "name": "lamps"}})) == Path("/data/lamps")
    for metadata in ({}, {"dataset": "/data/lamps"}, {"dataset": {"name": "lamps"}}, {"dataset": {"path": 7}}):
        assert dataset_path(manifest(metadata=metadata)) is None, metadata


def test_the_mix_an_arithmetic_base_was_trained_on_or_the_evaluation_mix() -> None:
    assert recipe_mix({"recipe": {"mix": {"1": 0.7, "2": 0.3}}}) == {1: 0.7, 2: 0.3}
    for broken in (
        {},
        {"recipe": None},
        {"recipe": {"mix": {"one": 1.0}}},
        {"recipe": {"mix": {"1": -0.5, "2": 1.5}}},  # a negative weight
        {"recipe": {"mix": {"1": 0.0}}},  # nothing to draw
        {"recipe": {"mix": {}}},
    ):
        assert recipe_mix(broken) == dict(EVAL_MIX), broken


def test_a_bundle_from_before_declared_rules_compares_numbers() -> None:
    assert answer_rule(manifest()) == "number"
    assert answer_rule(manifest({"answer_match": "json"})) == "json"
    # A dataset recorded without a declared rule: the manifests' default, exact.
    assert answer_rule(manifest(metadata={"dataset": {"path": "/data/x"}})) == "exact"


def test_a_base_is_built_in_or_of_a_dataset_that_is_here(tmp_path: Path) -> None:
    task = base_task(manifest({"answer_match": "number"}, {"recipe": {"mix": {"3": 1.0}}}))
    assert task == ArithmeticTask({3: 1.0}, rule="number") and task.pairs and not task.calibrates_on_evidence
    assert "built-in arithmetic task" in task.describe()

    data = lamps(tmp_path / "lamps")
    gone = manifest({"answer_match": "exact"}, {"dataset": {"path": str(tmp_path / "moved")}})
    with pytest.raises(ConfigError, match="moved, which is not here; pass --data DIR"):
        base_task(gone)
    found = base_task(gone, data)  # --data says where it is now
    assert isinstance(found, DatasetTask) and found.dataset.path == data and found.rule == "exact"
    assert not found.pairs and found.calibrates_on_evidence
    assert "'lamps'" in found.describe() and "exact" in found.describe()
    with pytest.raises(ConfigError, match="not here"):
        base_task(manifest(), tmp_path / "nowhere")  # --data that names nothing


def test_a_dataset_task_draws_from_its_splits(tmp_path: Path) -> None:
    task = base_task(manifest({"answer_match": "exact"}), lamps(tmp_path / "lamps"))
    replay = task.replay_queries(12, seed=1)
    assert len(set(replay)) == 12 and all(q.startswith("dim lamp ") for q in replay)  # training queries only
    assert "dim lamp 99" not in task.replay_queries(100, seed=1)  # the student reads no conversation
    assert task.replay_queries(12, seed=2) != replay
    cases = task.validation_cases(100, seed=0)
    assert [c.query for c in cases] == [f"brighten lamp {i}" for i in range(10)]  # labelled single queries
    assert [c.group for c in cases[:2]] == ["validation", "bright"]  # no group: "validation"
    assert task.validation_cases(4, seed=0) == cases[:4]
    assert task.progress_cases(seed=0) == cases
    features = task.feature_queries(5, seed=0)
    assert features is not None and len(features) == 5 and set(features) <= set(task.replay_queries(100, seed=0))


def test_the_built_in_task_draws_from_the_generator() -> None:
    task = ArithmeticTask({2: 1.0})
    replay = task.replay_queries(50, seed=0)
    assert replay == [p.query for p in generate(50, 31, Split.TRAIN, {2: 1.0})]  # what the base was trained on
    cases = task.validation_cases(400, seed=0)
    assert {c.group for c in cases} == {f"k={k}" for k in EVAL_MIX}  # validation covers every k, not the mix
    assert all(parse_answer(c.expected) is not None for c in cases)
    progress = task.progress_cases(seed=0)
    # Every k drawn with the same weight (the same number in expectation: 400 draws, about 100 each).
    counts = Counter(c.group for c in progress)
    assert set(counts) == {"k1", "k2", "k3", "k4"} and all(70 < n < 130 for n in counts.values()), counts
    assert task.feature_queries(10, seed=0) is None
    assert task.student_checks(BuildConfig(out=Path("unused")), cases) is None  # the demo's own checks


def test_a_dataset_task_checks_the_new_student_by_its_rule_and_the_build_s_limits(
    shipped_base_models: Path, tmp_path: Path
) -> None:
    student = EdgeModel.from_bundle(shipped_base_models / "edge-student")  # a real onnxruntime session
    problems = generate(60, 3, Split.VALIDATION, {1: 1.0})
    cases = [GateCase(p.query, str(p.answer), "k=1") for p in problems]
    task = DatasetTask(read_dataset(lamps(tmp_path / "lamps")), "number")
    build = BuildConfig(out=Path("unused"), target_precision=0.9, calibration_confidence=None, calibration_n=100)
    checks = task.student_checks(build, cases)
    assert checks is not None
    int8 = checks.int8_check(student, student)
    assert int8["n"] == 60 and int8["answer_agreement"] == 1.0 and int8["accuracy_int8"] > 0.9
    calibration = checks.calibrate(student)
    assert calibration.target_precision == 0.9
    assert calibration.validation["n"] == 60 and set(calibration.validation["groups"]) == {"k=1"}
    golden = checks.golden(student)
    assert golden and {g.query for g in golden} <= {c.query for c in cases}
