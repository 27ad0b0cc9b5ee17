"""Triage as a table: every rule of :func:`edgecloud.edge.triage.decide` and its edges."""

from __future__ import annotations

import math

import pytest

from edgecloud.edge.calibration import Calibration
from edgecloud.edge.triage import (
    Decision,
    Requested,
    Route,
    TriageInput,
    TriagePolicy,
    decide,
    estimate_difficulty,
)
from edgecloud.shared.base.errors import ConfigError, InvalidInputError

NAN = float("nan")
POLICY = TriagePolicy(threshold=0.8, max_difficulty=0.6)

EDGE_OK = Decision(Route.EDGE, "confident", degraded=False)
UNSURE = Decision(Route.CLOUD, "unsure", degraded=False)
TOO_DIFFICULT = Decision(Route.CLOUD, "too_difficult", degraded=False)
FALLBACK = Decision(Route.EDGE, "cloud_unavailable", degraded=True)

# (confidence, difficulty, requested, cloud_healthy) -> decision, under POLICY.
CASES = {
    # Requested edge: always the edge, whatever the signals and the cloud.
    "edge/unsure/healthy": (0.1, 0.9, Requested.EDGE, True, Decision(Route.EDGE, "requested_edge", degraded=False)),
    "edge/unsure/down": (0.1, 0.9, Requested.EDGE, False, Decision(Route.EDGE, "requested_edge", degraded=False)),
    "edge/nan": (NAN, NAN, Requested.EDGE, True, Decision(Route.EDGE, "requested_edge", degraded=False)),
    # Requested cloud: always the cloud; accepted for later delivery when it is down.
    "cloud/confident/healthy": (
        0.99,
        0.0,
        Requested.CLOUD,
        True,
        Decision(Route.CLOUD, "requested_cloud", degraded=False),
    ),
    "cloud/confident/down": (
        0.99,
        0.0,
        Requested.CLOUD,
        False,
        Decision(Route.CLOUD, "requested_cloud_unavailable", degraded=True),
    ),
    "cloud/nan/down": (
        NAN,
        NAN,
        Requested.CLOUD,
        False,
        Decision(Route.CLOUD, "requested_cloud_unavailable", degraded=True),
    ),
    # Auto, cloud healthy.
    "auto/confident": (0.95, 0.2, Requested.AUTO, True, EDGE_OK),
    "auto/threshold-equal-keeps": (0.8, 0.2, Requested.AUTO, True, EDGE_OK),
    "auto/just-below-threshold": (math.nextafter(0.8, 0.0), 0.2, Requested.AUTO, True, UNSURE),
    "auto/unsure": (0.3, 0.2, Requested.AUTO, True, UNSURE),
    "auto/nan-confidence": (NAN, 0.2, Requested.AUTO, True, UNSURE),
    "auto/difficulty-equal-keeps": (0.95, 0.6, Requested.AUTO, True, EDGE_OK),
    "auto/too-difficult": (0.95, math.nextafter(0.6, 1.0), Requested.AUTO, True, TOO_DIFFICULT),
    "auto/nan-difficulty": (0.95, NAN, Requested.AUTO, True, TOO_DIFFICULT),
    "auto/unsure-and-difficult": (0.3, 0.9, Requested.AUTO, True, UNSURE),
    # Auto, cloud down: what would have escalated stays local, degraded.
    "auto/down/confident": (0.95, 0.2, Requested.AUTO, False, EDGE_OK),
    "auto/down/unsure": (0.3, 0.2, Requested.AUTO, False, FALLBACK),
    "auto/down/nan": (NAN, 0.2, Requested.AUTO, False, FALLBACK),
    "auto/down/too-difficult": (0.95, 0.9, Requested.AUTO, False, FALLBACK),
}


@pytest.mark.parametrize(
    ("confidence", "difficulty", "requested", "healthy", "expected"), CASES.values(), ids=CASES.keys()
)
def test_decide(confidence: float, difficulty: float, requested: Requested, healthy: bool, expected: Decision) -> None:
    inp = TriageInput(confidence=confidence, difficulty=difficulty, requested=requested, cloud_healthy=healthy)
    assert decide(POLICY, inp) == expected


NO_ANSWER = Decision(Route.CLOUD, "abstained_cloud_unavailable", degraded=True)


@pytest.mark.parametrize(
    ("requested", "healthy", "abstained", "reads", "expected"),
    [
        # A conversation the student does not read: the cloud, whatever the (absent) signals.
        (Requested.AUTO, True, False, False, Decision(Route.CLOUD, "conversation", degraded=False)),
        (Requested.AUTO, False, False, False, Decision(Route.CLOUD, "conversation_unavailable", degraded=True)),
        (Requested.CLOUD, False, False, False, Decision(Route.CLOUD, "requested_cloud_unavailable", degraded=True)),
        # An abstention has nothing to fall back on: with the cloud down it waits for it, not empty.
        (Requested.AUTO, False, True, True, NO_ANSWER),
        (Requested.AUTO, True, True, True, UNSURE),
        (Requested.EDGE, False, True, True, Decision(Route.EDGE, "requested_edge", degraded=False)),
    ],
)
def test_an_edge_with_no_answer_never_answers(  # type: ignore[no-untyped-def]
    requested, healthy, abstained, reads, expected
) -> None:
    inp = TriageInput(0.0 if abstained else NAN, 1.0 if abstained else NAN, requested, healthy,
                      abstained=abstained, edge_reads_request=reads)  # fmt: skip
    assert decide(POLICY, inp) == expected


@pytest.mark.parametrize(
    ("threshold", "confidence", "route"),
    [(0.0, 0.0, Route.EDGE), (1.0, 1.0, Route.EDGE), (1.0, 0.999, Route.CLOUD)],
)
def test_threshold_extremes(threshold: float, confidence: float, route: Route) -> None:
    policy = TriagePolicy(threshold=threshold)
    assert decide(policy, TriageInput(confidence, 1.0, Requested.AUTO, True)).route is route


def test_default_max_difficulty_never_escalates_a_confident_answer() -> None:
    policy = TriagePolicy(threshold=0.5)
    assert decide(policy, TriageInput(0.9, 1.0, Requested.AUTO, True)) == EDGE_OK


def test_enums_are_strings_on_the_wire() -> None:
    assert Requested("cloud") is Requested.CLOUD
    assert Route.EDGE == "edge" and Route.EDGE.value == "edge"


def _calibration(threshold: float) -> Calibration:
    return Calibration(w_sum=1.0, w_min=1.0, bias=0.0, threshold=threshold, target_precision=0.99, validation={})


@pytest.mark.parametrize(
    ("calibration", "override", "max_difficulty", "expected"),
    [
        (_calibration(0.8), None, 1.0, TriagePolicy(threshold=0.8)),
        (_calibration(0.8), 0.3, 1.0, TriagePolicy(threshold=0.3)),
        (_calibration(0.8), 0.0, 1.0, TriagePolicy(threshold=0.0)),  # a falsy override still wins
        (None, 0.7, 0.5, TriagePolicy(threshold=0.7, max_difficulty=0.5)),
    ],
    ids=["calibrated", "override", "zero-override", "no-calibration-override"],
)
def test_from_calibration(
    calibration: Calibration | None, override: float | None, max_difficulty: float, expected: TriagePolicy
) -> None:
    assert TriagePolicy.from_calibration(calibration, threshold=override, max_difficulty=max_difficulty) == expected


def test_from_calibration_without_calibration_or_override_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no calibration"):
        TriagePolicy.from_calibration(None)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": -0.01},
        {"threshold": 1.01},
        {"threshold": NAN},
        {"threshold": math.inf},
        {"threshold": "0.5"},
        {"threshold": True},
        {"threshold": 0.5, "max_difficulty": -0.1},
        {"threshold": 0.5, "max_difficulty": 1.5},
        {"threshold": 0.5, "max_difficulty": NAN},
    ],
    ids=repr,
)
def test_policy_validates(kwargs: dict[str, object]) -> None:
    name = "max_difficulty" if "max_difficulty" in kwargs else "threshold"
    with pytest.raises(ConfigError, match=name):
        TriagePolicy(**kwargs)  # type: ignore[arg-type]


def test_bad_override_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        TriagePolicy.from_calibration(_calibration(0.8), threshold=NAN)


# -- difficulty ------------------------------------------------------------------------

CERTAIN = (0.0, 0.0, 0.0)
UNCERTAIN = (math.log(0.5), math.log(0.5))  # geometric-mean probability 0.5


@pytest.mark.parametrize(
    ("logprobs", "input_tokens", "expected"),
    [
        (CERTAIN, 0, 0.0),
        (UNCERTAIN, 0, 0.5),
        ((math.log(0.25), 0.0), 0, 0.5),  # the geometric mean: sqrt(0.25 * 1)
        (CERTAIN, 2048, 1 - math.exp(-1)),
        (UNCERTAIN, 2048, 1 - 0.5 * math.exp(-1)),
        ((), 10, 1.0),  # no tokens: no evidence of ease
        ((0.0, NAN), 10, 1.0),
        ((0.0, -math.inf), 10, 1.0),
        ((0.5, 0.0), 0, 0.0),  # impossible positive log-probabilities are clipped to 0
        ((-1000.0,), 0, 1.0),
    ],
)
def test_estimate_difficulty(logprobs: tuple[float, ...], input_tokens: int, expected: float) -> None:
    assert estimate_difficulty(logprobs, input_tokens) == pytest.approx(expected)


def test_difficulty_grows_with_uncertainty_and_length() -> None:
    by_confidence = [estimate_difficulty([math.log(p)] * 3, 30) for p in (0.99, 0.9, 0.5, 0.1)]
    assert by_confidence == sorted(by_confidence)
    by_length = [estimate_difficulty(CERTAIN, n) for n in (10, 100, 1000, 10_000)]
    assert by_length == sorted(by_length)
    assert all(0.0 <= d <= 1.0 for d in by_confidence + by_length)


def test_an_abstention_is_as_difficult_as_it_gets() -> None:
    # One near-certain stop token reads as an easy answer unless it is known to be no answer.
    stop_only = [math.log(0.9999)]
    assert estimate_difficulty(stop_only, 8) < 0.1
    assert estimate_difficulty(stop_only, 8, abstained=True) == 1.0


@pytest.mark.parametrize("input_tokens", [-1, 1.5, True])
def test_difficulty_rejects_bad_lengths(input_tokens: object) -> None:
    with pytest.raises(InvalidInputError):
        estimate_difficulty(CERTAIN, input_tokens)  # type: ignore[arg-type]


def test_the_edges_doubt_is_a_floor_on_the_difficulty() -> None:
    scratchpad = [math.log(0.999)] * 90  # a long chain, each token written with confidence
    fluent = estimate_difficulty(scratchpad, 20)
    assert fluent < 0.2
    assert estimate_difficulty(scratchpad, 20, confidence=0.09) == pytest.approx(0.91)
    assert estimate_difficulty(scratchpad, 20, confidence=0.999) == fluent  # a sure answer: no floor
    assert estimate_difficulty(scratchpad, 20, confidence=float("nan")) == fluent  # no usable confidence
    assert estimate_difficulty(scratchpad, 20, abstained=True, confidence=0.9) == 1.0
