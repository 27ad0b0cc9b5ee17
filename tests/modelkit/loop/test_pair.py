"""A pair bundle: the base's files and contract unchanged, a reasoner beside them under
``reasoner/``, its golden cases the pair's own answers (both stages exercised), what the base hands
off, and what is refused. Built from the shipped models' real graphs, loaded in onnxruntime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgecloud.edge.calibration import Calibration
from edgecloud.edge.cascade import CascadeModel
from edgecloud.edge.runtime import EdgeModel, load_edge_model
from edgecloud.modelkit.arithmetic.build import BuildConfig, PackagedStudent
from edgecloud.modelkit.arithmetic.task import Split, generate, parse_answer
from edgecloud.modelkit.loop.pair import REASONER_DIR, handed_off, package_pair, write_pair
from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.bundles.manifest import file_digest, load_manifest, verify_bundle, write_bundle

METADATA = {"improved_from": {"name": "edgecloud-demo-student", "version": 5}, "steps": 700}


def reasoner_bundle(shipped_models: Path, folder: Path, graph: Path) -> PackagedStudent:
    """A reasoner as ``package_student`` leaves it: its own edge bundle (graph, tokenizer, contract)."""
    stage = dict(load_manifest(shipped_models / "edge-student").io[REASONER_DIR])
    base_io = load_manifest(shipped_models / "edge-student").io
    folder.mkdir()
    shutil.copyfile(graph, folder / "model.int8.onnx")
    shutil.copyfile(shipped_models / "edge-student" / REASONER_DIR / "tokenizer.json", folder / "tokenizer.json")
    calibration = Calibration.from_dict(stage.pop("calibration"))
    io = {
        **stage, "graphs": {"int8": "model.int8.onnx"}, "tokenizer": "tokenizer.json",
        "feature_dim": base_io["feature_dim"], "features": base_io["features"], "preprocessing": base_io["preprocessing"],
    }  # fmt: skip
    manifest = write_bundle(
        folder, name="edgecloud-demo-student", kind="edge", version=6, io=io, calibration=calibration.to_dict(),
        golden=[], metadata={"recipe": "fresh reasoner", "steps": 30},
    )  # fmt: skip
    return PackagedStudent(manifest=manifest, model=None, int8_check={}, calibration=calibration)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pair(shipped_base_models: Path, shipped_models: Path, tmp_path_factory: pytest.TempPathFactory):
    """The shipped base and the shipped reasoner written as a new pair, version 6."""
    root = tmp_path_factory.mktemp("pair")
    reasoner = reasoner_bundle(
        shipped_models, root / "reasoner-bundle", shipped_models / "edge-student" / REASONER_DIR / "model.int8.onnx"
    )
    base_dir = shipped_base_models / "edge-student"
    manifest, loaded = write_pair(
        base_dir, load_manifest(base_dir), reasoner, root / "reasoner-bundle", root / "edge-student",
        version=6, metadata=METADATA, threads=1, seed=0,
    )  # fmt: skip
    return manifest, loaded, root / "edge-student", reasoner


def test_the_pair_keeps_the_base_as_it_was_and_adds_the_reasoner(pair, shipped_base_models: Path) -> None:
    manifest, loaded, folder, reasoner = pair
    base = load_manifest(shipped_base_models / "edge-student")
    assert verify_bundle(folder) == manifest and (manifest.name, manifest.version, manifest.kind) == (
        base.name,
        6,
        "edge",
    )
    assert {f.path: f.sha256 for f in base.files}.items() <= {f.path: f.sha256 for f in manifest.files}.items()
    assert sorted(f.path for f in manifest.files) == sorted(
        [f.path for f in base.files] + ["reasoner/model.int8.onnx", "reasoner/tokenizer.json"]
    )
    assert {k: v for k, v in manifest.io.items() if k != REASONER_DIR} == base.io  # the base's contract unchanged
    assert manifest.calibration == base.calibration  # the handoff threshold is the base's
    stage = manifest.io[REASONER_DIR]
    assert stage["graphs"] == {"int8": "reasoner/model.int8.onnx"} and stage["tokenizer"] == "reasoner/tokenizer.json"
    assert stage["calibration"] == reasoner.calibration.to_dict()
    assert not {"feature_dim", "features", "preprocessing"} & set(stage)  # the base computes the features
    assert (stage["think_start"], stage["max_new_tokens"]) == ("<think>", 130)
    # What it was trained with, what this turn says, and which base it pairs with.
    assert manifest.metadata["recipe"] == "fresh reasoner" and manifest.metadata["steps"] == 700
    assert manifest.metadata["improved_from"] == METADATA["improved_from"]
    assert manifest.metadata["pair"]["base"] == {"name": base.name, "version": base.version}
    assert isinstance(loaded, CascadeModel) and isinstance(load_edge_model(folder), CascadeModel)


def test_its_golden_cases_are_the_pair_s_own_answers_and_exercise_both_stages(pair) -> None:
    manifest, loaded, _, _ = pair
    golden = manifest.golden
    assert len(golden) == 7
    for case in golden:
        assert loaded.answer(case.query).text == case.expected
    base = loaded.base
    threshold = base.calibration.threshold
    by_base = [base.answer(case.query).confidence >= threshold for case in golden]
    assert by_base[:4] == [True] * 4 and by_base[4:] == [False] * 3  # simple ones by the base, the rest handed off
    problems = {p.query: p.answer for k in (1, 2) for p in generate(120, k, Split.GOLDEN, {k: 1.0})}
    assert all(parse_answer(case.expected) == problems[case.query] for case in golden)  # right answers


def test_a_pair_as_base_gives_only_its_first_stage(shipped_models: Path, tmp_path: Path) -> None:
    # A new reasoner (here the shipped reasoner's fp32 graph) replaces the old one.
    new_graph = shipped_models / "student-reference" / REASONER_DIR / "model.onnx"
    reasoner = reasoner_bundle(shipped_models, tmp_path / "reasoner-bundle", new_graph)
    old = shipped_models / "edge-student"
    manifest, loaded = write_pair(
        old, load_manifest(old), reasoner, tmp_path / "reasoner-bundle", tmp_path / "edge-student",
        version=7, metadata={}, threads=1, seed=0,
    )  # fmt: skip
    files = {f.path: f.sha256 for f in manifest.files}
    old_files = {f.path: f.sha256 for f in load_manifest(old).files}
    assert sorted(files) == sorted(old_files)  # one reasoner, not two
    assert files["reasoner/model.int8.onnx"] == file_digest(new_graph)[0] != old_files["reasoner/model.int8.onnx"]
    assert {p: h for p, h in files.items() if not p.startswith("reasoner/")} == {
        p: h for p, h in old_files.items() if not p.startswith("reasoner/")
    }
    assert manifest.metadata["pair"]["base"] == {
        "name": "edgecloud-demo-student",
        "version": load_manifest(old).version,
    }
    assert isinstance(loaded, CascadeModel)


def test_an_existing_folder_is_never_written_over(
    shipped_base_models: Path, shipped_models: Path, tmp_path: Path
) -> None:
    reasoner = reasoner_bundle(
        shipped_models, tmp_path / "reasoner-bundle", shipped_models / "edge-student" / REASONER_DIR / "model.int8.onnx"
    )
    (tmp_path / "edge-student").mkdir()
    (tmp_path / "edge-student" / "keep.txt").write_text("mine")
    base_dir = shipped_base_models / "edge-student"
    with pytest.raises(FileExistsError):
        write_pair(
            base_dir, load_manifest(base_dir), reasoner, tmp_path / "reasoner-bundle", tmp_path / "edge-student",
            version=6, metadata={}, threads=1, seed=0,
        )  # fmt: skip
    assert [p.name for p in (tmp_path / "edge-student").iterdir()] == ["keep.txt"]


def test_the_base_hands_off_what_it_is_not_sure_of(shipped_base_models: Path) -> None:
    base = EdgeModel.from_bundle(shipped_base_models / "edge-student", threads=1)
    problems = generate(20, 9, Split.VALIDATION, {1: 0.5, 3: 0.5})
    handed = handed_off(base, problems)
    threshold = base.calibration.threshold
    assert handed == [p for p in problems if base.answer(p.query).confidence < threshold]
    assert {p.k for p in handed} == {3}  # the simple sums it keeps, the three-step ones it passes on
    bare = EdgeModel(base.model_file, base.tokenizer_file, **base.decoding, calibration=None, threads=1)
    with pytest.raises(ValueError, match="no calibration"):
        handed_off(bare, problems)


def test_a_base_sure_of_everything_leaves_nothing_for_a_reasoner(shipped_base_models: Path, tmp_path: Path) -> None:
    base_dir = shipped_base_models / "edge-student"
    base = EdgeModel.from_bundle(base_dir, threads=1)
    sure = Calibration.from_dict({**base.calibration.to_dict(), "threshold": 0.0})
    first = EdgeModel(base.model_file, base.tokenizer_file, **base.decoding, calibration=sure, threads=1)
    build = BuildConfig(out=tmp_path / "unused", calibration_n=100)
    with pytest.raises(ConfigError, match="sure of every calibration query"):
        package_pair(
            (None, None, None), build, base=(base_dir, first, load_manifest(base_dir)),
            reference_dir=shipped_base_models / "student-reference", staging=tmp_path / "staging", version=6,
            think=("<think>", "</think>"), metadata={},
        )  # fmt: skip  # refused before the reasoner (None here) is touched
    assert (
        not (tmp_path / "staging" / "edge-student").exists() and not (tmp_path / "staging" / "reasoner-bundle").exists()
    )
    assert json.loads((tmp_path / "staging" / "student-reference" / "config.json").read_text())
