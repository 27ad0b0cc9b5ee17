"""``SessionManager`` as pure logic: a scripted engine that reports each job's events from its own
thread (as the real engine does), a real SQLite ``SessionStore`` in tmp_path, the real budget
policy and metrics. No model, no gRPC; every test drives its own event loop with ``asyncio.run``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecloud.cloud.budget import BudgetConfig, BudgetPolicy
from edgecloud.cloud.engine import (
    EngineConfig,
    EngineEvent,
    EngineEventKind,
    EventStream,
    GenerationResult,
    Job,
    ReasoningEngine,
    Resume,
)
from edgecloud.cloud.escalation_log import read_escalations
from edgecloud.cloud.metrics import CloudMetrics
from edgecloud.cloud.sessions import Session, SessionConfig, SessionManager
from edgecloud.cloud.stores import SessionStore
from edgecloud.shared.base.errors import ConfigError, InvalidInputError, NotFoundError, ResourceExhaustedError
from edgecloud.shared.reasoner.features import decode_features, encode_features
from edgecloud.shared.reasoner.session import (
    EdgeHint,
    Event,
    EventKind,
    Failure,
    Message,
    Sampling,
    SessionStatus,
    ThinkParams,
    Usage,
)

TIMEOUT = 5.0
K = EngineEventKind
ENGINE_THREAD = "scripted-engine"
BUDGET = BudgetConfig(default=64, minimum=8, maximum=128, headroom=1.5, margin=4)
DEFAULT_OUTPUT, MAX_OUTPUT = 16, 32
PRODUCER = {"model_name": "edge-student", "model_version": 2, "model_sha256": "ab" * 32}


# -- the scripted engine -----------------------------------------------------------------------------


class ScriptedEngine:
    """A :class:`ReasoningEngine` whose jobs report exactly the events the test plays.

    ``play(session_id, *events)`` hands events of a submitted job to the engine thread, which
    calls ``job.on_event`` for each in order, and stops reporting a job once it is cancelled
    (``force=True`` delivers them anyway: events already in flight when the cancel came).
    With ``auto``, each submitted job plays ``auto(job)`` at once.
    """

    def __init__(
        self,
        *,
        auto: Callable[[Job], list[EngineEvent]] | None = None,
        max_queue: int = 8,
        name: str = "scripted-teacher",
        version: int = 3,
    ) -> None:
        self.config = EngineConfig(
            max_batch=1, max_queue=max_queue, default_max_output_tokens=DEFAULT_OUTPUT, max_output_tokens=MAX_OUTPUT
        )
        self.name = name
        self.version = version
        self.steps = 0
        self.tokens_generated = 0
        self.default_sampling = Sampling(temperature=0.0, top_p=1.0)
        self.auto = auto
        self.jobs: list[Job] = []
        self.cancelled: list[str] = []
        self.event_threads: set[str] = set()
        self._by_id: dict[str, Job] = {}
        self._waiting: list[str] = []
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._commands: queue.SimpleQueue[tuple[str, tuple[EngineEvent, ...], bool, threading.Event] | None]
        self._commands = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=ENGINE_THREAD, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._commands.put(None)
            self._thread.join(timeout)
            self._thread = None

    def count_prompt_tokens(self, messages: tuple[Message, ...], reasoning_budget: int) -> int:
        return sum(len(m.content) + 4 for m in messages) + 4

    def generate(self, job: Job) -> EventStream:
        stream = EventStream(cancel=lambda: self.cancel(job.session_id))
        self.submit(replace(job, on_event=stream.push))
        return stream

    def submit(self, job: Job) -> int:
        if job.reasoning_budget < 0 or job.max_output_tokens < 1:
            raise InvalidInputError("a job needs a budget >= 0 and output tokens >= 1")
        with self._lock:
            if len(self._waiting) >= self.config.max_queue:
                raise ResourceExhaustedError(f"engine queue full ({self.config.max_queue} waiting)")
            self.jobs.append(job)
            self._by_id[job.session_id] = job
            self._waiting.append(job.session_id)
            position = len(self._waiting) + len(self._running)
        if self.auto is not None:
            self.play(job.session_id, *self.auto(job))
        return position

    def cancel(self, session_id: str) -> None:
        with self._lock:
            self.cancelled.append(session_id)
            if session_id in self._waiting:
                self._waiting.remove(session_id)
            self._running.discard(session_id)

    @property
    def queue_depth(self) -> int:
        with self._lock:
            return len(self._waiting)

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._running)

    def job(self, session_id: str) -> Job:
        return self._by_id[session_id]

    def play(self, session_id: str, *events: EngineEvent, force: bool = False) -> threading.Event:
        """Queue events for the engine thread; the returned flag is set once all were reported."""
        done = threading.Event()
        self._commands.put((session_id, events, force, done))
        return done

    def _run(self) -> None:
        while (command := self._commands.get()) is not None:
            session_id, events, force, done = command
            job = self._by_id[session_id]
            for event in events:
                with self._lock:
                    if session_id in self.cancelled and not force:
                        break
                    if event.kind is K.STARTED and session_id in self._waiting:
                        self._waiting.remove(session_id)
                        self._running.add(session_id)
                    elif event.kind in (K.FINISHED, K.FAILED):
                        self._running.discard(session_id)
                    self.steps += 1
                    if event.kind in (K.REASONING_DELTA, K.ANSWER_DELTA):
                        self.tokens_generated += 1
                self.event_threads.add(threading.current_thread().name)
                job.on_event(event)
            done.set()


def answer_for(query: str) -> str:
    """A deterministic function of the query, as greedy decoding is."""
    return str(sum(map(ord, query)) % 1000)


def result(
    answer: str, *, reasoning_tokens: int, finish_reason: str = "stop", budget_reached: bool = False
) -> GenerationResult:
    return GenerationResult(
        answer=answer,
        usage=Usage(input_tokens=20, reasoning_tokens=reasoning_tokens, output_tokens=len(answer)),
        budget_reached=budget_reached,
        finish_reason=finish_reason,
        reasoning_ms=4.0,
        answer_ms=2.0,
        first_answer_token_ms=5.0,
    )


def script(job: Job, *, finish_reason: str = "stop", budget_reached: bool = False) -> list[EngineEvent]:
    """What a backend reports for ``job``: STARTED, reasoning (progress or text), answer deltas, FINISHED,
    each with the counts so far. A resumed job reports only what follows what it had streamed."""
    sid, resume = job.session_id, job.resume or Resume()
    used = min(job.reasoning_budget, 8)
    events = [EngineEvent(sid, K.STARTED)]
    if used and not resume.answer:
        if job.stream_reasoning:
            steps = [(4, "step one\n"), (8, "step two\n")]
            events += [EngineEvent(sid, K.REASONING_DELTA, text=t, reasoning_tokens=n) for n, t in steps]
        else:
            events += [EngineEvent(sid, K.REASONING_PROGRESS, reasoning_tokens=n) for n in sorted({used // 2, used})]
        events = [e for e in events if e.kind is K.STARTED or e.reasoning_tokens > resume.reasoning_tokens]
    answer = answer_for(job.query)
    events += [
        EngineEvent(sid, K.ANSWER_DELTA, text=ch, reasoning_tokens=used, answer_tokens=i + 1)
        for i, ch in enumerate(answer)
        if i >= len(resume.answer)
    ]
    done = result(answer, reasoning_tokens=used, finish_reason=finish_reason, budget_reached=budget_reached)
    return events + [EngineEvent(sid, K.FINISHED, result=done)]


# -- the harness ---------------------------------------------------------------------------------------


_ids = itertools.count(1)


def params(query: str = "what is 2+3?", *, request_id: str | None = None, **fields: Any) -> ThinkParams:
    return ThinkParams(request_id=request_id or f"req-{next(_ids)}", query=query, device_id="dev-1", **fields)


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, TIMEOUT))


@dataclass
class Service:
    manager: SessionManager
    engine: ScriptedEngine
    store: SessionStore
    rerun: int

    def sample(self, name: str, **labels: str) -> float | None:
        return self.manager.metrics.registry.get_sample_value(name, labels)


@contextlib.asynccontextmanager
async def service(
    path: Path, engine: ScriptedEngine | None = None, *, budget: BudgetConfig = BUDGET, **config: Any
) -> AsyncIterator[Service]:
    """A started SessionManager over ``engine`` and the store at ``path``; closing it is a crash
    as far as unfinished sessions are concerned (nothing more is written for them)."""
    engine = engine or ScriptedEngine(auto=script)
    store = SessionStore(path)
    engine.start()
    manager = SessionManager(
        engine, store, config=SessionConfig(**config), budget=BudgetPolicy(budget), metrics=CloudMetrics()
    )
    try:
        rerun = await manager.start()
        yield Service(manager, engine, store, rerun)
    finally:
        await manager.close()
        engine.stop()
        await asyncio.sleep(0)  # what the engine reported before it stopped reaches the manager
        store.close()


async def played(done: threading.Event) -> None:
    """Wait until the engine thread reported what was played and the loop handled all of it.

    The engine thread schedules each event on the loop before it sets ``done``, and the
    executor thread schedules its own wake-up only after ``done`` is set, so by the time this
    returns every event callback has run."""
    assert await asyncio.to_thread(done.wait, TIMEOUT), "the engine thread did not report in time"


async def finished(manager: SessionManager, session_id: str, after_seq: int = 0) -> list[Event]:
    """Follow a session to its end."""
    return [event async for event in manager.follow(session_id, after_seq)]


def kinds(events: list[Event]) -> list[EventKind]:
    return [e.kind for e in events]


def store_path(tmp_path: Path) -> Path:
    return tmp_path / "sessions.sqlite3"


# -- the engine double -----------------------------------------------------------------------------------


def test_the_scripted_engine_satisfies_the_engine_protocol() -> None:
    engine = ScriptedEngine()
    assert isinstance(engine, ReasoningEngine)

    class NoCancel:
        config, name, version, steps, tokens_generated, queue_depth, active = EngineConfig(), "x", 1, 0, 0, 0, 0

        def start(self) -> None: ...
        def stop(self, timeout: float = 10.0) -> None: ...
        def count_prompt_tokens(self, messages: tuple[Message, ...], reasoning_budget: int) -> int: ...
        def submit(self, job: Job) -> int: ...

    assert not isinstance(NoCancel(), ReasoningEngine)


# -- the state machine ---------------------------------------------------------------------------------------


def test_a_session_goes_queued_thinking_answering_completed(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path), ScriptedEngine()) as s:
            m, engine = s.manager, s.engine
            p = params(max_reasoning_tokens=32)
            session = m.create(p)
            sid = session.id
            assert session.status is SessionStatus.QUEUED
            (accepted,) = session.events
            assert accepted == Event(
                seq=1, session_id=sid, kind=EventKind.ACCEPTED, reasoning_budget=32,
                model_name="scripted-teacher", model_version=3, queue_position=1,
            )  # fmt: skip
            (job,) = engine.jobs
            assert (job.session_id, job.query, job.reasoning_budget, job.max_output_tokens, job.stream_reasoning) == (
                sid, p.query, 32, DEFAULT_OUTPUT, False,
            )  # fmt: skip
            assert s.sample("edgecloud_cloud_queue_depth") == 1.0  # the gauge reads the engine

            events = script(job)
            await played(engine.play(sid, events[0]))  # STARTED
            assert session.status is SessionStatus.THINKING and session.started is not None
            assert len(session.events) == 1  # STARTED is a transition, not an event of the log
            assert (engine.queue_depth, engine.active) == (0, 1)

            await played(engine.play(sid, *events[1:3]))  # reasoning progress 4, 8
            assert session.status is SessionStatus.THINKING
            assert [(e.seq, e.kind, e.reasoning_tokens) for e in session.events[1:]] == [
                (2, EventKind.REASONING_PROGRESS, 4), (3, EventKind.REASONING_PROGRESS, 8),
            ]  # fmt: skip

            await played(engine.play(sid, events[3]))  # first answer delta
            assert session.status is SessionStatus.ANSWERING and session.first_answer is not None
            assert session.result is None and not session.finished
            assert m.info(sid).status is SessionStatus.ANSWERING

            await played(engine.play(sid, *events[4:]))  # the rest of the answer, FINISHED
            assert session.status is SessionStatus.COMPLETED and session.finished
            answer = answer_for(p.query)
            expected = [EventKind.ACCEPTED] + [EventKind.REASONING_PROGRESS] * 2
            expected += [EventKind.ANSWER_DELTA] * len(answer) + [EventKind.COMPLETED]
            assert kinds(session.events) == expected
            assert [e.seq for e in session.events] == list(range(1, len(expected) + 1))
            assert "".join(e.text for e in session.events if e.kind is EventKind.ANSWER_DELTA) == answer

            completed = session.events[-1]
            assert completed is session.result
            assert (completed.text, completed.usage, completed.finish_reason, completed.budget_reached) == (
                answer, Usage(20, 8, len(answer)), "stop", False,
            )  # fmt: skip
            t = completed.timings
            assert (t.reasoning_ms, t.answer_ms) == (4.0, 2.0)  # as the engine measured them
            assert t.first_answer_token_ms == pytest.approx(t.queue_ms + 5.0)  # engine time + time queued
            assert 0 <= t.queue_ms <= t.total_ms

            info = m.info(sid)
            assert (info.session_id, info.request_id, info.status, info.last_seq) == (
                sid, p.request_id, SessionStatus.COMPLETED, len(expected),
            )  # fmt: skip
            assert (info.answer, info.usage, info.cached, info.failure) == (answer, completed.usage, False, None)
            assert (info.model_name, info.model_version, info.reasoning_budget, info.device_id) == (
                "scripted-teacher", 3, 32, "dev-1",
            )  # fmt: skip

            stored = s.store.get(sid)  # finished: written with its whole log
            assert stored is not None and stored.info == info and stored.budget == 32
            assert s.store.events(sid) == session.events
            assert engine.event_threads == {ENGINE_THREAD}  # every callback came from the engine thread

            assert s.sample("edgecloud_cloud_sessions_total", outcome="completed") == 1.0
            assert s.sample("edgecloud_cloud_tokens_total", kind="reasoning") == 8.0
            assert s.sample("edgecloud_cloud_tokens_total", kind="output") == len(answer)
            assert s.sample("edgecloud_cloud_session_seconds_count") == 1.0
            assert s.sample("edgecloud_cloud_time_to_first_answer_token_seconds_count") == 1.0

    run(main())


def test_a_zero_budget_goes_straight_to_answering(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path), ScriptedEngine()) as s:
            session = s.manager.create(params(max_reasoning_tokens=0))
            assert s.engine.jobs[0].reasoning_budget == 0 and session.events[0].reasoning_budget == 0
            events = script(s.engine.jobs[0])
            assert [e.kind for e in events[:2]] == [K.STARTED, K.ANSWER_DELTA]  # no reasoning in the script
            await played(s.engine.play(session.id, events[0]))
            assert session.status is SessionStatus.ANSWERING
            await played(s.engine.play(session.id, *events[1:]))
            assert session.status is SessionStatus.COMPLETED
            assert EventKind.REASONING_PROGRESS not in kinds(session.events)

    run(main())


def test_streamed_reasoning_becomes_reasoning_deltas(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path)) as s:
            session = s.manager.create(params(max_reasoning_tokens=16, stream_reasoning=True))
            events = await finished(s.manager, session.id)
            assert s.engine.jobs[0].stream_reasoning is True
            reasoning = [e.text for e in events if e.kind is EventKind.REASONING_DELTA]
            assert reasoning == ["step one\n", "step two\n"]
            assert kinds(events)[:3] == [EventKind.ACCEPTED, EventKind.REASONING_DELTA, EventKind.REASONING_DELTA]

    run(main())


def test_each_session_numbers_its_own_events(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path), ScriptedEngine()) as s:
            a, b = s.manager.create(params("1+1")), s.manager.create(params("2+2"))
            assert (a.events[0].queue_position, b.events[0].queue_position) == (1, 2)
            script_a, script_b = script(s.engine.job(a.id)), script(s.engine.job(b.id))
            for x, y in itertools.zip_longest(script_a, script_b):  # interleaved, as a batch decodes them
                for session, event in ((a, x), (b, y)):
                    if event is not None:
                        await played(s.engine.play(session.id, event))
            for session in (a, b):
                assert session.status is SessionStatus.COMPLETED
                assert [e.seq for e in session.events] == list(range(1, len(session.events) + 1))
                assert {e.session_id for e in session.events} == {session.id}
                assert session.result is not None and session.result.text == answer_for(session.params.query)

    run(main())


# -- attach and replay -----------------------------------------------------------------------------------


def test_followers_replay_from_any_seq_then_follow_live_events(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path), ScriptedEngine()) as s:
            m, engine = s.manager, s.engine
            session = m.create(params(max_reasoning_tokens=32))
            events = script(engine.job(session.id))
            early = asyncio.create_task(finished(m, session.id))  # attached from the start
            await played(engine.play(session.id, *events[:3]))  # STARTED + 2 progress: seqs 1..3
            late = asyncio.create_task(finished(m, session.id, after_seq=2))  # attaches mid-stream
            resumed = asyncio.create_task(finished(m, session.id, after_seq=3))  # nothing to replay yet
            await asyncio.sleep(0.01)
            assert not (early.done() or late.done() or resumed.done())  # all waiting for live events
            await played(engine.play(session.id, *events[3:]))
            log = session.events
            assert await early == log
            assert await late == log[2:]
            assert await resumed == log[3:]
            assert [e.seq for e in log] == list(range(1, len(log) + 1))

            # A finished session replays and ends at once.
            assert await finished(m, session.id, after_seq=len(log) - 1) == [log[-1]]
            assert await finished(m, session.id, after_seq=len(log)) == []
            assert await finished(m, session.id, after_seq=len(log) + 10) == []
            with pytest.raises(InvalidInputError, match="after_seq must be >= 0"):
                await finished(m, session.id, after_seq=-1)

    run(main())


def test_an_unknown_session_is_not_found(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path)) as s:
            for call in (s.manager.info, s.manager.cancel):
                with pytest.raises(NotFoundError, match="no session 'nope'"):
                    call("nope")
            with pytest.raises(NotFoundError):
                await finished(s.manager, "nope")

    run(main())


# -- idempotent request ids -------------------------------------------------------------------------


def test_a_request_id_names_one_session(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path), ScriptedEngine()) as s:
            m = s.manager
            p = params("what is 6*7?")
            first = m.create(p)
            assert m.create(p) is first  # a retried create attaches to the same session
            assert len(s.engine.jobs) == 1
            with pytest.raises(InvalidInputError, match=f"request_id '{p.request_id}' was already used for a"):
                m.create(params("what is 6*8?", request_id=p.request_id))
            await played(s.engine.play(first.id, *script(s.engine.job(first.id))))
            again = m.create(p)  # still the same session once finished: nothing runs twice
            assert again is first and again.status is SessionStatus.COMPLETED
            assert len(s.engine.jobs) == 1 and len(first.events) == len(again.events)

    run(main())


# -- cancel and failure ----------------------------------------------------------------------------------


def test_cancel_a_running_session(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path), ScriptedEngine()) as s:
            m, engine = s.manager, s.engine
            session = m.create(params(max_reasoning_tokens=32))
            events = script(engine.job(session.id))
            await played(engine.play(session.id, *events[:2]))  # STARTED, one progress event
            info = m.cancel(session.id)
            cancelled = Failure("CANCELLED", "cancelled by the client")
            assert (info.status, info.failure, info.last_seq) == (SessionStatus.CANCELLED, cancelled, 3)
            assert engine.cancelled == [session.id] and engine.active == 0
            assert session.events[-1] == Event(seq=3, session_id=session.id, kind=EventKind.FAILED, failure=cancelled)

            # Events the engine had in flight when the cancel came change nothing.
            await played(engine.play(session.id, *events[2:], force=True))
            assert len(session.events) == 3 and session.status is SessionStatus.CANCELLED and session.result is None
            assert await finished(m, session.id) == session.events

            assert m.cancel(session.id) == info  # cancelling again is a no-op...
            assert engine.cancelled == [session.id]  # ...that does not bother the engine
            stored = s.store.get(session.id)
            assert stored is not None and stored.info == info
            assert s.store.events(session.id) == session.events
            assert s.sample("edgecloud_cloud_sessions_total", outcome="cancelled") == 1.0

    run(main())


def test_cancel_a_queued_session_frees_its_slot(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path), ScriptedEngine()) as s:
            session = s.manager.create(params())
            assert s.engine.queue_depth == 1
            assert s.manager.cancel(session.id).status is SessionStatus.CANCELLED
            assert s.engine.queue_depth == 0
            assert kinds(session.events) == [EventKind.ACCEPTED, EventKind.FAILED]

    run(main())


def test_cancel_after_completion_changes_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path)) as s:
            session = s.manager.create(params())
            log = await finished(s.manager, session.id)
            info = s.manager.cancel(session.id)
            assert info.status is SessionStatus.COMPLETED and info.failure is None
            assert session.events == log and s.engine.cancelled == []

    run(main())


@pytest.mark.parametrize(("code", "expected"), [("RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"), ("", "ENGINE_ERROR")])
def test_an_engine_failure_fails_the_session(tmp_path: Path, code: str, expected: str) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path), ScriptedEngine()) as s:
            session = s.manager.create(params(max_reasoning_tokens=32))
            events = script(s.engine.job(session.id))
            failed = EngineEvent(session.id, K.FAILED, error="out of memory while decoding", error_code=code)
            await played(s.engine.play(session.id, *events[:2], failed))
            failure = Failure(expected, "out of memory while decoding")
            assert session.status is SessionStatus.FAILED and session.failure == failure
            assert session.events[-1] == Event(seq=3, session_id=session.id, kind=EventKind.FAILED, failure=failure)
            info = s.manager.info(session.id)
            assert (info.status, info.failure, info.answer, info.usage) == (SessionStatus.FAILED, failure, "", Usage())
            stored = s.store.get(session.id)
            assert stored is not None and stored.info == info
            assert s.sample("edgecloud_cloud_sessions_total", outcome="failed") == 1.0

    run(main())


# -- admission ------------------------------------------------------------------------------------------


def test_a_full_queue_refuses_and_keeps_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path), ScriptedEngine(max_queue=1)) as s:
            m, engine = s.manager, s.engine
            first = m.create(params("1+1"))
            refused = params("2+2")
            with pytest.raises(ResourceExhaustedError, match="queue full"):
                m.create(refused)
            assert len(engine.jobs) == 1
            assert s.store.find_request(refused.request_id) is None
            assert s.store.get(first.id) is not None and len(list(s.store.unfinished())) == 1

            await played(engine.play(first.id, EngineEvent(first.id, K.STARTED)))  # the slot frees up
            retried = m.create(refused)  # the same request, retried after backing off
            assert retried.status is SessionStatus.QUEUED and retried.id != first.id
            assert retried.events[0].queue_position == 1
            assert [j.session_id for j in engine.jobs] == [first.id, retried.id]

    run(main())


@pytest.mark.parametrize("allowed", [0, 1])
def test_verification_is_shed_while_sessions_wait_and_interactive_work_is_not(tmp_path: Path, allowed: int) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path), ScriptedEngine(), verification_max_waiting=allowed) as s:
            m, engine = s.manager, s.engine
            check = params("4+4", priority="verification")
            assert m.create(check).params.priority == "verification"  # nothing waited: admitted
            assert engine.jobs[-1].verification
            waiting = [m.create(params(f"{i}+1")) for i in range(allowed + 1)]  # interactive: never shed
            assert engine.queue_depth - engine.config.max_batch > allowed and all(not w.finished for w in waiting)
            refused = params("5+5", priority="verification")
            with pytest.raises(
                ResourceExhaustedError, match=rf"verification shed: {allowed + 1} sessions wait for an engine slot"
            ):
                m.create(refused)
            assert s.store.find_request(refused.request_id) is None  # nothing kept: the device may retry
            assert s.sample("edgecloud_cloud_verification_shed_total") == 1.0

    run(main())


@pytest.mark.parametrize(
    ("requested", "expected"), [(0, DEFAULT_OUTPUT), (20, 20), (MAX_OUTPUT, MAX_OUTPUT), (1000, MAX_OUTPUT)]
)
def test_output_tokens_default_and_ceiling(tmp_path: Path, requested: int, expected: int) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path), ScriptedEngine()) as s:
            s.manager.create(params(max_output_tokens=requested))
            assert s.engine.jobs[0].max_output_tokens == expected

    run(main())


def test_features_that_do_not_decode_are_refused_before_anything_runs(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path), ScriptedEngine(), feature_dims=(128,)) as s:
            features = encode_features(np.ones(64, np.float32), **PRODUCER)
            p = params(features=features)
            with pytest.raises(InvalidInputError):
                s.manager.create(p)
            assert s.engine.jobs == [] and s.store.find_request(p.request_id) is None

    run(main())


# -- the budget policy ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "budget"),
    [
        ({"max_reasoning_tokens": 40}, 40),
        ({"max_reasoning_tokens": 0}, 0),
        ({"max_reasoning_tokens": 5000}, BUDGET.maximum),  # clamped
        ({}, BUDGET.default),
        ({"hint": EdgeHint(confidence=0.2, estimated_difficulty=0.5)}, 68),  # 8 + 0.5 * (128 - 8)
        ({"hint": EdgeHint(confidence=0.2, estimated_difficulty=0.5), "max_reasoning_tokens": 40}, 40),
    ],
    ids=["explicit", "zero", "clamped", "default", "hint", "explicit-beats-hint"],
)
def test_the_budget_policy_chooses_the_budget(tmp_path: Path, fields: dict[str, Any], budget: int) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path), ScriptedEngine()) as s:
            session = s.manager.create(params(**fields))
            assert session.budget == budget == s.engine.jobs[0].reasoning_budget
            assert session.events[0].reasoning_budget == budget == s.manager.info(session.id).reasoning_budget
            stored = s.store.get(session.id)
            assert stored is not None and stored.budget == budget

    run(main())


def test_what_similar_queries_used_sets_the_next_budget(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=64).astype(np.float32)
    near = base + 0.01 * rng.normal(size=64).astype(np.float32)

    async def main() -> None:
        escalations = tmp_path / "escalations.jsonl"
        async with service(store_path(tmp_path), ScriptedEngine(), escalation_log=escalations) as s:
            m = s.manager
            first_params = params("12*3?", features=encode_features(base, **PRODUCER))
            first = m.create(first_params)
            assert first.budget == BUDGET.default  # nothing known yet
            assert not escalations.exists()  # logged when finished
            await played(s.engine.play(first.id, *script(s.engine.job(first.id))))
            assert first.result is not None and first.result.usage.reasoning_tokens == 8

            second = m.create(params("12*4?", features=encode_features(near, **PRODUCER)))
            assert second.budget == int(8 * BUDGET.headroom) + BUDGET.margin == 16
            other = {**PRODUCER, "model_version": 3}  # another edge model's features say nothing here
            assert m.create(params("12*5?", features=encode_features(near, **other))).budget == BUDGET.default
            assert m.create(params("12*6?")).budget == BUDGET.default  # no features

            (record,) = read_escalations(escalations)  # the one finished session
            assert (record.request_id, record.device_id, record.query) == (first_params.request_id, "dev-1", "12*3?")
            assert (record.answer, record.reasoning_tokens, record.budget_reached) == (answer_for("12*3?"), 8, False)
            assert record.producer == {"name": "edge-student", "version": 2, "sha256": "ab" * 32}
            decoded = decode_features(first_params.features)  # type: ignore[arg-type]
            assert np.allclose(record.features, decoded.ravel())

    run(main())


def test_a_session_cut_by_its_budget_teaches_the_policy_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=64).astype(np.float32)

    async def main() -> None:
        engine = ScriptedEngine(auto=lambda job: script(job, budget_reached=True, finish_reason="length"))
        async with service(store_path(tmp_path), engine) as s:
            first = s.manager.create(params("9*9?", features=encode_features(base, **PRODUCER)))
            await finished(s.manager, first.id)
            assert first.result is not None and first.result.budget_reached
            again = s.manager.create(params("9*8?", features=encode_features(base, **PRODUCER)))
            assert again.budget == BUDGET.default

    run(main())


# -- the result cache --------------------------------------------------------------------------------------


def test_a_repeated_query_is_served_from_the_result_cache(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path)) as s:
            m = s.manager
            original = m.create(params("What is 2 + 3?", max_reasoning_tokens=32))
            await finished(m, original.id)
            assert original.result is not None

            # Same query up to case and spacing, same budget: answered without the engine, at once.
            repeat = m.create(params("what is 2+3?", max_reasoning_tokens=32))
            assert repeat.id != original.id and repeat.status is SessionStatus.COMPLETED
            assert len(s.engine.jobs) == 1
            assert kinds(repeat.events) == [EventKind.ACCEPTED, EventKind.ANSWER_DELTA, EventKind.COMPLETED]
            assert [e.seq for e in repeat.events] == [1, 2, 3]
            assert repeat.events[0].queue_position == 0
            assert repeat.events[1].text == original.result.text
            completed = repeat.events[2]
            assert completed.cached and completed.text == original.result.text
            assert completed.usage == Usage(20, 8, len(original.result.text), cached_tokens=20)
            assert (completed.finish_reason, completed.budget_reached) == ("stop", False)
            info = m.info(repeat.id)
            assert info.cached and info.answer == original.result.text
            stored = s.store.get(repeat.id)
            assert stored is not None and stored.info == info  # persisted like any finished session
            assert s.sample("edgecloud_cloud_cache_hits_total") == 1.0
            assert s.sample("edgecloud_cloud_sessions_total", outcome="cached") == 1.0

            # Another budget or another answer length is another result.
            other_budget = m.create(params("what is 2+3?", max_reasoning_tokens=16))
            other_output = m.create(params("what is 2+3?", max_reasoning_tokens=32, max_output_tokens=8))
            assert not other_budget.finished and not other_output.finished and len(s.engine.jobs) == 3
            assert m.create(params("what is 2+4?", max_reasoning_tokens=32)).status is SessionStatus.QUEUED

    run(main())


def test_results_cut_short_are_not_cached(tmp_path: Path) -> None:
    async def main() -> None:
        engine = ScriptedEngine(auto=lambda job: script(job, finish_reason="length"))
        async with service(store_path(tmp_path), engine) as s:
            first = s.manager.create(params("7*7?", max_reasoning_tokens=32))
            await finished(s.manager, first.id)
            second = s.manager.create(params("7*7?", max_reasoning_tokens=32))
            assert not second.finished and len(s.engine.jobs) == 2

    run(main())


def test_a_zero_size_cache_caches_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path), result_cache_size=0) as s:
            first = s.manager.create(params("5*5?", max_reasoning_tokens=32))
            await finished(s.manager, first.id)
            assert not s.manager.create(params("5*5?", max_reasoning_tokens=32)).finished
            assert len(s.engine.jobs) == 2

    run(main())


def test_the_cache_keeps_the_newest_results(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path), result_cache_size=1) as s:
            for query in ("1*1?", "2*2?"):
                await finished(s.manager, s.manager.create(params(query, max_reasoning_tokens=32)).id)
            assert s.manager.create(params("2*2?", max_reasoning_tokens=32)).events[-1].cached
            assert not s.manager.create(params("1*1?", max_reasoning_tokens=32)).finished  # evicted
            assert len(s.engine.jobs) == 3

    run(main())


# -- restart recovery -----------------------------------------------------------------------------------


def test_a_restart_continues_unfinished_sessions_and_serves_finished_ones(tmp_path: Path) -> None:
    path = store_path(tmp_path)
    done_params = params("what is 17+25?", max_reasoning_tokens=32)
    pending_params = params("what is 9*9?", max_reasoning_tokens=32, max_output_tokens=24)
    before: dict[str, Any] = {}

    async def first_life() -> None:
        async with service(path, ScriptedEngine()) as s:
            assert s.rerun == 0
            done = s.manager.create(done_params)
            await played(s.engine.play(done.id, *script(s.engine.job(done.id))))
            pending = s.manager.create(pending_params)
            await played(s.engine.play(pending.id, *script(s.engine.job(pending.id))[:4]))
            assert pending.status is SessionStatus.ANSWERING and len(pending.events) == 4
            before.update(done=done.id, done_log=list(done.events), pending=pending.id,
                          pending_seen=list(pending.events))  # fmt: skip
        # The process dies here: the pending session was accepted but never finished.

    async def second_life() -> None:
        async with service(path) as s:
            m, engine = s.manager, s.engine
            assert s.rerun == 1
            (job,) = engine.jobs  # only the unfinished session runs again, under its own id ...
            assert (job.session_id, job.query, job.reasoning_budget, job.max_output_tokens) == (
                before["pending"], pending_params.query, 32, 24,
            )  # fmt: skip
            # ... from where it stood: 8 reasoning tokens spent, the answer's first character streamed.
            answer = answer_for(pending_params.query)
            assert job.resume == Resume(reasoning_tokens=8, answer=answer[0], answer_tokens=1)

            # The finished one comes from the store, log and all, and does not run again.
            info = m.info(before["done"])
            assert (info.status, info.answer, info.request_id) == (
                SessionStatus.COMPLETED, answer_for(done_params.query), done_params.request_id,
            )  # fmt: skip
            assert await finished(m, before["done"]) == before["done_log"]
            assert m.create(done_params).id == before["done"]

            # A reader resuming from the last seq it saw before the restart sees what it would have seen.
            seen = before["pending_seen"]
            rest = await finished(m, before["pending"], after_seq=len(seen))
            log = await finished(m, before["pending"])
            assert log[: len(seen)] == seen and log[len(seen) :] == rest
            assert [e.seq for e in log] == list(range(1, len(log) + 1))
            assert rest[-1].kind is EventKind.COMPLETED and rest[-1].text == answer
            assert "".join(e.text for e in log if e.kind is EventKind.ANSWER_DELTA) == answer  # nothing twice
            assert [e.reasoning_tokens for e in log if e.kind is EventKind.REASONING_PROGRESS] == [4, 8]
            assert m.create(pending_params).id == before["pending"]  # the retried request attaches to it
            assert len(engine.jobs) == 1
            stored = s.store.get(before["pending"])
            assert stored is not None and stored.info is not None and stored.info.status is SessionStatus.COMPLETED

    async def third_life() -> None:
        async with service(path) as s:
            assert s.rerun == 0 and s.engine.jobs == []  # nothing left unfinished
            assert s.manager.info(before["pending"]).status is SessionStatus.COMPLETED

    run(first_life())
    run(second_life())
    run(third_life())


def test_a_restart_warms_the_result_cache_from_the_store(tmp_path: Path) -> None:
    path = store_path(tmp_path)

    async def first_life() -> str:
        async with service(path) as s:
            session = s.manager.create(params("what is 8*8?", max_reasoning_tokens=32))
            await finished(s.manager, session.id)
            assert session.result is not None
            return session.result.text

    answer = run(first_life())

    async def second_life() -> None:
        async with service(path) as s:
            repeat = s.manager.create(params("What is 8 * 8?", max_reasoning_tokens=32))
            assert repeat.status is SessionStatus.COMPLETED and repeat.events[-1].cached
            assert repeat.events[-1].text == answer and s.engine.jobs == []

    run(second_life())


def test_a_restart_on_a_new_model_version_does_not_serve_the_old_models_results(tmp_path: Path) -> None:
    path = store_path(tmp_path)

    async def on_version(version: int) -> Session:
        async with service(path, ScriptedEngine(auto=script, version=version)) as s:
            session = s.manager.create(params("what is 8*8?", max_reasoning_tokens=32))
            await finished(s.manager, session.id)
            return session

    assert run(on_version(3)).events[-1].cached is False
    upgraded = run(on_version(4))
    assert upgraded.events[0].model_version == 4
    assert upgraded.events[-1].cached is False  # version 3's answer is not version 4's


# -- expiry -------------------------------------------------------------------------------------------------


def test_finished_sessions_expire_after_their_ttl(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path), ScriptedEngine(), ttl_s=0.05) as s:
            m = s.manager
            done_params = params("3*3?")
            done = m.create(done_params)
            await played(s.engine.play(done.id, *script(s.engine.job(done.id))))
            pending = m.create(params("4*4?"))
            assert m.sweep() == 0  # finished just now
            await asyncio.sleep(0.1)
            assert m.sweep() == 1
            with pytest.raises(NotFoundError, match="expired after 0.05s"):
                m.info(done.id)
            assert s.store.get(done.id) is None and s.store.find_request(done_params.request_id) is None
            assert m.info(pending.id).status is SessionStatus.QUEUED  # unfinished sessions never expire
            # The request id is free again: the same request now starts a new session.
            assert m.create(done_params).id != done.id

    run(main())


def test_a_session_dropped_from_memory_is_reloaded_from_the_store(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path), ttl_s=3600) as s:
            p = params("6*6?")
            session = s.manager.create(p)
            log = await finished(s.manager, session.id)
            assert s.manager.sweep(time.monotonic() + 3601) == 1  # out of memory, still within its ttl on disk
            assert s.manager.info(session.id).status is SessionStatus.COMPLETED
            assert await finished(s.manager, session.id) == log
            assert s.manager.create(p).id == session.id and len(s.engine.jobs) == 1

    run(main())


def test_memory_keeps_only_the_newest_finished_sessions_and_the_store_the_rest(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path), ttl_s=3600, finished_in_memory=2) as s:
            m = s.manager
            done = []
            for i in range(5):
                session = m.create(params(f"{i}+{i}?"))
                done.append((session.id, await finished(m, session.id)))
            real_finish = s.store.finish

            def refuse(info: Any, events: Any) -> None:
                raise OSError("disk full")

            s.store.finish = refuse  # type: ignore[method-assign]
            unsaved = m.create(params("7*7?"))
            await finished(m, unsaved.id)
            s.store.finish = real_finish  # type: ignore[method-assign]
            # Six finished, one of them only in memory (its end was not written): memory keeps two,
            # the newest stored one and the one it alone holds.
            assert m.sweep() == 4
            assert set(m._sessions) == {done[4][0], unsaved.id}
            for session_id, log in done:  # every one is still served whole, from memory or the store
                assert m.info(session_id).status is SessionStatus.COMPLETED
                assert await finished(m, session_id) == log
            assert m.info(unsaved.id).status is SessionStatus.COMPLETED

    run(main())


def test_the_sweeper_expires_sessions_and_publishes_engine_metrics(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(store_path(tmp_path), ttl_s=0.02, sweep_every_s=0.01) as s:
            session = s.manager.create(params("2*9?"))
            await finished(s.manager, session.id)
            deadline = time.monotonic() + TIMEOUT
            while True:
                try:
                    s.manager.info(session.id)
                except NotFoundError:
                    break
                assert time.monotonic() < deadline, "the sweeper never expired the session"
                await asyncio.sleep(0.01)
            assert s.store.get(session.id) is None
            assert s.sample("edgecloud_cloud_engine_steps") == s.engine.steps > 0

    run(main())


# -- configuration --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [{"ttl_s": 0}, {"sweep_every_s": -1}, {"result_cache_size": -1}, {"max_feature_elements": 0}],
    ids=["ttl", "sweep", "cache", "features"],
)
def test_bad_session_config_is_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="sessions:"):
        SessionConfig(**fields)
