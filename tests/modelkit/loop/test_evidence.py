"""Where ``models improve`` takes its evidence from: held-out escalations, the base's own data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from edgecloud.modelkit.data.datasets import Row, write_dataset
from edgecloud.modelkit.loop.base_task import ArithmeticTask, DatasetTask, base_task
from edgecloud.modelkit.loop.evidence import ESCALATIONS_GROUP, answer_rule, base_cases, hold_out, split_evidence
from edgecloud.modelkit.loop.gate import GateCase
from edgecloud.modelkit.loop.training_set import TrainingExample, TrainingSet
from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.bundles.manifest import Manifest
from edgecloud.shared.escalations.records import ReadReport


def manifest(io: dict | None = None, metadata: dict | None = None) -> Manifest:
    return Manifest(
        name="x-student", kind="edge", version=1, created_at="2026-01-01T00:00:00Z", files=(),
        io={"inputs": [], "outputs": [], "feature_dim": 8, "tokenizer": "t.json", **(io or {})},
        metadata=metadata or {},
    )  # fmt: skip


def training(n: int) -> TrainingSet:
    examples = [TrainingExample(f"Query {i}", f"<think>r</think>{i}", 1.0, str(i)) for i in range(n)]
    return TrainingSet(examples=examples, read=ReadReport(), dropped=Counter(), reasoning=True)


def test_held_out_records_are_left_out_of_training_the_same_way_every_time() -> None:
    kept, cases = hold_out(training(1000), 0.2, str.lower)
    assert 150 < len(cases) < 250 and len(kept.examples) + len(cases) == 1000
    assert kept.held_out == len(cases) and kept.summary()["records_held_out"] == len(cases)
    assert {c.group for c in cases} == {ESCALATIONS_GROUP}
    assert all(c.expected == c.query.split()[-1] for c in cases)  # the cloud's answer, not the scratchpad
    assert not {c.query for c in cases} & {e.query for e in kept.examples}
    again = hold_out(training(1000), 0.2, str.lower)[1]
    assert again == cases
    assert hold_out(training(50), 0.0, str.lower)[1] == []
    with pytest.raises(ConfigError):
        hold_out(training(5), 1.0, str.lower)


def test_the_bases_dataset_gives_the_validation_cases_and_the_rule(tmp_path: Path) -> None:
    rows = [Row(query=f"turn on lamp {i}", answer=f'{{"on": {i}}}', group="simple") for i in range(5)]
    rows.append(Row(messages=({"role": "system", "content": "s"}, {"role": "user", "content": "u"}), answer="a"))
    write_dataset(tmp_path / "data", name="lamps", answer_match="json", train=rows, validation=rows, test=rows)
    base = manifest({"answer_match": "json"}, {"dataset": {"path": str(tmp_path / "data")}})
    cases = base_cases(base, n=100, seed=0)
    assert [c.query for c in cases] == [r.query for r in rows[:5]]  # conversations are not the student's
    assert {c.group for c in cases} == {"simple"} and answer_rule(base) == "json"
    moved = manifest({"answer_match": "json"}, {"dataset": {"path": str(tmp_path / "gone")}})
    with pytest.raises(ConfigError, match="pass --data"):
        base_cases(moved, n=100, seed=0)
    assert len(base_cases(moved, n=3, seed=0, data=tmp_path / "data")) == 3


def test_a_bundle_of_the_built_in_task_gets_its_validation_draw_and_number_matching() -> None:
    cases = base_cases(manifest(), n=200, seed=0)
    assert len(cases) == 200 and {c.group for c in cases} <= {"k=1", "k=2", "k=3", "k=4"}
    assert answer_rule(manifest()) == "number" and answer_rule(manifest({"answer_match": "exact"})) == "exact"


def test_evidence_is_split_in_two_disjoint_halves_the_same_way_every_time() -> None:
    cases = [GateCase(f"query {i}", str(i), "g") for i in range(1000)]
    calibrate, gate = split_evidence(cases)
    assert 420 < len(calibrate) < 580 and len(calibrate) + len(gate) == 1000
    assert not {c.query for c in calibrate} & {c.query for c in gate}
    assert split_evidence(list(reversed(cases)))[0] == list(reversed(calibrate))


def test_the_base_task_is_its_dataset_or_the_built_in_one(tmp_path: Path) -> None:
    train = [Row(query=f"dim lamp {i}", answer=str(i)) for i in range(50)]
    write_dataset(tmp_path / "data", name="lamps", answer_match="exact", train=train, validation=train, test=train)
    task = base_task(manifest({"answer_match": "exact"}, {"dataset": {"path": str(tmp_path / "data")}}))
    assert isinstance(task, DatasetTask) and task.rule == "exact" and not task.pairs
    replay = task.replay_queries(20, seed=0)
    assert len(set(replay)) == 20 and set(replay) <= {r.query for r in train}
    assert task.replay_queries(20, seed=0) == replay and len(task.replay_queries(500, seed=0)) == 50
    assert isinstance(base_task(manifest()), ArithmeticTask)
    # A bundle that says its answers are JSON but not where its data is cannot be the built-in task.
    with pytest.raises(ConfigError, match="pass --data"):
        base_task(manifest({"answer_match": "json"}))
