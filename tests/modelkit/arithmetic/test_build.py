"""The build pipeline end to end on tiny models: bundles, loading paths, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from edgecloud.edge.calibration import Calibration
from edgecloud.edge.runtime import EdgeModel
from edgecloud.modelkit.arithmetic.build import BuildConfig, _next_version
from edgecloud.modelkit.arithmetic.evaluate import REFERENCE_DIR, STUDENT_DIR, TEACHER_DIR, evaluate_all
from edgecloud.modelkit.export import onnx_io
from edgecloud.shared.bundles.manifest import load_manifest, verify_bundle


@pytest.mark.parametrize(("name", "kind"), [(TEACHER_DIR, "cloud"), (STUDENT_DIR, "edge")])
def test_bundles_verify(quick_models: Path, name: str, kind: str) -> None:
    manifest = verify_bundle(quick_models / name)
    assert manifest.kind == kind
    assert manifest.version == 1
    assert manifest.golden, "every bundle carries golden self-test cases"
    assert manifest.metadata["quick"] is True


def test_no_staging_left_behind(quick_models: Path) -> None:
    # The bundles, and the teacher's labels cached for the next build on the same teacher.
    assert sorted(p.name for p in quick_models.iterdir()) == sorted([TEACHER_DIR, STUDENT_DIR, REFERENCE_DIR, ".cache"])
    assert len(list((quick_models / ".cache").glob("teacher-labels-*.json"))) == 1


def test_teacher_loads_through_auto_classes(quick_models: Path) -> None:
    directory = quick_models / TEACHER_DIR
    model = AutoModelForCausalLM.from_pretrained(str(directory))
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    assert model.config.model_type == "qwen3"
    assert model.config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "2+2"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert prompt.endswith("<think>\n\n</think>\n\n")


def test_edge_manifest_describes_the_graph(quick_models: Path) -> None:
    directory = quick_models / STUDENT_DIR
    manifest = load_manifest(directory)
    graph = directory / manifest.io["graphs"]["int8"]
    assert {"inputs": manifest.io["inputs"], "outputs": manifest.io["outputs"]} == onnx_io(graph)
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    features = [o for o in session.get_outputs() if o.name == "features"]
    assert features and features[0].shape[-1] == manifest.io["feature_dim"]
    assert "{query}" in manifest.io["prompt_template"]
    assert manifest.io["eos_token"] == "<|im_end|>"
    assert 1 <= manifest.io["max_new_tokens"] <= 64
    Calibration.from_dict(manifest.calibration)


def test_student_reads_its_own_prompt(quick_models: Path) -> None:
    """No chat template: the bundle's prompt is the normalised query and '='."""
    manifest = load_manifest(quick_models / STUDENT_DIR)
    assert manifest.io["prompt_template"] == "{query}="
    model = EdgeModel.from_bundle(quick_models / STUDENT_DIR)
    prompt = model.prompt_template.format(query="What is 12 + 30?")
    assert model.tokenizer.decode(model.tokenizer.encode(prompt).ids) == "12+30="


def test_student_features_are_centred(quick_models: Path) -> None:
    """The graph subtracts the training queries' mean feature vector: fresh queries average near zero."""
    import numpy as np

    from edgecloud.modelkit.arithmetic.task import Split, generate

    config = json.loads((quick_models / REFERENCE_DIR / "config.json").read_text())
    manifest = load_manifest(quick_models / STUDENT_DIR)
    assert len(config["feature_centre"]) == manifest.io["feature_dim"]
    model = EdgeModel.from_bundle(quick_models / STUDENT_DIR)
    features = np.stack([model.answer(p.query).features for p in generate(300, 5, Split.TEST)])
    offset = np.linalg.norm(features.mean(0))
    spread = np.linalg.norm(features, axis=1).mean()
    assert offset < 0.3 * spread, (offset, spread)
    # Without the subtraction, the mean vector would be the centre itself.
    assert np.linalg.norm(np.asarray(config["feature_centre"])) > offset


def test_student_features_come_out_on_their_principal_axes(quick_models: Path) -> None:
    """The rotation is orthogonal (lengths and cosines kept) and puts the largest variance first."""
    import numpy as np

    from edgecloud.modelkit.arithmetic.task import Split, generate

    config = json.loads((quick_models / REFERENCE_DIR / "config.json").read_text())
    rotation = np.asarray(config["feature_rotation"])
    dim = load_manifest(quick_models / STUDENT_DIR).io["feature_dim"]
    assert rotation.shape == (dim, dim)
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(dim), atol=1e-6)
    model = EdgeModel.from_bundle(quick_models / STUDENT_DIR)
    features = np.stack([model.answer(p.query).features for p in generate(300, 6, Split.TEST)])
    variances = features.var(0)
    quarter = dim // 4
    assert variances[:quarter].sum() > 4 * variances[-quarter:].sum(), variances


def test_int8_graph_is_quantised_and_smaller(quick_models: Path) -> None:
    manifest = load_manifest(quick_models / STUDENT_DIR)
    int8 = quick_models / STUDENT_DIR / manifest.io["graphs"]["int8"]
    fp32 = quick_models / REFERENCE_DIR / "model.onnx"
    assert int8.stat().st_size < fp32.stat().st_size
    import onnx

    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul", "QGemm"}, ops
    # onnxruntime's Qwen3 fusions ran before quantisation: no RMSNorm or rotary left as loose ops.
    assert {"SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "RotaryEmbedding"} <= ops, ops
    assert "Pow" not in ops and "ReduceMean" not in ops, ops
    check = manifest.metadata["int8_check"]
    assert 0.0 <= check["answer_agreement"] <= 1.0
    assert check["accuracy_fp32"] - check["accuracy_int8"] <= 0.1, check


def test_a_query_longer_than_the_training_context_still_gets_an_answer(quick_models: Path) -> None:
    """The fused rotary caches are trimmed, but not below the longest query the cloud accepts."""
    model = EdgeModel.from_bundle(quick_models / STUDENT_DIR)
    answer = model.answer("1+" * 2000 + "1")
    assert answer.input_tokens > 4000 and answer.output_tokens >= 1


def test_edge_golden_cases_reproduce(quick_models: Path) -> None:
    directory = quick_models / STUDENT_DIR
    model = EdgeModel.from_bundle(directory)
    for case in load_manifest(directory).golden:
        assert model.answer(case.query).text == case.expected


def test_next_version_counts_up(quick_models: Path, tmp_path: Path) -> None:
    assert _next_version(tmp_path) == 1
    assert _next_version(quick_models) == 2


def test_build_config_validates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="version"):
        BuildConfig(out=tmp_path, version=0)
    with pytest.raises(ValueError, match="target_precision"):
        BuildConfig(out=tmp_path, target_precision=1.5)


def test_evaluate_all_reports_every_figure(quick_models: Path, tmp_path: Path) -> None:
    report = evaluate_all(quick_models, tmp_path, n=24, budget_n=8, latency_n=4, threads=2)
    for key in (
        "teacher_thinking",
        "teacher_no_thinking",
        "student_fp32_torch",
        "student_fp32_onnx",
        "student_int8_onnx",
    ):
        assert set(report[key]) >= {"k1", "all"}
        assert all(0.0 <= v <= 1.0 for v in report[key].values() if isinstance(v, float))
    assert [point["budget"] for point in report["teacher_budget_curve"]][:2] == [0, 8]
    assert report["teacher_budget_curve"][0]["mean_reasoning_tokens"] == 0
    latency = report["latency_single_thread_k1"]
    assert latency["onnx_int8"]["p50_ms"] > 0 and latency["torch_fp32"]["p50_ms"] > 0
    assert report["sizes_bytes"]["student_onnx_int8"] > 0
    png = Path(report["plots"][0])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(report)  # the report must serialise as JSON


def test_student_can_be_distilled_from_an_existing_teacher(quick_models: Path, tmp_path: Path) -> None:
    from edgecloud.modelkit.arithmetic.build import build_models

    source = quick_models / TEACHER_DIR
    summary = build_models(BuildConfig(out=tmp_path, quick=True, reuse_teacher=source, version=5))
    assert summary["version"] == 5
    teacher = verify_bundle(tmp_path / TEACHER_DIR)
    assert teacher.metadata["reused_from"] == str(source)
    original = {f.path: f.sha256 for f in load_manifest(source).files}
    assert {f.path: f.sha256 for f in teacher.files}["model.safetensors"] == original["model.safetensors"]
    assert verify_bundle(tmp_path / STUDENT_DIR).metadata["distilled_from"]["version"] == 5
