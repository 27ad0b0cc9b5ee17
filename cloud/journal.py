"""Running sessions' events, written behind to the store, and where a restart picks a session up.

While a session runs, every event it appends is queued here with the session's token counts
(:meth:`EventJournal.record`). One task writes what is queued, for all sessions, as one store
transaction on a worker thread (never on the event loop), then reports how far each session is
written. The session manager shows readers only written events, so whatever a reader saw survives
a crash; after a restart an unfinished session continues from its stored events
(:func:`resume_from`) instead of generating a different past.

The first write after a quiet spell happens at once; later ones wait at most ``every_s``
seconds. That bounds the write rate (one transaction per ``every_s`` under load, whatever the
number of sessions) and the time an event waits before readers see it. A write that fails is
tried again with what came since; readers wait meanwhile, and a session's end writes its whole
log in any case.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from edgecloud.cloud.engine import Resume
from edgecloud.cloud.stores import Checkpoint, Progress, SessionStorage
from edgecloud.shared.reasoner.session import Event, EventKind

__all__ = ["EventJournal", "resume_from"]

log = logging.getLogger(__name__)


@dataclass
class _Queued:
    events: list[Event] = field(default_factory=list)
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    hidden_reasoning: list[str] = field(default_factory=list)

    def checkpoint(self, session_id: str) -> Checkpoint:
        return Checkpoint(
            session_id, tuple(self.events), self.reasoning_tokens, self.answer_tokens, "".join(self.hidden_reasoning)
        )


class EventJournal:
    """Queues events on the event loop and writes them behind. ``on_written(session_id, seq)``
    says a session's events up to ``seq`` are in the store (called on the loop)."""

    def __init__(self, store: SessionStorage, *, every_s: float, on_written: Callable[[str, int], None]) -> None:
        self.store = store
        self.every_s = every_s
        self.on_written = on_written
        self.writes = 0
        """Transactions written so far (a metric for tests and benchmarks)."""
        self._queued: dict[str, _Queued] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._write_forever())

    async def close(self) -> None:
        """Write what is queued and stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.flush()  # what was queued while the last write ran

    def record(
        self, session_id: str, event: Event, *, reasoning_tokens: int, answer_tokens: int, hidden_reasoning: str = ""
    ) -> None:
        """Queue ``event``, the next of the session's log, with its counts as of that event."""
        queued = self._queued.setdefault(session_id, _Queued())
        queued.events.append(event)
        queued.reasoning_tokens, queued.answer_tokens = reasoning_tokens, answer_tokens
        if hidden_reasoning:
            queued.hidden_reasoning.append(hidden_reasoning)
        self._wake.set()

    def forget(self, session_id: str) -> None:
        """The session finished: its whole log is written with its end, nothing queued is needed."""
        self._queued.pop(session_id, None)

    async def flush(self) -> None:
        """Write everything queued now, in one transaction; on failure keep it queued for the next try."""
        batch, self._queued = self._queued, {}
        if not batch:
            return
        checkpoints = [queued.checkpoint(session_id) for session_id, queued in batch.items()]
        try:
            await asyncio.to_thread(self.store.append, checkpoints)
        except Exception:
            log.exception("could not write the events of %d running sessions; retrying", len(batch))
            self._requeue(batch)
            return
        self.writes += 1
        for checkpoint in checkpoints:
            self.on_written(checkpoint.session_id, checkpoint.events[-1].seq)

    def _requeue(self, batch: dict[str, _Queued]) -> None:
        for session_id, older in batch.items():
            newer = self._queued.get(session_id)
            if newer is not None:  # queued while the write failed: it follows the older events
                older.events += newer.events
                older.reasoning_tokens, older.answer_tokens = newer.reasoning_tokens, newer.answer_tokens
                older.hidden_reasoning += newer.hidden_reasoning
            self._queued[session_id] = older
        self._wake.set()

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()
            if self._closing:
                return
            await asyncio.sleep(self.every_s)  # what comes meanwhile goes in the next write


def resume_from(progress: Progress) -> Resume | None:
    """Where an unfinished session continues: the reasoning and answer its stored events (and hidden
    reasoning) reached, with their token counts; None when it had generated nothing yet."""
    streamed = "".join(e.text for e in progress.events if e.kind is EventKind.REASONING_DELTA)
    answer = "".join(e.text for e in progress.events if e.kind is EventKind.ANSWER_DELTA)
    reasoning = streamed + progress.hidden_reasoning  # one of the two is empty: a session streams or hides
    if not (reasoning or answer or progress.reasoning_tokens or progress.answer_tokens):
        return None
    return Resume(reasoning, progress.reasoning_tokens, answer, progress.answer_tokens)
