"""The domain objects of a reasoning session (``edgecloud.shared.reasoner.session``): validation of what a client
sends, the values a session reports, and the cache-key normalisation of queries. Their protobuf
round trips are tested in test_wire.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgecloud.proto.edgecloud.v1 import reasoner_pb2 as pb
from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.reasoner.features import encode_features
from edgecloud.shared.reasoner.session import (
    MAX_QUERY_CHARS,
    MAX_REQUEST_ID_CHARS,
    EdgeHint,
    Event,
    EventKind,
    Failure,
    SessionInfo,
    SessionStatus,
    ThinkParams,
    Timings,
    Usage,
    normalize_text,
)

# -- statuses and event kinds ----------------------------------------------------------------------


def test_statuses_match_the_protobuf_enum() -> None:
    assert {s.name: int(s) for s in SessionStatus} == {
        name: value for name, value in pb.SessionStatus.items() if name != "SESSION_STATUS_UNSPECIFIED"
    }


def test_finished_statuses() -> None:
    assert {s for s in SessionStatus if s.finished} == {
        SessionStatus.COMPLETED,
        SessionStatus.FAILED,
        SessionStatus.CANCELLED,
    }
    # The order of the enum is the order of a session's life, its ends last.
    assert sorted(SessionStatus)[:3] == [SessionStatus.QUEUED, SessionStatus.THINKING, SessionStatus.ANSWERING]
    assert all(s.finished for s in SessionStatus if s > SessionStatus.ANSWERING)


def test_terminal_event_kinds() -> None:
    assert {k for k in EventKind if k.terminal} == {EventKind.COMPLETED, EventKind.FAILED}
    assert EventKind("answer_delta") is EventKind.ANSWER_DELTA
    assert {k.value for k in EventKind} == {
        "accepted",
        "reasoning_progress",
        "reasoning_delta",
        "answer_delta",
        "completed",
        "failed",
    }


# -- the edge's hint -------------------------------------------------------------------------------


@pytest.mark.parametrize(("confidence", "difficulty"), [(0.0, 0.0), (1.0, 1.0), (0.25, 0.75)])
def test_a_hint_in_range_is_kept(confidence: float, difficulty: float) -> None:
    hint = EdgeHint(confidence=confidence, estimated_difficulty=difficulty)
    assert (hint.confidence, hint.estimated_difficulty) == (confidence, difficulty)


def test_the_default_hint_says_nothing() -> None:
    assert EdgeHint() == EdgeHint(0.0, 0.0)


@pytest.mark.parametrize("value", [-0.01, 1.01, float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("field", ["confidence", "estimated_difficulty"])
def test_a_hint_out_of_range_is_refused(field: str, value: float) -> None:
    with pytest.raises(InvalidInputError, match=rf"^hint\.{field} must be in \[0, 1\], got "):
        EdgeHint(**{field: value})


# -- what a client asks for ------------------------------------------------------------------------


def test_think_params_defaults() -> None:
    p = ThinkParams(request_id="req-1", query="what is 2+3")
    assert (p.device_id, p.features, p.hint, p.max_reasoning_tokens, p.max_output_tokens, p.stream_reasoning) == (
        "",
        None,
        None,
        None,
        0,
        False,
    )


def test_think_params_with_everything() -> None:
    features = encode_features(np.ones(8, dtype=np.float32), model_name="m", model_version=1)
    p = ThinkParams(
        request_id="dev-1/req:7@a.b_c",
        query="x" * MAX_QUERY_CHARS,
        device_id="d" * MAX_REQUEST_ID_CHARS,
        features=features,
        hint=EdgeHint(0.5, 0.5),
        max_reasoning_tokens=0,
        max_output_tokens=12,
        stream_reasoning=True,
    )
    assert len(p.query) == MAX_QUERY_CHARS and p.features is features and p.max_reasoning_tokens == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"request_id": ""}, r"^request_id is required$"),
        (
            {"request_id": "has space"},
            r"^request_id must be 1\.\.128 characters of \[A-Za-z0-9\._:@/-\], got 'has space'",
        ),
        ({"request_id": "r" * (MAX_REQUEST_ID_CHARS + 1)}, r"^request_id must be 1\.\.128 characters"),
        ({"request_id": "é"}, r"^request_id must be"),
        ({"request_id": "a\nb"}, r"^request_id must be"),
        ({"device_id": "dev 1"}, r"^device_id must be 1\.\.128 characters"),
        ({"device_id": "d" * (MAX_REQUEST_ID_CHARS + 1)}, r"^device_id must be"),
        ({"query": ""}, r"^query is empty$"),
        ({"query": " \t\n "}, r"^query is empty$"),
        ({"query": "x" * (MAX_QUERY_CHARS + 1)}, rf"^query has {MAX_QUERY_CHARS + 1} characters; the limit is 8192$"),
        ({"query": "1+\x001"}, r"^query contains a NUL character$"),
        ({"max_reasoning_tokens": -1}, r"^max_reasoning_tokens must be >= 0, got -1$"),
        ({"max_output_tokens": -1}, r"^max_output_tokens must be >= 0, got -1$"),
    ],
    ids=[
        "no-request-id",
        "request-id-space",
        "request-id-long",
        "request-id-unicode",
        "request-id-newline",
        "device-id-space",
        "device-id-long",
        "empty-query",
        "blank-query",
        "long-query",
        "nul-query",
        "negative-budget",
        "negative-output",
    ],
)
def test_bad_think_params_are_refused_with_a_reason(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        ThinkParams(**{"request_id": "req-1", "query": "what is 2+3", **fields})  # type: ignore[arg-type]


def test_a_long_bad_id_is_quoted_only_in_part() -> None:
    with pytest.raises(InvalidInputError) as info:
        ThinkParams(request_id="bad " * 100, query="1+1")
    assert repr(("bad " * 100)[:40]) in str(info.value) and len(str(info.value)) < 150


def test_think_params_are_immutable() -> None:
    p = ThinkParams(request_id="req-1", query="1+1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.query = "2+2"  # type: ignore[misc]
    assert dataclasses.replace(p, query="2+2").query == "2+2" and p.query == "1+1"
    with pytest.raises(InvalidInputError):  # replace() validates again
        dataclasses.replace(p, query="")


# -- what a session reports -----------------------------------------------------------------------


def test_usage_counts_each_token_once_and_defaults_to_zero() -> None:
    assert Usage() == Usage(0, 0, 0, 0)
    usage = Usage(input_tokens=20, reasoning_tokens=64, output_tokens=3, cached_tokens=20)
    assert dataclasses.astuple(usage) == (20, 64, 3, 20)
    assert usage == Usage(20, 64, 3, 20) and hash(usage) == hash(Usage(20, 64, 3, 20))
    assert dataclasses.replace(usage, cached_tokens=0) == Usage(20, 64, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        usage.output_tokens = 4  # type: ignore[misc]


def test_timings_default_to_zero() -> None:
    assert dataclasses.astuple(Timings()) == (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert [f.name for f in dataclasses.fields(Timings)] == [
        "queue_ms",
        "reasoning_ms",
        "answer_ms",
        "total_ms",
        "first_answer_token_ms",
        "prefill_ms",
    ]


def test_an_event_carries_only_what_its_kind_needs() -> None:
    accepted = Event(1, "s", EventKind.ACCEPTED, reasoning_budget=64, model_name="m", model_version=2)
    assert (accepted.text, accepted.usage, accepted.timings, accepted.failure) == ("", Usage(), Timings(), None)
    assert (accepted.cached, accepted.budget_reached, accepted.finish_reason, accepted.queue_position) == (
        False,
        False,
        "",
        0,
    )
    failed = Event(2, "s", EventKind.FAILED, failure=Failure("CANCELLED", "by the client"))
    assert failed.kind.terminal and failed.failure == Failure("CANCELLED", "by the client")
    # Defaults are values, not shared mutable state: two events compare by content.
    assert Event(3, "s", EventKind.ANSWER_DELTA, text="1") == Event(3, "s", EventKind.ANSWER_DELTA, text="1")
    assert Event(3, "s", EventKind.ANSWER_DELTA, text="1") != Event(4, "s", EventKind.ANSWER_DELTA, text="1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        failed.seq = 3  # type: ignore[misc]


def test_session_info_defaults() -> None:
    info = SessionInfo("s", "r", SessionStatus.QUEUED, 1)
    assert (info.answer, info.usage, info.model_name, info.model_version, info.cached) == ("", Usage(), "", 0, False)
    assert (info.failure, info.reasoning_budget, info.device_id) == (None, 0, "")
    assert not info.status.finished


# -- the cache key of a query ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "key"),
    [
        ("What is 41 - 7?", "what is 41-7?"),
        ("  what\tis\n\n41 -7 ?  ", "what is 41-7?"),
        ("CALCULATE  3*4", "calculate 3*4"),
        ("１２＋３０", "12+30"),  # NFKC: full-width digits and plus
        ("Straße", "strasse"),  # case folding, not just lower-casing
        ("( 2 + 3 ) * 4", "(2+3)*4"),
        ("4 1-7", "4 1-7"),  # a space between two word characters is kept
        ("already normal", "already normal"),
    ],
)
def test_normalize_text(query: str, key: str) -> None:
    assert normalize_text(query) == key
    assert normalize_text(key) == key  # idempotent


@pytest.mark.parametrize(("a", "b"), [("41-7", "4 1-7"), ("12+30", "1 2+30"), ("3*4", "3*5"), ("ab", "a b")])
def test_different_expressions_never_share_a_key(a: str, b: str) -> None:
    assert normalize_text(a) != normalize_text(b)
