"""Triage calibration of a student, on synthetic answers whose right answer is known: the Platt fit
recovers the weights the answers were drawn with, abstentions stay out of it, and the threshold is
the lowest that keeps the target precision (as a Wilson lower bound when asked)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgecloud.edge.calibration import wilson_lower_bound
from edgecloud.edge.runtime import EdgeAnswer
from edgecloud.modelkit.calibrate import fit_triage

TRUE_WEIGHTS = (1.5, 0.5, 2.0)
"""``w_sum``, ``w_min``, ``bias`` the synthetic answers' correctness is drawn with."""


def answer(token_logprobs: list[float], text: str = "42") -> EdgeAnswer:
    return EdgeAnswer(
        text=text, token_logprobs=tuple(token_logprobs), confidence=math.nan, features=np.zeros(4, np.float32),
        input_tokens=3, output_tokens=len(token_logprobs), latency_ms=1.0,
    )  # fmt: skip


def drawn(n: int, seed: int) -> tuple[list[EdgeAnswer], list[bool]]:
    """Answers of two tokens whose correctness follows the logistic model of :data:`TRUE_WEIGHTS`."""
    rng = np.random.default_rng(seed)
    worst = rng.uniform(-4, 0, n)
    other = rng.uniform(worst, 0)
    w_sum, w_min, bias = TRUE_WEIGHTS
    p = 1 / (1 + np.exp(-(w_sum * (worst + other) + w_min * worst + bias)))
    correct = rng.random(n) < p
    return [answer([float(a), float(b)]) for a, b in zip(worst, other, strict=True)], correct.tolist()


def abstention() -> EdgeAnswer:
    """The model stopped at once: no text, and a near-certain stop token."""
    return answer([-0.001], text="")


def test_the_platt_fit_recovers_the_weights_the_answers_were_drawn_with() -> None:
    answers, correct = drawn(100_000, seed=0)
    fit = fit_triage(answers, correct, target_precision=0.9, confidence_level=None)
    # (sum and min are correlated: the weights wander a little, the probabilities hardly)
    assert (fit.w_sum, fit.w_min, fit.bias) == pytest.approx(TRUE_WEIGHTS, abs=0.1)
    signals = np.array([[sum(a.token_logprobs), min(a.token_logprobs)] for a in answers])
    true_p = 1 / (1 + np.exp(-(signals @ np.array(TRUE_WEIGHTS[:2]) + TRUE_WEIGHTS[2])))
    assert np.abs(fit.confidence - true_p).max() < 0.02
    # The calibrated confidence is what the shipped calibration gives each answer at run time.
    calibration = fit.calibration(0.9, fit.validation())
    for i in (0, 1, 17, 4242):
        assert calibration.confidence(answers[i].token_logprobs) == pytest.approx(fit.confidence[i], rel=1e-9)
    assert calibration.threshold == fit.threshold and calibration.target_precision == 0.9


def test_abstentions_are_left_out_of_the_fit_and_never_kept() -> None:
    answers, correct = drawn(3000, seed=1)
    alone = fit_triage(answers, correct, target_precision=0.9, confidence_level=None)
    # 1000 abstentions, all "wrong", with the surest signals there are: fitted with the rest, they would
    # teach that a sure answer is a wrong one.
    with_abstentions = fit_triage(
        [*answers, *[abstention()] * 1000], [*correct, *[False] * 1000], target_precision=0.9, confidence_level=None
    )
    weights = (with_abstentions.w_sum, with_abstentions.w_min, with_abstentions.bias)
    assert weights == (alone.w_sum, alone.w_min, alone.bias)
    assert (with_abstentions.confidence[3000:] == 0).all()
    assert not with_abstentions.kept[3000:].any()
    assert with_abstentions.answered.tolist() == [True] * 3000 + [False] * 1000
    figures = with_abstentions.validation()
    assert figures["n"] == 4000 and figures["abstained"] == pytest.approx(0.25)
    assert figures["accuracy"] == pytest.approx(sum(correct) / 4000)


def sure_and_unsure(n: int) -> tuple[list[EdgeAnswer], list[bool]]:
    """``n`` sure answers, all right, then ``n`` unsure ones, every other one right."""
    sure = [answer([-0.01 - 0.001 * (i % 7), -0.02]) for i in range(n)]
    unsure = [answer([-2.0 - 0.01 * (i % 5), -1.5]) for i in range(n)]
    return sure + unsure, [True] * n + [i % 2 == 0 for i in range(n)]


def test_the_threshold_keeps_exactly_the_answers_that_reach_the_target() -> None:
    answers, correct = sure_and_unsure(200)
    fit = fit_triage(answers, correct, target_precision=0.99, confidence_level=None)
    assert fit.w_sum > 0  # surer answers are more often right
    assert fit.kept.tolist() == [True] * 200 + [False] * 200
    assert fit.threshold == pytest.approx(min(fit.confidence[:200]))  # the lowest that still qualifies
    figures = fit.validation()
    assert figures["precision_kept"] == 1.0 and figures["kept_share"] == 0.5
    assert figures["accuracy"] == pytest.approx(0.75) and figures["abstained"] == 0.0
    assert "precision_lower_bound" not in figures
    # A target the unsure half lowers no further than: everything is kept.
    everything = fit_triage(answers, correct, target_precision=0.75, confidence_level=None)
    assert everything.kept.all() and everything.validation()["precision_kept"] == pytest.approx(0.75)


def test_with_a_confidence_level_the_lower_bound_must_reach_the_target() -> None:
    answers, correct = sure_and_unsure(200)
    # 200 right of 200 kept: the precision is 1, its one-sided 95% Wilson bound is not.
    bound = float(wilson_lower_bound(np.array([200]), np.array([200]), 0.95)[0])
    assert 0.98 < bound < 0.99
    enough = fit_triage(answers, correct, target_precision=0.98, confidence_level=0.95)
    assert enough.kept.tolist() == [True] * 200 + [False] * 200
    assert enough.validation()["precision_lower_bound"] == pytest.approx(bound)
    # A target above the bound: nothing is kept, however right the kept answers were here.
    strict = fit_triage(answers, correct, target_precision=0.99, confidence_level=0.95)
    assert strict.threshold == 1.0 and not strict.kept.any()
    assert strict.validation()["kept_share"] == 0.0 and strict.validation()["precision_kept"] is None


def test_a_student_that_always_abstains_keeps_nothing() -> None:
    fit = fit_triage([abstention()] * 50, [False] * 50, target_precision=0.9, confidence_level=0.95)
    assert (fit.w_sum, fit.w_min, fit.bias) == (0.0, 0.0, 0.0)
    assert not fit.kept.any() and fit.threshold == 1.0
    figures = fit.validation()
    assert figures["abstained"] == 1.0 and figures["accuracy"] == 0.0 and figures["kept_share"] == 0.0
