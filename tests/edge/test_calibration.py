from __future__ import annotations

import math

import numpy as np
import pytest

from edgecloud.edge.calibration import Calibration, choose_threshold, confidence_signals, fit_platt


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


# --- fit_platt -------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """20000 draws where P(correct) = sigmoid(2*x0 + 0.5*x1 - 1)."""
    rng = np.random.default_rng(1234)
    x = rng.normal(size=(20000, 2))
    p = _sigmoid(2.0 * x[:, 0] + 0.5 * x[:, 1] - 1.0)
    y = (rng.random(len(p)) < p).astype(np.int64)
    return x, y, p


def test_fit_platt_recovers_the_generating_weights(synthetic: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    x, y, _ = synthetic
    w = fit_platt(x, y)
    assert w.shape == (3,)
    np.testing.assert_allclose(w, [2.0, 0.5, -1.0], atol=0.15)


def test_fit_platt_separates_right_from_wrong(synthetic: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    x, y, p_true = synthetic
    w = fit_platt(x, y)
    p = _sigmoid(x @ w[:2] + w[2])
    assert p[y == 1].mean() > p[y == 0].mean() + 0.3
    # As good as the true model at ranking: predictions agree with it closely.
    assert np.corrcoef(p, p_true)[0, 1] > 0.99
    # Calibrated on average: mean predicted probability matches the base rate.
    assert abs(p.mean() - y.mean()) < 0.01


def test_fit_platt_stays_finite_on_separable_data() -> None:
    x = np.array([[-2.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    w = fit_platt(x, np.array([0, 0, 1, 1]))
    assert np.all(np.isfinite(w))
    assert w[0] > 1.0


@pytest.mark.parametrize(
    ("signals", "correct"),
    [
        (np.zeros((5, 2)), np.zeros(4)),
        (np.zeros((4, 2)), np.zeros(5)),
        (np.zeros((0, 2)), np.zeros(0)),
    ],
    ids=["more-signals", "more-labels", "empty"],
)
def test_fit_platt_rejects_bad_shapes(signals: np.ndarray, correct: np.ndarray) -> None:
    with pytest.raises(ValueError):
        fit_platt(signals, correct)


# --- choose_threshold ------------------------------------------------------------


THRESHOLD_CASES = [
    # (confidence, correct, target, min_kept, threshold, precision, coverage)
    pytest.param([0.9, 0.7, 0.5, 0.2], [1, 1, 1, 1], 0.95, 1, 0.2, 1.0, 1.0, id="all-correct-keeps-everything"),
    pytest.param([0.9, 0.7, 0.5, 0.2], [0, 0, 0, 0], 0.5, 1, 1.0, None, 0.0, id="none-correct-keeps-nothing"),
    pytest.param([0.9, 0.8, 0.7, 0.6, 0.5], [1, 1, 1, 0, 0], 1.0, 1, 0.7, 1.0, 0.6, id="top-three-right"),
    pytest.param([0.5, 0.9, 0.6, 0.8, 0.7], [0, 1, 0, 1, 1], 1.0, 1, 0.7, 1.0, 0.6, id="unsorted-input"),
    pytest.param([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 1], 0.75, 1, 0.6, 0.75, 1.0, id="lowest-qualifying-wins"),
    pytest.param([0.9, 0.8, 0.7, 0.6], [1, 1, 1, 1], 1.0, 3, 0.6, 1.0, 1.0, id="min-kept-satisfied"),
    pytest.param([0.9, 0.8, 0.7, 0.6], [1, 1, 0, 0], 1.0, 3, 1.0, None, 0.0, id="min-kept-not-reachable"),
    pytest.param([0.9, 0.8, 0.8, 0.7], [1, 1, 0, 0], 1.0, 1, 0.9, 1.0, 0.25, id="tie-not-split-right-first"),
    pytest.param([0.9, 0.8, 0.8, 0.7], [1, 0, 1, 0], 1.0, 1, 0.9, 1.0, 0.25, id="tie-not-split-wrong-first"),
    pytest.param([0.8, 0.8, 0.8], [1, 1, 0], 0.6, 1, 0.8, 2 / 3, 1.0, id="all-tied-kept-together"),
    pytest.param([0.8, 0.8, 0.8], [1, 1, 0], 0.9, 1, 1.0, None, 0.0, id="all-tied-dropped-together"),
]


@pytest.mark.parametrize(
    ("confidence", "correct", "target", "min_kept", "threshold", "precision", "coverage"), THRESHOLD_CASES
)
def test_choose_threshold(
    confidence: list[float],
    correct: list[int],
    target: float,
    min_kept: int,
    threshold: float,
    precision: float | None,
    coverage: float,
) -> None:
    got, figures = choose_threshold(np.array(confidence), np.array(correct), target_precision=target, min_kept=min_kept)
    assert got == pytest.approx(threshold)
    assert figures["coverage"] == pytest.approx(coverage)
    if precision is None:
        assert figures["precision"] is None
        assert figures["kept"] == 0
    else:
        assert figures["precision"] == pytest.approx(precision)
        assert figures["kept"] == pytest.approx(coverage * len(confidence))


@pytest.mark.parametrize("seed", range(5))
def test_choose_threshold_never_splits_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    conf = rng.choice([0.2, 0.4, 0.6, 0.8], size=200)
    correct = rng.random(200) < conf
    threshold, figures = choose_threshold(conf, correct, target_precision=0.7, min_kept=1)
    if figures["precision"] is None:
        return
    kept = conf >= threshold
    # The reported figures are exactly those of "keep everything at or above the threshold".
    assert figures["kept"] == kept.sum()
    assert figures["precision"] == pytest.approx(correct[kept].mean())
    assert figures["precision"] >= 0.7


def test_the_lower_bound_rule_asks_for_more_evidence() -> None:
    # 1000 answers, 4 of them wrong, all among the 10 least confident: 99.6% right in all.
    conf = np.linspace(1.0, 0.0, 1000, endpoint=False)
    correct = np.ones(1000, dtype=bool)
    correct[[990, 993, 996, 999]] = False
    plain, at_plain = choose_threshold(conf, correct, target_precision=0.995)
    bounded, at_bound = choose_threshold(conf, correct, target_precision=0.995, confidence_level=0.95)
    # The point estimate keeps everything; the bound drops the low-confidence tail with most errors.
    assert at_plain["kept"] == 1000 and at_plain["precision"] == pytest.approx(0.996)
    assert 980 <= at_bound["kept"] < 1000 and bounded > plain
    assert at_bound["precision_lower_bound"] >= 0.995 and at_bound["confidence_level"] == 0.95
    kept = conf >= bounded
    assert (
        at_bound["precision"] == pytest.approx(correct[kept].mean()) and at_bound["precision"] > at_plain["precision"]
    )
    # With too little evidence nothing qualifies: 50 right answers cannot show 99.5% at 95%.
    assert choose_threshold(conf[:50], correct[:50], target_precision=0.995, confidence_level=0.95)[0] == 1.0


def test_a_weight_counts_an_answer_that_many_times_but_not_as_that_much_evidence() -> None:
    # 300 escalated answers (weight 1, low confidence) and 40 sampled kept ones standing for 20 each.
    rng = np.random.default_rng(7)
    conf = np.concatenate([rng.uniform(0.0, 0.5, 300), rng.uniform(0.5, 1.0, 40)])
    correct = np.concatenate([rng.random(300) < 0.6, np.ones(40, dtype=bool)])
    correct[-1] = False  # one wrong among the sampled kept ones, the least confident of them
    conf[-1] = 0.5
    weights = np.concatenate([np.ones(300), np.full(40, 20.0)])
    repeated = np.repeat(np.arange(340), weights.astype(int))
    _, at_weighted = choose_threshold(conf, correct, target_precision=0.9, weights=weights)
    _, at_repeated = choose_threshold(conf[repeated], correct[repeated], target_precision=0.9)
    assert at_weighted["precision"] == pytest.approx(at_repeated["precision"])
    assert at_weighted["coverage"] == pytest.approx(at_repeated["coverage"])
    # as evidence, 39 sampled right answers are 39, not 780: they cannot show 96% at 95% (the copies would)
    strict = {"target_precision": 0.96, "confidence_level": 0.95}
    assert choose_threshold(conf[repeated], correct[repeated], **strict)[0] < 1.0
    assert choose_threshold(conf, correct, **strict, weights=weights)[0] == 1.0
    threshold, at = choose_threshold(conf, correct, target_precision=0.9, confidence_level=0.95, weights=weights)
    assert threshold > 0.5 and at["kept"] == 39 and at["precision_lower_bound"] >= 0.9
    np.testing.assert_allclose(
        fit_platt(conf[:, None].repeat(2, axis=1), correct, weights=weights),
        fit_platt(conf[repeated][:, None].repeat(2, axis=1), correct[repeated]),
        rtol=1e-6,
    )
    for bad in (np.zeros(340), np.full(340, np.nan), np.ones(3)):
        with pytest.raises(ValueError, match="weights must be 340 finite numbers > 0"):
            choose_threshold(conf, correct, target_precision=0.9, weights=bad)


def test_wilson_lower_bound_matches_known_values() -> None:
    from edgecloud.edge.calibration import wilson_lower_bound

    # 1594 answers with 5 wrong (the v5 student's validation): the bound is below 99.5%.
    assert float(wilson_lower_bound(np.array([1589]), np.array([1594]), 0.95)[0]) == pytest.approx(0.99357, abs=1e-4)
    assert float(wilson_lower_bound(np.array([10]), np.array([10]), 0.95)[0]) == pytest.approx(
        10 / (10 + 1.6449**2), abs=1e-4
    )
    with pytest.raises(ValueError, match="confidence_level"):
        wilson_lower_bound(np.array([1]), np.array([1]), 1.0)


# --- Calibration ------------------------------------------------------------------


def _calibration(**overrides: object) -> Calibration:
    fields: dict[str, object] = {
        "w_sum": 0.8,
        "w_min": 0.3,
        "bias": 1.5,
        "threshold": 0.6,
        "target_precision": 0.95,
        "validation": {"precision": 0.96, "coverage": 0.5, "kept": 100.0},
    }
    fields.update(overrides)
    return Calibration(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "overrides",
    [
        {"w_sum": math.nan},
        {"w_min": math.inf},
        {"bias": -math.inf},
        {"target_precision": math.nan},
        {"threshold": math.nan},
        {"w_sum": "0.8"},
        {"threshold": -0.01},
        {"threshold": 1.01},
        {"method": "isotonic"},
    ],
    ids=str,
)
def test_calibration_rejects_bad_fields(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _calibration(**overrides)


@pytest.mark.parametrize("threshold", [0, 0.0, 0.5, 1, 1.0])
def test_calibration_accepts_thresholds_in_the_closed_unit_interval(threshold: float) -> None:
    assert _calibration(threshold=threshold).threshold == threshold


@pytest.mark.parametrize(
    "calibration",
    [
        _calibration(),
        _calibration(validation={"precision": None, "coverage": 0.0, "kept": 0.0}, threshold=1.0),
    ],
    ids=["kept-some", "kept-none"],
)
def test_calibration_round_trips_through_its_dict(calibration: Calibration) -> None:
    data = calibration.to_dict()
    assert data["method"] == "platt"
    assert Calibration.from_dict(data) == calibration


@pytest.mark.parametrize(
    "data",
    [{"w_sum": 1.0}, {**_calibration().to_dict(), "extra": 1}],
    ids=["missing-fields", "unknown-field"],
)
def test_calibration_from_dict_rejects_bad_records(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Calibration.from_dict(data)


def test_confidence_is_monotone_in_the_logprob_sum() -> None:
    calibration = _calibration(w_sum=0.8, w_min=0.0)
    # Same minimum, growing sum.
    sequences = [[-0.5] * n + [-2.0] for n in range(20, -1, -1)]
    values = [calibration.confidence(s) for s in sequences]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values == sorted(values)
    assert len(set(values)) == len(values)


def test_confidence_matches_the_formula() -> None:
    calibration = _calibration()
    logprobs = [-0.1, -0.7, -0.2]
    z = 0.8 * sum(logprobs) + 0.3 * min(logprobs) + 1.5
    assert calibration.confidence(logprobs) == pytest.approx(1 / (1 + math.exp(-z)))


@pytest.mark.parametrize(
    ("logprobs", "expected"),
    [
        ([], 1 / (1 + math.exp(-1.5))),  # no tokens: the bias alone
        ([-1e6], 0.0),  # far below: no overflow
        ([1e6], 1.0),
    ],
    ids=["empty", "very-negative", "very-positive"],
)
def test_confidence_is_defined_at_the_edges(logprobs: list[float], expected: float) -> None:
    assert _calibration().confidence(logprobs) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("logprobs", "expected"),
    [
        ([], (0.0, 0.0)),
        ([-0.5], (-0.5, -0.5)),
        ([-0.25, -1.0, -0.5], (-1.75, -1.0)),
        ((-0.0, -0.0), (0.0, 0.0)),
    ],
)
def test_confidence_signals(logprobs: list[float], expected: tuple[float, float]) -> None:
    got = confidence_signals(logprobs)
    assert got == pytest.approx(expected)
    assert all(isinstance(v, float) for v in got)
