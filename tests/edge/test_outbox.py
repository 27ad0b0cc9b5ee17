"""The durable outbox on real SQLite files, delivered to the real Reasoner."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pytest

from edgecloud.edge.escalation import CloudClient, CloudClientConfig
from edgecloud.edge.outbox import DELIVERED, FAILED, PENDING, Outbox, OutboxDeliverer, OutboxRecord
from edgecloud.shared.base.errors import InvalidInputError, NotFoundError
from edgecloud.shared.bundles.manifest import load_manifest
from edgecloud.shared.reasoner.features import EncodedFeatures, encode_features
from edgecloud.shared.reasoner.session import EdgeHint, Event, EventKind, ThinkParams, Usage
from tests.helpers.cloud import RunningServer, make_config
from tests.helpers.waiting import free_port

if TYPE_CHECKING:  # the cloud's model backend needs torch; edge-only installs run without it
    from edgecloud.cloud.transformers_engine import LoadedModel

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T], timeout: float = 90) -> T:
    async def main() -> T:
        try:
            return await asyncio.wait_for(coroutine, timeout)
        finally:
            await asyncio.sleep(0.05)  # let gRPC deliver its last completions before the loop closes

    return asyncio.run(main())


def params(query: str = "1+1", **fields: Any) -> ThinkParams:
    return ThinkParams(request_id=f"r-{uuid.uuid4().hex}", device_id="dev-1", query=query, **fields)


def client_for(port: int, **overrides: Any) -> CloudClient:
    return CloudClient(CloudClientConfig(target=f"127.0.0.1:{port}", **overrides))


def golden(teacher_dir: Path) -> list[tuple[str, str]]:
    return [(g.query, g.expected) for g in load_manifest(teacher_dir).golden]


def test_add_is_committed_idempotent_and_ordered(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    features = encode_features(np.linspace(-1, 1, 64, dtype=np.float32), model_name="student", model_version=3)
    first = params("what is 2+2", features=features, hint=EdgeHint(0.25, 0.75), max_reasoning_tokens=64)
    others = [params(f"what is {i}+1") for i in range(3)]
    outbox = Outbox(path)
    try:
        added = outbox.add(first)
        for p in others:
            outbox.add(p)
        assert added.status == PENDING and added.attempts == 0 and added.params == first
        assert abs(added.created_at - time.time()) < 60 and added.usage is None and added.answer is None
        again = outbox.add(first)  # a retry of the same request is the same record
        assert again == added and outbox.depth() == 4
        with pytest.raises(InvalidInputError):
            outbox.add(ThinkParams(request_id=first.request_id, query="another query"))
        # Committed when add returns: another connection sees it while this one is still open.
        with sqlite3.connect(path) as reader:
            (count,) = reader.execute("SELECT COUNT(*) FROM outbox").fetchone()
        assert count == 4
    finally:
        outbox.close()
    reopened = Outbox(path)  # the daemon restarts
    try:
        pending = reopened.pending()
        assert [r.request_id for r in pending] == [first.request_id, *(p.request_id for p in others)]  # oldest first
        assert pending[0].params == first and pending[0].params.features == features
        assert [r.request_id for r in reopened.pending(limit=2)] == [first.request_id, others[0].request_id]
        assert reopened.get("unknown") is None
    finally:
        reopened.close()


def test_attempts_failures_and_deliveries_are_recorded() -> None:
    with Outbox(":memory:") as outbox:
        waiting, refused, answered = params("1+2"), params("1+3"), params("1+4")
        for p in (waiting, refused, answered):
            outbox.add(p)
        outbox.record_attempt(waiting.request_id, "UnavailableError: down")
        outbox.record_attempt(waiting.request_id, "UnavailableError: still down")
        outbox.mark_failed(refused.request_id, "INVALID_ARGUMENT: bad features")
        usage = Usage(input_tokens=11, reasoning_tokens=40, output_tokens=3)
        completed = Event(seq=9, session_id="s-1", kind=EventKind.COMPLETED, text="5", usage=usage)
        outbox.mark_delivered(answered.request_id, completed)

        record = outbox.get(waiting.request_id)
        assert record is not None and record.status == PENDING
        assert record.attempts == 2 and record.last_error == "UnavailableError: still down"
        failed = outbox.get(refused.request_id)
        assert failed is not None and failed.status == FAILED and failed.failure == "INVALID_ARGUMENT: bad features"
        delivered = outbox.get(answered.request_id)
        assert delivered is not None and delivered.status == DELIVERED
        assert (delivered.answer, delivered.usage, delivered.session_id) == ("5", usage, "s-1")
        assert delivered.delivered_at is not None and delivered.delivered_at >= delivered.created_at
        assert [r.request_id for r in outbox.pending()] == [waiting.request_id] and outbox.depth() == 1

        with pytest.raises(NotFoundError):
            outbox.record_attempt("unknown", "x")
        with pytest.raises(NotFoundError):
            outbox.mark_failed("unknown", "x")
        with pytest.raises(InvalidInputError):
            delta = Event(seq=2, session_id="s", kind=EventKind.ANSWER_DELTA, text="5")
            outbox.mark_delivered(waiting.request_id, delta)


def test_concurrent_adds_from_threads_lose_nothing(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    requests = [params(f"{i}+{i}") for i in range(200)]

    def add(chunk: list[ThinkParams]) -> None:
        for p in chunk:
            outbox.add(p)
            outbox.add(p)  # and its retry

    threads = [threading.Thread(target=add, args=(requests[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    outbox.close()
    with Outbox(tmp_path / "outbox.sqlite3") as reopened:
        assert reopened.depth() == 200
        assert {r.request_id for r in reopened.pending(limit=1000)} == {p.request_id for p in requests}


def test_pending_requests_survive_a_restart_and_reach_a_cloud_that_comes_up_later(
    teacher_dir: Path, teacher: LoadedModel, tmp_path: Path
) -> None:
    path = tmp_path / "outbox.sqlite3"
    port = free_port()  # the cloud will listen here, later
    cases = golden(teacher_dir)[:2]
    requests = [params(query, max_reasoning_tokens=256) for query, _ in cases]

    # 1. The cloud is down: the requests are accepted, a delivery round fails and backs off.
    outbox = Outbox(path)
    for p in requests:
        outbox.add(p)

    async def while_down() -> tuple[int, int]:
        async with client_for(port, max_attempts=2, backoff_base_s=0.02, backoff_max_s=0.05) as client:
            deliverer = OutboxDeliverer(outbox, client)
            return await deliverer.deliver_once(), deliverer.unreachable_rounds

    delivered, unreachable_rounds = run(while_down())
    assert delivered == 0 and unreachable_rounds == 1
    first, second = (outbox.get(p.request_id) for p in requests)
    assert first is not None and first.attempts == 1 and "UnavailableError" in (first.last_error or "")
    assert second is not None and second.attempts == 0, "the round stops at the first unreachable delivery"
    outbox.close()  # 2. the daemon stops

    # 3. The daemon restarts with the same file; the cloud comes up a moment later.
    reopened = Outbox(path)
    assert reopened.depth() == 2
    seen: list[OutboxRecord] = []
    servers: list[RunningServer] = []

    async def after_restart() -> None:
        async with client_for(port, max_attempts=2, backoff_base_s=0.02, backoff_max_s=0.05) as client:
            deliverer = OutboxDeliverer(reopened, client, interval_s=0.05, max_backoff_s=0.2, on_delivered=seen.append)
            await deliverer.start()
            await asyncio.sleep(0.3)  # a few rounds against a closed port
            config = make_config(teacher_dir, tmp_path, port=port)
            servers.append(await asyncio.to_thread(RunningServer, config, teacher))
            while len(seen) < 2:
                await asyncio.sleep(0.05)
            await deliverer.stop()

    try:
        run(after_restart())
    finally:
        if servers:
            servers[0].stop()
    assert [r.request_id for r in seen] == [p.request_id for p in requests]  # oldest first
    for record, (_, expected) in zip(seen, cases, strict=True):
        assert record.status == DELIVERED and record.answer == expected and record.session_id
        assert record.usage is not None and 0 < record.usage.reasoning_tokens <= 256
    assert seen[0].attempts >= 2, "tried before the restart and again while the port was still closed"
    assert reopened.depth() == 0
    reopened.close()


def test_a_permanently_invalid_request_is_marked_failed(
    teacher_dir: Path, teacher: LoadedModel, tmp_path: Path
) -> None:
    running = RunningServer(make_config(teacher_dir, tmp_path), loaded=teacher)
    (query, expected), _ = golden(teacher_dir)[:2]
    bad_codec = EncodedFeatures(codec="gzip", dtype="int8", dims=(128,), scale=0.1, payload=b"x", schema_version=1)
    invalid, valid = params(query, features=bad_codec), params(query)
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    outbox.add(invalid)  # oldest: a failure must not block the ones behind it
    outbox.add(valid)

    async def scenario() -> tuple[int, int]:
        async with client_for(running.port) as client:
            deliverer = OutboxDeliverer(outbox, client)
            return await deliverer.deliver_once(), await deliverer.deliver_once()

    try:
        first_round, second_round = run(scenario())
    finally:
        running.stop()
    assert (first_round, second_round) == (1, 0)
    failed, delivered = outbox.get(invalid.request_id), outbox.get(valid.request_id)
    assert failed is not None and failed.status == FAILED and "INVALID_ARGUMENT" in (failed.failure or "")
    assert failed.attempts == 0, "a permanent refusal is not retried"
    assert delivered is not None and delivered.status == DELIVERED and delivered.answer == expected
    assert outbox.depth() == 0 and outbox.pending() == []
    outbox.close()
