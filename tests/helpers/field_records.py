"""Field records for ``models recalibrate`` tests: the cloud's log of a device serving a real bundle."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from edgecloud.edge.runtime import load_edge_model
from edgecloud.modelkit.arithmetic.task import Problem
from edgecloud.shared.bundles.manifest import load_manifest, write_bundle
from edgecloud.shared.escalations.records import SCHEMA

__all__ = ["FIELD_MIX", "field_log", "too_strict_student"]

FIELD_MIX = {1: 0.5, 2: 0.5}
"""The field asks short queries only: not the build's mix (40% of three and four steps)."""


def field_log(bundle: Path, problems: list[Problem], path: Path, *, share: float, seed: int = 0) -> Path:
    """The cloud's log of a device serving ``bundle`` on ``problems``: every escalation, ``share`` of the kept answers."""
    model = load_edge_model(bundle, threads=1, warmup=False)
    manifest = load_manifest(bundle)
    threshold = model.calibration.threshold
    rng = random.Random(seed)
    lines = []
    for index, problem in enumerate(problems):
        answer = model.answer(problem.query)
        kept = not answer.abstained and answer.confidence >= threshold
        if kept and rng.random() >= share:
            continue
        lines.append({
            "schema": SCHEMA, "request_id": f"q{index}", "device_id": "edge-0", "query": problem.query,
            "answer": str(problem.answer), "reasoning_tokens": 10, "budget": 64, "finish_reason": "stop",
            "status": "completed", "kind": "shadow_check" if kept else "escalation",
            "producer": {"name": manifest.name, "version": manifest.version, "sha256": "b" * 64},
            "edge": {"answer": answer.text, "confidence": answer.confidence, "estimated_difficulty": 0.5},
            "features": [0.0], "created_at": "2026-12-07T06:00:00Z",
        })  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def too_strict_student(shipped_base_models: Path, folder: Path) -> Path:
    """The shipped base alone, calibrated as if for a harder field (its Platt bias 12 lower): it keeps
    almost none of the answers it could keep."""
    directory = folder / "edge-student"
    shutil.copytree(shipped_base_models / "edge-student", directory)
    old = load_manifest(directory)
    (directory / "manifest.json").unlink()
    calibration = {**old.calibration, "bias": old.calibration["bias"] - 12}
    write_bundle(directory, name=old.name, kind="edge", version=old.version, io=old.io, calibration=calibration,
                 golden=old.golden, metadata=old.metadata)  # fmt: skip
    return directory
