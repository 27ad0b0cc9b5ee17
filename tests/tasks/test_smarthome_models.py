"""The smart-home bundles shipped in ``models/smarthome`` (``make models-smarthome``): named after the
task, matching answers as JSON, passing their own golden self-test, and keeping only answers that are
right on commands the build never saw (real onnxruntime, int8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecloud.edge.runtime import EdgeBundle
from edgecloud.shared.bundles.answers import answers_match
from edgecloud.shared.bundles.manifest import load_manifest
from edgecloud.tasks import smarthome

MODELS = Path(__file__).resolve().parents[2] / "models" / "smarthome"


@pytest.fixture(scope="module")
def bundle() -> EdgeBundle:
    if not (MODELS / "edge-student" / "manifest.json").is_file():
        pytest.fail(f"no smart-home bundles under {MODELS}; run `make models-smarthome`")
    return EdgeBundle.load(MODELS / "edge-student", threads=1)


def test_the_bundles_are_the_task_s_own(bundle: EdgeBundle) -> None:
    teacher = load_manifest(MODELS / "cloud-teacher")
    assert (bundle.manifest.name, teacher.name) == ("smarthome-student", "smarthome-teacher")
    assert bundle.manifest.io["answer_match"] == "json"
    assert bundle.manifest.metadata["dataset"]["name"] == "smarthome"
    assert len(bundle.manifest.golden) >= 4
    for case in bundle.manifest.golden:  # what a device checks before it swaps the model in
        assert bundle.model.answer(case.query).text == case.expected
        assert json.loads(case.expected)["actions"]  # smart-home actions, not another task's answers


def test_kept_answers_are_right_on_commands_the_build_never_saw(bundle: EdgeBundle) -> None:
    # Seed 7's test split: not the build's data (seed 0) and not the demo's traffic.
    rows = smarthome.generate_rows(300, 7, "test")
    threshold = bundle.model.calibration.threshold
    kept = right_kept = simple = simple_kept = 0
    for row in rows:
        answer = bundle.model.answer(row.query or "")
        keep = answer.confidence >= threshold
        kept += keep
        right_kept += keep and answers_match("json", answer.text, row.answer)
        simple += row.group == "simple"
        simple_kept += keep and row.group == "simple"
    # Measured on 2,000 test rows (benchmarks/data_accuracy.py): 99.78% of kept answers right, every simple
    # command kept.
    assert kept > 150 and right_kept / kept >= 0.98, (right_kept, kept)
    assert simple > 50 and simple_kept / simple >= 0.9, (simple_kept, simple)
