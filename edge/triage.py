"""Triage: keep a query on the edge or escalate it to the cloud.

A pure decision over four facts about one query (:class:`TriageInput`): the
edge answer's calibrated confidence, an estimate of the query's difficulty,
the route the caller asked for and whether the cloud is reachable. No I/O, no
clock, no model: the daemon gathers the facts, :func:`decide` returns a
:class:`Decision` whose ``reason`` is a short stable code (used in responses,
logs and metrics labels)::

    requested  cloud    edge answer / confidence / difficulty  route  reason                        degraded
    edge       any      any                                    EDGE   requested_edge                no
    cloud      up       any                                    CLOUD  requested_cloud               no
    cloud      down     any                                    CLOUD  requested_cloud_unavailable   yes (outbox)
    auto       up       edge cannot read the conversation      CLOUD  conversation                  no
    auto       down     edge cannot read the conversation      CLOUD  conversation_unavailable      yes (outbox)
    auto       any      conf >= threshold, diff <= max         EDGE   confident                     no
    auto       up       conf < threshold (or NaN)              CLOUD  unsure                        no
    auto       up       confident but diff > max               CLOUD  too_difficult                 no
    auto       down     the edge abstained                     CLOUD  abstained_cloud_unavailable   yes (outbox)
    auto       down     not kept by the rules above            EDGE   cloud_unavailable             yes

Where the edge has no answer to give (a conversation its student does not read, or an abstention)
the route is the cloud even while it is down: the caller waits for it, or the query waits in the
outbox, and nobody is handed an empty answer.

A NaN confidence is not confident and a NaN difficulty is too difficult: a
signal that cannot be read never keeps a query on the edge.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from edgecloud.edge.calibration import Calibration
from edgecloud.shared.base.errors import ConfigError, InvalidInputError

__all__ = [
    "Decision",
    "Reason",
    "Requested",
    "Route",
    "TriageInput",
    "TriagePolicy",
    "decide",
    "estimate_difficulty",
]


class Route(str, enum.Enum):
    """Where a query is answered."""

    EDGE = "edge"
    CLOUD = "cloud"


class Requested(str, enum.Enum):
    """The route a caller asked for; ``auto`` leaves it to triage."""

    AUTO = "auto"
    EDGE = "edge"
    CLOUD = "cloud"


class Reason:
    """The stable reason codes of a :class:`Decision`."""

    REQUESTED_EDGE = "requested_edge"
    REQUESTED_CLOUD = "requested_cloud"
    REQUESTED_CLOUD_UNAVAILABLE = "requested_cloud_unavailable"
    CONFIDENT = "confident"
    UNSURE = "unsure"
    TOO_DIFFICULT = "too_difficult"
    CLOUD_UNAVAILABLE = "cloud_unavailable"
    CONVERSATION = "conversation"
    CONVERSATION_UNAVAILABLE = "conversation_unavailable"
    ABSTAINED_CLOUD_UNAVAILABLE = "abstained_cloud_unavailable"


def _unit(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ConfigError(f"triage {name} must be a number in [0, 1], got {value!r}")


@dataclass(frozen=True, kw_only=True)
class TriagePolicy:
    """When an ``auto`` query may stay on the edge."""

    threshold: float
    """Keep the edge answer when its calibrated confidence is at least this."""
    max_difficulty: float = 1.0
    """Escalate when the estimated difficulty is above this, even if confident (1.0: never)."""

    def __post_init__(self) -> None:
        _unit("threshold", self.threshold)
        _unit("max_difficulty", self.max_difficulty)

    @classmethod
    def from_calibration(
        cls, calibration: Calibration | None, *, threshold: float | None = None, max_difficulty: float = 1.0
    ) -> TriagePolicy:
        """The bundle's calibrated threshold, unless ``threshold`` overrides it."""
        if threshold is None:
            if calibration is None:
                raise ConfigError(
                    "triage: the edge bundle has no calibration, so there is no threshold; "
                    "set one explicitly (edge config `threshold`, or `--threshold`)"
                )
            threshold = calibration.threshold
        return cls(threshold=threshold, max_difficulty=max_difficulty)


@dataclass(frozen=True)
class TriageInput:
    confidence: float
    """Calibrated probability that the edge answer is right; NaN (no calibration) counts as not confident."""
    difficulty: float
    """From :func:`estimate_difficulty`, 0 (trivial) .. 1 (hard); NaN counts as too difficult."""
    requested: Requested
    cloud_healthy: bool
    abstained: bool = False
    """The edge model stopped before saying anything: it has no answer."""
    edge_reads_request: bool = True
    """False: the request is a conversation (a system message, earlier turns) the edge student does
    not read, so the edge has nothing to say about it."""


@dataclass(frozen=True)
class Decision:
    route: Route
    reason: str
    """One of the :class:`Reason` codes."""
    degraded: bool
    """The query does not get the service it should: a local answer the cloud should have
    given, or a cloud query accepted for later delivery."""


def decide(policy: TriagePolicy, inp: TriageInput) -> Decision:
    """Route one query (see the module docstring for the table)."""
    if inp.requested is Requested.EDGE:
        return Decision(Route.EDGE, Reason.REQUESTED_EDGE, degraded=False)
    if inp.requested is Requested.CLOUD:
        if inp.cloud_healthy:
            return Decision(Route.CLOUD, Reason.REQUESTED_CLOUD, degraded=False)
        return Decision(Route.CLOUD, Reason.REQUESTED_CLOUD_UNAVAILABLE, degraded=True)
    if not inp.edge_reads_request:
        if inp.cloud_healthy:
            return Decision(Route.CLOUD, Reason.CONVERSATION, degraded=False)
        return Decision(Route.CLOUD, Reason.CONVERSATION_UNAVAILABLE, degraded=True)
    confident = inp.confidence >= policy.threshold  # False for NaN
    easy = inp.difficulty <= policy.max_difficulty  # False for NaN
    if confident and easy:
        return Decision(Route.EDGE, Reason.CONFIDENT, degraded=False)
    if not inp.cloud_healthy:
        if inp.abstained:
            return Decision(Route.CLOUD, Reason.ABSTAINED_CLOUD_UNAVAILABLE, degraded=True)
        return Decision(Route.EDGE, Reason.CLOUD_UNAVAILABLE, degraded=True)
    return Decision(Route.CLOUD, Reason.UNSURE if not confident else Reason.TOO_DIFFICULT, degraded=False)


LENGTH_SCALE = 2048
"""Prompt tokens at which the length term alone reaches ``1 - 1/e`` of full difficulty."""


def estimate_difficulty(
    token_logprobs: Sequence[float], input_tokens: int, *, abstained: bool = False, confidence: float | None = None
) -> float:
    """How hard the query looks from the edge model's own answer, in [0, 1].

    Model- and task-agnostic: only the answer's token log-probabilities and the
    prompt's length are used, never the query text. An abstention (the model
    stopped before saying anything, ``abstained``) is 1.0: its one near-certain
    stop token says the model cannot answer, not that the query is easy. With ``p`` the geometric
    mean probability of the answer tokens (``exp`` of the mean log-probability)
    and ``L = input_tokens``::

        difficulty = 1 - p * exp(-L / LENGTH_SCALE)

    so a fluent, certain answer to a short prompt is near 0, and either an
    uncertain answer or a very long prompt pushes it towards 1. A NaN or
    ``-inf`` log-probability (a token the model gave no usable probability)
    counts as probability 0; positive values are clipped to 0; no tokens at
    all is no evidence of ease, so 1.0. The result is never NaN.

    ``confidence``, the edge's calibrated probability that its answer is right, sets a floor:
    the difficulty is at least ``1 - confidence``. Fluent tokens are not an easy query: a
    model that writes a scratchpad (a pair's reasoner) is sure of nearly every token of a long
    chain whose answer it then doubts, and the cloud sizes its thinking budget by this figure.
    """
    if isinstance(input_tokens, bool) or not isinstance(input_tokens, int) or input_tokens < 0:
        raise InvalidInputError(f"input_tokens must be a non-negative integer, got {input_tokens!r}")
    if abstained or not token_logprobs:
        return 1.0
    doubt = 1.0 - confidence if confidence is not None and 0.0 <= confidence <= 1.0 else 0.0
    total = 0.0
    for logprob in token_logprobs:
        value = float(logprob)
        if math.isnan(value) or value == -math.inf:
            return 1.0
        total += min(value, 0.0)
    mean_probability = math.exp(total / len(token_logprobs))
    difficulty = max(1.0 - mean_probability * math.exp(-input_tokens / LENGTH_SCALE), doubt)
    return min(max(difficulty, 0.0), 1.0)
