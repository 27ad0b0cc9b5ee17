"""Bundles the tests build from the shipped student: a pair bundle (the student's graph as both
stages), made without training or torch."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgecloud.shared.bundles.manifest import load_manifest, write_bundle

__all__ = ["FIRST_THRESHOLD", "make_pair_bundle"]

FIRST_THRESHOLD = 0.9993
"""About the median confidence of the shipped student's kept answers."""


def make_pair_bundle(
    shipped: Path, dest: Path, *, first_threshold: float = FIRST_THRESHOLD, version: int | None = None
) -> Path:
    """The shipped student's files, its graph and tokenizer again under ``reasoner/``, declared as a
    pair whose first stage hands off what it is less sure of than ``first_threshold``."""
    base = load_manifest(shipped)
    dest.mkdir(parents=True)
    for entry in base.files:
        shutil.copyfile(shipped / entry.path, dest / entry.path)
    (dest / "reasoner").mkdir()
    shutil.copyfile(shipped / base.io["graphs"]["int8"], dest / "reasoner" / "model.int8.onnx")
    shutil.copyfile(shipped / base.io["tokenizer"], dest / "reasoner" / "tokenizer.json")
    io = {
        **base.io,
        "reasoner": {
            "graphs": {"int8": "reasoner/model.int8.onnx"},
            "tokenizer": "reasoner/tokenizer.json",
            "prompt_template": base.io["prompt_template"],
            "eos_token": base.io["eos_token"],
            "max_new_tokens": base.io["max_new_tokens"],
            "calibration": base.calibration,
        },
    }
    write_bundle(
        dest,
        name=base.name,
        kind="edge",
        version=base.version + 1 if version is None else version,
        io=io,
        calibration={**base.calibration, "threshold": first_threshold},
        golden=base.golden,
        metadata={"pair": {"base": {"name": base.name, "version": base.version}}},
    )
    return dest
