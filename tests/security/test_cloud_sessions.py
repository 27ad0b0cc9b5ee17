"""Attacks by one device on another's cloud sessions, against the real Reasoner on a loopback port
(real grpc.aio server, real SQLite store, a small random Qwen3 from disk as the model).

Two devices hold their own tokens. Each attack is refused, and the legitimate operation right
after it succeeds: another device's session id is NOT_FOUND exactly like a missing one, request
ids are per device, one device's flood is refused while another device is served, bytes that do
not parse are INVALID_ARGUMENT, and tokens are not accepted over plaintext off loopback."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from edgecloud.cli import main
from edgecloud.cloud.config import AuthConfig, CloudConfig, TlsConfig
from edgecloud.cloud.engine import EngineConfig
from edgecloud.cloud.sessions import SessionConfig
from edgecloud.proto.edgecloud.v1 import reasoner_pb2 as pb
from edgecloud.shared.base.errors import ConfigError
from tests.helpers.cloud import RunningServer, make_config

TOKENS = {"token-of-device-a-0123456789": "dev-a", "token-of-device-b-0123456789": "dev-b"}
A = (("authorization", "Bearer token-of-device-a-0123456789"),)
B = (("authorization", "Bearer token-of-device-b-0123456789"),)
TIMEOUT = 60
FINISHED = (pb.COMPLETED, pb.FAILED, pb.CANCELLED)


def long_request(**fields: object) -> pb.ThinkRequest:
    """A session that runs until cancelled (the random model never stops by itself)."""
    values: dict[str, object] = {"request_id": uuid.uuid4().hex, "query": "1+1", "max_reasoning_tokens": 0}
    values |= {"max_output_tokens": 4000} | fields
    return pb.ThinkRequest(**values)  # type: ignore[arg-type]


def short_request(**fields: object) -> pb.ThinkRequest:
    return long_request(**({"query": "2+2", "max_output_tokens": 3} | fields))


def code_of(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as error:
        result = call(*args, timeout=TIMEOUT, **kwargs)
        if not isinstance(result, pb.SessionInfo):
            list(result)  # a stream fails on its first read
    return error.value.code(), error.value.details()


def wait_finished(server: RunningServer, session_id: str, metadata: tuple) -> pb.SessionInfo:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        info = server.stub.GetSession(pb.SessionRef(session_id=session_id), metadata=metadata, timeout=10)
        if info.status in FINISHED:
            return info
        time.sleep(0.05)
    raise AssertionError(f"session {session_id} did not finish in {TIMEOUT}s")


def two_device_config(model: Path, tmp_path: Path, **sessions: object) -> CloudConfig:
    return make_config(
        model,
        tmp_path,
        auth=AuthConfig(tokens={**TOKENS}, required=True),
        engine=EngineConfig(max_batch=4, max_queue=16, max_output_tokens=4000),
        sessions=SessionConfig(**sessions),  # type: ignore[arg-type]
    )


@pytest.fixture
def cloud(random_qwen3_dir: Path, tmp_path: Path) -> Iterator[RunningServer]:
    running = RunningServer(two_device_config(random_qwen3_dir, tmp_path))
    yield running
    running.stop()


def test_another_devices_session_is_not_found_like_a_missing_one(random_qwen3_dir: Path, tmp_path: Path) -> None:
    config = two_device_config(random_qwen3_dir, tmp_path)
    server = RunningServer(config)
    try:
        stub = server.stub
        owned = stub.Submit(long_request(), metadata=A, timeout=TIMEOUT)
        assert owned.device_id == "dev-a"  # the token's device owns it; the request named none
        missing = uuid.uuid4().hex
        for sid in (owned.session_id, missing):  # device B tries device A's session, then a missing one
            answers = [
                code_of(stub.GetSession, pb.SessionRef(session_id=sid), metadata=B),
                code_of(stub.Cancel, pb.SessionRef(session_id=sid), metadata=B),
                code_of(stub.Attach, pb.AttachRequest(session_id=sid), metadata=B),
            ]
            for code, details in answers:
                assert code == grpc.StatusCode.NOT_FOUND
                assert details.replace(sid, "<id>") == f"no session '<id>' (unknown, or expired after {3600:g}s)"
        # A token cannot speak for another device either.
        code, _ = code_of(stub.Submit, long_request(device_id="dev-a"), metadata=B)
        assert code == grpc.StatusCode.INVALID_ARGUMENT

        # B's Cancel did nothing: A's session still runs, and A reaches it.
        info = stub.GetSession(pb.SessionRef(session_id=owned.session_id), metadata=A, timeout=TIMEOUT)
        assert info.status not in FINISHED
        assert stub.Cancel(pb.SessionRef(session_id=owned.session_id), metadata=A).status == pb.CANCELLED
        events = list(stub.Attach(pb.AttachRequest(session_id=owned.session_id), metadata=A, timeout=TIMEOUT))
        assert events[0].seq == 1 and events[-1].failed.code == "CANCELLED"
    finally:
        server.stop()

    # After a restart the session is served from the store, and still only to its device.
    again = RunningServer(config)
    try:
        code, _ = code_of(again.stub.GetSession, pb.SessionRef(session_id=owned.session_id), metadata=B)
        assert code == grpc.StatusCode.NOT_FOUND
        kept = again.stub.GetSession(pb.SessionRef(session_id=owned.session_id), metadata=A, timeout=TIMEOUT)
        assert kept.status == pb.CANCELLED and kept.device_id == "dev-a"
    finally:
        again.stop()


def test_request_ids_are_per_device(cloud: RunningServer) -> None:
    stub = cloud.stub
    mine = stub.Submit(short_request(request_id="req-1", query="2+2"), metadata=A, timeout=TIMEOUT)
    # Device B picks the same request id: before, it was refused ("already used for a different
    # query") or, for the same query, handed device A's session and its result.
    theirs = stub.Submit(short_request(request_id="req-1", query="3+3"), metadata=B, timeout=TIMEOUT)
    same_query = stub.Submit(short_request(request_id="req-2", query="2+2"), metadata=B, timeout=TIMEOUT)
    assert theirs.session_id != mine.session_id and theirs.device_id == "dev-b"
    assert same_query.session_id != mine.session_id
    # A request id still makes a retry idempotent within its device, across both devices' sessions.
    assert stub.Submit(short_request(request_id="req-1", query="2+2"), metadata=A).session_id == mine.session_id
    assert stub.Submit(short_request(request_id="req-1", query="3+3"), metadata=B).session_id == theirs.session_id
    code, _ = code_of(stub.Submit, short_request(request_id="req-1", query="3+3"), metadata=A)
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # A's own req-1 was another query; B's is not reachable
    own = stub.Submit(short_request(request_id="req-2", query="2+2"), metadata=A, timeout=TIMEOUT)
    assert own.session_id != same_query.session_id and own.device_id == "dev-a"  # A's own req-2, not B's
    for session_id, metadata in ((mine.session_id, A), (theirs.session_id, B)):
        info = wait_finished(cloud, session_id, metadata)
        assert info.status == pb.COMPLETED and info.usage.output_tokens == 3


def test_one_devices_flood_is_refused_while_another_device_is_served(random_qwen3_dir: Path, tmp_path: Path) -> None:
    server = RunningServer(two_device_config(random_qwen3_dir, tmp_path, max_open_per_device=3))
    try:
        stub = server.stub
        flood = [stub.Submit(long_request(), metadata=A, timeout=TIMEOUT).session_id for _ in range(3)]
        for _ in range(3):
            code, details = code_of(stub.Submit, long_request(), metadata=A)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "share of the queue" in details
        served = stub.Submit(short_request(), metadata=B, timeout=TIMEOUT)  # the queue still has room for B
        info = wait_finished(server, served.session_id, B)
        assert info.status == pb.COMPLETED and info.usage.output_tokens == 3
        assert all(stub.GetSession(pb.SessionRef(session_id=s), metadata=A).status not in FINISHED for s in flood)
        # A finished session gives its slot back: device A is served again.
        stub.Cancel(pb.SessionRef(session_id=flood[0]), metadata=A)
        again = stub.Submit(short_request(), metadata=A, timeout=TIMEOUT)
        assert wait_finished(server, again.session_id, A).status == pb.COMPLETED
        for session_id in flood[1:]:
            stub.Cancel(pb.SessionRef(session_id=session_id), metadata=A)
    finally:
        server.stop()


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff", b"\x0a\x80", b"\x12\x05ab"], ids=["tag", "varint", "short"])
def test_bytes_that_do_not_parse_are_invalid_argument(cloud: RunningServer, garbage: bytes) -> None:
    raw = {
        "Submit": cloud.channel.unary_unary("/edgecloud.v1.Reasoner/Submit"),
        "GetSession": cloud.channel.unary_unary("/edgecloud.v1.Reasoner/GetSession"),
        "Think": cloud.channel.unary_stream("/edgecloud.v1.Reasoner/Think"),
        "Attach": cloud.channel.unary_stream("/edgecloud.v1.Reasoner/Attach"),
    }
    for name, call in raw.items():
        with pytest.raises(grpc.RpcError) as error:
            list(call(garbage, timeout=TIMEOUT)) if name in ("Think", "Attach") else call(garbage, timeout=TIMEOUT)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED, name  # the token is checked first
        with pytest.raises(grpc.RpcError) as error:
            if name in ("Think", "Attach"):
                list(call(garbage, metadata=A, timeout=TIMEOUT))
            else:
                call(garbage, metadata=A, timeout=TIMEOUT)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert "not a valid" in error.value.details(), name
    ok = cloud.stub.Submit(short_request(), metadata=A, timeout=TIMEOUT)
    assert wait_finished(cloud, ok.session_id, A).status == pb.COMPLETED


def test_tokens_over_plaintext_off_loopback_are_refused_unless_allowed(
    random_qwen3_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = make_config(random_qwen3_dir, tmp_path)
    auth = AuthConfig(tokens={**TOKENS}, required=True)
    for host in ("0.0.0.0", "10.1.2.3", "::"):
        with pytest.raises(ConfigError, match="plaintext"):
            replace(base, host=host, auth=auth)
    pem = tmp_path / "server.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")  # only checked to exist here; never served
    assert replace(base, host="0.0.0.0", auth=auth, tls=TlsConfig(cert=pem, key=pem)).auth_required
    assert replace(base, host="0.0.0.0", auth=auth, allow_plaintext_tokens=True).auth_required
    assert replace(base, host="127.0.0.1", auth=auth).auth_required  # loopback: no one on the wire

    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"dev-a": "token-of-device-a-0123456789"}')
    command = ["cloud", "serve", "--model", str(random_qwen3_dir), "--host", "0.0.0.0", "--port", "0"]
    command += ["--tokens", str(tokens), "--metrics-port", "-1", "--store", str(tmp_path / "s.sqlite3")]
    with caplog.at_level(logging.ERROR):
        assert main(command) == 2  # refused before binding or loading anything
    assert "--allow-plaintext-tokens" in caplog.text
