"""``edgecloud models build``: train, distil, export, quantise, calibrate, bundle.

Produces, under the output folder:

- ``cloud-teacher/``: a cloud bundle, a transformers Qwen3 checkpoint with its
  tokenizer and chat template (``AutoModelForCausalLM.from_pretrained`` loads it);
- ``edge-student/``: an edge bundle, the int8 ONNX student, its tokenizer and
  the triage calibration;
- ``student-reference/``: the fp32 PyTorch student and its fp32 ONNX graph,
  kept to measure what quantisation costs (not shipped to devices).

Everything is seeded. The new folders are assembled in a staging folder and
moved into place only when the whole build succeeded.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnxruntime
import torch
import transformers
from transformers import AutoModelForCausalLM

from edgecloud.edge.calibration import Calibration
from edgecloud.edge.runtime import EdgeModel
from edgecloud.modelkit.arithmetic.evaluate import REFERENCE_DIR, STUDENT_DIR, TEACHER_DIR
from edgecloud.modelkit.arithmetic.student import StudentRecipe, distill_student, fit_feature_transform, with_features
from edgecloud.modelkit.arithmetic.task import EVAL_MIX, Problem, Split, generate, parse_answer
from edgecloud.modelkit.arithmetic.teacher import (
    QUICK_STUDENT,
    QUICK_TEACHER,
    RefineStage,
    TeacherRecipe,
    chat_prompt,
    refine_teacher,
    train_teacher,
)
from edgecloud.modelkit.calibrate import fit_triage
from edgecloud.modelkit.decoding import generate_batch
from edgecloud.modelkit.export import export_student, onnx_io, quantize_student
from edgecloud.modelkit.tokenizer import build_student_tokenizer, build_tokenizer
from edgecloud.modelkit.training import TrainConfig
from edgecloud.shared.bundles.manifest import GoldenCase, Manifest, load_manifest, write_bundle
from edgecloud.shared.reasoner.thinking import THINK_END, THINK_START

__all__ = [
    "BuildConfig",
    "PackagedStudent",
    "StudentChecks",
    "build_models",
    "load_reference_student",
    "package_student",
    "quick_recipes",
]

log = logging.getLogger(__name__)

TEACHER_NAME = "edgecloud-demo-teacher"
STUDENT_NAME = "edgecloud-demo-student"
INT8_FILE = "model.int8.onnx"


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    out: Path
    """Folder that receives the bundles (``models/`` in the repo)."""
    quick: bool = False
    """Tiny, low-accuracy models in a few minutes, for tests."""
    seed: int = 0
    version: int | None = None
    """Bundle version; default: one more than the version found in ``out``."""
    threads: int = 2
    target_precision: float = 0.995
    """Precision the edge must keep on validation at the triage threshold."""
    calibration_n: int = 4000
    calibration_confidence: float | None = 0.95
    """The triage threshold must reach ``target_precision`` as a one-sided lower bound at this
    confidence (Wilson), not just on the validation answers; None: on the answers themselves.
    Measured on the v5 student: validation held 5 wrong of 1594 answers (99.69%) and the plain rule
    kept them all; on 797 fresh k=1 queries the kept answers were 99.37% right."""
    int8_max_accuracy_drop: float = 0.05
    """Fail the build if the int8 graph is this much less accurate than the fp32 one.
    A guard against broken quantisation, not the quality target (1 point), which
    ``edgecloud models eval`` reports."""
    teacher: TeacherRecipe = field(default_factory=TeacherRecipe)
    student: StudentRecipe = field(default_factory=StudentRecipe)
    reuse_teacher: Path | None = None
    """Skip teacher training: distil from this already-trained teacher folder instead."""
    refine_teacher: bool = False
    """Run the teacher recipe's second stage (``teacher.refine``) on the reused teacher first:
    a teacher trained by the first stage alone (v3 and before) becomes the one a full build makes."""
    label_cache: Path | None = None
    """Folder of cached teacher labels (one file per teacher, keyed by its weights, mapping each
    query to its label); default ``out/.cache``. A rebuild labels only queries it has not seen."""
    reuse_student: Path | None = None
    """Skip distillation too: export, quantise and calibrate this trained student
    (a ``student-reference`` folder). Needs ``reuse_teacher``."""

    def __post_init__(self) -> None:
        if self.version is not None and self.version < 1:
            raise ValueError(f"version must be >= 1, got {self.version}")
        if not 0.5 <= self.target_precision <= 1:
            raise ValueError(f"target_precision must be in [0.5, 1], got {self.target_precision}")
        if self.reuse_student is not None and self.reuse_teacher is None:
            raise ValueError("reuse_student needs reuse_teacher: a student is bundled with the teacher it came from")
        if self.refine_teacher and (self.reuse_teacher is None or self.teacher.refine is None):
            raise ValueError("refine_teacher needs reuse_teacher and a recipe with a refine stage")
        if self.calibration_confidence is not None and not 0.5 <= self.calibration_confidence < 1:
            raise ValueError(f"calibration_confidence must be in [0.5, 1) or None, got {self.calibration_confidence}")
        if self.calibration_n < 100:
            raise ValueError(f"calibration_n must be >= 100, got {self.calibration_n}")


def quick_recipes(config: BuildConfig) -> BuildConfig:
    """The same pipeline on tiny models and few steps."""
    return replace(
        config,
        calibration_n=300,
        int8_max_accuracy_drop=1.0,
        teacher=replace(
            config.teacher,
            model=QUICK_TEACHER,
            train=TrainConfig(steps=40, batch_size=32, lr=3e-3, warmup=5),
            refine=RefineStage(train=TrainConfig(steps=5, batch_size=8, lr=1e-3, warmup=1))
            if config.teacher.refine
            else None,
        ),
        student=replace(
            config.student,
            model=QUICK_STUDENT,
            train=TrainConfig(steps=40, batch_size=32, lr=3e-3, warmup=5),
            label_queries={1: 200, 2: 20, 3: 20, 4: 20},
            eval_every=0,
        ),
    )


def _next_version(out: Path) -> int:
    versions = []
    for name in (TEACHER_DIR, STUDENT_DIR):
        try:
            versions.append(load_manifest(out / name).version)
        except Exception:  # noqa: BLE001, S112 - a missing or broken old bundle just means "start at 1"
            continue
    return max(versions, default=0) + 1


def _environment() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }


def _teacher_golden(model, tokenizer, seed: int) -> list[GoldenCase]:
    problems = [p for p in generate(40, seed, Split.GOLDEN) if p.k <= 3][:12]
    prompts = [chat_prompt(tokenizer, p.query, enable_thinking=True) for p in problems]
    gens = generate_batch(model, tokenizer, prompts, max_new_tokens=200)
    right = [(p, g) for p, g in zip(problems, gens, strict=True) if parse_answer(g.answer_text) == p.answer]
    chosen = (right or list(zip(problems, gens, strict=True)))[:4]
    return [GoldenCase(query=p.query, expected=g.answer_text) for p, g in chosen]


def _edge_golden(model: EdgeModel, seed: int) -> list[GoldenCase]:
    problems = [p for p in generate(60, seed, Split.GOLDEN) if p.k == 1]
    answers = [(p, model.answer(p.query)) for p in problems]
    right = [(p, a) for p, a in answers if parse_answer(a.text) == p.answer]
    chosen = (right or answers)[:5]
    return [GoldenCase(query=p.query, expected=a.text) for p, a in chosen]


def calibration_problems(config: BuildConfig) -> list[Problem]:
    """The validation queries triage is calibrated on."""
    return generate(config.calibration_n, config.seed, Split.VALIDATION, EVAL_MIX)


def _calibrate(model: EdgeModel, config: BuildConfig, problems: list[Problem] | None = None) -> Calibration:
    problems = calibration_problems(config) if problems is None else problems
    answers = [model.answer(problem.query) for problem in problems]
    fit = fit_triage(
        answers,
        [parse_answer(a.text) == p.answer for a, p in zip(answers, problems, strict=True)],
        target_precision=config.target_precision,
        confidence_level=config.calibration_confidence,
    )
    simple = np.array([p.k == 1 for p in problems])
    validation = {**fit.validation(), "coverage_k1": float(fit.kept[simple].mean()) if simple.any() else None}
    log.info("calibration: threshold %.4f, %s", fit.threshold, validation)
    return fit.calibration(config.target_precision, validation)


def _int8_check(fp32: EdgeModel, int8: EdgeModel, seed: int, n: int = 500) -> dict[str, float]:
    problems = generate(n, seed + 7, Split.VALIDATION)
    agree, cosines, right32, right8 = [], [], [], []
    for problem in problems:
        a, b = fp32.answer(problem.query), int8.answer(problem.query)
        agree.append(a.text == b.text)
        cosines.append(
            float(a.features @ b.features / (np.linalg.norm(a.features) * np.linalg.norm(b.features) + 1e-12))
        )
        right32.append(parse_answer(a.text) == problem.answer)
        right8.append(parse_answer(b.text) == problem.answer)
    return {
        "n": float(n),
        "answer_agreement": float(np.mean(agree)),
        "feature_cosine_mean": float(np.mean(cosines)),
        "feature_cosine_min": float(np.min(cosines)),
        "accuracy_fp32": float(np.mean(right32)),
        "accuracy_int8": float(np.mean(right8)),
    }


def _checked_int8(fp32: EdgeModel, int8: EdgeModel, config: BuildConfig) -> dict[str, float]:
    """:func:`_int8_check`; RuntimeError when int8 loses more accuracy than the build allows."""
    check = _int8_check(fp32, int8, config.seed)
    log.info("int8 vs fp32: %s", check)
    drop = check["accuracy_fp32"] - check["accuracy_int8"]
    if drop > config.int8_max_accuracy_drop:
        raise RuntimeError(
            f"int8 graph is {drop:.1%} less accurate than fp32 (allowed {config.int8_max_accuracy_drop:.0%}): {check}"
        )
    return check


def _load_teacher(source: Path, teacher_dir: Path):
    """Copy a trained teacher (a bundle or a plain checkpoint folder) into the staging area."""
    from transformers import AutoTokenizer

    shutil.copytree(source, teacher_dir, ignore=shutil.ignore_patterns("manifest.json", "manifest.sig"))
    model = AutoModelForCausalLM.from_pretrained(str(teacher_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(teacher_dir))
    try:
        previous = load_manifest(source).metadata
        meta = {k: previous[k] for k in ("recipe", "train_seconds", "train_final", "refined") if k in previous}
    except Exception:  # noqa: BLE001 - a plain checkpoint folder has no manifest
        meta = {}
    return model, tokenizer, {**meta, "reused_from": str(source)}


@dataclass(frozen=True)
class StudentChecks:
    """How :func:`package_student` checks, calibrates and self-tests a student (default: on the demo task)."""

    int8_check: Callable[[EdgeModel, EdgeModel], dict[str, float]]
    """``(fp32, int8) -> figures``; raises when the int8 graph is not good enough."""
    calibrate: Callable[[EdgeModel], Calibration]
    golden: Callable[[EdgeModel], list[GoldenCase]]


def _demo_checks(config: BuildConfig, calibrate_on: list[Problem] | None) -> StudentChecks:
    def calibrate(int8: EdgeModel) -> Calibration:
        log.info("calibrating triage on %d validation queries", len(calibrate_on or ()) or config.calibration_n)
        return _calibrate(int8, config, calibrate_on)

    return StudentChecks(
        int8_check=lambda fp32, int8: _checked_int8(fp32, int8, config),
        calibrate=calibrate,
        golden=lambda int8: _edge_golden(int8, config.seed),
    )


@dataclass(frozen=True)
class PackagedStudent:
    """An edge bundle written by :func:`package_student`, with what its checks measured."""

    manifest: Manifest
    model: EdgeModel
    """The bundle's int8 graph, loaded and calibrated."""
    int8_check: dict[str, float]
    calibration: Calibration


def _decoding(recipe: StudentRecipe, student_tokenizer, think: tuple[str, str] | None) -> dict[str, object]:
    """The edge bundle's decoding contract (``io``): prompt, stop token, answer length, reasoning block."""
    decoding = {
        "prompt_template": recipe.prompt_template,
        "eos_token": student_tokenizer.eos_token,
        "max_new_tokens": recipe.max_new_tokens,
    }
    if think is not None:
        decoding.update(think_start=think[0], think_end=think[1])
    return decoding


def _bundle_io(
    int8_file: Path, student, decoding: Mapping[str, object], io_extra: Mapping[str, object] | None
) -> dict[str, object]:
    """The bundle manifest's ``io``: the graph's inputs and outputs, the features, the tokenizer, decoding."""
    return {
        **onnx_io(int8_file),
        "feature_dim": int(student.config.hidden_size),
        "features": {
            "output": "features",
            "dtype": "float32",
            "pooling": "mean of final hidden states over the prompt, minus their mean over training queries",
        },
        "tokenizer": "tokenizer.json",
        "preprocessing": "the tokenizer's normalizer (tokenizer.json)",
        "graphs": {"int8": INT8_FILE},
        **decoding,
        **(io_extra or {}),
    }


def _bundle_metadata(
    config: BuildConfig, recipe: StudentRecipe, student, check: dict[str, float], metadata: dict[str, object]
) -> dict[str, object]:
    """The bundle manifest's ``metadata``: how the student was built, and its int8 check."""
    return {
        "seed": config.seed,
        "quick": config.quick,
        "environment": _environment(),
        "recipe": json.loads(json.dumps(asdict(recipe))),
        "params": sum(p.numel() for p in student.parameters()),
        "int8_check": check,
        **metadata,
    }


def package_student(
    student,
    student_tokenizer,
    recipe: StudentRecipe,
    config: BuildConfig,
    *,
    bundle_dir: Path,
    reference_dir: Path,
    version: int,
    metadata: dict[str, object],
    think: tuple[str, str] | None = None,
    calibrate_on: list[Problem] | None = None,
    name: str = STUDENT_NAME,
    checks: StudentChecks | None = None,
    io_extra: Mapping[str, object] | None = None,
) -> PackagedStudent:
    """Export a trained student to ONNX, quantise it to int8, check int8 against fp32, calibrate
    triage and write the edge bundle (``bundle_dir``) and the fp32 reference (``reference_dir``).

    Shared by ``models build`` and ``models improve``. ``think`` declares the reasoning block's
    start and end tokens, for a student that reasons before it answers. ``calibrate_on``: the
    queries to calibrate on (default: :func:`calibration_problems`), e.g. only those a pair's
    first stage hands off. RuntimeError when the int8 graph is more
    than ``config.int8_max_accuracy_drop`` less accurate than the fp32 one.
    ``checks`` replace the demo task's (a build from a dataset's); ``io_extra`` joins the ``io``.
    """
    reference_dir.mkdir(parents=True)
    student.save_pretrained(str(reference_dir))
    student_tokenizer.save_pretrained(str(reference_dir))
    log.info("exporting the student to ONNX and quantising it to int8")
    fp32_file = export_student(student, reference_dir / "model.onnx")
    bundle_dir.mkdir(parents=True)
    int8_file = quantize_student(fp32_file, bundle_dir / INT8_FILE)
    student_tokenizer.backend_tokenizer.save(str(bundle_dir / "tokenizer.json"))
    decoding = _decoding(recipe, student_tokenizer, think)

    def edge_model(graph: Path) -> EdgeModel:
        return EdgeModel(graph, bundle_dir / "tokenizer.json", **decoding, threads=config.threads)

    checks = checks or _demo_checks(config, calibrate_on)
    int8 = edge_model(int8_file)
    check = checks.int8_check(edge_model(fp32_file), int8)
    calibration = checks.calibrate(int8)
    int8.calibration = calibration
    manifest = write_bundle(
        bundle_dir,
        name=name,
        kind="edge",
        version=version,
        io=_bundle_io(int8_file, student, decoding, io_extra),
        calibration=calibration.to_dict(),
        golden=checks.golden(int8),
        metadata=_bundle_metadata(config, recipe, student, check, metadata),
    )
    return PackagedStudent(manifest=manifest, model=int8, int8_check=check, calibration=calibration)


def _obtain_teacher(config: BuildConfig, teacher_dir: Path):
    """The teacher, its tokenizer and its manifest metadata: trained here, or reused (and refined)."""
    started = time.monotonic()
    if config.reuse_teacher is None:
        tokenizer = build_tokenizer()
        log.info("training the teacher (%d steps)", config.teacher.train.steps)
        teacher, history = train_teacher(tokenizer, config.teacher, teacher_dir, seed=config.seed)
        recipe = json.loads(json.dumps(asdict(config.teacher)))
        return (
            teacher,
            tokenizer,
            {
                "recipe": recipe,
                "train_seconds": time.monotonic() - started,
                "train_final": history[-1] if history else {},
            },
        )
    log.info("reusing the teacher in %s", config.reuse_teacher)
    teacher, tokenizer, meta = _load_teacher(config.reuse_teacher, teacher_dir)
    if config.refine_teacher:
        history = refine_teacher(teacher, tokenizer, config.teacher, seed=config.seed)
        teacher.save_pretrained(str(teacher_dir))
        meta = {
            **meta,
            "recipe": json.loads(json.dumps(asdict(config.teacher))),
            "refined": {"seconds": time.monotonic() - started, "train_final": history[-1] if history else {}},
        }
    return teacher, tokenizer, meta


def _obtain_student(config: BuildConfig, teacher, tokenizer):
    """The student, its tokenizer and its training history: distilled here, or reused."""
    if config.reuse_student is None:
        log.info("distilling the student (%d steps)", config.student.train.steps)
        student_tokenizer = build_student_tokenizer()
        student, history = distill_student(
            teacher,
            tokenizer,
            student_tokenizer,
            config.student,
            seed=config.seed,
            label_cache=config.label_cache or config.out / ".cache",
        )
        return student, student_tokenizer, history
    log.info("reusing the student in %s", config.reuse_student)
    student, student_tokenizer = load_reference_student(config.reuse_student, config.student, config.seed)
    return student, student_tokenizer, []


def load_reference_student(folder: Path, recipe: StudentRecipe, seed: int):
    """A trained fp32 student (a ``student-reference`` folder) and its tokenizer."""
    from transformers import AutoTokenizer

    student = with_features(AutoModelForCausalLM.from_pretrained(str(folder)).eval())
    student_tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if getattr(student.config, "feature_rotation", None) is None:
        # A student from before v4: give its features the principal axes a new build gives them.
        log.info("the reused student has no feature rotation; measuring its centre and principal axes")
        fit_feature_transform(student, student_tokenizer, recipe.prompt_template, seed)
    return student, student_tokenizer


def _teacher_bundle(
    teacher,
    tokenizer,
    config: BuildConfig,
    *,
    folder: Path,
    version: int,
    feature_dim: int,
    metadata,
    name: str = TEACHER_NAME,
    golden: list[GoldenCase] | None = None,
    io_extra: Mapping[str, object] | None = None,
):
    """Write the cloud bundle; ``golden`` defaults to the demo task's cases."""
    return write_bundle(
        folder,
        name=name,
        kind="cloud",
        version=version,
        io={
            "inputs": [{"name": "messages", "format": "chat template (tokenizer_config.json)"}],
            "outputs": [{"name": "text", "format": f"{THINK_START} reasoning {THINK_END} answer"}],
            "feature_dim": feature_dim,
            "tokenizer": "tokenizer.json",
            "format": "transformers",
            "architecture": "Qwen3ForCausalLM",
            "think_start": THINK_START,
            "think_end": THINK_END,
            **(io_extra or {}),
        },
        calibration={},
        golden=_teacher_golden(teacher, tokenizer, config.seed) if golden is None else golden,
        metadata={
            "seed": config.seed,
            "quick": config.quick,
            "environment": _environment(),
            **metadata,
            "params": sum(p.numel() for p in teacher.parameters()),
        },
    )


def swap_into_place(staging: Path, out: Path, names: tuple[str, ...]) -> None:
    """Move each staged folder over its namesake in ``out``; the old one goes only once the new one is in."""
    for name in names:
        target = out / name
        old = out / f".old-{name}"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        (staging / name).rename(target)
        shutil.rmtree(old, ignore_errors=True)


def keep_failed_staging(staging: Path, out: Path) -> None:
    if staging.exists():
        kept = out / f".failed-{staging.name.removeprefix('.staging-')}"
        staging.rename(kept)
        log.error("build failed; partial results kept in %s", kept)


def build_models(config: BuildConfig) -> dict[str, object]:
    """Run the whole pipeline; returns a summary (also stored in the manifests)."""
    if config.quick:
        config = quick_recipes(config)
    started = time.monotonic()
    torch.set_num_threads(config.threads)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    version = config.version or _next_version(out)
    staging = out / f".staging-{int(time.time())}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        teacher, tokenizer, teacher_meta = _obtain_teacher(config, staging / TEACHER_DIR)
        student, student_tokenizer, history = _obtain_student(config, teacher, tokenizer)
        packaged = package_student(
            student,
            student_tokenizer,
            config.student,
            config,
            bundle_dir=staging / STUDENT_DIR,
            reference_dir=staging / REFERENCE_DIR,
            version=version,
            metadata={
                "distilled_from": {"name": TEACHER_NAME, "version": version},
                "train_final": history[-1] if history else {},
                **({"reused_from": str(config.reuse_student)} if config.reuse_student else {}),
            },
        )
        cloud_manifest = _teacher_bundle(
            teacher,
            tokenizer,
            config,
            folder=staging / TEACHER_DIR,
            version=version,
            feature_dim=int(student.config.hidden_size),
            metadata=teacher_meta,
        )
        swap_into_place(staging, out, (TEACHER_DIR, STUDENT_DIR, REFERENCE_DIR))
    except BaseException:
        # Keep what was built (a trained teacher is most of an hour): --reuse-teacher can start from it.
        keep_failed_staging(staging, out)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    summary = {
        "version": version,
        "seconds": time.monotonic() - started,
        "teacher": {"name": cloud_manifest.name, "params": cloud_manifest.metadata["params"]},
        "student": {"name": packaged.manifest.name, "params": packaged.manifest.metadata["params"]},
        "int8_check": packaged.int8_check,
        "calibration": packaged.calibration.to_dict(),
    }
    log.info("build done in %.0f s", summary["seconds"])
    return summary
