"""A pair bundle on real onnxruntime sessions: the base first, a reasoner on what it is unsure of.

The pair here is built from the shipped student alone: its graph as both stages, the first with a
stricter threshold than the shipped one, so that it hands off some answers the second (with the
shipped calibration) keeps. It needs no training and no torch: what it checks is the bundle format,
the handoff and the one-threshold contract, not a reasoner's quality (tests/modelkit/loop/test_improve.py).
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecloud.edge.calibration import Calibration
from edgecloud.edge.cascade import CascadeModel, on_scale_of
from edgecloud.edge.runtime import EdgeBundle, EdgeModel, load_edge_model
from edgecloud.edge.seams import AnswerModel
from edgecloud.modelkit.arithmetic.task import Split, generate
from edgecloud.shared.bundles.manifest import BundleError, ManifestError, load_manifest
from tests.helpers.bundles import FIRST_THRESHOLD, make_pair_bundle


@pytest.fixture(scope="module")
def pair_dir(shipped_base_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pair_bundle(shipped_base_models / "edge-student", tmp_path_factory.mktemp("pair") / "edge-student")


@pytest.fixture(scope="module")
def pair(pair_dir: Path) -> CascadeModel:
    model = load_edge_model(pair_dir, threads=1)
    assert isinstance(model, CascadeModel)
    return model


def test_the_same_answers_clear_the_threshold_after_it_is_carried_onto_another_scale() -> None:
    rng = random.Random(3)
    for _ in range(200):
        fitted = Calibration(
            w_sum=rng.uniform(0, 30),
            w_min=rng.uniform(-10, 10),
            bias=rng.uniform(-5, 10),
            threshold=rng.uniform(0.01, 0.99),
            target_precision=0.995,
            validation={},
        )
        target = rng.uniform(0.01, 0.99)
        moved = on_scale_of(fitted, target)
        assert moved.threshold == target and (moved.w_sum, moved.w_min) == (fitted.w_sum, fitted.w_min)
        for _ in range(20):
            logprobs = [-abs(rng.gauss(0, 0.3)) for _ in range(rng.randint(1, 6))]
            before = fitted.confidence(logprobs) >= fitted.threshold
            # Equal up to rounding: skip the answers that sit on the threshold itself.
            if abs(fitted.confidence(logprobs) - fitted.threshold) > 1e-9:
                assert (moved.confidence(logprobs) >= moved.threshold) == before
    keeps_nothing = on_scale_of(dataclasses.replace(fitted, threshold=1.0), 0.3)
    assert keeps_nothing.confidence([0.0]) < 0.3


def test_a_pair_bundle_loads_as_the_pair_and_serves_as_an_answer_model(pair: CascadeModel, pair_dir: Path) -> None:
    assert isinstance(pair, AnswerModel)
    bundle = EdgeBundle.load(pair_dir, threads=1)
    assert isinstance(bundle.model, CascadeModel) and bundle.version == 6
    for case in bundle.manifest.golden:  # the agent's self-test after a swap
        assert bundle.model.answer(case.query).text == case.expected
    # One threshold for triage, the base's; the reasoner's own calibration is kept as fitted.
    assert pair.calibration is pair.base.calibration and pair.handoff == pair.base.calibration.threshold
    assert pair.handoff == FIRST_THRESHOLD and pair.reasoner.calibration.threshold == pair.handoff
    assert pair.reasoner_calibration.threshold == load_manifest(pair_dir).io["reasoner"]["calibration"]["threshold"]


def test_the_reasoner_answers_only_what_the_base_is_unsure_of(pair: CascadeModel, shipped_base_models: Path) -> None:
    alone = EdgeModel.from_bundle(shipped_base_models / "edge-student", threads=1)
    shipped_threshold = alone.calibration.threshold
    handed, kept_by_reasoner = 0, 0
    for problem in generate(300, 17, Split.TEST):
        first, answer = alone.answer(problem.query), pair.answer(problem.query)
        np.testing.assert_array_equal(answer.features, first.features)  # the cloud reads the base's features
        assert answer.text == first.text  # the same graph twice: only the confidence differs
        if first.confidence >= pair.handoff:
            assert answer.confidence == first.confidence
            continue
        handed += 1
        # Kept exactly when the reasoner is sure by its own (the shipped) calibration.
        assert (answer.confidence >= pair.calibration.threshold) == (first.confidence >= shipped_threshold)
        kept_by_reasoner += first.confidence >= shipped_threshold
    # Both branches ran: some queries were handed off, and the reasoner kept some of those.
    assert 50 < handed < 300 and kept_by_reasoner > 20


def test_a_reasoner_path_outside_the_bundle_is_refused(pair_dir: Path) -> None:
    data = json.loads((pair_dir / "manifest.json").read_text())
    for bad in ("../model.int8.onnx", "/etc/passwd"):
        data["io"]["reasoner"]["graphs"]["int8"] = bad
        with pytest.raises(ManifestError, match="io.reasoner"):
            from edgecloud.shared.bundles.manifest import Manifest

            Manifest.from_dict(data)


def test_a_pair_whose_reasoner_was_tampered_with_does_not_load(pair_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "pair"
    shutil.copytree(pair_dir, copy)
    graph = copy / "reasoner" / "model.int8.onnx"
    graph.write_bytes(graph.read_bytes()[:-1] + b"\0")
    with pytest.raises(BundleError):
        load_edge_model(copy, threads=1)
    shutil.copytree(pair_dir, tmp_path / "no-calibration")
    data = json.loads((tmp_path / "no-calibration" / "manifest.json").read_text())
    del data["io"]["reasoner"]["calibration"]
    (tmp_path / "no-calibration" / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="io.reasoner needs its own calibration"):
        load_edge_model(tmp_path / "no-calibration", threads=1)
