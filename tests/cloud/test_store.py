"""SQLite session records: accept, finish, find, expire, survive reopening."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from edgecloud.cloud.store import SessionStorage, SessionStore
from edgecloud.shared.errors import ConfigError
from edgecloud.shared.reasoning import Event, EventKind, SessionInfo, SessionStatus, ThinkParams, Usage


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
    found = reopened.find_request("r1")
    assert found is not None and found.params == params and found.budget == 64
    assert found.info is not None and found.info.answer == "5"
    assert reopened.events("s1") == events
    assert [s.session_id for s in reopened.unfinished()] == ["s2"]
    assert [s.session_id for s in reopened.completed(10)] == ["s1"]
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):  # a request id is accepted once
        reopened.accept("s3", params, 64, accepted("s3"))
    assert reopened.expire(time.time() + 1) == 1  # only finished sessions expire
    assert reopened.get("s1") is None and reopened.events("s1") == []
    assert reopened.get("s2") is not None


def test_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        SessionStore(tmp_path / "missing" / "s.sqlite3")


def test_the_sqlite_store_is_a_session_storage(tmp_path) -> None:
    store = SessionStore(tmp_path / "s.sqlite3")
    assert isinstance(store, SessionStorage)
    store.close()
