"""The Reasoner service end to end: a real grpc.aio server on a loopback port,
the shipped demo teacher (or a random Qwen3 from disk), real SQLite."""

from __future__ import annotations

import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
import zstandard
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgecloud.cloud.config import AuthConfig
from edgecloud.cloud.engine import EngineConfig
from edgecloud.cloud.escalation_log import read_escalations
from edgecloud.cloud.stores import SessionStore
from edgecloud.cloud.transformers_engine import LoadedModel
from edgecloud.modelkit.arithmetic.scratchpad import think_text
from edgecloud.modelkit.arithmetic.task import Problem
from edgecloud.proto.edgecloud.v1 import reasoner_pb2 as pb
from edgecloud.proto.edgecloud.v1 import reasoner_pb2_grpc as pb_grpc
from edgecloud.shared.bundles.manifest import load_manifest
from edgecloud.shared.escalations.records import SCHEMA
from edgecloud.shared.reasoner.features import encode_features
from edgecloud.shared.reasoner.wire import features_to_pb
from tests.helpers.cloud import RunningServer, make_config
from tests.helpers.redis_server import RedisServer

TIMEOUT = 120


def request(query: str, **fields: object) -> pb.ThinkRequest:
    return pb.ThinkRequest(request_id=uuid.uuid4().hex, device_id="dev-1", query=query, **fields)


def wait_finished(stub: pb_grpc.ReasonerStub, session_id: str, timeout: float = TIMEOUT) -> pb.SessionInfo:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = stub.GetSession(pb.SessionRef(session_id=session_id), timeout=10)
        if info.status in (pb.COMPLETED, pb.FAILED, pb.CANCELLED):
            return info
        time.sleep(0.05)
    raise AssertionError(f"session {session_id} did not finish in {timeout}s")


def golden(teacher_dir: Path) -> list[tuple[str, str]]:
    return [(g.query, g.expected) for g in load_manifest(teacher_dir).golden]


def test_think_streams_a_complete_session(server: RunningServer, teacher_dir: Path) -> None:
    query, expected = golden(teacher_dir)[0]
    events = list(server.stub.Think(request(query, max_reasoning_tokens=256), timeout=TIMEOUT))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "accepted" and kinds[-1] == "completed"
    assert "reasoning_progress" in kinds and "reasoning_delta" not in kinds  # reasoning hidden by default
    answer = "".join(e.answer_delta.text for e in events if e.WhichOneof("event") == "answer_delta")
    completed = events[-1].completed
    assert completed.answer == answer.strip() == expected
    usage = completed.usage
    assert usage.input_tokens > 0 and 0 < usage.reasoning_tokens <= 256 and usage.output_tokens > 0
    progress = [e.reasoning_progress.reasoning_tokens for e in events if e.WhichOneof("event") == "reasoning_progress"]
    assert progress == sorted(progress) and progress[-1] == usage.reasoning_tokens


def test_stream_reasoning_sends_the_reasoning_text(server: RunningServer, teacher_dir: Path) -> None:
    query, expected = golden(teacher_dir)[1]
    events = list(server.stub.Think(request(query, max_reasoning_tokens=256, stream_reasoning=True), timeout=TIMEOUT))
    reasoning = "".join(e.reasoning_delta.text for e in events if e.WhichOneof("event") == "reasoning_delta")
    assert reasoning.strip() and events[-1].completed.answer == expected


def test_session_outlives_a_client_that_disconnects(server: RunningServer, teacher_dir: Path) -> None:
    query, expected = golden(teacher_dir)[0]
    stream = server.stub.Think(request(query), timeout=TIMEOUT)
    first = next(stream)
    stream.cancel()  # the client goes away after the first event
    assert first.WhichOneof("event") == "accepted"
    info = wait_finished(server.stub, first.session_id)
    assert info.status == pb.COMPLETED and info.answer == expected
    replay = list(server.stub.Attach(pb.AttachRequest(session_id=first.session_id, after_seq=0), timeout=TIMEOUT))
    assert [e.seq for e in replay] == list(range(1, info.last_seq + 1))
    assert replay[-1].completed.answer == expected


def test_attach_after_seq_returns_exactly_the_rest(server: RunningServer, teacher_dir: Path) -> None:
    query, _ = golden(teacher_dir)[3]
    full = list(server.stub.Think(request(query, stream_reasoning=True), timeout=TIMEOUT))
    session_id = full[0].session_id
    for k in (0, 1, len(full) // 2, len(full) - 1, len(full)):
        rest = list(server.stub.Attach(pb.AttachRequest(session_id=session_id, after_seq=k), timeout=TIMEOUT))
        assert rest == full[k:]


def test_attach_mid_stream_continues_live_without_gap(server: RunningServer, teacher_dir: Path) -> None:
    query, _ = golden(teacher_dir)[0]
    stream = server.stub.Think(request(query, stream_reasoning=True), timeout=TIMEOUT)
    seen = [next(stream) for _ in range(3)]
    stream.cancel()
    rest = list(server.stub.Attach(pb.AttachRequest(session_id=seen[0].session_id, after_seq=3), timeout=TIMEOUT))
    events = seen + rest
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].WhichOneof("event") == "completed"


def test_think_is_idempotent_by_request_id(server: RunningServer, teacher_dir: Path) -> None:
    query, _ = golden(teacher_dir)[1]
    message = request(query)
    first = server.stub.Submit(message, timeout=TIMEOUT)
    again = list(server.stub.Think(message, timeout=TIMEOUT))
    assert again[0].session_id == first.session_id
    other = pb.ThinkRequest(request_id=message.request_id, device_id=message.device_id, query="1+1")
    with pytest.raises(grpc.RpcError) as error:
        server.stub.Submit(other, timeout=TIMEOUT)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_budget_caps_reasoning_and_an_answer_still_comes(server: RunningServer, teacher_dir: Path) -> None:
    query = golden(teacher_dir)[0][0]  # a multi-step query: the teacher needs far more than 6 tokens
    for budget in (2, 6, 20):
        events = list(server.stub.Think(request(query, max_reasoning_tokens=budget), timeout=TIMEOUT))
        completed = events[-1].completed
        assert events[0].accepted.reasoning_budget == budget
        assert completed.usage.reasoning_tokens <= budget
        assert completed.budget_reached
        assert completed.answer and completed.finish_reason == "stop"  # cut short, it still answers


def test_zero_budget_answers_without_thinking(server: RunningServer, teacher_dir: Path) -> None:
    query = golden(teacher_dir)[1][0]
    events = list(server.stub.Think(request(query, max_reasoning_tokens=0), timeout=TIMEOUT))
    completed = events[-1].completed
    assert completed.usage.reasoning_tokens == 0 and not completed.budget_reached
    assert completed.answer and "reasoning_progress" not in [e.WhichOneof("event") for e in events]


def test_repeated_query_is_served_from_cache_and_never_falsely(server: RunningServer) -> None:
    first = list(server.stub.Think(request("what is 12+30", max_reasoning_tokens=256), timeout=TIMEOUT))[-1].completed
    again = list(server.stub.Think(request("WHAT IS 12 + 30", max_reasoning_tokens=256), timeout=TIMEOUT))[-1].completed
    assert again.cached and again.answer == first.answer and again.usage.cached_tokens == first.usage.input_tokens
    other = list(server.stub.Think(request("what is 1 2+30", max_reasoning_tokens=256), timeout=TIMEOUT))[-1].completed
    assert not other.cached  # different digits: "1 2" is not "12"
    budget = list(server.stub.Think(request("what is 12+30", max_reasoning_tokens=0), timeout=TIMEOUT))[-1].completed
    assert not budget.cached  # another budget is another computation


def test_cancel_is_idempotent_and_frees_the_slot(random_qwen3_dir: Path, tmp_path: Path) -> None:
    config = make_config(
        random_qwen3_dir, tmp_path, engine=EngineConfig(max_batch=1, max_queue=4, max_output_tokens=4000)
    )
    running = RunningServer(config)
    try:
        stub = running.stub
        long = stub.Submit(request("1+1", max_reasoning_tokens=0, max_output_tokens=4000), timeout=TIMEOUT)
        waiting = stub.Submit(request("2+2", max_reasoning_tokens=0, max_output_tokens=5), timeout=TIMEOUT)
        time.sleep(0.3)
        assert stub.GetSession(pb.SessionRef(session_id=waiting.session_id)).status == pb.QUEUED
        first = stub.Cancel(pb.SessionRef(session_id=long.session_id), timeout=TIMEOUT)
        second = stub.Cancel(pb.SessionRef(session_id=long.session_id), timeout=TIMEOUT)
        assert first.status == second.status == pb.CANCELLED
        assert first.last_seq == second.last_seq  # no second CANCELLED event
        info = wait_finished(stub, waiting.session_id, timeout=30)  # the freed slot runs the queued session
        assert info.status == pb.COMPLETED and info.usage.output_tokens == 5
        events = list(stub.Attach(pb.AttachRequest(session_id=long.session_id), timeout=TIMEOUT))
        assert events[-1].failed.code == "CANCELLED"
    finally:
        running.stop()


def test_full_queue_is_resource_exhausted(random_qwen3_dir: Path, tmp_path: Path) -> None:
    config = make_config(
        random_qwen3_dir, tmp_path, engine=EngineConfig(max_batch=1, max_queue=1, max_output_tokens=4000)
    )
    running = RunningServer(config)
    try:
        stub = running.stub
        ids = [stub.Submit(request("1+1", max_reasoning_tokens=0, max_output_tokens=4000)).session_id]
        time.sleep(0.3)  # the first one is running; the next fills the queue
        ids.append(stub.Submit(request("1+2", max_reasoning_tokens=0, max_output_tokens=4000)).session_id)
        with pytest.raises(grpc.RpcError) as error:
            stub.Submit(request("1+3", max_reasoning_tokens=0))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for session_id in ids:
            stub.Cancel(pb.SessionRef(session_id=session_id))
    finally:
        running.stop()


def test_restart_keeps_results_and_reruns_unfinished_sessions(
    teacher_dir: Path, teacher: LoadedModel, tmp_path: Path
) -> None:
    config = make_config(teacher_dir, tmp_path, engine=EngineConfig(max_batch=1))
    queries = [q for q, _ in golden(teacher_dir)]
    first = RunningServer(config, loaded=teacher)
    done = list(first.stub.Think(request(queries[0]), timeout=TIMEOUT))
    pending = [first.stub.Submit(request(q, max_reasoning_tokens=256)) for q in queries[1:]]
    first.stop(grace=0)  # the engine is stopped with sessions still queued
    store = SessionStore(config.store)
    unfinished = {s.session_id for s in store.unfinished()}
    store.close()
    assert unfinished, "the restart must find sessions it has to run again"
    assert unfinished <= {p.session_id for p in pending}

    second = RunningServer(config, loaded=teacher)
    try:
        stub = second.stub
        kept = stub.GetSession(pb.SessionRef(session_id=done[0].session_id))
        assert kept.status == pb.COMPLETED and kept.answer == done[-1].completed.answer
        replay = list(stub.Attach(pb.AttachRequest(session_id=done[0].session_id)))
        assert replay == done
        for p, (_, expected) in zip(pending, golden(teacher_dir)[1:], strict=True):
            info = wait_finished(stub, p.session_id)
            assert info.status == pb.COMPLETED and info.answer == expected
            events = list(stub.Attach(pb.AttachRequest(session_id=p.session_id)))
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
        again = stub.Submit(pb.ThinkRequest(request_id=pending[-1].request_id, device_id="dev-1", query=queries[-1]))
        assert again.session_id == pending[-1].session_id  # still idempotent (per device) after the restart
    finally:
        second.stop()


def test_bad_input_is_invalid_argument_and_harms_no_one(server: RunningServer, teacher_dir: Path) -> None:
    query, expected = golden(teacher_dir)[0]
    bystander = server.stub.Submit(request(query), timeout=TIMEOUT)
    good = encode_features(np.linspace(-1, 1, 128, dtype=np.float32))
    bomb = zstandard.ZstdCompressor().compress(bytes(64 << 20))
    bad_requests = {
        "empty query": request(""),
        "oversized query": request("1+" * 10_000),
        "wrong dims": request(query, features=features_to_pb(good)),
        "bad codec": request(query, features=pb.CompressedFeatures(codec="gzip", dtype="int8", dims=[128], scale=0.1)),
        "decompression bomb": request(
            query,
            features=pb.CompressedFeatures(
                codec=good.codec,
                dtype=good.dtype,
                dims=[128],
                scale=good.scale,
                payload=bomb[:100_000],
                schema_version=good.schema_version,
            ),
        ),
        "bad hint": request(query, hint=pb.EdgeHint(confidence=2.0)),
    }
    bad_requests["wrong dims"].features.dims[:] = [64]
    for name, message in bad_requests.items():
        with pytest.raises(grpc.RpcError) as error:
            list(server.stub.Think(message, timeout=TIMEOUT))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert error.value.details(), name
    with pytest.raises(grpc.RpcError) as error:
        server.stub.Submit(request("1+1", features=pb.CompressedFeatures(payload=bytes(2 << 20))), timeout=TIMEOUT)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # over the message size limit, refused by gRPC
    assert wait_finished(server.stub, bystander.session_id).answer == expected


def test_unknown_session_is_not_found(server: RunningServer) -> None:
    for call in (server.stub.GetSession, server.stub.Cancel):
        with pytest.raises(grpc.RpcError) as error:
            call(pb.SessionRef(session_id="nope"), timeout=TIMEOUT)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        list(server.stub.Attach(pb.AttachRequest(session_id="nope"), timeout=TIMEOUT))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_tokens_are_required_when_configured(teacher_dir: Path, teacher: LoadedModel, tmp_path: Path) -> None:
    token = "t0k3n-for-device-1-abcdef"
    config = make_config(teacher_dir, tmp_path, auth=AuthConfig(tokens={token: "dev-1"}, required=True))
    running = RunningServer(config, loaded=teacher)
    try:
        stub = running.stub
        for metadata in ((), (("authorization", "Bearer wrong-token-0123456789"),), (("authorization", token),)):
            with pytest.raises(grpc.RpcError) as error:
                stub.Submit(request("1+1"), metadata=metadata, timeout=TIMEOUT)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = stub.Submit(request("1+1"), metadata=(("authorization", f"Bearer {token}"),), timeout=TIMEOUT)
        assert ok.session_id
        with pytest.raises(grpc.RpcError) as error:  # a token cannot speak for another device
            stub.Submit(
                pb.ThinkRequest(request_id="x1", device_id="dev-2", query="1+1"),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=TIMEOUT,
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        health = health_pb2_grpc.HealthStub(running.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no token
    finally:
        running.stop()


def test_health_and_metrics(server: RunningServer) -> None:
    health = health_pb2_grpc.HealthStub(server.channel)
    service = "edgecloud.v1.Reasoner"
    assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
    list(server.stub.Think(request("3+4"), timeout=TIMEOUT))
    port = server.service.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'edgecloud_cloud_sessions_total{outcome="completed"} 1.0' in text
    assert "edgecloud_cloud_queue_depth 0.0" in text
    assert "edgecloud_cloud_time_to_first_answer_token_seconds_count 1.0" in text
    server.call(server.service.health.enter_graceful_shutdown())
    assert (
        health.Check(health_pb2.HealthCheckRequest(service=service)).status
        == health_pb2.HealthCheckResponse.NOT_SERVING
    )


def test_features_pick_the_budget_and_are_collected(teacher_dir: Path, teacher: LoadedModel, tmp_path: Path) -> None:
    from edgecloud.cloud.sessions import SessionConfig

    log_path = tmp_path / "escalations.jsonl"
    running = RunningServer(
        make_config(teacher_dir, tmp_path, sessions=SessionConfig(escalation_log=log_path)), loaded=teacher
    )
    try:
        vector = np.random.default_rng(0).normal(size=128).astype(np.float32)
        features = features_to_pb(encode_features(vector, model_name="edge-student", model_version=2))
        query, _ = golden(teacher_dir)[0]
        first = list(running.stub.Think(request(query, features=features), timeout=TIMEOUT))
        assert first[0].accepted.reasoning_budget == running.config.budget.default  # nothing known yet
        used = first[-1].completed.usage.reasoning_tokens
        hint = pb.EdgeHint(confidence=0.25, estimated_difficulty=0.5, answer="80")
        second = list(running.stub.Think(request("9*9", features=features, hint=hint), timeout=TIMEOUT))
        budget = second[0].accepted.reasoning_budget
        assert budget == int(used * running.config.budget.headroom) + running.config.budget.margin
        records = read_escalations(log_path)
        assert [r.query for r in records] == [query, "9*9"]
        assert np.allclose(records[0].features, vector, atol=0.05 * np.abs(vector).max())
        # What the next student learns from: the cloud's reasoning and answer, and what the edge said.
        last = records[1]
        assert last.answer == second[-1].completed.answer and last.finish_reason == second[-1].completed.finish_reason
        assert last.budget == budget and last.status == "completed" and last.schema == SCHEMA
        assert last.reasoning and last.reasoning_tokens == second[-1].completed.usage.reasoning_tokens
        nine_times_nine = Problem(query="9*9", expression="9*9", start=9, steps=(("*", 9),), answer=81)
        assert last.budget_reached or last.reasoning == think_text(nine_times_nine).strip()
        assert (last.edge.answer, last.edge.confidence, last.edge.estimated_difficulty) == ("80", 0.25, 0.5)
        assert records[0].edge is None  # the first request sent no hint
    finally:
        running.stop()


def test_a_random_qwen3_from_disk_serves_through_the_same_path(random_qwen3_dir: Path, tmp_path: Path) -> None:
    running = RunningServer(make_config(random_qwen3_dir, tmp_path))
    try:
        events = list(
            running.stub.Think(request("hello", max_reasoning_tokens=8, max_output_tokens=6), timeout=TIMEOUT)
        )
        completed = events[-1].completed
        assert completed.usage.reasoning_tokens <= 8 and completed.finish_reason == "length"
        assert events[0].accepted.model_name == random_qwen3_dir.name
    finally:
        running.stop()


def test_finished_sessions_expire_after_their_ttl(teacher_dir: Path, teacher: LoadedModel, tmp_path: Path) -> None:
    from edgecloud.cloud.sessions import SessionConfig

    config = make_config(teacher_dir, tmp_path, sessions=SessionConfig(ttl_s=0.5, sweep_every_s=0.1))
    running = RunningServer(config, loaded=teacher)
    try:
        events = list(running.stub.Think(request("5+5"), timeout=TIMEOUT))
        assert running.stub.GetSession(pb.SessionRef(session_id=events[0].session_id)).status == pb.COMPLETED
        time.sleep(1.5)
        with pytest.raises(grpc.RpcError) as error:
            running.stub.GetSession(pb.SessionRef(session_id=events[0].session_id))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        running.stop()


def test_readiness_follows_the_shared_store_and_liveness_does_not(
    teacher_dir: Path, teacher: LoadedModel, tmp_path: Path, redis_server: RedisServer
) -> None:
    running = RunningServer(make_config(teacher_dir, tmp_path, store=redis_server.url), loaded=teacher)
    health = health_pb2_grpc.HealthStub(running.channel)

    def status(service: str) -> int:
        return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status

    def wait_for(service: str, wanted: int) -> None:
        deadline = time.monotonic() + TIMEOUT
        while status(service) != wanted:
            assert time.monotonic() < deadline, f"{service or 'the server'} never became {wanted}"
            time.sleep(0.1)

    try:
        assert status("edgecloud.v1.Reasoner") == health_pb2.HealthCheckResponse.SERVING
        redis_server.stop()
        wait_for("edgecloud.v1.Reasoner", health_pb2.HealthCheckResponse.NOT_SERVING)  # out of the balancer
        assert status("") == health_pb2.HealthCheckResponse.SERVING  # alive: nothing restarts it
        redis_server.start()  # same port, same append-only file
        wait_for("edgecloud.v1.Reasoner", health_pb2.HealthCheckResponse.SERVING)
        assert [e.WhichOneof("event") for e in running.stub.Think(request("2+5"), timeout=TIMEOUT)][-1] == "completed"
    finally:
        running.stop()
