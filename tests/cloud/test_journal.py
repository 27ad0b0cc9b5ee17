"""The event journal: running sessions' events written behind to a real SQLite store, a bounded
write rate, a failed write retried with what came since, and where a restart picks a session up."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from edgecloud.cloud.engine import Resume
from edgecloud.cloud.journal import EventJournal, resume_from
from edgecloud.cloud.stores import Checkpoint, Progress, SessionStore
from edgecloud.shared.reasoner.session import Event, EventKind, ThinkParams

WAIT_S = 10.0
"""Longest wait for a write the journal owes (the tests fail, not hang, when it never comes)."""


def accepted(session_id: str) -> Event:
    return Event(1, session_id, EventKind.ACCEPTED, reasoning_budget=64, model_name="m", model_version=1)


def delta(session_id: str, seq: int, text: str, kind: EventKind = EventKind.REASONING_DELTA) -> Event:
    return Event(seq, session_id, kind, text=text)


def open_store(path: Path, *sessions: str) -> SessionStore:
    store = SessionStore(path)
    for i, session_id in enumerate(sessions):
        store.accept(session_id, ThinkParams(request_id=f"r{i}", query="2+3"), 64, accepted(session_id))
    return store


class Written:
    """``on_written``'s calls, with a way to wait for one (the journal calls it on the loop)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, float]] = []
        self._changed = asyncio.Event()

    def __call__(self, session_id: str, seq: int) -> None:
        self.calls.append((session_id, seq, time.monotonic()))
        self._changed.set()

    async def until(self, session_id: str, seq: int) -> float:
        """When ``session_id`` was reported written up to ``seq``."""
        async with asyncio.timeout(WAIT_S):
            while True:
                for sid, written, at in self.calls:
                    if sid == session_id and written >= seq:
                        return at
                self._changed.clear()
                await self._changed.wait()

    def of(self, session_id: str) -> list[int]:
        return [seq for sid, seq, _ in self.calls if sid == session_id]


def test_events_of_every_session_are_written_in_one_transaction(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.sqlite3", "a", "b")

    async def run() -> tuple[EventJournal, Written]:
        written = Written()
        journal = EventJournal(store, every_s=0.05, on_written=written)
        # Queued before the writer starts: its first write takes them all.
        journal.record("a", delta("a", 2, "two "), reasoning_tokens=1, answer_tokens=0)
        journal.record("a", delta("a", 3, "three"), reasoning_tokens=2, answer_tokens=0)
        journal.record("b", delta("b", 2, "4", EventKind.ANSWER_DELTA), reasoning_tokens=0, answer_tokens=1)
        journal.start()
        await written.until("a", 3)
        await written.until("b", 2)
        await journal.close()
        return journal, written

    journal, written = asyncio.run(run())
    assert journal.writes == 1
    assert written.of("a") == [3] and written.of("b") == [2]  # how far each is written, once
    assert store.progress("a") == Progress([accepted("a"), delta("a", 2, "two "), delta("a", 3, "three")], 2, 0)
    assert store.progress("b") == Progress([accepted("b"), delta("b", 2, "4", EventKind.ANSWER_DELTA)], 0, 1)
    store.close()


def test_the_first_write_is_at_once_and_the_next_waits_every_s(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.sqlite3", "a", "b")
    every_s = 1.5

    async def run() -> tuple[float, float, float, EventJournal, Written]:
        written = Written()
        journal = EventJournal(store, every_s=every_s, on_written=written)
        journal.start()
        recorded = time.monotonic()
        journal.record("a", delta("a", 2, "x"), reasoning_tokens=1, answer_tokens=0)
        first = await written.until("a", 2)
        # Three events of two sessions while the writer rests: the next write takes them together.
        journal.record("a", delta("a", 3, "y"), reasoning_tokens=2, answer_tokens=0)
        journal.record("b", delta("b", 2, "z"), reasoning_tokens=1, answer_tokens=0)
        journal.record("a", delta("a", 4, "w"), reasoning_tokens=3, answer_tokens=0)
        second = await written.until("a", 4)
        await written.until("b", 2)
        await journal.close()
        return recorded, first, second, journal, written

    recorded, first, second, journal, written = asyncio.run(run())
    assert first - recorded < every_s / 2, "the first write after a quiet spell does not wait"
    assert second - first >= every_s - 0.05, "a write follows the previous one after every_s at the earliest"
    assert journal.writes == 2 and written.of("a") == [2, 4]
    assert [e.text for e in store.progress("a").events[1:]] == ["x", "y", "w"]
    store.close()


class FailingOnce(SessionStore):
    """The real store, whose first append fails (a disk full, a lock held too long)."""

    failures = 1

    def append(self, checkpoints: list[Checkpoint]) -> None:  # type: ignore[override]
        if self.failures:
            self.failures -= 1
            raise OSError("disk full")
        super().append(checkpoints)


def test_a_failed_write_is_retried_with_what_came_since(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = FailingOnce(tmp_path / "s.sqlite3")
    store.accept("a", ThinkParams(request_id="r0", query="2+3"), 64, accepted("a"))

    async def run() -> tuple[EventJournal, Written]:
        written = Written()
        journal = EventJournal(store, every_s=0.05, on_written=written)
        journal.record("a", delta("a", 2, "one "), reasoning_tokens=1, answer_tokens=0, hidden_reasoning="h1 ")
        await journal.flush()  # fails: kept queued
        assert written.calls == [] and journal.writes == 0
        journal.record("a", delta("a", 3, "two"), reasoning_tokens=2, answer_tokens=0, hidden_reasoning="h2")
        journal.start()
        await written.until("a", 3)
        await journal.close()
        return journal, written

    with caplog.at_level(logging.ERROR, logger="edgecloud.cloud.journal"):
        journal, written = asyncio.run(run())
    assert "could not write the events of 1 running sessions" in caplog.text
    assert journal.writes == 1 and written.of("a") == [3]
    # The older events first, then the newer, and the counts as of the newest.
    assert store.progress("a") == Progress([accepted("a"), delta("a", 2, "one "), delta("a", 3, "two")], 2, 0, "h1 h2")
    store.close()


def test_a_forgotten_session_is_not_written_and_close_writes_the_rest(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.sqlite3", "a", "b")

    async def run() -> Written:
        written = Written()
        journal = EventJournal(store, every_s=0.05, on_written=written)
        journal.record("a", delta("a", 2, "a2"), reasoning_tokens=1, answer_tokens=0)
        journal.record("b", delta("b", 2, "b2"), reasoning_tokens=1, answer_tokens=0)
        journal.forget("a")  # it finished: its end writes its whole log
        journal.start()
        await journal.close()
        return written

    written = asyncio.run(run())
    assert written.of("a") == [] and written.of("b") == [2]
    assert store.progress("a").events == [accepted("a")]
    assert [e.text for e in store.progress("b").events] == ["", "b2"]
    store.close()


def test_flush_with_nothing_queued_writes_nothing(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.sqlite3", "a")
    journal = EventJournal(store, every_s=0.05, on_written=lambda *_: pytest.fail("nothing was written"))
    asyncio.run(journal.flush())
    assert journal.writes == 0
    store.close()


# Where a restart picks a session up.


def test_nothing_generated_is_no_resume() -> None:
    assert resume_from(Progress([accepted("a")])) is None
    assert resume_from(Progress([])) is None


def test_a_streaming_session_resumes_from_its_deltas() -> None:
    events = [
        accepted("a"),
        delta("a", 2, "2+3 "),
        delta("a", 3, "is 5"),
        delta("a", 4, "The answer", EventKind.ANSWER_DELTA),
        delta("a", 5, " is 5", EventKind.ANSWER_DELTA),
    ]
    assert resume_from(Progress(events, reasoning_tokens=4, answer_tokens=3)) == Resume(
        "2+3 is 5", 4, "The answer is 5", 3
    )


def test_a_hiding_session_resumes_from_its_hidden_reasoning() -> None:
    events = [accepted("a"), Event(2, "a", EventKind.REASONING_PROGRESS, reasoning_tokens=16)]
    progress = Progress(events, reasoning_tokens=16, answer_tokens=0, hidden_reasoning="2+3 is 5")
    assert resume_from(progress) == Resume("2+3 is 5", 16, "", 0)


def test_counted_tokens_without_text_still_resume() -> None:
    # Tokens spent count against the budget even if no text survived (whitespace trimmed, say).
    assert resume_from(Progress([accepted("a")], reasoning_tokens=3)) == Resume("", 3, "", 0)
