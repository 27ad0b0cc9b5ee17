"""Running sessions on the engine: a session goes in as a :class:`Job`, the engine's events come
back as the session's log, and the session ends (completed, served from the result cache, failed
or cancelled) with its whole log written.

Each device holds at most ``max_open_per_device`` unfinished sessions in the engine, its share of
the queue; a session gives its slot back when it ends. A running session's events are written
behind by the :class:`~edgecloud.cloud.journal.EventJournal`; a finished one's log is written at
once, and its readers woken.

Each session in the engine is a task on the runner's loop reading the engine's stream of its
events (``ReasoningEngine.generate``); stopping a session cancels that task, which closes the stream
and so cancels the engine's job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from edgecloud.cloud.budget import BudgetPolicy
from edgecloud.cloud.engine import EngineEvent, EngineEventKind, GenerationResult, Job, ReasoningEngine, Resume
from edgecloud.cloud.escalation_log import EscalationLog, escalation_record
from edgecloud.cloud.journal import EventJournal
from edgecloud.cloud.metrics import CloudMetrics
from edgecloud.cloud.stores import SessionStorage
from edgecloud.shared.base.errors import ResourceExhaustedError
from edgecloud.shared.reasoner.session import Event, EventKind, Failure, SessionStatus, ThinkParams, Timings

if TYPE_CHECKING:
    from edgecloud.cloud.sessions import Session

__all__ = ["SessionRunner"]

log = logging.getLogger(__name__)


class SessionRunner:
    """Submits sessions to the engine within each device's share, turns engine events into log
    events, and ends sessions. Knows no registry: ``current(session_id)`` says which session an id
    names now (an event for any other, a session expired or replaced meanwhile, is dropped)."""

    def __init__(
        self,
        engine: ReasoningEngine,
        store: SessionStorage,
        journal: EventJournal,
        *,
        current: Callable[[str], Session | None],
        remember: Callable[[ThinkParams, int, Event], None],
        max_open_per_device: int,
        budget: BudgetPolicy,
        metrics: CloudMetrics,
        escalations: EscalationLog | None,
    ) -> None:
        self.engine, self.store, self.journal = engine, store, journal
        self.current, self.remember = current, remember
        self.max_open_per_device = max_open_per_device
        self.budget, self.metrics, self.escalations = budget, metrics, escalations
        self._reading: dict[str, asyncio.Task[None]] = {}
        """Session id -> the task reading its engine events."""
        self._open: dict[str, set[str]] = {}
        """Device id -> its unfinished sessions in the engine (the per-device share of the queue)."""

    # -- into the engine ---------------------------------------------------------------

    def check_share(self, device_id: str, elsewhere: int = 0) -> None:
        """Raise ResourceExhaustedError when ``device_id`` already holds its share of the queue: here,
        or ``elsewhere`` (its unfinished sessions on every replica of a shared store, these included)."""
        limit = self.max_open_per_device
        if limit and max(len(self._open.get(device_id, ())), elsewhere) >= limit:
            raise ResourceExhaustedError(
                f"this device has {limit} unfinished sessions, its share of the queue; retry when one finishes"
            )

    def submit(self, session: Session, resume: Resume | None = None) -> None:
        """Queue ``session`` in the engine (raises when the engine queue is full, keeping nothing).
        Called on the event loop."""
        config = self.engine.config
        output = min(session.params.max_output_tokens or config.default_max_output_tokens, config.max_output_tokens)
        params = session.params
        events = self.engine.generate(
            Job(
                session.id,
                params.query,
                session.budget,
                output,
                params.stream_reasoning,
                messages=params.messages,
                sampling=params.sampling,
                resume=resume,
                verification=params.priority == "verification",
            )
        )
        self._open.setdefault(session.params.device_id, set()).add(session.id)
        self._reading[session.id] = asyncio.get_running_loop().create_task(
            self._read(session, events), name=f"engine-events-{session.id}"
        )

    def stop(self, session_id: str) -> None:
        """Stop generating ``session_id`` here: its engine job is dropped and no more of its events
        are taken (the session's own state is the caller's)."""
        task = self._reading.pop(session_id, None)
        if task is not None:
            task.cancel()
        self.engine.cancel(session_id)  # now, not when the task ends: its slot frees at once

    async def aclose(self) -> None:
        """Stop reading every engine stream (the engine stopped, or the service is going away)."""
        tasks, self._reading = list(self._reading.values()), {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, session: Session, events: AsyncIterator[EngineEvent]) -> None:
        try:
            async for event in events:
                self._on_engine_event(session, event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a backend that broke mid-stream fails its session, not the loop
            log.exception("the engine's stream of session %s failed", session.id)
            if not session.finished and self.current(session.id) is session:
                self.fail(session, Failure("ENGINE_ERROR", f"the engine failed: {exc}"), SessionStatus.FAILED)
        finally:
            if self._reading.get(session.id) is asyncio.current_task():  # not stopped: it ended
                del self._reading[session.id]
                await _close(events)

    def release(self, session: Session) -> None:
        """The session ended (or runs elsewhere now): it no longer counts against its device's share."""
        open_ = self._open.get(session.params.device_id)
        if open_ is not None:
            open_.discard(session.id)
            if not open_:
                del self._open[session.params.device_id]

    # -- out of the engine -------------------------------------------------------------

    def _record(self, session: Session, event: Event, hidden_reasoning: str = "") -> None:
        """Append a running session's event; readers see it once the journal has written it."""
        session.events.append(event)
        self.journal.record(
            session.id,
            event,
            reasoning_tokens=session.reasoning_tokens,
            answer_tokens=session.answer_tokens,
            hidden_reasoning=hidden_reasoning,
        )

    def _on_engine_event(self, session: Session, event: EngineEvent) -> None:
        """Called on the loop for each event of ``session``'s engine stream."""
        if session.finished or self.current(session.id) is not session:
            return  # cancelled meanwhile: the engine drops it at its next step
        now = time.monotonic()
        match event.kind:
            case EngineEventKind.STARTED:
                session.started = now
                thinking = session.budget > 0 and session.first_answer is None
                session.status = SessionStatus.THINKING if thinking else SessionStatus.ANSWERING
            case EngineEventKind.REASONING_PROGRESS:
                session.reasoning_tokens = max(session.reasoning_tokens, event.reasoning_tokens)
                progress = session.next(EventKind.REASONING_PROGRESS, reasoning_tokens=event.reasoning_tokens)
                self._record(session, progress, hidden_reasoning=event.text)  # the text is never shown
            case EngineEventKind.REASONING_DELTA:
                session.reasoning_tokens = max(session.reasoning_tokens, event.reasoning_tokens)
                self._record(session, session.next(EventKind.REASONING_DELTA, text=event.text))
            case EngineEventKind.ANSWER_DELTA:
                if session.first_answer is None:
                    session.first_answer = now
                    self.metrics.first_answer_token.observe(now - session.created)
                session.status = SessionStatus.ANSWERING
                session.reasoning_tokens = max(session.reasoning_tokens, event.reasoning_tokens)
                session.answer_tokens = max(session.answer_tokens, event.answer_tokens)
                self._record(session, session.next(EventKind.ANSWER_DELTA, text=event.text))
            case EngineEventKind.FINISHED:
                assert event.result is not None
                self._complete(session, event.result, now)
            case EngineEventKind.FAILED:
                self.fail(session, Failure(event.error_code or "ENGINE_ERROR", event.error), SessionStatus.FAILED)

    # -- the end of a session ----------------------------------------------------------

    def _complete(self, session: Session, result: GenerationResult, now: float) -> None:
        queue_ms = ((session.started or now) - session.created) * 1e3
        completed = session.next(
            EventKind.COMPLETED,
            text=result.answer,
            usage=result.usage,
            timings=Timings(
                queue_ms=queue_ms,
                reasoning_ms=result.reasoning_ms,
                answer_ms=result.answer_ms,
                total_ms=(now - session.created) * 1e3,
                first_answer_token_ms=queue_ms + result.first_answer_token_ms,
                prefill_ms=result.prefill_ms,
            ),
            budget_reached=result.budget_reached,
            finish_reason=result.finish_reason,
        )
        session.result = completed
        session.status = SessionStatus.COMPLETED
        session.finished_at = now
        self.release(session)
        session.events.append(completed)
        self._persist(session)
        self.remember(session.params, session.budget, completed)
        self._learn(session, result, now)

    def _learn(self, session: Session, result: GenerationResult, now: float) -> None:
        """What a completed session teaches: the metrics, the budget policy and the escalation log."""
        m = self.metrics
        m.sessions.labels("completed").inc()
        m.tokens.labels("reasoning").inc(result.usage.reasoning_tokens)
        m.tokens.labels("output").inc(result.usage.output_tokens)
        m.reasoning_tokens.observe(result.usage.reasoning_tokens)
        m.latency.observe(now - session.created)
        if session.features is not None:
            self.budget.observe(
                session.features, session.producer, result.usage.reasoning_tokens, result.budget_reached
            )
        # What an edge escalated (its features), and every conversation a device sent (an edge leaves
        # those to the cloud unread): the next student's training data, with its context whole.
        if self.escalations is not None and (session.features is not None or session.params.multi_turn):
            self.escalations.append(escalation_record(session.params, session.features, session.budget, result))

    def serve_cached(self, session: Session, cached: Event) -> None:
        """Complete ``session`` at once with a result the cache kept for the same query."""
        now = time.monotonic()
        if cached.text:
            session.events.append(session.next(EventKind.ANSWER_DELTA, text=cached.text))
        usage = replace(cached.usage, cached_tokens=cached.usage.input_tokens)
        completed = session.next(
            EventKind.COMPLETED,
            text=cached.text,
            usage=usage,
            timings=Timings(total_ms=(now - session.created) * 1e3),
            cached=True,
            budget_reached=cached.budget_reached,
            finish_reason=cached.finish_reason,
        )
        session.result = completed
        session.status = SessionStatus.COMPLETED
        session.finished_at = now
        session.events.append(completed)
        self._persist(session)
        self.metrics.sessions.labels("cached").inc()

    def fail(self, session: Session, failure: Failure, status: SessionStatus) -> None:
        """End ``session`` with ``failure`` (FAILED, or CANCELLED by its client)."""
        session.failure = failure
        session.status = status
        session.finished_at = time.monotonic()
        self.release(session)
        session.events.append(session.next(EventKind.FAILED, failure=failure))
        self._persist(session)
        self.metrics.sessions.labels(status.name.lower()).inc()

    def _persist(self, session: Session) -> None:
        """Write the finished session's whole log, then show readers all of it."""
        self.journal.forget(session.id)
        session.written = len(session.events)  # its info (last_seq) is stored with the log
        try:
            self.store.finish(session.info(self.engine.name, self.engine.version), session.events)
            session.stored = True
        except Exception:  # served from memory until it expires; a restart would continue it
            log.exception("could not persist session %s", session.id)
        session.notify()


async def _close(events: AsyncIterator[EngineEvent]) -> None:
    """Close an engine stream (cancelling its job when it had not ended); a stream without
    ``aclose`` has nothing to close."""
    close = getattr(events, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:
            log.exception("closing an engine stream failed")
