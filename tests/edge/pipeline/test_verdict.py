"""The local verdict: one difficulty, read by triage and by the cloud's hint alike."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from edgecloud.edge.pipeline.request import QueryRequest
from edgecloud.edge.pipeline.verdict import LocalVerdict, judge, think_params, unread
from edgecloud.edge.runtime import EdgeAnswer
from edgecloud.edge.triage import Requested, Route, TriagePolicy
from edgecloud.shared.reasoner.session import Message

POLICY = TriagePolicy(threshold=0.5, max_difficulty=0.3)
FEATURES = np.linspace(-1, 1, 16, dtype=np.float32)


@dataclass(frozen=True)
class Bundle:
    """What the verdict reads of an edge bundle: its identity."""

    name: str = "student"
    version: int = 3
    sha256: str = "ab" * 32


def answer(confidence: float, *, text: str = "42", tokens: int = 4, p: float = 0.999) -> EdgeAnswer:
    return EdgeAnswer(text, (math.log(p),) * tokens, confidence, FEATURES, 12, tokens, 1.0)


def verdict_of(edge: EdgeAnswer, requested: Requested = Requested.AUTO) -> LocalVerdict:
    return judge(Bundle(), edge, POLICY, requested=requested, cloud_healthy=True)  # type: ignore[arg-type]


def test_triage_and_the_hint_read_one_difficulty() -> None:
    # A fluent scratchpad ending in an answer the edge doubts: hard, for triage and the cloud alike.
    verdict = verdict_of(answer(0.09, tokens=90))
    hint = verdict.hint()
    assert verdict.difficulty >= 1 - 0.09 and verdict.decision.route is Route.CLOUD
    assert hint is not None and hint.estimated_difficulty == verdict.difficulty and hint.confidence == 0.09
    assert hint.answer == "42"


def test_the_edge_confidence_is_the_floor_of_the_difficulty_triage_uses() -> None:
    # Fluent tokens alone say 0.004; the edge's doubt (1 - 0.6) is over max_difficulty: too difficult.
    doubted = verdict_of(answer(0.6))
    assert doubted.difficulty == pytest.approx(0.4) and doubted.decision.reason == "too_difficult"
    sure = verdict_of(answer(0.99))
    assert sure.difficulty < POLICY.max_difficulty and sure.decision.reason == "confident"


def test_an_uncalibrated_answer_tells_the_cloud_it_is_as_hard_as_can_be() -> None:
    verdict = verdict_of(answer(math.nan))
    hint = verdict.hint()
    assert math.isnan(verdict.confidence) and verdict.decision.reason == "unsure"
    assert hint is not None and (hint.confidence, hint.estimated_difficulty) == (0.0, 1.0)


def test_a_conversation_the_edge_does_not_read_has_no_view_for_the_cloud() -> None:
    verdict = unread(Bundle(), POLICY, requested=Requested.AUTO, cloud_healthy=True)  # type: ignore[arg-type]
    assert not verdict.read and verdict.hint() is None and math.isnan(verdict.difficulty)
    assert (verdict.decision.route, verdict.decision.reason) == (Route.CLOUD, "conversation")
    request = QueryRequest(query="1+1", messages=(Message("system", "be brief"), Message("user", "1+1")))
    params = think_params(request, verdict, device_id="dev-1")
    assert params.features is None and params.hint is None and params.messages == request.messages


def test_the_cloud_is_asked_with_the_request_its_budgets_and_the_edge_view() -> None:
    request = QueryRequest(query="1+1", route=Requested.CLOUD, max_reasoning_tokens=64, include_reasoning=True)
    verdict = verdict_of(answer(0.2), Requested.CLOUD)
    params = think_params(request, verdict, device_id="dev-1")
    assert (params.request_id, params.device_id, params.query) == (request.id, "dev-1", "1+1")
    # The caller's budget and route travel as asked: the cloud never lets the hint shrink them.
    assert (params.max_reasoning_tokens, params.max_output_tokens, params.requested_route) == (64, 0, "cloud")
    assert params.stream_reasoning and params.hint == verdict.hint()
    assert params.features is not None and params.features.model_version == 3
    assert params.features.model_name == "student"
