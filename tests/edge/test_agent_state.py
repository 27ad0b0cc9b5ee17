"""The agent's state (edge/agent_state.py): typed, in the file format of the untyped state before it,
and its files on a real filesystem: a save leaves two whole generations, and a start reads whatever
a crash or a bad disk left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecloud.edge.agent_state import PREVIOUS_FILE, STATE_FILE, AgentState, StateStore, read_state


def saved(folder: Path, *revisions: int) -> StateStore:
    store = StateStore(folder)
    for revision in revisions:
        store.state.newest_revision = revision
        store.save()
    return store


def test_a_first_start_has_an_empty_state_and_no_problem(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.problem == "" and store.state == AgentState()
    assert read_state(tmp_path) == (None, "")


def test_each_save_keeps_the_generation_before_it(tmp_path: Path) -> None:
    saved(tmp_path, 3, 7)
    assert json.loads((tmp_path / STATE_FILE).read_text())["newest_revision"] == 7
    assert json.loads((tmp_path / PREVIOUS_FILE).read_text())["newest_revision"] == 3
    reopened = StateStore(tmp_path)
    assert reopened.problem == "" and reopened.state.newest_revision == 7


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_text(p.read_text()[:10]),  # truncated by a power cut on a lying disk
        lambda p: p.write_bytes(b"\x00" * 64),
        lambda p: p.write_text("[1, 2]"),  # JSON, but not a state
        lambda p: p.write_text('{"proven": 5}'),  # an object, but not of a state's types
        lambda p: p.unlink(),  # a save cut between its two renames
    ],
    ids=["truncated", "zeros", "not-an-object", "wrong-types", "missing"],
)
def test_a_damaged_state_falls_back_to_the_previous_generation_and_says_so(tmp_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    saved(tmp_path, 3, 7)
    damage(tmp_path / STATE_FILE)
    store = StateStore(tmp_path)
    assert store.state.newest_revision == 3  # one save behind, not reset to 0
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
    assert store.state == AgentState()
    assert "unreadable too" in store.problem and "empty state" in store.problem
    assert (tmp_path / (STATE_FILE + ".corrupt")).read_text() == "{"


#: A state file as the agent wrote it before its state was typed (a dict saved with
#: ``json.dumps(state, indent=1, sort_keys=True)``): versions 9 and 10 sort as strings, and a key
#: this version does not know (``later``) is kept.
OLD_FILE = json.dumps(
    {
        "session": 12,
        "newest_revision": 40,
        "commands": {"c-1": {"command_id": "c-1", "status": "ACTIVE", "revision": 40, "at": 1.5}},
        "command_expiry": {"c-1": 1900000000.0},
        "installed": {"9": "/state/bundles/a-v9", "10": "/state/bundles/a-v10"},
        "proven": [9, 10],
        "floors": {"a": 10},
        "active": "/state/bundles/a-v10",
        "later": {"x": [1]},
    },
    indent=1,
    sort_keys=True,
)


def test_a_file_from_the_untyped_state_reads_typed_and_saves_byte_for_byte(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text(OLD_FILE)
    store = StateStore(tmp_path)
    assert store.problem == ""
    state = store.state
    assert state.installed == {9: "/state/bundles/a-v9", 10: "/state/bundles/a-v10"} and state.proven == {9, 10}
    assert state.floors == {"a": 10} and state.active == "/state/bundles/a-v10" and state.session == 12
    store.save()
    assert (tmp_path / STATE_FILE).read_text() == OLD_FILE


def test_a_file_from_an_older_agent_gets_the_missing_fields_and_no_active_bundle(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text('{"session": 3, "newest_revision": 2, "commands": {}}')
    store = StateStore(tmp_path)
    assert store.state == AgentState(session=3, newest_revision=2)
    store.save()
    saved_keys = json.loads((tmp_path / STATE_FILE).read_text()).keys()
    assert saved_keys == {"session", "newest_revision", "commands", "command_expiry", "installed", "proven", "floors"}


def test_a_final_ack_is_recorded_until_its_command_expires() -> None:
    state = AgentState()
    state.record("c-1", {"status": "ACTIVE"}, expires_at=100.0, now=50.0)
    state.record("c-2", {"status": "FAILED"}, expires_at=0.0, now=60.0)  # 0: never expires
    assert set(state.commands) == {"c-1", "c-2"}
    state.record("c-3", {"status": "IGNORED"}, expires_at=300.0, now=100.0)  # c-1 expires now
    assert set(state.commands) == set(state.command_expiry) == {"c-2", "c-3"}
