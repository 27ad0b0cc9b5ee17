"""The edge runtime on real onnxruntime sessions: the shipped int8 student."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecloud.edge.runtime import EdgeModel
from edgecloud.edge.seams import AnswerModel
from edgecloud.modelkit.arithmetic.task import Split, generate, parse_answer
from edgecloud.shared.bundles.manifest import load_manifest


@pytest.fixture(scope="module")
def edge_model(shipped_base_models: Path) -> EdgeModel:
    return EdgeModel.from_bundle(shipped_base_models / "edge-student", threads=1)


def test_golden_self_test_passes(edge_model: EdgeModel, shipped_base_models: Path) -> None:
    golden = load_manifest(shipped_base_models / "edge-student").golden
    assert golden
    for case in golden:
        assert edge_model.answer(case.query).text == case.expected


def test_answer_carries_confidence_and_features(edge_model: EdgeModel, shipped_base_models: Path) -> None:
    feature_dim = load_manifest(shipped_base_models / "edge-student").io["feature_dim"]
    answer = edge_model.answer("What is 12 + 30?")
    assert answer.features.shape == (feature_dim,)
    assert answer.features.dtype == np.float32
    assert np.isfinite(answer.features).all()
    assert 0.0 <= answer.confidence <= 1.0
    assert answer.output_tokens == len(answer.token_logprobs) >= 1
    assert all(lp <= 0.0 for lp in answer.token_logprobs)


def test_wording_does_not_reach_the_model(edge_model: EdgeModel) -> None:
    # The bundle's tokenizer normaliser removes case, spacing, lead-ins and "?"
    # before the model sees the query: every variant is the same token sequence.
    variants = ["calculate 41-7", "CALCULATE 41 - 7?", "Calculate  41-  7", " 41 -7 ", "what is 41-7?"]
    encoded = {tuple(edge_model.tokenizer.encode(edge_model.prompt_template.format(query=v)).ids) for v in variants}
    assert len(encoded) == 1
    assert len({edge_model.answer(v).text for v in variants}) == 1


def test_simple_queries_are_answered_right(edge_model: EdgeModel) -> None:
    problems = [p for p in generate(400, 13, Split.TEST) if p.k == 1][:100]
    right = [parse_answer(edge_model.answer(p.query).text) == p.answer for p in problems]
    # v3 measured 99.1% on 797 test k=1 queries (benchmarks/routing_quality.py); the target is 99.5%.
    # The bar is a regression guard at about three standard errors below the measured figure.
    assert sum(right) >= 95


def test_calibration_holds_on_fresh_queries(edge_model: EdgeModel, shipped_base_models: Path) -> None:
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
    mean = lambda ps: float(np.mean([edge_model.answer(p.query).confidence for p in ps]))
    assert mean(hard) < mean(simple)


def test_an_empty_answer_is_an_abstention(edge_model: EdgeModel, shipped_base_models: Path) -> None:
    # The shipped student abstains (stops at once) on multi-step queries; whatever its stop
    # token's probability, an answer with no text never reads as confident.
    hard = [p for p in generate(200, 14, Split.TEST) if p.k >= 2][:40]
    answers = [edge_model.answer(p.query) for p in hard]
    abstained = [a for a in answers if not a.text]
    assert len(abstained) >= 30
    assert all(a.confidence == 0.0 and a.output_tokens == 1 for a in abstained)
    # The same rule for any model: stopping on the token it would say first leaves nothing to keep.
    io = load_manifest(shipped_base_models / "edge-student").io
    bundle = shipped_base_models / "edge-student"
    first = edge_model.answer("23+70").text[0]
    silent = EdgeModel(
        bundle / io["graphs"]["int8"],
        bundle / io["tokenizer"],
        **{**edge_model.decoding, "eos_token": first},
        calibration=edge_model.calibration,
        warmup=False,
    ).answer("23+70")
    assert silent.text == "" and silent.confidence == 0.0 and silent.token_logprobs[0] > -0.1


def test_bad_construction_is_refused(shipped_base_models: Path) -> None:
    bundle = shipped_base_models / "edge-student"
    with pytest.raises(ValueError, match="fp32"):
        EdgeModel.from_bundle(bundle, precision="fp32")
    with pytest.raises(ValueError, match="not an edge bundle"):
        EdgeModel.from_bundle(shipped_base_models / "cloud-teacher")
    manifest = load_manifest(bundle)
    graph, tokenizer = bundle / manifest.io["graphs"]["int8"], bundle / "tokenizer.json"
    good = {"prompt_template": "{query}=", "eos_token": manifest.io["eos_token"], "max_new_tokens": 8}
    for bad, match in (
        ({"prompt_template": "no placeholder"}, "query"),
        ({"threads": 0}, "threads"),
        ({"eos_token": "<|no such token|>"}, "stop token"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 100_000}, "max_new_tokens"),
    ):
        with pytest.raises(ValueError, match=match):
            EdgeModel(graph, tokenizer, **{**good, **bad})


def test_manifest_decoding_contract_is_honoured(edge_model: EdgeModel, shipped_base_models: Path) -> None:
    io = load_manifest(shipped_base_models / "edge-student").io
    assert edge_model.decoding == {k: io[k] for k in ("prompt_template", "eos_token", "max_new_tokens")}
    bundle = shipped_base_models / "edge-student"
    graph, tokenizer = bundle / io["graphs"]["int8"], bundle / io["tokenizer"]
    # A limit of one token: the answer is cut after its first digit, never longer.
    short = EdgeModel(graph, tokenizer, **{**edge_model.decoding, "max_new_tokens": 1}, warmup=False)
    answer = short.answer("23+70")
    assert answer.output_tokens == 1 and answer.text == "9"
    # Stopping on another token: the answer ends where that token would be generated.
    full = edge_model.answer("23+70")
    assert full.text == "93"
    on_three = EdgeModel(graph, tokenizer, **{**edge_model.decoding, "eos_token": "3"}, warmup=False).answer("23+70")
    assert on_three.text == "9" and on_three.output_tokens == 2


def test_a_bundle_without_its_decoding_contract_is_refused(shipped_base_models: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from edgecloud.shared.bundles.manifest import MANIFEST_FILE

    bundle = tmp_path / "edge"
    shutil.copytree(shipped_base_models / "edge-student", bundle)
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    del manifest["io"]["eos_token"]
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="eos_token"):
        EdgeModel.from_bundle(bundle)


def test_a_graph_or_tokenizer_the_manifest_does_not_list_is_refused(shipped_base_models: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from edgecloud.shared.bundles.manifest import MANIFEST_FILE, SIGNATURE_FILE

    bundle = tmp_path / "edge"
    shutil.copytree(shipped_base_models / "edge-student", bundle)
    (bundle / SIGNATURE_FILE).unlink(missing_ok=True)
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["io"]["graphs"]["int8"] = "elsewhere/model.onnx"  # inside the folder, but never hashed
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="elsewhere/model.onnx, not among its files"):
        EdgeModel.from_bundle(bundle)


def test_the_onnx_runtime_is_an_answer_model(edge_model: EdgeModel) -> None:
    assert isinstance(edge_model, AnswerModel)


def test_a_declared_reasoning_block_is_read_past_and_an_unclosed_one_is_an_abstention(
    edge_model: EdgeModel, shipped_base_models: Path
) -> None:
    # A bundle that declares a reasoning block: the shipped student writes "495" for 99*5, so with
    # "4" opening the block and "9" closing it, the block is empty and "5" is the answer.
    assert edge_model.answer("99*5").text == "495"
    io = load_manifest(shipped_base_models / "edge-student").io
    bundle = shipped_base_models / "edge-student"
    graph, tokenizer = bundle / io["graphs"]["int8"], bundle / io["tokenizer"]

    def reasoning(start: str, end: str) -> EdgeModel:
        return EdgeModel(
            graph,
            tokenizer,
            **edge_model.decoding,
            calibration=edge_model.calibration,
            think_start=start,
            think_end=end,
            warmup=False,
        )

    closed = reasoning("4", "9").answer("99*5")
    assert (closed.text, closed.reasoning_tokens, closed.output_tokens) == ("5", 0, 4)
    assert closed.confidence > 0 and len(closed.token_logprobs) == 4  # every token counts
    assert reasoning("4", "9").decoding["think_end"] == "9"
    longer = reasoning("4", "5").answer("99*5")  # "9" is the reasoning; nothing is left to answer
    assert (longer.text, longer.reasoning_tokens, longer.confidence) == ("", 1, 0.0)
    unclosed = reasoning("4", "7").answer("99*5")
    assert (unclosed.text, unclosed.reasoning_tokens, unclosed.confidence) == ("", 2, 0.0)
    # A model that answers without opening the block is read as before.
    direct = reasoning("5", "7").answer("99*5")
    assert (direct.text, direct.reasoning_tokens) == ("495", 0)
    with pytest.raises(ValueError, match="go together"):
        EdgeModel(graph, tokenizer, **edge_model.decoding, think_start="9", warmup=False)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        EdgeModel(graph, tokenizer, **edge_model.decoding, think_start="<nope>", think_end="9", warmup=False)
