"""What every built-in task shares: split names and mixes checked, and every split generated and
written as a dataset folder that reads back."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from edgecloud.modelkit.data.datasets import SPLITS, Row, read_dataset
from edgecloud.tasks.common import check_mix, check_split, write_task


def test_a_split_is_one_of_the_dataset_s() -> None:
    assert [check_split(s) for s in SPLITS] == list(SPLITS)
    for bad in ("valid", "TRAIN", ""):
        with pytest.raises(ValueError, match="split must be one of train, validation, test"):
            check_split(bad)


def test_a_mix_names_known_groups_with_weights_that_add_up_to_something() -> None:
    groups = ("lights", "heating", "blinds")
    mix = {"lights": 2.0, "heating": 0.0}
    checked = check_mix(mix, groups)
    assert checked == mix and checked is not mix  # a copy: the caller's may change later
    with pytest.raises(ValueError, match="unknown group 'doors'"):
        check_mix({"lights": 1.0, "doors": 1.0}, groups)
    for weights in ({"lights": -1.0, "heating": 2.0}, {"lights": 0.0}, {}, {"lights": math.nan}):
        with pytest.raises(ValueError, match="mix weights must be >= 0 with a positive sum"):
            check_mix(weights, groups)


def test_every_split_is_generated_and_written(tmp_path: Path) -> None:
    calls: list[tuple[int, int, str]] = []

    def rows(n: int, seed: int, split: str) -> list[Row]:
        calls.append((n, seed, split))
        return [Row(query=f"{split} query {i}", answer=str(i), group=split) for i in range(n)]

    sizes = {"train": 5, "validation": 3, "test": 2}
    dataset = write_task(
        tmp_path / "task", rows, name="counting", answer_match="number", description="count things", sizes=sizes, seed=7
    )
    assert calls == [(5, 7, "train"), (3, 7, "validation"), (2, 7, "test")]
    assert dataset == read_dataset(tmp_path / "task")  # what is returned is what was written
    assert (dataset.name, dataset.answer_match, dataset.description) == ("counting", "number", "count things")
    assert [len(dataset.split(s)) for s in SPLITS] == [5, 3, 2]
    assert dataset.validation[2] == Row(query="validation query 2", answer="2", group="validation")


def test_an_empty_split_is_refused_before_anything_is_generated(tmp_path: Path) -> None:
    def rows(n: int, seed: int, split: str) -> list[Row]:
        pytest.fail("nothing is generated for sizes that are refused")

    with pytest.raises(ValueError, match="validation needs at least one row, got 0"):
        write_task(
            tmp_path / "task", rows, name="x", answer_match="exact", description="", seed=0,
            sizes={"train": 5, "validation": 0, "test": 2},
        )  # fmt: skip
    assert not (tmp_path / "task").exists()
