"""The stored responses over a real SQLite file: what survives a reopen, what a late writer cannot
overwrite, and the bound on what is kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.edge.api import response_store
from edgecloud.edge.api.response_store import ResponseStore, StoredResponse
from edgecloud.shared.base.errors import InvalidInputError


def record(response_id: str, **fields: object) -> StoredResponse:
    base: dict[str, object] = {
        "id": response_id,
        "owner": "alice",
        "model": "edgecloud",
        "created_at": 1.0,
        "background": True,
        "stream": False,
        "request": {"query": "CALCULATE 1 + 2", "route": "auto", "max_reasoning_tokens": None,
                    "max_output_tokens": None},
    }  # fmt: skip
    return StoredResponse(**{**base, **fields})  # type: ignore[arg-type]


def test_a_response_survives_a_reopen_and_ends_once(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = ResponseStore(path)
    store.add(record("resp_a"))
    store.add(record("resp_b", created_at=0.5, stream=True))
    with pytest.raises(InvalidInputError, match="already used"):
        store.add(record("resp_a"))
    assert [r.id for r in store.unfinished()] == ["resp_b", "resp_a"]  # oldest first
    events = [{"type": "response.created", "sequence_number": 0}]
    assert store.finish("resp_b", "cancelled", {"status": "cancelled"}, events)
    assert not store.finish("resp_b", "completed", {"status": "completed"})  # a late writer loses
    store.close()

    reopened = ResponseStore(path)
    assert [r.id for r in reopened.unfinished()] == ["resp_a"]
    ended = reopened.get("resp_b")
    assert ended is not None and ended.finished and ended.stream
    assert ended.status == "cancelled" and ended.response == {"status": "cancelled"} and ended.events == events
    assert reopened.get("resp_a") == record("resp_a")  # as it was stored, request included
    assert reopened.get("resp_nothing") is None
    with pytest.raises(ValueError, match="terminal"):
        reopened.finish("resp_a", "queued", {})


def test_only_the_newest_finished_responses_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(response_store, "MAX_STORED", 3)
    store = ResponseStore(tmp_path / "store.sqlite3")
    store.add(record("resp_open"))  # never finished: never forgotten
    for n in range(5):
        store.add(record(f"resp_{n}"))
        store.finish(f"resp_{n}", "completed", {"n": n})
    kept = [n for n in range(5) if store.get(f"resp_{n}") is not None]
    assert kept == [2, 3, 4]
    assert store.get("resp_open") is not None
    store.add(record("resp_done", status="completed", response={"n": 5}))  # stored finished at once
    assert store.get("resp_2") is None and store.get("resp_done") is not None
