"""Reasoner replicas sharing one Redis: any replica follows, cancels and finishes any session, a
request is one session whichever replicas it reaches, and a dead or drained replica's sessions are
continued by another with no gap and no duplicate. Real engines (the endless thinker: every length
set by the session's limits), on both backends: the transformers engine in each replica, and
llama.cpp's OpenAI-compatible server that every replica's OpenAI backend shares; a real
redis-server, one session manager per replica."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgecloud.cloud.budget import BudgetPolicy
from edgecloud.cloud.config import RemoteEngineConfig
from edgecloud.cloud.engine import EngineConfig, ReasoningEngine
from edgecloud.cloud.sessions import SessionConfig, SessionManager
from edgecloud.cloud.stores.redis_store import RedisSessionStore
from edgecloud.shared.base.errors import NotFoundError, ResourceExhaustedError
from edgecloud.shared.reasoner.session import Event, EventKind, Sampling, SessionStatus, ThinkParams
from edgecloud.shared.reasoner.wire import event_to_pb
from tests.helpers.redis_server import RedisServer

pytest.importorskip("torch", reason="the cloud's model backend needs torch")
from edgecloud.cloud.openai_engine import OpenAIEngine
from edgecloud.cloud.transformers_engine import LoadedModel, TransformersEngine

TIMEOUT = 60.0
BUDGET, ANSWER = 40, 40
LONG = 600
"""A budget that keeps a session thinking past a lease or two."""


Backend = Callable[[], ReasoningEngine]
"""Makes one replica's engine."""


@pytest.fixture(params=["transformers", "openai"])
def backend(request: pytest.FixtureRequest) -> Backend:
    config = EngineConfig(max_batch=2, progress_every=8)
    if request.param == "transformers":
        loaded: LoadedModel = request.getfixturevalue("endless_thinker")
        return lambda: TransformersEngine(loaded, config)
    directory: Path = request.getfixturevalue("endless_thinker_dir")
    remote = RemoteEngineConfig(url=request.getfixturevalue("endless_thinker_llama").url)
    return lambda: OpenAIEngine.from_dir(directory, remote, config, name="endless-thinker", version=1)


@dataclass
class Replica:
    manager: SessionManager
    engine: ReasoningEngine
    store: RedisSessionStore


@asynccontextmanager
async def replica(
    url: str, backend: Backend, name: str, *, lease_s: float = 0.6, max_open: int = 64
) -> AsyncIterator[Replica]:
    """One replica on the store at ``url``. Leaving it stops it gracefully (its unfinished sessions
    handed back) unless the test crashed it first (:func:`crash`)."""
    engine = backend()
    store = RedisSessionStore(url, lease_s=lease_s, replica=name)
    config = SessionConfig(write_every_s=0.05, max_open_per_device=max_open)
    engine.start()
    manager = SessionManager(engine, store, config=config, budget=BudgetPolicy())
    await manager.start()
    try:
        yield Replica(manager, engine, store)
    finally:
        if manager.replicas is not None and manager.replicas._tasks:  # not crashed
            engine.stop()
            await manager.close()
        close = getattr(engine, "aclose", None)
        if close is not None:
            await close()
        store.close()


@asynccontextmanager
async def two_replicas(url: str, backend: Backend, **options: Any) -> AsyncIterator[tuple[Replica, Replica]]:
    """Replicas "one" and "two" on the store at ``url``, both with ``options``."""
    async with replica(url, backend, "one", **options) as one, replica(url, backend, "two", **options) as two:
        yield one, two


async def crash(r: Replica) -> None:
    """The replica dies: its engine stops and nothing more is written or renewed (nothing handed back)."""
    r.engine.stop()
    assert r.manager.replicas is not None
    await r.manager.replicas.stop()
    await r.manager.runner.aclose()  # its connections to a serving engine close, as a dead process's do
    r.manager.journal._closing = True  # what is queued is never written


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, TIMEOUT))


def params(
    request_id: str, sampling: Sampling | None = None, device: str = "dev-1", budget: int = BUDGET
) -> ThinkParams:
    return ThinkParams(
        request_id=request_id,
        query="what is 2+3?",
        device_id=device,
        max_reasoning_tokens=budget,
        max_output_tokens=ANSWER,
        stream_reasoning=True,
        sampling=sampling or Sampling(temperature=0.0),
    )


async def read_until(manager: SessionManager, session_id: str, stop: int, after: int = 0) -> list[Event]:
    seen = []
    async for event in manager.follow(session_id, after_seq=after):
        seen.append(event)
        if len(seen) >= stop:
            break
    return seen


def assert_one_log(seen: list[Event], rest: list[Event], whole: list[Event], budget: int = BUDGET) -> None:
    """What a reader saw, then what it read after re-attaching, is the session's whole log once."""
    assert [event_to_pb(e).SerializeToString() for e in seen + rest] == [
        event_to_pb(e).SerializeToString() for e in whole
    ]
    assert [e.seq for e in whole] == list(range(1, len(whole) + 1))
    completed = whole[-1]
    assert completed.kind is EventKind.COMPLETED and sum(e.kind is EventKind.FAILED for e in whole) == 0
    assert (completed.usage.reasoning_tokens, completed.usage.output_tokens) == (budget, ANSWER + 2)


def test_a_session_begun_on_one_replica_is_followed_to_its_end_on_another(
    redis_server: RedisServer, backend: Backend
) -> None:
    async def scenario() -> None:
        async with two_replicas(redis_server.url, backend) as (one, two):
            session = one.manager.create(params("r1", budget=LONG))  # still thinking when the reader drops
            seen = await read_until(one.manager, session.id, 5)  # then the client drops
            assert two.manager.create(params("r1")).id == session.id  # a retry on another replica: the same
            info = two.manager.info(session.id, device="dev-1")
            assert not info.status.finished and info.last_seq >= 5
            with pytest.raises(NotFoundError):  # another device's session is as missing as an unknown one
                two.manager.info(session.id, device="dev-2")
            rest = [e async for e in two.manager.follow(session.id, after_seq=len(seen), device="dev-1")]
            whole = [e async for e in two.manager.follow(session.id)]
            assert_one_log(seen, rest, whole, budget=LONG)
            assert two.engine.tokens_generated == 0  # only its replica ran it
            assert two.manager.info(session.id).status is SessionStatus.COMPLETED

    run(scenario())


@pytest.mark.parametrize("sampling", [Sampling(temperature=0.0), Sampling(temperature=1.0, top_p=0.95, seed=7)])
def test_a_dead_replicas_session_is_continued_by_another_with_no_gap_or_duplicate(
    redis_server: RedisServer, backend: Backend, sampling: Sampling
) -> None:
    async def scenario() -> None:
        async with two_replicas(redis_server.url, backend) as (one, two):
            session = one.manager.create(params("r1", sampling, budget=LONG))  # still thinking at the crash
            seen = await read_until(one.manager, session.id, 12)
            await crash(one)
            rest = [e async for e in two.manager.follow(session.id, after_seq=len(seen))]
            whole = [e async for e in two.manager.follow(session.id)]
            assert_one_log(seen, rest, whole, budget=LONG)
            assert two.manager.replicas is not None and two.manager.replicas.claimed == 1

    run(scenario())


def test_a_drained_replica_hands_its_sessions_over_at_once_and_a_cancel_reaches_any_replica(
    redis_server: RedisServer, backend: Backend
) -> None:
    async def scenario() -> None:
        async with replica(redis_server.url, backend, "two", lease_s=600) as two:
            async with replica(redis_server.url, backend, "one", lease_s=600) as one:
                kept = one.manager.create(params("r1", budget=LONG))
                cancelled = one.manager.create(params("r2", budget=LONG))
                seen = await read_until(one.manager, kept.id, 3)
                two.manager.cancel(cancelled.id, device="dev-1")  # run by one: cancelled there
                (end,) = [e async for e in two.manager.follow(cancelled.id)][-1:]
                assert end.kind is EventKind.FAILED and end.failure.code == "CANCELLED"  # type: ignore[union-attr]
                assert one.manager.running_ids() == [kept.id]
            # one stopped gracefully: two continues its session at its next look, not after the lease
            await asyncio.wait_for(_claimed(two), 30)
            rest = await _collect(two.manager, kept.id, len(seen))
            assert_one_log(seen, rest, [e async for e in two.manager.follow(kept.id)], budget=LONG)

    run(scenario())


async def _collect(manager: SessionManager, session_id: str, after: int) -> list[Event]:
    return [e async for e in manager.follow(session_id, after_seq=after)]


def test_a_replica_that_missed_its_lease_drops_the_session_and_its_readers_follow_the_new_owner(
    redis_server: RedisServer, backend: Backend
) -> None:
    async def scenario() -> None:
        async with two_replicas(redis_server.url, backend) as (one, two):
            assert one.manager.replicas is not None
            session = one.manager.create(params("r1", budget=LONG))  # runs for seconds
            reader = asyncio.create_task(_collect(one.manager, session.id, 0))
            await one.manager.replicas.stop()  # one stalls: it renews nothing ...
            await asyncio.wait_for(_claimed(two), 10)  # ... and two takes over
            await one.manager.replicas.renew()  # one wakes up and finds the lease gone
            assert session.id not in one.manager.running_ids()
            one.manager.replicas.start()
            whole = await reader
            assert_one_log(whole, [], [e async for e in two.manager.follow(session.id)], budget=LONG)

    run(scenario())


async def _claimed(r: Replica) -> None:
    while not r.manager.replicas.claimed:  # type: ignore[union-attr]
        await asyncio.sleep(0.05)


def test_a_devices_quota_counts_its_sessions_on_every_replica(redis_server: RedisServer, backend: Backend) -> None:
    async def scenario() -> None:
        async with two_replicas(redis_server.url, backend, max_open=2) as (one, two):
            one.manager.create(params("r1"))
            two.manager.create(params("r2"))
            with pytest.raises(ResourceExhaustedError, match="2 unfinished sessions"):
                one.manager.create(params("r3"))
            other = two.manager.create(params("r3", device="dev-2"))  # another device's share is its own
            assert [e async for e in two.manager.follow(other.id)][-1].kind is EventKind.COMPLETED

    run(scenario())
