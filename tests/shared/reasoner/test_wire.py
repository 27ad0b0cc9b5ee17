"""Domain <-> protobuf conversion: round trips, and validation of what comes in."""

from __future__ import annotations

import numpy as np
import pytest

from edgecloud.proto.edgecloud.v1 import reasoner_pb2 as pb
from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.reasoner.features import encode_features
from edgecloud.shared.reasoner.session import (
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
from edgecloud.shared.reasoner.wire import (
    event_from_pb,
    event_to_pb,
    session_info_from_pb,
    session_info_to_pb,
    think_request_from_pb,
    think_request_to_pb,
)


@pytest.mark.parametrize("budget", [None, 0, 300])
def test_think_request_round_trip(budget: int | None) -> None:
    features = encode_features(np.arange(128, dtype=np.float32), model_name="edge-student", model_version=3)
    params = ThinkParams(
        request_id="req-1",
        query="what is 2+3",
        device_id="dev-1",
        features=features,
        hint=EdgeHint(confidence=0.25, estimated_difficulty=0.75),
        max_reasoning_tokens=budget,
        max_output_tokens=12,
        stream_reasoning=True,
    )
    assert think_request_from_pb(think_request_to_pb(params)) == params


EVENTS = [
    Event(1, "s", EventKind.ACCEPTED, reasoning_budget=64, model_name="m", model_version=2, queue_position=3),
    Event(2, "s", EventKind.REASONING_PROGRESS, reasoning_tokens=16),
    Event(3, "s", EventKind.REASONING_DELTA, text="3*4=12\n"),
    Event(4, "s", EventKind.ANSWER_DELTA, text="12"),
    Event(
        5,
        "s",
        EventKind.COMPLETED,
        text="12",
        usage=Usage(10, 20, 5, 10),
        timings=Timings(1.0, 2.0, 3.0, 6.0, 4.0, 0.5),
        cached=True,
        budget_reached=True,
        finish_reason="stop",
    ),
    Event(6, "s", EventKind.FAILED, failure=Failure("CANCELLED", "by the client")),
]


@pytest.mark.parametrize("event", EVENTS, ids=[e.kind.value for e in EVENTS])
def test_event_round_trip(event: Event) -> None:
    assert event_from_pb(pb.ThinkEvent.FromString(event_to_pb(event).SerializeToString())) == event


def test_session_info_round_trip() -> None:
    info = SessionInfo("s", "r", SessionStatus.FAILED, 7, failure=Failure("ENGINE_ERROR", "x"), usage=Usage(1, 2, 3))
    assert session_info_from_pb(session_info_to_pb(info)) == info


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"request_id": "", "query": "1+1"}, "request_id is required"),
        ({"request_id": "bad id with spaces", "query": "1+1"}, "request_id must be"),
        ({"request_id": "r", "query": "   "}, "query is empty"),
        ({"request_id": "r", "query": "1" * 9000}, "the limit is"),
        ({"request_id": "r", "query": "1+\x001"}, "NUL"),
        ({"request_id": "r", "query": "1+1", "hint": pb.EdgeHint(confidence=float("nan"))}, "hint.confidence"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(fields: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        think_request_from_pb(pb.ThinkRequest(**fields))


def test_an_empty_event_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        event_from_pb(pb.ThinkEvent(seq=1, session_id="s"))


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("What is 41 - 7?", "what is 41-7?", True),
        ("CALCULATE  3*4", "calculate 3*4", True),
        ("41-7", "4 1-7", False),
        ("12+30", "1 2+30", False),
        ("3*4", "3*5", False),
    ],
)
def test_cache_key_normalisation_never_merges_different_expressions(a: str, b: str, same: bool) -> None:
    assert (normalize_text(a) == normalize_text(b)) is same


def test_a_conversation_sampling_and_route_round_trip() -> None:
    from edgecloud.shared.reasoner.session import Message, Sampling

    turns = (Message("system", "be brief"), Message("assistant", "<think>x</think>4"), Message("user", "3+3"))
    params = ThinkParams(request_id="r-1", query="3+3", messages=turns, requested_route="cloud",
                         sampling=Sampling(temperature=0.6, top_p=0.95, seed=(1 << 63) - 1))  # fmt: skip
    back = think_request_from_pb(pb.ThinkRequest.FromString(think_request_to_pb(params).SerializeToString()))
    assert back == params and back.multi_turn and back.conversation == turns
    plain = ThinkParams(request_id="r-2", query="3+3")
    back = think_request_from_pb(think_request_to_pb(plain))
    assert back == plain and back.sampling.unset and back.requested_route == "auto"
    assert back.conversation == (Message("user", "3+3"),)


def test_a_verification_priority_round_trips_and_an_unknown_one_is_refused() -> None:
    params = ThinkParams(request_id="shadow-1", query="3+3", priority="verification")
    assert think_request_to_pb(params).priority == pb.PRIORITY_VERIFICATION
    assert think_request_from_pb(think_request_to_pb(params)) == params
    assert think_request_from_pb(pb.ThinkRequest(request_id="r", query="q")).priority == "interactive"
    with pytest.raises(InvalidInputError, match="priority 7 is not one this server knows"):
        think_request_from_pb(pb.ThinkRequest(request_id="r", query="q", priority=7))
    with pytest.raises(InvalidInputError, match="priority must be one of interactive, verification"):
        ThinkParams(request_id="r", query="q", priority="urgent")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"messages": (), "extra": [pb.ChatMessage(role="robot", content="hi")]}, "message role must be one of"),
        ({"extra": [pb.ChatMessage(role="user", content="other")]}, "must end with the user message"),
        ({"extra": [pb.ChatMessage(role="user", content="x")] * 257}, "the limit is 256"),
        ({"extra": [pb.ChatMessage(role="user", content="y" * 70_000), pb.ChatMessage(role="user", content="q")]},
         "nothing is cut"),
        ({"sampling": pb.Sampling(temperature=2.5)}, "temperature must be in"),
        ({"sampling": pb.Sampling(top_p=0.0)}, "top_p must be in"),
        ({"route": "moon"}, "requested_route must be one of"),
    ],
)  # fmt: skip
def test_a_bad_conversation_or_sampling_is_refused(fields: dict, message: str) -> None:
    request = pb.ThinkRequest(request_id="r-1", query="q", requested_route=fields.get("route", ""))
    request.messages.extend(fields.get("extra", []))
    if "sampling" in fields:
        request.sampling.CopyFrom(fields["sampling"])
    with pytest.raises(InvalidInputError, match=message):
        think_request_from_pb(request)
