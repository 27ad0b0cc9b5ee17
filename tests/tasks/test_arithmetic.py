"""The arithmetic task as a dataset folder: the rows modelkit/arithmetic/task.py draws, with the teacher's
scratchpad."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.modelkit.arithmetic.scratchpad import think_text
from edgecloud.modelkit.arithmetic.task import Problem, Split, evaluate_expression, generate, normalize_query
from edgecloud.modelkit.data.datasets import read_dataset
from edgecloud.shared.bundles.answers import answers_match
from edgecloud.tasks import arithmetic


def test_a_hand_written_problem_becomes_its_row() -> None:
    problem = Problem(query="(12+34)*5-7", expression="(12+34)*5-7", start=12, steps=(("+", 34), ("*", 5), ("-", 7)),
                      answer=223)  # fmt: skip
    row = arithmetic.row_of(problem)
    assert (row.query, row.answer, row.group) == ("(12+34)*5-7", "223", "k=3")
    # The layout modelkit/arithmetic/scratchpad.py's docstring draws for this very expression.
    assert (
        row.reasoning
        == "+21+43*50-70\n+21=20100000000000\n+43=60400000000000\n*50=03322000000000\n-70=31202000000000\n"
    )
    negative = arithmetic.row_of(Problem(query="3-10", expression="3-10", start=3, steps=(("-", 10),), answer=-7))
    assert negative.answer == "-7" and negative.reasoning.splitlines()[-1].startswith("~00=")


def test_rows_are_deterministic_and_are_the_task_generators_problems() -> None:
    rows = arithmetic.generate_rows(200, 5, "validation")
    assert rows == arithmetic.generate_rows(200, 5, "validation")
    problems = generate(200, 5, Split.VALIDATION)
    assert [r.query for r in rows] == [p.query for p in problems]
    assert [r.reasoning for r in rows] == [think_text(p) for p in problems]
    assert [r.group for r in rows] == [f"k={p.k}" for p in problems]


def test_every_answer_is_the_integer_value_of_its_query() -> None:
    for row in arithmetic.generate_rows(300, 0, "train"):
        assert row.answer == str(int(row.answer))
        assert int(row.answer) == evaluate_expression(normalize_query(row.query))
        assert answers_match("number", f" {row.answer}. ", row.answer)


def test_splits_draw_from_disjoint_seed_spaces() -> None:
    splits = {split: arithmetic.generate_rows(100, 0, split) for split in ("train", "validation", "test")}
    assert splits["train"] == [arithmetic.row_of(p) for p in generate(100, 0, Split.TRAIN)]
    assert splits["test"] == [arithmetic.row_of(p) for p in generate(100, 0, Split.TEST)]
    assert len({tuple(r.query for r in rows) for rows in splits.values()}) == 3
    assert arithmetic.generate_rows(100, 1, "train") != splits["train"]


def test_groups_follow_the_mix() -> None:
    groups = {r.group for r in arithmetic.generate_rows(400, 0, "train")}
    assert groups == set(arithmetic.GROUPS) == {"k=1", "k=2", "k=3", "k=4"}
    assert {r.group for r in arithmetic.generate_rows(50, 0, "train", mix={"k=3": 1.0})} == {"k=3"}
    with pytest.raises(ValueError, match="unknown group 'k=5'"):
        arithmetic.generate_rows(5, 0, "train", mix={"k=5": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        arithmetic.generate_rows(5, 0, "train", mix={"k=1": 0.0})
    with pytest.raises(ValueError, match="split must be one of train, validation, test"):
        arithmetic.generate_rows(5, 0, "golden")


def test_write_round_trips_through_the_dataset_contract(tmp_path: Path) -> None:
    written = arithmetic.write(tmp_path / "arith", train=40, validation=10, test=12, seed=3)
    data = read_dataset(tmp_path / "arith")
    assert data == written
    assert (data.name, data.answer_match) == ("arithmetic", "number")
    assert (len(data.train), len(data.validation), len(data.test)) == (40, 10, 12)
    assert list(data.test) == arithmetic.generate_rows(12, 3, "test")
    with pytest.raises(ValueError, match="validation needs at least one row"):
        arithmetic.write(tmp_path / "empty", train=1, validation=0, test=1)
