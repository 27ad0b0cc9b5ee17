"""The local verdict on one query: the edge model's answer, its confidence, the query's difficulty
and triage's decision, each computed once.

Triage decides on these figures and, when the query is escalated, the cloud's hint is made from the
same ones (:func:`think_params`): the cloud sizes its thinking budget from the difficulty triage
used. The difficulty is :func:`~edgecloud.edge.triage.estimate_difficulty` with the edge's
confidence as its floor (an uncalibrated answer counts as confidence 0, so as hard as can be): a
fluent scratchpad ending in an answer the edge doubts is not an easy query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgecloud.edge.pipeline.request import QueryRequest
from edgecloud.edge.runtime import EdgeAnswer, EdgeBundle
from edgecloud.edge.triage import Decision, Requested, TriageInput, TriagePolicy, decide, estimate_difficulty
from edgecloud.shared.reasoner.features import encode_features
from edgecloud.shared.reasoner.session import MAX_HINT_ANSWER_CHARS, EdgeHint, ThinkParams

__all__ = ["LocalVerdict", "judge", "think_params", "unread"]

_NO_FEATURES = np.zeros(0, dtype=np.float32)


@dataclass(frozen=True)
class LocalVerdict:
    bundle: EdgeBundle
    """The bundle that answered (the one serving when the query came)."""
    answer: EdgeAnswer
    difficulty: float
    """0 (trivial) .. 1 (hard); NaN when the edge did not read the query."""
    decision: Decision

    @property
    def confidence(self) -> float:
        """The calibrated probability that the edge's answer is right; NaN without calibration."""
        return self.answer.confidence

    @property
    def read(self) -> bool:
        """Whether the edge read the query (it has no view of a conversation its student does not read)."""
        return bool(self.answer.features.size)

    def hint(self) -> EdgeHint | None:
        """What the cloud is told of the edge's view; None when the edge did not read the query."""
        if not self.read:
            return None
        confidence = 0.0 if math.isnan(self.confidence) else self.confidence
        return EdgeHint(
            confidence=min(max(confidence, 0.0), 1.0),
            estimated_difficulty=min(max(self.difficulty, 0.0), 1.0),
            answer=self.answer.text[:MAX_HINT_ANSWER_CHARS],
        )


def judge(
    bundle: EdgeBundle, answer: EdgeAnswer, policy: TriagePolicy, *, requested: Requested, cloud_healthy: bool
) -> LocalVerdict:
    """The verdict on ``answer``, the edge's answer to the query."""
    floor = 0.0 if math.isnan(answer.confidence) else answer.confidence
    difficulty = estimate_difficulty(
        answer.token_logprobs, answer.input_tokens, abstained=answer.abstained, confidence=floor
    )
    facts = TriageInput(confidence=answer.confidence, difficulty=difficulty, requested=requested,
                        cloud_healthy=cloud_healthy, abstained=answer.abstained)  # fmt: skip
    return LocalVerdict(bundle, answer, difficulty, decide(policy, facts))


def unread(bundle: EdgeBundle, policy: TriagePolicy, *, requested: Requested, cloud_healthy: bool) -> LocalVerdict:
    """The verdict on a conversation the edge's student does not read: it has no answer, no view."""
    nothing = EdgeAnswer("", (), math.nan, _NO_FEATURES, 0, 0, 0.0)
    facts = TriageInput(confidence=math.nan, difficulty=math.nan, requested=requested,
                        cloud_healthy=cloud_healthy, edge_reads_request=False)  # fmt: skip
    return LocalVerdict(bundle, nothing, math.nan, decide(policy, facts))


def think_params(request: QueryRequest, verdict: LocalVerdict, *, device_id: str) -> ThinkParams:
    """What the cloud is asked: the request, its budgets, and the edge's view of it (features and hint)."""
    reasoning_budget, answer_tokens = request.cloud_budgets()
    bundle = verdict.bundle
    features = (
        encode_features(
            verdict.answer.features, model_name=bundle.name, model_version=bundle.version, model_sha256=bundle.sha256
        )
        if verdict.read
        else None
    )
    return ThinkParams(
        request_id=request.id,
        device_id=device_id,
        query=request.query,
        stream_reasoning=request.include_reasoning,
        messages=request.messages,
        sampling=request.sampling,
        requested_route=request.route.value,
        features=features,
        hint=verdict.hint(),
        max_reasoning_tokens=reasoning_budget,
        max_output_tokens=answer_tokens,
    )
