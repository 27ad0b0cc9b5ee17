"""``SessionRunner`` alone: sessions into an engine that only records their jobs, engine events
played by hand into the session's log, the ends of a session written to a real SQLite store.
Each test runs on its own event loop, as the runner's engine events are handed to one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from edgecloud.cloud.budget import BudgetPolicy
from edgecloud.cloud.engine import EngineConfig, EngineEvent, EngineEventKind, EventStream, GenerationResult, Job
from edgecloud.cloud.journal import EventJournal
from edgecloud.cloud.metrics import CloudMetrics
from edgecloud.cloud.session_runner import SessionRunner
from edgecloud.cloud.sessions import Session
from edgecloud.cloud.stores import SessionStore
from edgecloud.shared.base.errors import ResourceExhaustedError
from edgecloud.shared.reasoner.session import Event, EventKind, Failure, SessionStatus, ThinkParams, Usage

K = EngineEventKind


class RecordingEngine:
    """Takes jobs and keeps them; the test reports their events."""

    config = EngineConfig(default_max_output_tokens=16, max_output_tokens=32)
    name, version = "teacher", 3

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.cancelled: list[str] = []

    def cancel(self, session_id: str) -> None:
        self.cancelled.append(session_id)

    def generate(self, job: Job) -> EventStream:
        stream = EventStream(cancel=lambda: self.cancel(job.session_id))
        self.submit(replace(job, on_event=stream.push))
        return stream

    def submit(self, job: Job) -> int:
        self.jobs.append(job)
        return len(self.jobs)


class Harness:
    def __init__(self, *, max_open_per_device: int = 0) -> None:
        self.engine = RecordingEngine()
        self.store = SessionStore()
        self.sessions: dict[str, Session] = {}
        self.remembered: list[Event] = []
        self.runner = SessionRunner(
            self.engine,  # type: ignore[arg-type]
            self.store,
            EventJournal(self.store, every_s=0.1, on_written=lambda session_id, seq: None),
            current=self.sessions.get,
            remember=lambda params, budget, completed: self.remembered.append(completed),
            max_open_per_device=max_open_per_device,
            budget=BudgetPolicy(),
            metrics=CloudMetrics(),
            escalations=None,
        )

    def session(self, device: str = "device-a", **fields: Any) -> Session:
        """A session as the manager hands it over: accepted, stored and current."""
        session_id = f"s{len(self.sessions) + 1}"
        params = ThinkParams(query="2+3?", request_id=session_id, device_id=device, **fields)
        session = Session(session_id, params, 8, created=0.0)
        accepted = Event(seq=1, session_id=session_id, kind=EventKind.ACCEPTED, reasoning_budget=8)
        self.store.accept(session_id, params, 8, accepted)
        session.events.append(accepted)
        session.written = 1
        self.sessions[session_id] = session
        return session


def run(test: Callable[[], Any]) -> None:
    async def main() -> None:
        test()
        for _ in range(5):  # the engine events handed to the loop and read from its stream, then the readers' wake-ups
            await asyncio.sleep(0)

    asyncio.run(main())


def finished(answer: str = "5") -> GenerationResult:
    usage = Usage(input_tokens=4, reasoning_tokens=2, output_tokens=len(answer) + 2)
    return GenerationResult(answer, usage, False, "stop", reasoning_ms=1.0, answer_ms=1.0, first_answer_token_ms=1.0)


def test_a_device_holds_at_most_its_share_of_the_queue_until_one_ends() -> None:
    h = Harness(max_open_per_device=2)

    def test() -> None:
        first, _ = h.session(), h.session()
        for session in list(h.sessions.values()):
            h.runner.submit(session)
        with pytest.raises(ResourceExhaustedError, match="2 unfinished sessions"):
            h.runner.check_share("device-a")
        h.runner.check_share("device-b")  # another device's share is its own
        h.runner.fail(first, Failure("CANCELLED", "cancelled by the client"), SessionStatus.CANCELLED)
        h.runner.check_share("device-a")

    run(test)
    assert len(h.engine.jobs) == 2


def test_the_job_takes_the_sessions_output_limit_within_the_engines_ceiling() -> None:
    h = Harness()
    run(lambda: [h.runner.submit(h.session()), h.runner.submit(h.session(max_output_tokens=99))])
    assert [job.max_output_tokens for job in h.engine.jobs] == [16, 32]


def test_engine_events_become_the_log_and_the_end_is_written_and_remembered() -> None:
    h = Harness()
    session = h.session()

    def test() -> None:
        h.runner.submit(session)
        report = h.engine.jobs[0].on_event
        report(EngineEvent(session.id, K.STARTED))
        report(EngineEvent(session.id, K.REASONING_DELTA, text="add", reasoning_tokens=2))
        report(EngineEvent(session.id, K.ANSWER_DELTA, text="5", reasoning_tokens=2, answer_tokens=1))
        report(EngineEvent(session.id, K.FINISHED, result=finished()))

    run(test)
    assert [(e.seq, e.kind) for e in session.events] == [
        (1, EventKind.ACCEPTED),
        (2, EventKind.REASONING_DELTA),
        (3, EventKind.ANSWER_DELTA),
        (4, EventKind.COMPLETED),
    ]
    assert session.status is SessionStatus.COMPLETED and session.written == 4
    assert (session.reasoning_tokens, session.answer_tokens) == (2, 1)
    assert h.remembered == [session.result]
    stored = h.store.get(session.id)
    assert stored is not None and stored.info is not None and stored.info.status is SessionStatus.COMPLETED
    assert h.store.events(session.id) == session.events


def test_events_for_a_session_no_longer_current_are_dropped() -> None:
    h = Harness()
    session = h.session()

    def test() -> None:
        h.runner.submit(session)
        del h.sessions[session.id]  # expired meanwhile
        h.engine.jobs[0].on_event(EngineEvent(session.id, K.FINISHED, result=finished()))

    run(test)
    assert session.status is SessionStatus.QUEUED and len(session.events) == 1


def test_a_cached_result_completes_the_session_at_once() -> None:
    h = Harness()
    session = h.session()
    usage = Usage(input_tokens=4, reasoning_tokens=2, output_tokens=3)
    cached = Event(seq=4, session_id="earlier", kind=EventKind.COMPLETED, text="5", usage=usage, finish_reason="stop")
    run(lambda: h.runner.serve_cached(session, cached))
    assert [e.kind for e in session.events] == [EventKind.ACCEPTED, EventKind.ANSWER_DELTA, EventKind.COMPLETED]
    completed = session.events[-1]
    assert completed.cached and completed.usage.cached_tokens == 4 and completed.text == "5"
    assert h.engine.jobs == [] and h.remembered == []
