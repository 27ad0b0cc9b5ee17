"""``edgecloud models recalibrate`` as a user runs it: a subprocess on a real log and the shipped base."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edgecloud.modelkit.arithmetic.task import Split, generate
from edgecloud.shared.bundles.manifest import load_manifest
from tests.helpers.field_records import FIELD_MIX, field_log, too_strict_student


def test_the_command_line_writes_the_bundle_and_prints_the_summary(shipped_base_models: Path, tmp_path: Path) -> None:
    too_strict = too_strict_student(shipped_base_models, tmp_path)
    log = field_log(too_strict, generate(400, 5, Split.TEST, FIELD_MIX), tmp_path / "escalations.jsonl", share=0.3)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "edgecloud", "models", "recalibrate", str(log), "--bundle", str(too_strict),
         "--out", str(out), "--shadow-share", "0.3", "--min-checks", "0", "--target-precision", "0.97", "--threads", "1"],
        check=False, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["bundle"] == str(out / "edge-student") and summary["shadow_share"] == 0.3
    assert load_manifest(out / "edge-student").version == summary["version"]
    refused = subprocess.run(
        [sys.executable, "-m", "edgecloud", "models", "recalibrate", str(log), "--bundle", str(too_strict),
         "--out", str(tmp_path / "other"), "--min-checks", "100000"],
        check=False, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode != 0 and "recalibrate needs at least" in refused.stderr
