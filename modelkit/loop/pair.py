"""A pair bundle: the base student and a reasoner trained on its escalations, signed as one.

``models improve --student fresh`` (the default when it learns the cloud's reasoning) trains a
reasoner from scratch on the multi-step queries the base escalated. Alone it is weaker than the
base on the simple queries the base answers (they are rare in the escalations it learns from);
after the base, on only what the base is unsure of, it takes over most of what the cloud did
(docs/models.md). This writes that pair (:class:`edgecloud.edge.cascade.CascadeModel`): the
base's files and manifest ``io`` unchanged, the reasoner's graph and tokenizer under
``reasoner/``, its decoding contract and calibration in ``io.reasoner``. The reasoner is
calibrated on the validation queries the base hands off, the ones it will see.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from edgecloud.edge.cascade import CascadeModel
from edgecloud.edge.runtime import EdgeModel, load_edge_model
from edgecloud.modelkit.arithmetic.build import BuildConfig, PackagedStudent, calibration_problems, package_student
from edgecloud.modelkit.arithmetic.evaluate import REFERENCE_DIR, STUDENT_DIR
from edgecloud.modelkit.arithmetic.task import Problem, Split, generate, parse_answer
from edgecloud.modelkit.export import external_data_file
from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.bundles.manifest import GoldenCase, Manifest, write_bundle

__all__ = ["REASONER_DIR", "handed_off", "package_pair", "write_pair"]

log = logging.getLogger(__name__)

REASONER_DIR = "reasoner"
"""The reasoner's files inside a pair bundle (and its fp32 reference inside ``student-reference``)."""


def handed_off(base: EdgeModel, problems: list[Problem]) -> list[Problem]:
    """The problems ``base`` is not sure of: those a pair gives its reasoner."""
    if base.calibration is None:
        raise ValueError("the base student has no calibration: nothing decides what it hands off")
    threshold = base.calibration.threshold
    return [p for p in problems if not base.answer(p.query).confidence >= threshold]


def _pair_golden(pair: CascadeModel, seed: int) -> list[GoldenCase]:
    """A few queries each stage answers right, as the pair answers them: the agent's self-test
    after a swap then exercises both graphs."""
    cases: list[GoldenCase] = []
    for k, wanted in ((1, 4), (2, 3)):
        chosen = 0
        for problem in generate(120, seed + k, Split.GOLDEN, {k: 1.0}):
            answer = pair.answer(problem.query)
            if parse_answer(answer.text) == problem.answer:
                cases.append(GoldenCase(query=problem.query, expected=answer.text))
                chosen += 1
                if chosen == wanted:
                    break
    return cases


def _copy_base(base_dir: Path, base_manifest: Manifest, bundle_dir: Path) -> None:
    """Copy the base bundle's files into ``bundle_dir``, less a reasoner of its own."""
    for entry in base_manifest.files:
        if entry.path.split("/", 1)[0] == REASONER_DIR:
            continue
        target = bundle_dir / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(base_dir / entry.path, target)


def _reasoner_stage(reasoner: PackagedStudent, reasoner_dir: Path, bundle_dir: Path) -> dict[str, object]:
    """Copy the reasoner's graphs and tokenizer into the pair's ``REASONER_DIR``; return its ``io`` entry."""
    (bundle_dir / REASONER_DIR).mkdir()
    stage = dict(reasoner.manifest.io)
    for key in ("preprocessing", "features", "feature_dim"):
        stage.pop(key, None)
    stage["graphs"] = {}
    for precision, name in reasoner.manifest.io["graphs"].items():
        shutil.copyfile(reasoner_dir / name, bundle_dir / REASONER_DIR / name)
        if external_data_file(reasoner_dir / name).exists():
            shutil.copyfile(
                external_data_file(reasoner_dir / name), external_data_file(bundle_dir / REASONER_DIR / name)
            )
        stage["graphs"][precision] = f"{REASONER_DIR}/{name}"
    shutil.copyfile(reasoner_dir / reasoner.manifest.io["tokenizer"], bundle_dir / REASONER_DIR / "tokenizer.json")
    stage["tokenizer"] = f"{REASONER_DIR}/tokenizer.json"
    stage["calibration"] = reasoner.calibration.to_dict()
    return stage


def write_pair(
    base_dir: Path,
    base_manifest: Manifest,
    reasoner: PackagedStudent,
    reasoner_dir: Path,
    bundle_dir: Path,
    *,
    version: int,
    metadata: dict[str, object],
    threads: int,
    seed: int,
) -> tuple[Manifest, CascadeModel]:
    """Write the pair bundle in ``bundle_dir`` (which must not exist) from the base bundle and the
    reasoner's bundle (``reasoner_dir``, written by ``package_student``); return its manifest and
    the pair, loaded from it. A base that is itself a pair gives only its first stage."""
    bundle_dir.mkdir(parents=True)
    _copy_base(base_dir, base_manifest, bundle_dir)
    stage = _reasoner_stage(reasoner, reasoner_dir, bundle_dir)
    io = {key: value for key, value in base_manifest.io.items() if key != REASONER_DIR}
    io[REASONER_DIR] = stage

    def manifest(golden: list[GoldenCase]) -> Manifest:
        return write_bundle(
            bundle_dir,
            name=base_manifest.name,
            kind="edge",
            version=version,
            io=io,
            calibration=base_manifest.calibration,
            golden=golden,
            metadata={
                **reasoner.manifest.metadata,
                **metadata,
                "pair": {
                    "base": {"name": base_manifest.name, "version": base_manifest.version},
                    "handoff": "the base's answers below its calibrated threshold go to the reasoner",
                },
            },
        )

    # The golden cases are the pair's own answers: write the manifest once to load the pair.
    manifest(list(base_manifest.golden))
    pair = load_edge_model(bundle_dir, threads=threads, warmup=False)
    assert isinstance(pair, CascadeModel)
    written = manifest(_pair_golden(pair, seed))
    log.info(
        "pair bundle v%d: the base v%d, then a reasoner on what it is unsure of (%d golden cases)",
        version,
        base_manifest.version,
        len(written.golden),
    )
    return written, load_edge_model(bundle_dir, threads=threads, warmup=False)  # type: ignore[return-value]


def package_pair(
    trained: tuple,
    build: BuildConfig,
    *,
    base: tuple[Path, EdgeModel, Manifest],
    reference_dir: Path,
    staging: Path,
    version: int,
    think: tuple[str, str] | None,
    metadata: dict[str, object],
) -> tuple[PackagedStudent, CascadeModel]:
    """A trained reasoner (``trained``: model, tokenizer, recipe) packaged as the second stage of a
    pair with the base's first (``base``: its bundle folder, its first stage loaded, its manifest),
    calibrated on the validation queries the base hands off. Writes ``staging/edge-student`` and
    ``staging/student-reference``: the base's fp32 student (``reference_dir``), so a later
    fine-tuning turn starts from it, with the reasoner's under ``reasoner/``."""
    student, tokenizer, recipe = trained
    base_dir, first, base_manifest = base
    shutil.copytree(reference_dir, staging / REFERENCE_DIR, ignore=shutil.ignore_patterns(REASONER_DIR))
    problems = calibration_problems(build)
    handoff = handed_off(first, problems)
    log.info("the base hands off %d of %d calibration queries to the reasoner", len(handoff), len(problems))
    if not handoff:
        raise ConfigError("the base is sure of every calibration query: there is nothing for a reasoner to take over")
    reasoner = package_student(
        student,
        tokenizer,
        recipe,
        build,
        bundle_dir=staging / "reasoner-bundle",
        reference_dir=staging / REFERENCE_DIR / REASONER_DIR,
        version=version,
        think=think,
        metadata=metadata,
        calibrate_on=handoff,
    )
    _, pair = write_pair(
        base_dir,
        base_manifest,
        reasoner,
        staging / "reasoner-bundle",
        staging / STUDENT_DIR,
        version=version,
        metadata=metadata,
        threads=build.threads,
        seed=build.seed,
    )
    return reasoner, pair
