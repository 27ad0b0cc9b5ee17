"""A session cut by a restart continues from what it had streamed: a real engine and model, a real
SQLite store file, two lives of the session manager on that file.

The model is the endless thinker (tests/helpers/cloud.py): it opens its think block at once and
never closes it or ends on its own, so its reasoning budget and answer limit set every length, a
session runs as long as a test needs, and its token counts are known exactly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgecloud.cloud.budget import BudgetPolicy
from edgecloud.cloud.engine import EngineConfig, EngineEvent, EngineEventKind, Job, Resume
from edgecloud.cloud.escalation_log import read_escalations
from edgecloud.cloud.sessions import SessionConfig, SessionManager
from edgecloud.cloud.stores import Checkpoint, SessionStore
from edgecloud.shared.reasoner.session import Event, EventKind, Message, Sampling, SessionStatus, ThinkParams
from edgecloud.shared.reasoner.wire import event_to_pb

torch = pytest.importorskip("torch", reason="the cloud's model backend needs torch")
from edgecloud.cloud.transformers_engine import LoadedModel, TransformersEngine

TIMEOUT = 60.0
BUDGET, ANSWER = 40, 40
SAMPLED = Sampling(temperature=1.0, top_p=0.95, seed=1234)
GREEDY = Sampling(temperature=0.0)


# -- the engine ---------------------------------------------------------------------------------------


def run_job(loaded: LoadedModel, job: Callable[[Callable[[EngineEvent], None]], Job]) -> list[EngineEvent]:
    engine = TransformersEngine(loaded, EngineConfig(max_batch=2, progress_every=8))
    events: list[EngineEvent] = []
    done = asyncio.Event()
    loop = asyncio.new_event_loop()

    def on_event(event: EngineEvent) -> None:
        events.append(event)
        if event.kind in (EngineEventKind.FINISHED, EngineEventKind.FAILED):
            loop.call_soon_threadsafe(done.set)

    engine.start()
    try:
        engine.submit(job(on_event))
        loop.run_until_complete(asyncio.wait_for(done.wait(), TIMEOUT))
    finally:
        engine.stop()
        loop.close()
    return events


def of(events: list[EngineEvent], kind: EngineEventKind) -> list[EngineEvent]:
    return [e for e in events if e.kind is kind]


def test_a_resumed_job_counts_what_it_had_spent_and_reports_only_what_follows(endless_thinker: LoadedModel) -> None:
    # Mid-answer: 5 of 8 answer tokens spent, so 3 follow; the think block was closed by the budget.
    resume = Resume(reasoning="ab=c", reasoning_tokens=BUDGET, answer="h3llo", answer_tokens=5)
    events = run_job(endless_thinker, lambda on: Job("a", "2+3", BUDGET, 8, True, on, sampling=SAMPLED, resume=resume))
    result = events[-1].result
    assert result is not None and not of(events, EngineEventKind.REASONING_DELTA)
    new = "".join(e.text for e in of(events, EngineEventKind.ANSWER_DELTA))
    assert result.answer == "h3llo" + new and len(new) == 3  # one character a token, none repeated
    assert [e.answer_tokens for e in of(events, EngineEventKind.ANSWER_DELTA)] == [6, 7, 8]
    assert (result.reasoning, result.usage.reasoning_tokens, result.usage.output_tokens) == ("ab=c", BUDGET, 2 + 8)
    assert (result.budget_reached, result.finish_reason) == (True, "length")

    # Mid-reasoning, hidden: the progress counts go on from 16, each with the hidden text since the last.
    resume = Resume(reasoning="x" * 16, reasoning_tokens=16)
    events = run_job(endless_thinker, lambda on: Job("b", "2+3", BUDGET, 4, False, on, sampling=SAMPLED, resume=resume))
    result = events[-1].result
    progress = of(events, EngineEventKind.REASONING_PROGRESS)
    assert [e.reasoning_tokens for e in progress] == [24, 32, BUDGET]
    assert result is not None and result.reasoning == "x" * 16 + "".join(e.text for e in progress)
    assert result.usage.reasoning_tokens == BUDGET and len(result.answer) == 4


# -- two lives of the session manager ---------------------------------------------------------------


@dataclass
class Life:
    manager: SessionManager
    resumed: int


@asynccontextmanager
async def life(path: Path, loaded: LoadedModel, *, crash: bool = False) -> AsyncIterator[Life]:
    """A session manager over a real engine and the store at ``path``. Leaving it stops the engine;
    then either the manager closes (writing what it still held queued: a graceful stop) or, with
    ``crash``, the store is closed under it, so nothing queued is ever written."""
    engine = TransformersEngine(loaded, EngineConfig(max_batch=2, progress_every=8))
    store = SessionStore(path)
    escalations = path.parent / "escalations.jsonl"  # a multi-turn session's reasoning, as the engine ended it
    config = SessionConfig(write_every_s=0.05, escalation_log=escalations)
    engine.start()
    manager = SessionManager(engine, store, config=config, budget=BudgetPolicy())
    try:
        yield Life(manager, await manager.start())
    finally:
        engine.stop()
        if not crash:
            await manager.close()
        store.close()


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, TIMEOUT))


def count(events: list[Event], kind: EventKind) -> int:
    return sum(e.kind is kind for e in events)


def text(events: list[Event], kind: EventKind) -> str:
    return "".join(e.text for e in events if e.kind is kind)


CUTS: dict[str, Callable[[list[Event]], bool]] = {
    "mid-reasoning": lambda seen: (
        count(seen, EventKind.REASONING_DELTA) >= 6 or count(seen, EventKind.REASONING_PROGRESS) >= 2
    ),
    "mid-answer": lambda seen: count(seen, EventKind.ANSWER_DELTA) >= 5,
}


@pytest.mark.parametrize(
    ("sampling", "stream_reasoning", "cut", "crash"),
    [
        (SAMPLED, True, "mid-reasoning", True),
        (SAMPLED, False, "mid-reasoning", False),
        (SAMPLED, True, "mid-answer", False),
        (SAMPLED, False, "mid-answer", True),
        (GREEDY, True, "mid-answer", True),
    ],
    ids=[
        "sampled-streamed-reasoning-crash",
        "sampled-hidden-reasoning",
        "sampled-answer",
        "sampled-answer-hidden-crash",
        "greedy-answer-crash",
    ],
)
def test_a_session_cut_by_a_restart_continues_from_what_its_readers_saw(
    endless_thinker: LoadedModel, tmp_path: Path, sampling: Sampling, stream_reasoning: bool, cut: str, crash: bool
) -> None:
    path = tmp_path / "sessions.sqlite3"
    params = ThinkParams(
        request_id="r1",
        query="what is 2+3?",
        device_id="dev-1",
        messages=(Message("system", "be brief"), Message("user", "what is 2+3?")),
        max_reasoning_tokens=BUDGET,
        max_output_tokens=ANSWER,
        stream_reasoning=stream_reasoning,
        sampling=sampling,
    )

    async def first_life() -> tuple[str, list[Event]]:
        async with life(path, endless_thinker, crash=crash) as first:
            session = first.manager.create(params)
            seen: list[Event] = []
            async for event in first.manager.follow(session.id):
                seen.append(event)
                if CUTS[cut](seen):
                    break
            return session.id, seen

    session_id, seen = run(first_life())
    store = SessionStore(path)
    (stored,) = store.unfinished()
    before = store.progress(session_id)
    store.close()
    assert stored.session_id == session_id and before.events[: len(seen)] == seen  # all it showed was written

    async def second_life() -> tuple[list[Event], list[Event]]:
        async with life(path, endless_thinker) as second:
            assert second.resumed == 1
            rest = [e async for e in second.manager.follow(session_id, after_seq=len(seen))]
            return [e async for e in second.manager.follow(session_id)], rest

    log, rest = run(second_life())
    # What the reader saw before the restart is the log's start, byte for byte; the rest follows on.
    assert [event_to_pb(e).SerializeToString() for e in log[: len(seen)]] == [
        event_to_pb(e).SerializeToString() for e in seen
    ]
    assert log[len(seen) :] == rest and log[: len(before.events)] == before.events
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    completed = log[-1]
    assert completed.kind is EventKind.COMPLETED and count(log, EventKind.FAILED) == 0
    assert completed.text == text(log, EventKind.ANSWER_DELTA).strip()
    # The budget counts the reasoning from before the restart: the model never stops thinking on
    # its own, so it thinks exactly its budget; the answer runs to its limit, once.
    assert (completed.usage.reasoning_tokens, completed.usage.output_tokens) == (BUDGET, ANSWER + 2)
    assert (completed.budget_reached, completed.finish_reason) == (True, "length")
    assert len(completed.text) >= ANSWER - 8  # one character a token, but for a few whole words
    progress = [e.reasoning_tokens for e in log if e.kind is EventKind.REASONING_PROGRESS]
    assert progress == sorted(set(progress)) and (stream_reasoning or progress[-1] == BUDGET)
    assert not any(e.text for e in log if e.kind is EventKind.REASONING_PROGRESS)  # hidden stays hidden
    # The engine continued the reasoning it had (streamed or hidden), not a new one.
    (record,) = read_escalations(path.parent / "escalations.jsonl")
    had = text(before.events, EventKind.REASONING_DELTA) + before.hidden_reasoning
    assert had and record.reasoning.startswith(had) and record.answer == completed.text
    if stream_reasoning:
        assert record.reasoning == text(log, EventKind.REASONING_DELTA).strip()
    store = SessionStore(path)
    assert list(store.unfinished()) == [] and store.events(session_id) == log
    store.close()


def test_a_session_whose_text_no_longer_fits_the_model_fails_rather_than_start_over(
    endless_thinker: LoadedModel, tmp_path: Path
) -> None:
    path = tmp_path / "sessions.sqlite3"
    store = SessionStore(path)
    params = ThinkParams(request_id="r1", query="2+3", max_reasoning_tokens=0, max_output_tokens=1024)
    accepted = Event(1, "s1", EventKind.ACCEPTED, model_name="endless-thinker", model_version=1)
    store.accept("s1", params, 0, accepted)
    streamed = Event(2, "s1", EventKind.ANSWER_DELTA, text="7" * 1100)  # the model reads 1024 positions
    store.append([Checkpoint("s1", (streamed,), answer_tokens=1100)])
    store.close()

    async def restart() -> list[Event]:
        async with life(path, endless_thinker) as restarted:
            assert restarted.resumed == 1
            log = [e async for e in restarted.manager.follow("s1")]
            assert restarted.manager.info("s1").status is SessionStatus.FAILED
            return log

    log = run(restart())
    assert log[:2] == [accepted, streamed] and len(log) == 3  # its past kept, nothing generated
    failure = log[-1].failure
    assert log[-1].kind is EventKind.FAILED and failure is not None and failure.code == "RESUME_FAILED"
    assert "nothing is generated again" in failure.message


def test_readers_see_an_event_only_once_it_is_written(endless_thinker: LoadedModel, tmp_path: Path) -> None:
    async def main() -> None:
        async with life(tmp_path / "sessions.sqlite3", endless_thinker) as running:
            m = running.manager
            session = m.create(
                ThinkParams(request_id="r1", query="2+3", max_reasoning_tokens=BUDGET, stream_reasoning=True)
            )
            deadline = time.monotonic() + TIMEOUT
            while not session.finished:
                assert m.info(session.id).last_seq == session.written <= len(session.events)
                stored = m.store.progress(session.id).events
                assert stored[: session.written] == session.events[: session.written]
                assert time.monotonic() < deadline
                await asyncio.sleep(0.005)
            assert session.written == len(session.events) == len(m.store.events(session.id))
            assert m.journal.writes < len(session.events) / 2  # batched: far fewer writes than events

    run(main())
