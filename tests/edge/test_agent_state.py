"""The agent's state files on a real filesystem: a save leaves two whole generations, and a start
reads whatever a crash or a bad disk left (edge/agent_state.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecloud.edge.agent_state import PREVIOUS_FILE, STATE_FILE, StateStore, read_state


def saved(folder: Path, *revisions: int) -> StateStore:
    store = StateStore(folder)
    for revision in revisions:
        store.state["newest_revision"] = revision
        store.save()
    return store


def test_a_first_start_has_an_empty_state_and_no_problem(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.problem == "" and store.state["newest_revision"] == 0 and store.state["commands"] == {}
    assert read_state(tmp_path) == (None, "")


def test_each_save_keeps_the_generation_before_it(tmp_path: Path) -> None:
    saved(tmp_path, 3, 7)
    assert json.loads((tmp_path / STATE_FILE).read_text())["newest_revision"] == 7
    assert json.loads((tmp_path / PREVIOUS_FILE).read_text())["newest_revision"] == 3
    reopened = StateStore(tmp_path)
    assert reopened.problem == "" and reopened.state["newest_revision"] == 7


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_text(p.read_text()[:10]),  # truncated by a power cut on a lying disk
        lambda p: p.write_bytes(b"\x00" * 64),
        lambda p: p.write_text("[1, 2]"),  # JSON, but not a state
        lambda p: p.unlink(),  # a save cut between its two renames
    ],
    ids=["truncated", "zeros", "not-an-object", "missing"],
)
def test_a_damaged_state_falls_back_to_the_previous_generation_and_says_so(tmp_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    saved(tmp_path, 3, 7)
    damage(tmp_path / STATE_FILE)
    store = StateStore(tmp_path)
    assert store.state["newest_revision"] == 3  # one save behind, not reset to 0
    assert "recovered the previous generation" in store.problem
    if (tmp_path / (STATE_FILE + ".corrupt")).exists():  # kept for inspection, out of the way
        assert not (tmp_path / STATE_FILE).exists()
    store.save()  # the next save is clean again
    assert StateStore(tmp_path).problem == ""


def test_with_both_generations_unreadable_it_starts_empty_and_says_the_floor_is_lost(tmp_path: Path) -> None:
    saved(tmp_path, 3, 7)
    (tmp_path / STATE_FILE).write_text("{")
    (tmp_path / PREVIOUS_FILE).write_text("")
    store = StateStore(tmp_path)
    assert store.state["newest_revision"] == 0 and store.state["proven"] == []
    assert "unreadable too" in store.problem and "empty state" in store.problem
    assert (tmp_path / (STATE_FILE + ".corrupt")).read_text() == "{"
