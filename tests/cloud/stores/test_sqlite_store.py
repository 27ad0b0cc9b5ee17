"""SQLite session records: accept, finish, find, expire, survive reopening."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest

from edgecloud.cloud.stores import Checkpoint, Progress, RequestTaken, SessionStorage, SessionStore
from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.reasoner.session import Event, EventKind, SessionInfo, SessionStatus, ThinkParams, Usage
from edgecloud.shared.reasoner.wire import event_to_pb, think_request_to_pb


def accepted(session_id: str) -> Event:
    return Event(1, session_id, EventKind.ACCEPTED, reasoning_budget=64, model_name="m", model_version=1)


def test_accept_finish_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = SessionStore(path)
    params = ThinkParams(request_id="r1", query="2+3", device_id="d", max_reasoning_tokens=64)
    store.accept("s1", params, 64, accepted("s1"))
    store.accept("s2", ThinkParams(request_id="r2", query="4*5"), 32, accepted("s2"))
    events = [
        accepted("s1"),
        Event(2, "s1", EventKind.ANSWER_DELTA, text="5"),
        Event(3, "s1", EventKind.COMPLETED, text="5", usage=Usage(3, 4, 5), finish_reason="stop"),
    ]
    store.finish(SessionInfo("s1", "r1", SessionStatus.COMPLETED, 3, answer="5"), events)
    store.close()

    reopened = SessionStore(path)
    found = reopened.find_request("r1", "d")
    assert found is not None and found.params == params and found.budget == 64
    assert found.info is not None and found.info.answer == "5"
    assert reopened.events("s1") == events
    assert [s.session_id for s in reopened.unfinished()] == ["s2"]
    assert [s.session_id for s in reopened.completed(10)] == ["s1"]
    with pytest.raises(RequestTaken, match="s1") as taken:  # a request id is accepted once per device
        reopened.accept("s3", params, 64, accepted("s3"))
    assert taken.value.session_id == "s1"
    other = ThinkParams(request_id="r1", query="9-1", device_id="e")
    reopened.accept("s4", other, 8, accepted("s4"))  # another device may use the same request id
    assert reopened.find_request("r1", "e").session_id == "s4"  # type: ignore[union-attr]
    assert reopened.find_request("r1", "d").session_id == "s1"  # type: ignore[union-attr]
    assert reopened.find_request("r1") is None  # no device: its own namespace
    reopened.forget("s4")
    assert reopened.expire(time.time() + 1) == 1  # only finished sessions expire
    assert reopened.get("s1") is None and reopened.events("s1") == []
    assert reopened.get("s2") is not None


def test_a_store_from_before_per_device_request_ids_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE sessions (session_id TEXT PRIMARY KEY, request_id TEXT NOT NULL UNIQUE, request BLOB NOT NULL,
            budget INTEGER NOT NULL, accepted BLOB NOT NULL, created_at REAL NOT NULL, finished_at REAL, info BLOB);
        CREATE TABLE events (session_id TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,
            seq INTEGER NOT NULL, event BLOB NOT NULL, PRIMARY KEY (session_id, seq));
        """
    )
    params = ThinkParams(request_id="r1", query="2+3", device_id="d")
    db.execute(
        "INSERT INTO sessions (session_id, request_id, request, budget, accepted, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (
            "s1",
            "r1",
            think_request_to_pb(params).SerializeToString(),
            8,
            event_to_pb(accepted("s1")).SerializeToString(),
            1.0,
        ),
    )
    db.commit()
    db.close()
    store = SessionStore(path)
    events = [accepted("s1"), Event(2, "s1", EventKind.COMPLETED, text="5", finish_reason="stop")]
    store.finish(SessionInfo("s1", "r1", SessionStatus.COMPLETED, 2, answer="5", device_id="d"), events)
    store.accept("s2", replace(params, device_id="e"), 8, accepted("s2"))  # the old UNIQUE is gone
    store.close()
    reopened = SessionStore(path)
    found = reopened.find_request("r1", "d")
    assert found is not None and found.params == params and reopened.events("s1") == events
    assert reopened.find_request("r1", "e").session_id == "s2"  # type: ignore[union-attr]
    assert reopened.expire(time.time() + 1) == 1 and reopened.events("s1") == []  # the cascade still holds
    reopened.close()


def test_checkpoints_add_to_an_unfinished_session_until_it_finishes(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = SessionStore(path)
    store.accept("s1", ThinkParams(request_id="r1", query="2+3"), 64, accepted("s1"))
    assert store.progress("s1") == Progress([accepted("s1")])  # the log starts when it is accepted
    first = (Event(2, "s1", EventKind.REASONING_PROGRESS, reasoning_tokens=16),)
    second = (
        Event(3, "s1", EventKind.REASONING_PROGRESS, reasoning_tokens=20),
        Event(4, "s1", EventKind.ANSWER_DELTA, text="5"),
    )
    store.append([Checkpoint("s1", first, reasoning_tokens=16, hidden_reasoning="2+3 is ")])
    store.append([Checkpoint("s1", second, reasoning_tokens=20, answer_tokens=1, hidden_reasoning="5.")])
    store.append([Checkpoint("gone", first, reasoning_tokens=16)])  # a session forgotten meanwhile: ignored
    store.close()

    reopened = SessionStore(path)
    assert reopened.progress("s1") == Progress([accepted("s1"), *first, *second], 20, 1, "2+3 is 5.")
    assert reopened.events("s1") == [accepted("s1"), *first, *second]
    final = [accepted("s1"), *first, *second, Event(5, "s1", EventKind.COMPLETED, text="5", finish_reason="stop")]
    reopened.finish(SessionInfo("s1", "r1", SessionStatus.COMPLETED, 5, answer="5"), final)
    late = (Event(5, "s1", EventKind.ANSWER_DELTA, text="!"),)
    reopened.append([Checkpoint("s1", late, answer_tokens=2)])  # written behind after it finished: ignored
    assert reopened.progress("s1") == Progress(final) and list(reopened.unfinished()) == []
    reopened.close()


def test_a_store_from_before_checkpoints_gains_them_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE sessions (session_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, request_id TEXT NOT NULL,
            request BLOB NOT NULL, budget INTEGER NOT NULL, accepted BLOB NOT NULL, created_at REAL NOT NULL,
            finished_at REAL, info BLOB, UNIQUE (device_id, request_id));
        CREATE TABLE events (session_id TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,
            seq INTEGER NOT NULL, event BLOB NOT NULL, PRIMARY KEY (session_id, seq));
        """
    )
    params = ThinkParams(request_id="r1", query="2+3", device_id="d")
    db.execute(
        "INSERT INTO sessions (session_id, device_id, request_id, request, budget, accepted, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        ("s1", "d", "r1", think_request_to_pb(params).SerializeToString(), 8,
         event_to_pb(accepted("s1")).SerializeToString(), 1.0),
    )  # fmt: skip
    db.commit()
    db.close()
    store = SessionStore(path)
    assert [s.session_id for s in store.unfinished()] == ["s1"]
    assert store.progress("s1") == Progress([accepted("s1")])  # its log starts with the stored request's
    delta = Event(2, "s1", EventKind.ANSWER_DELTA, text="5")
    store.append([Checkpoint("s1", (delta,), answer_tokens=1)])
    store.close()
    reopened = SessionStore(path)
    assert reopened.progress("s1") == Progress([accepted("s1"), delta], answer_tokens=1)
    reopened.forget("s1")
    reopened.accept("s1", params, 8, accepted("s1"))
    assert reopened.progress("s1") == Progress([accepted("s1")])  # its checkpoints went with it
    reopened.close()


def test_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        SessionStore(tmp_path / "missing" / "s.sqlite3")


def test_the_sqlite_store_is_a_session_storage(tmp_path) -> None:
    store = SessionStore(tmp_path / "s.sqlite3")
    assert isinstance(store, SessionStorage)
    store.close()
