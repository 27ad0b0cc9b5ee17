"""The edge runtime on real onnxruntime sessions: the shipped int8 student."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.runtime import EdgeModel
from shared.bundle import load_manifest
from shared.task import Split, generate, parse_answer


@pytest.fixture(scope="module")
def edge_model(shipped_models: Path) -> EdgeModel:
    return EdgeModel.from_bundle(shipped_models / "edge-student", threads=1)


def test_golden_self_test_passes(edge_model: EdgeModel, shipped_models: Path) -> None:
    golden = load_manifest(shipped_models / "edge-student").golden
    assert golden
    for case in golden:
        assert edge_model.answer(case.query).text == case.expected


def test_answer_carries_confidence_and_features(edge_model: EdgeModel, shipped_models: Path) -> None:
    feature_dim = load_manifest(shipped_models / "edge-student").io["feature_dim"]
    answer = edge_model.answer("What is 12 + 30?")
    assert answer.features.shape == (feature_dim,)
    assert answer.features.dtype == np.float32
    assert np.isfinite(answer.features).all()
    assert 0.0 <= answer.confidence <= 1.0
    assert answer.output_tokens == len(answer.token_logprobs) >= 1
    assert all(lp <= 0.0 for lp in answer.token_logprobs)


def test_case_and_spacing_do_not_change_the_answer(edge_model: EdgeModel) -> None:
    # The tokenizer's normaliser removes case and spacing before the model sees
    # the query. (Lead-ins and "?" do reach it: the model has to learn to ignore
    # them, and `edgecloud models eval` measures how well it does.)
    variants = ["calculate 41-7", "CALCULATE 41 - 7", "Calculate  41-  7", "cAlCuLaTe 41 -7 "]
    answers = {edge_model.answer(v).text for v in variants}
    assert len(answers) == 1


def test_calibration_holds_on_fresh_queries(edge_model: EdgeModel, shipped_models: Path) -> None:
    """What the build measured on the validation split reproduces on test seeds it never saw."""
    calibration = edge_model.calibration
    assert calibration is not None
    validation = calibration.validation
    problems = generate(600, 11, Split.TEST)
    answers = [edge_model.answer(p.query) for p in problems]
    right = np.array([parse_answer(a.text) == p.answer for p, a in zip(problems, answers, strict=True)])
    kept = np.array([a.confidence >= calibration.threshold for a in answers])
    simple = np.array([p.k == 1 for p in problems])
    # 600 queries: three standard errors of a proportion are at most ~0.06.
    assert abs(right.mean() - validation["accuracy"]) < 0.07
    assert abs(kept.mean() - validation["kept_share"]) < 0.07
    assert abs(kept[simple].mean() - validation["coverage_k1"]) < 0.1
    if kept.sum() >= 30:
        assert right[kept].mean() >= calibration.target_precision - 0.05
    # The edge answers simple queries far better than multi-step ones.
    assert right[simple].mean() > right[~simple].mean() + 0.1


def test_multi_step_queries_get_lower_confidence(edge_model: EdgeModel) -> None:
    simple = [p for p in generate(200, 12, Split.TEST) if p.k == 1][:40]
    hard = [p for p in generate(200, 12, Split.TEST) if p.k == 4][:40]
    mean = lambda ps: float(np.mean([edge_model.answer(p.query).confidence for p in ps]))  # noqa: E731
    assert mean(hard) < mean(simple)


def test_bad_construction_is_refused(shipped_models: Path) -> None:
    bundle = shipped_models / "edge-student"
    with pytest.raises(ValueError, match="fp32"):
        EdgeModel.from_bundle(bundle, precision="fp32")
    with pytest.raises(ValueError, match="not an edge bundle"):
        EdgeModel.from_bundle(shipped_models / "cloud-teacher")
    manifest = load_manifest(bundle)
    with pytest.raises(ValueError, match="query"):
        EdgeModel(bundle / manifest.io["graphs"]["int8"], bundle / "tokenizer.json", prompt_template="no placeholder")
    with pytest.raises(ValueError, match="threads"):
        EdgeModel(bundle / manifest.io["graphs"]["int8"], bundle / "tokenizer.json", prompt_template="{query}", threads=0)
