"""Server-owned reasoning sessions: created once, run by the engine, replayable by their device.

A session belongs to the server, not to the RPC that created it: generation
runs in the engine whatever happens to the client, every event is appended to
the session's log with ``seq`` 1, 2, 3, ..., and any number of readers follow
the log from any point (:meth:`SessionManager.follow`) with no gap and no
duplicate. Finished sessions stay for ``ttl_s`` (in memory, the newest
``SessionConfig.finished_in_memory`` of them; the rest are read back from the store).

Sessions belong to a device (``ThinkParams.device_id``, which the server sets from the
caller's token): request ids are scoped per device, a lookup that names a device
(``device=``) finds only that device's sessions, and another device's session id is
:class:`NotFoundError` exactly like a missing one. A device may hold at most
``max_open_per_device`` unfinished sessions, so one device's flood is refused
(:class:`ResourceExhaustedError`) while the rest of the engine queue serves the others. A
verification session (a device's shadow check, ``priority: verification``) is refused while more
than ``verification_max_waiting`` sessions wait for an engine slot: checks are shed first.

Durability (:mod:`edgecloud.cloud.stores`): a session is written when accepted, while it
runs (its events, written behind in batches by :mod:`edgecloud.cloud.journal`) and when it ends.
Readers see an event only once it is written, so nothing a reader saw can be lost. After a
restart, finished sessions are served from the store, and unfinished ones continue under the
same ids from the events they had streamed: the log is loaded as it was, the engine reads the
prompt with the reasoning and answer so far (the reasoning tokens spent count against the budget)
and generates what follows, numbered on from the last seq. Greedy or sampled, readers who resume
from any seq they saw before the restart see no gap, no duplicate and no different past; a
session that cannot continue (its text no longer fits the model) fails with RESUME_FAILED
rather than generate its past again.

Replicas may share one store (:class:`~edgecloud.cloud.stores.SharedSessionStorage`, Redis):
then any replica answers for any session. A session another replica runs is *remote* here: its
state and its log are read from the store, and its readers follow the stored log as it is written;
a request id another replica accepted is that session; a device's quota counts its sessions on
every replica; a cancel is passed to the replica running the session. Leases, and continuing a
dead replica's sessions, are :class:`~edgecloud.cloud.replicas.ReplicaDuties`'.

This module keeps the sessions: it creates them (or finds them again), serves their state and
their logs to readers, reuses finished results (:class:`ResultCache`) and forgets sessions after
``ttl_s``. Running one on the engine, from its job to its written end, is
:class:`~edgecloud.cloud.session_runner.SessionRunner`'s.

Everything here runs on one asyncio loop, the engine's event streams included.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgecloud.cloud.budget import BudgetPolicy
from edgecloud.cloud.engine import ReasoningEngine
from edgecloud.cloud.escalation_log import EscalationLog
from edgecloud.cloud.journal import EventJournal, resume_from
from edgecloud.cloud.metrics import CloudMetrics
from edgecloud.cloud.replicas import ReplicaDuties, follow_stored_log
from edgecloud.cloud.session_runner import SessionRunner
from edgecloud.cloud.stores import RequestTaken, SessionStorage, SharedSessionStorage, StoredSession
from edgecloud.shared.base.errors import ConfigError, InvalidInputError, NotFoundError, ResourceExhaustedError
from edgecloud.shared.reasoner.features import decode_features
from edgecloud.shared.reasoner.session import (
    Event,
    EventKind,
    Failure,
    SessionInfo,
    SessionStatus,
    ThinkParams,
    Usage,
    conversation_key,
)

__all__ = ["ResultCache", "Session", "SessionConfig", "SessionManager"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SessionConfig:
    ttl_s: float = 3600.0
    """How long finished sessions stay retrievable."""
    finished_in_memory: int = 1000
    """Finished sessions kept in memory, the newest; older ones stay in the store (until ``ttl_s``)
    and are read back when asked for, so memory does not grow with the number of sessions served."""
    sweep_every_s: float = 30.0
    result_cache_size: int = 10_000
    """Finished results reused for repeated queries; 0 disables the cache."""
    max_feature_elements: int = 4096
    feature_dims: tuple[int, ...] | None = None
    """Expected shape of decoded features; None accepts any shape within max_feature_elements."""
    escalation_log: Path | None = None
    """JSONL file that collects escalations with their features, for the next student."""
    max_open_per_device: int = 64
    """Unfinished (queued or running) sessions one device may hold; more are RESOURCE_EXHAUSTED.
    Keep it below the engine's ``max_queue`` so one device cannot fill the queue; 0 = no limit."""
    verification_max_waiting: int = 0
    """A verification session (a device's shadow check) is refused, RESOURCE_EXHAUSTED, while more
    than this many sessions wait for an engine slot (running and queued beyond ``max_batch``): under
    load the checks are shed first and no user waits behind them."""
    write_every_s: float = 0.1
    """Longest wait between two writes of running sessions' events (one transaction for all of
    them). Readers see an event once it is written, so this is also the most a streamed event
    waits; the first event after a quiet spell is written at once."""

    def __post_init__(self) -> None:
        if self.ttl_s <= 0 or self.sweep_every_s <= 0 or self.write_every_s <= 0:
            raise ConfigError("sessions: ttl_s, sweep_every_s and write_every_s must be > 0")
        if self.max_open_per_device < 0 or self.verification_max_waiting < 0:
            raise ConfigError("sessions: max_open_per_device and verification_max_waiting must be >= 0")
        if self.finished_in_memory < 0:
            raise ConfigError(f"sessions: finished_in_memory must be >= 0, got {self.finished_in_memory}")
        if self.result_cache_size < 0 or self.max_feature_elements < 1:
            raise ConfigError("sessions: result_cache_size >= 0 and max_feature_elements >= 1")


class Session:
    def __init__(self, session_id: str, params: ThinkParams, budget: int, created: float) -> None:
        self.id = session_id
        self.params = params
        self.budget = budget
        self.created = created
        self.started: float | None = None
        self.first_answer: float | None = None
        self.finished_at: float | None = None
        self.status = SessionStatus.QUEUED
        self.events: list[Event] = []
        self.written = 0
        """How many of ``events`` the store holds: what readers may see."""
        self.reasoning_tokens = 0
        self.answer_tokens = 0
        """Tokens generated so far, as of the last event (what a restart continues counting from)."""
        self.changed = asyncio.Condition()
        self.features: np.ndarray | None = None
        self.producer = ""
        self.result: Event | None = None
        self.failure: Failure | None = None
        self.remote = False
        """Run by another replica: its log is followed in the shared store, not in ``events``."""
        self.stored = False
        """Finished and its whole log in the store: memory may let it go (it is read back from there)."""

    @property
    def finished(self) -> bool:
        return self.status.finished

    def next(self, kind: EventKind, **fields: object) -> Event:
        """The event that follows the log so far."""
        return Event(seq=len(self.events) + 1, session_id=self.id, kind=kind, **fields)  # type: ignore[arg-type]

    def notify(self) -> None:
        """Wake this session's readers (from the asyncio loop)."""

        async def wake() -> None:
            async with self.changed:
                self.changed.notify_all()

        asyncio.get_running_loop().create_task(wake())

    def info(self, model_name: str, model_version: int) -> SessionInfo:
        result = self.result
        return SessionInfo(
            session_id=self.id,
            request_id=self.params.request_id,
            status=self.status,
            last_seq=self.written,
            answer=result.text if result else "",
            usage=result.usage if result else Usage(),
            model_name=model_name,
            model_version=model_version,
            cached=result.cached if result else False,
            failure=self.failure,
            reasoning_budget=self.budget,
            device_id=self.params.device_id,
        )


_CacheKey = tuple[str, str, int, int, int, tuple[float | None, float | None, int | None]]


class ResultCache:
    """Finished results reused for repeated queries, the newest ``size`` of them; only answers
    that stopped on their own, and only for the same conversation, model, budget, output limit and
    sampling (a server-chosen seed included)."""

    def __init__(self, engine: ReasoningEngine, size: int) -> None:
        self.engine, self.size = engine, size
        self._results: collections.OrderedDict[_CacheKey, Event] = collections.OrderedDict()

    def warm(self, store: SessionStorage) -> None:
        """Fill the cache from the newest completed sessions of the store that this model answered."""
        for stored in store.completed(self.size):
            produced_by = (stored.accepted.model_name, stored.accepted.model_version)
            if produced_by != (self.engine.name, self.engine.version):
                continue  # another model's answer (before an upgrade) is not this model's
            if stored.info is not None and stored.info.status is SessionStatus.COMPLETED:
                events = store.events(stored.session_id)
                if events and events[-1].kind is EventKind.COMPLETED:
                    self.remember(stored.params, stored.budget, events[-1])

    def get(self, params: ThinkParams, budget: int) -> Event | None:
        """The COMPLETED event of an earlier session with the same key, if the cache holds one."""
        return self._results.get(self._key(params, budget))

    def remember(self, params: ThinkParams, budget: int, completed: Event) -> None:
        if self.size == 0 or completed.finish_reason != "stop":
            return
        key = self._key(params, budget)
        self._results[key] = completed
        self._results.move_to_end(key)
        while len(self._results) > self.size:
            self._results.popitem(last=False)

    def _key(self, params: ThinkParams, budget: int) -> _CacheKey:
        output = params.max_output_tokens or self.engine.config.default_max_output_tokens
        sampling = params.sampling
        return (
            conversation_key(params.conversation),
            self.engine.name,
            self.engine.version,
            budget,
            output,
            (sampling.temperature, sampling.top_p, sampling.seed),
        )


def _remote_session(stored: StoredSession, events: list[Event]) -> Session:
    """A session another replica runs, as its stored log shows it now."""
    session = Session(stored.session_id, stored.params, stored.budget, time.monotonic())
    session.remote = True
    session.events = events or [stored.accepted]
    session.written = len(session.events)
    last = session.events[-1].kind
    if last is EventKind.ANSWER_DELTA:
        session.status = SessionStatus.ANSWERING
    elif last in (EventKind.REASONING_DELTA, EventKind.REASONING_PROGRESS):
        session.status = SessionStatus.THINKING
    return session


def _leaving_memory(sessions: Iterable[Session], now: float, ttl_s: float, keep: int) -> list[Session]:
    """The finished sessions past their ttl, then the oldest stored ones beyond the newest ``keep``.
    A session whose end could not be written stays in memory (the only copy) until its ttl."""
    finished = [s for s in sessions if s.finished_at is not None]
    expired = [s for s in finished if now - (s.finished_at or 0.0) > ttl_s]
    stored = sorted(
        (s for s in finished if s.stored and now - (s.finished_at or 0.0) <= ttl_s), key=lambda s: s.finished_at or 0.0
    )
    return expired + stored[: max(0, len(finished) - len(expired) - keep)]


def _same_request(params: ThinkParams, existing: Session) -> Session:
    if existing.params.conversation != params.conversation:
        raise InvalidInputError(f"request_id {params.request_id!r} was already used for a different query")
    return existing


_RequestKey = tuple[str, str]
"""(device_id, request_id): request ids are per device."""


class SessionManager:
    """The sessions of one server: creates them (or finds them again by request id), hands them to
    the :class:`~edgecloud.cloud.session_runner.SessionRunner`, serves their state and their logs to
    any number of readers, and forgets them ``ttl_s`` after they end."""

    def __init__(
        self,
        engine: ReasoningEngine,
        store: SessionStorage,
        *,
        config: SessionConfig | None = None,
        budget: BudgetPolicy | None = None,
        metrics: CloudMetrics | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.config = config or SessionConfig()
        self.budget = budget or BudgetPolicy()
        self.metrics = metrics or CloudMetrics()
        self.metrics.bind_engine(lambda: engine.queue_depth, lambda: engine.active)
        self.escalations = EscalationLog(self.config.escalation_log) if self.config.escalation_log else None
        self._sessions: dict[str, Session] = {}
        self._by_request: dict[_RequestKey, str] = {}
        self.cache = ResultCache(engine, self.config.result_cache_size)
        self.journal = EventJournal(store, every_s=self.config.write_every_s, on_written=self._written)
        self.runner = SessionRunner(
            engine,
            store,
            self.journal,
            current=self._sessions.get,
            remember=self.cache.remember,
            max_open_per_device=self.config.max_open_per_device,
            budget=self.budget,
            metrics=self.metrics,
            escalations=self.escalations,
        )
        self._sweeper: asyncio.Task[None] | None = None
        self.shared = store if isinstance(store, SharedSessionStorage) else None
        self.replicas = ReplicaDuties(self, self.shared) if self.shared is not None else None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> int:
        """Warm the result cache and continue unfinished sessions; returns how many continue."""
        self.journal.start()
        self.cache.warm(self.store)
        resumed = 0
        if self.replicas is not None:  # another replica's unfinished sessions are its own, while it lives
            await self.replicas.claim()
            resumed = self.replicas.claimed
            self.replicas.start()
        else:
            for stored in self.store.unfinished():
                self.resume(stored)
                resumed += 1
        if resumed:
            log.info("continuing %d sessions cut by a restart", resumed)
        self._sweeper = asyncio.create_task(self._sweep_forever())
        return resumed

    async def close(self) -> None:
        """Stop the sweeper and write the events still queued (stop the engine first to keep all);
        on a shared store, hand what is unfinished here to the other replicas."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self.replicas is not None:
            await self.replicas.stop()
        await self.runner.aclose()
        await self.journal.close()
        if self.replicas is not None:
            self.replicas.drain()
            await self.shared.aclose()  # type: ignore[union-attr]  # set with the duties

    def running_ids(self) -> list[str]:
        """The unfinished sessions this replica runs."""
        return [s.id for s in self._sessions.values() if not s.finished and not s.remote]

    def lose(self, session_id: str) -> None:
        """Another replica holds ``session_id`` now: stop running it here; its readers follow the store."""
        session = self._sessions.pop(session_id, None)
        if session is None or session.finished:
            return
        self.runner.stop(session_id)
        self.journal.forget(session_id)
        self.runner.release(session)
        session.remote = True
        session.notify()

    def resume(self, stored: StoredSession) -> None:
        """An unfinished session from the store, its log as readers saw it, back in the engine
        to continue from where that log ends."""
        progress = self.store.progress(stored.session_id)
        session = Session(stored.session_id, stored.params, stored.budget, time.monotonic())
        session.events = progress.events
        session.written = len(session.events)
        session.reasoning_tokens, session.answer_tokens = progress.reasoning_tokens, progress.answer_tokens
        resume = resume_from(progress)
        if resume is not None and resume.answer:
            session.first_answer = session.created  # its first answer token came before the restart
        self._adopt(session)
        self._decode_features(session)
        self.runner.submit(session, resume)

    # -- commands ----------------------------------------------------------------------

    def create(self, params: ThinkParams) -> Session:
        """The session for ``params.request_id``: the existing one, or a new one.

        Raises InvalidInputError (bad features, request_id reused for another
        query) and ResourceExhaustedError (engine queue full, or the device holds
        ``max_open_per_device`` unfinished sessions: nothing is kept).
        """
        existing = self._find_request(params.device_id, params.request_id)
        if existing is not None:
            return _same_request(params, existing)
        session = self._new_session(self._fix_sampling(params))
        # A server-chosen seed is part of the key, so a sampled answer is reused only for the same seed.
        cached = self.cache.get(session.params, session.budget)
        accepted = Event(
            seq=1,
            session_id=session.id,
            kind=EventKind.ACCEPTED,
            reasoning_budget=session.budget,
            model_name=self.engine.name,
            model_version=self.engine.version,
            queue_position=0 if cached else self.engine.queue_depth + 1,
        )
        if cached is None:
            _shed_verification(self.engine, session.params, self.config.verification_max_waiting, self.metrics)
            counted = self.shared is not None and self.runner.max_open_per_device  # a round trip only for a limit
            elsewhere = self.shared.open_sessions(params.device_id) if counted else 0  # type: ignore[union-attr]
            self.runner.check_share(params.device_id, elsewhere)
            self.runner.submit(session)  # raises when full, before anything is recorded
        try:
            self.store.accept(session.id, session.params, session.budget, accepted)
        except RequestTaken as taken:  # another replica accepted the same request meanwhile: that one it is
            if cached is None:
                self.runner.stop(session.id)
                self.runner.release(session)
            return _same_request(params, self._get(taken.session_id))
        self._adopt(session)
        session.events.append(accepted)
        session.written = 1
        if cached is not None:
            self.metrics.cache_hits.inc()
            self.runner.serve_cached(session, cached)
        return session

    def info(self, session_id: str, *, device: str | None = None) -> SessionInfo:
        """The session's state; with ``device``, only if it is that device's (else NotFoundError)."""
        return self._get(session_id, device).info(self.engine.name, self.engine.version)

    def cancel(self, session_id: str, *, device: str | None = None) -> SessionInfo:
        """Cancel the session; one that another replica runs is cancelled there (it looks every 0.25 s)."""
        session = self._get(session_id, device)
        if session.remote:
            self.shared.request_cancel(session.id)  # type: ignore[union-attr]  # remote only on a shared store
        elif not session.finished:
            self.runner.stop(session.id)
            self.runner.fail(session, Failure("CANCELLED", "cancelled by the client"), SessionStatus.CANCELLED)
        return session.info(self.engine.name, self.engine.version)

    async def follow(self, session_id: str, after_seq: int = 0, *, device: str | None = None) -> AsyncIterator[Event]:
        """Every event with seq > ``after_seq``, then live ones until the session ends."""
        session = self._get(session_id, device)
        if after_seq < 0:
            raise InvalidInputError(f"after_seq must be >= 0, got {after_seq}")
        index = after_seq
        while not session.remote:
            while index < session.written:  # only what a restart cannot take back
                index += 1
                yield session.events[index - 1]
            if session.finished:
                return
            async with session.changed:
                await session.changed.wait_for(
                    lambda seen=index: session.written > seen or session.finished or session.remote
                )
        assert self.shared is not None  # only a shared store's sessions are remote
        async for event in follow_stored_log(self.shared, session.id, index, wait_s=self.config.sweep_every_s):
            yield event

    # -- a new session -----------------------------------------------------------------

    def _new_session(self, params: ThinkParams) -> Session:
        """A session for ``params`` with its features decoded and its budget chosen and checked."""
        session = Session(uuid.uuid4().hex, params, 0, time.monotonic())
        self._decode_features(session)
        session.budget, source = self.budget.choose(
            params.max_reasoning_tokens,
            hint=params.hint,
            features=session.features,
            producer=session.producer,
            at_least_default=params.requested_route == "cloud" or params.priority == "verification",
        )
        log.debug("session %s: budget %d from %s", session.id, session.budget, source)
        self._check_prompt(params, session.budget)
        return session

    def _decode_features(self, session: Session) -> None:
        encoded = session.params.features
        if encoded is None:
            return
        session.features = decode_features(
            encoded, expected_dims=self.config.feature_dims, max_elements=self.config.max_feature_elements
        )
        session.producer = f"{encoded.model_name}@{encoded.model_version}:{encoded.model_sha256}"

    def _fix_sampling(self, params: ThinkParams) -> ThinkParams:
        """``params`` with a seed when the session samples and the caller gave none: stored with the
        request, it makes the answer repeatable and part of the result cache's key."""
        sampling, default = params.sampling, self.engine.default_sampling
        temperature = default.temperature if sampling.temperature is None else sampling.temperature
        if not temperature or sampling.seed is not None:
            return params
        return replace(params, sampling=replace(sampling, seed=secrets.randbits(63)))

    def _check_prompt(self, params: ThinkParams, budget: int) -> None:
        """Refuse a conversation longer than the engine reads: an error now, never a silent cut."""
        if not params.multi_turn and len(params.query) * 4 < self.engine.config.max_input_tokens:
            return  # a short query alone fits whatever the tokenizer (a token has at least one character)
        tokens = self.engine.count_prompt_tokens(params.conversation, budget)
        limit = self.engine.config.max_input_tokens
        if tokens > limit:
            raise InvalidInputError(
                f"the conversation takes {tokens} tokens after the chat template; this model reads at most {limit} "
                "(nothing is cut: send fewer or shorter messages)"
            )

    # -- the registry ------------------------------------------------------------------

    def _find_request(self, device_id: str, request_id: str) -> Session | None:
        session_id = self._by_request.get((device_id, request_id))
        if session_id is not None and session_id in self._sessions:
            return self._sessions[session_id]
        stored = self.store.find_request(request_id, device_id)
        return self._load(stored.session_id) if stored else None

    def _get(self, session_id: str, device: str | None = None) -> Session:
        """The session; with ``device``, only that device's: another's is as missing as an unknown id."""
        session = self._sessions.get(session_id) or self._load(session_id)
        if session is None or (device is not None and session.params.device_id != device):
            raise NotFoundError(f"no session {session_id!r} (unknown, or expired after {self.config.ttl_s:g}s)")
        return session

    def _load(self, session_id: str) -> Session | None:
        """A finished session from the store (after a restart or eviction from memory); on a shared
        store, an unfinished one another replica runs (remote, not kept here)."""
        stored = self.store.get(session_id)
        if stored is not None and stored.info is None and self.shared is not None:
            return self._sessions.get(session_id) or _remote_session(stored, self.store.events(stored.session_id))
        if stored is None or stored.info is None:
            return self._sessions.get(session_id)
        session = Session(stored.session_id, stored.params, stored.budget, time.monotonic())
        session.events = self.store.events(session_id) or [stored.accepted]
        session.written = len(session.events)
        session.status = stored.info.status
        session.failure = stored.info.failure
        session.finished_at = time.monotonic()
        session.stored = True
        last = session.events[-1]
        session.result = last if last.kind is EventKind.COMPLETED else None
        self._adopt(session)
        return session

    def _adopt(self, session: Session) -> None:
        self._sessions[session.id] = session
        self._by_request[(session.params.device_id, session.params.request_id)] = session.id

    def _written(self, session_id: str, seq: int) -> None:
        session = self._sessions.get(session_id)
        if session is not None and seq > session.written:
            session.written = seq
            session.notify()

    # -- expiry ------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        last_tokens, last_time = self.engine.tokens_generated, time.monotonic()
        while True:
            await asyncio.sleep(min(self.config.sweep_every_s, 5.0))
            now = time.monotonic()
            tokens = self.engine.tokens_generated
            self.metrics.tokens_per_second.set((tokens - last_tokens) / max(now - last_time, 1e-9))
            self.metrics.engine_steps.set(self.engine.steps)
            last_tokens, last_time = tokens, now
            self.sweep(now)

    def sweep(self, now: float | None = None) -> int:
        """Forget sessions that finished more than ``ttl_s`` ago, in memory and in the store, and
        drop from memory all but the newest ``finished_in_memory`` finished ones (the store keeps
        those until their ttl); returns how many left memory."""
        now = time.monotonic() if now is None else now
        dropped = _leaving_memory(self._sessions.values(), now, self.config.ttl_s, self.config.finished_in_memory)
        for session in dropped:
            del self._sessions[session.id]
            self._by_request.pop((session.params.device_id, session.params.request_id), None)
        self.store.expire(time.time() - self.config.ttl_s)
        return len(dropped)


def _shed_verification(engine: ReasoningEngine, params: ThinkParams, limit: int, metrics: CloudMetrics) -> None:
    """Refuse a verification session (nothing is kept) while more than ``limit`` sessions wait for an
    engine slot; just queued is not load: a continuous batcher admits at its next step."""
    waiting = engine.active + engine.queue_depth - engine.config.max_batch
    if params.priority == "verification" and waiting > limit:
        metrics.verification_shed.inc()
        raise ResourceExhaustedError(
            f"verification shed: {waiting} sessions wait for an engine slot (the limit for "
            f"verification is {limit}); interactive work goes first"
        )
