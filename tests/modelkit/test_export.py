"""The export of a student whose weights go to an external data file (graphs over 2 GB): written,
quantised, signed into a bundle and served like a single-file one, with the same answers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgecloud.edge.runtime import EdgeModel
from edgecloud.modelkit import export
from edgecloud.modelkit.arithmetic.build import load_reference_student
from edgecloud.modelkit.arithmetic.student import StudentRecipe
from edgecloud.modelkit.export import export_student, external_data_file, onnx_io, quantize_student
from edgecloud.shared.bundles.manifest import load_manifest, verify_bundle, write_bundle

pytestmark = pytest.mark.slow

QUERIES = ["12 + 30", "(7 * 6) - 2", "3 * (4 + 5)", "100 - 58", "9 * 9"]


def _answers(graph: Path, shipped_models: Path) -> list[str]:
    io = load_manifest(shipped_models / "edge-student").io
    model = EdgeModel(
        graph,
        shipped_models / "edge-student" / "tokenizer.json",
        prompt_template=io["prompt_template"],
        eos_token=io["eos_token"],
        max_new_tokens=io["max_new_tokens"],
    )
    return [model.answer(query).text for query in QUERIES]


def test_a_graph_with_external_weights_quantises_bundles_and_answers_the_same(
    shipped_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    student, _ = load_reference_student(shipped_models / "student-reference", StudentRecipe(), seed=0)
    single = quantize_student(export_student(student, tmp_path / "one" / "model.onnx"), tmp_path / "one.int8.onnx")
    assert not external_data_file(tmp_path / "one" / "model.onnx").exists()

    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 0)  # as if the student were over 2 GB
    fp32 = export_student(student, tmp_path / "ext" / "model.onnx")
    assert external_data_file(fp32).stat().st_size > fp32.stat().st_size
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    int8 = quantize_student(fp32, bundle / "model.int8.onnx")
    assert external_data_file(int8).exists()
    shipped = load_manifest(shipped_models / "edge-student")
    shutil.copyfile(shipped_models / "edge-student" / "tokenizer.json", bundle / "tokenizer.json")
    write_bundle(
        bundle, name="big", kind="edge", version=1, io={**shipped.io, **onnx_io(int8)},
        calibration=shipped.calibration, golden=shipped.golden, metadata={},
    )  # fmt: skip
    assert {f.path for f in verify_bundle(bundle).files} >= {"model.int8.onnx", "model.int8.onnx.data"}

    served = EdgeModel.from_bundle(bundle)  # the edge's own loading path: verify, then open the graph
    answers = [served.answer(query).text for query in QUERIES]
    assert answers == _answers(single, shipped_models)
    assert answers[0] == "42"
