"""``edgecloud models build --data DIR --name NAME``: a teacher, a student and their bundles from a dataset.

The pipeline, on any dataset folder (:mod:`edgecloud.modelkit.data.datasets`), with the dataset's
answer-matching rule wherever answers are compared:

1. **Tokenizers** (unless ``--teacher`` / ``--student`` bring theirs): one token per character
   the data uses and its frequent words as whole tokens (:func:`build_data_tokenizers`); case is
   folded only when no answer has an upper-case letter (``lowercase``).
2. **Teacher**: ``--teacher HF_DIR`` as it is (a thinking model: ``<think>``/``</think>`` tokens
   and a chat template), or a small Qwen3 trained on the rows (:mod:`edgecloud.modelkit.data.teacher`).
3. **Labels**: the teacher answers every training query once, thinking, greedy; cached under
   ``OUT/.cache`` by its weights and the query.
4. **Student** (:mod:`edgecloud.modelkit.data.student`): a fresh small Qwen3, or ``--student
   HF_DIR`` fine-tuned, learns the teacher's answers, and to abstain where the teacher is wrong.
5. **Packaging** (:func:`edgecloud.modelkit.arithmetic.build.package_student`): ONNX export with the KV cache
   and ``features``, int8 quantisation checked against fp32 on validation rows, triage calibrated
   on the validation split (:func:`edgecloud.modelkit.calibrate.fit_triage`: abstentions out of
   the Platt fit, the Wilson bound on the target precision), figures per ``group``; golden
   self-test cases are validation rows each model answers right.
6. **Bundles** ``OUT/cloud-teacher`` (``NAME-teacher``), ``OUT/edge-student`` (``NAME-student``,
   ``io.conversations`` false) and ``OUT/student-reference``; both manifests declare
   ``io.answer_match`` and record the dataset (path, name, digest, rows) in their metadata.

Every argument is checked before any training (:func:`check_build`); a failed build keeps what
it made under ``OUT/.failed-<time>/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from edgecloud.modelkit.arithmetic.build import (
    PackagedStudent,
    _load_teacher,
    _next_version,
    _teacher_bundle,
    keep_failed_staging,
    package_student,
    swap_into_place,
)
from edgecloud.modelkit.arithmetic.evaluate import REFERENCE_DIR, STUDENT_DIR, TEACHER_DIR
from edgecloud.modelkit.arithmetic.student import cached_teacher_labels
from edgecloud.modelkit.arithmetic.teacher import QUICK_STUDENT, QUICK_TEACHER
from edgecloud.modelkit.data.checks import CheckCase, CheckLimits, DataChecks
from edgecloud.modelkit.data.datasets import SPLITS, Dataset, Row, read_dataset
from edgecloud.modelkit.data.student import DataStudentRecipe, prompt_template_for, student_targets, train_data_student
from edgecloud.modelkit.data.teacher import DataTeacherRecipe, teacher_answers, train_data_teacher
from edgecloud.modelkit.tokenizer import IM_END, build_data_tokenizers
from edgecloud.modelkit.training import TrainConfig
from edgecloud.shared.base.errors import ConfigError, InvalidInputError
from edgecloud.shared.bundles.answers import answers_match
from edgecloud.shared.bundles.manifest import GoldenCase, Manifest
from edgecloud.shared.reasoner.thinking import THINK_END, THINK_START

__all__ = ["DataBuildConfig", "build_from_data", "check_build", "dataset_record", "quick_data_recipes"]

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")


@dataclass(frozen=True, kw_only=True)
class DataBuildConfig:
    data: Path
    """The dataset folder."""
    out: Path
    name: str
    """Bundle name prefix: the bundles are ``{name}-teacher`` and ``{name}-student``."""
    teacher_dir: Path | None = None
    """A Hugging Face thinking model to use as the teacher (copied into the cloud bundle); None: train one."""
    student_dir: Path | None = None
    """A Hugging Face Qwen3 model to fine-tune as the student; None: a fresh one of ``student.model``."""
    quick: bool = False
    """Tiny, low-accuracy models in a minute or two, for tests."""
    seed: int = 0
    version: int | None = None
    threads: int = 2
    target_precision: float = 0.995
    calibration_confidence: float | None = 0.95
    int8_max_accuracy_drop: float = 0.05
    """Fail the build if int8 is this much less accurate than fp32 on the validation rows checked."""
    int8_check_n: int = 500
    label_cache: Path | None = None
    """Default ``out/.cache``."""
    label_batch_size: int = 128
    label_max_new_tokens: int | None = None
    """Tokens the teacher may write per label; default: 1.5x its longest training target (a trained
    teacher), 1024 (``teacher_dir``)."""
    lowercase: bool | None = None
    """Fold case in the tokenizers built here; None: when no answer has an upper-case letter."""
    max_words: int = 256
    """Frequent words of the data that get a token of their own (0: characters only)."""
    max_symbol_runs: int = 64
    """Frequent runs of symbols (``":"`` in JSON) that get a token of their own."""
    teacher: DataTeacherRecipe = field(default_factory=DataTeacherRecipe)
    student: DataStudentRecipe = field(default_factory=DataStudentRecipe)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ConfigError(
                f"--name must match [a-z0-9][a-z0-9._-]* (it prefixes the bundle names), got {self.name!r}"
            )
        if self.version is not None and self.version < 1:
            raise ConfigError(f"version must be >= 1, got {self.version}")
        if not 0.5 <= self.target_precision <= 1:
            raise ConfigError(f"target_precision must be in [0.5, 1], got {self.target_precision}")
        if self.calibration_confidence is not None and not 0.5 <= self.calibration_confidence < 1:
            raise ConfigError(f"calibration_confidence must be in [0.5, 1) or None, got {self.calibration_confidence}")
        if self.threads < 1 or self.int8_check_n < 1 or self.label_batch_size < 1:
            raise ConfigError("threads, int8_check_n and label_batch_size must be >= 1")
        if self.label_max_new_tokens is not None and self.label_max_new_tokens < 1:
            raise ConfigError(f"label_max_new_tokens must be >= 1, got {self.label_max_new_tokens}")


def quick_data_recipes(config: DataBuildConfig) -> DataBuildConfig:
    """The same pipeline on tiny models and few steps."""
    return replace(
        config,
        int8_max_accuracy_drop=1.0,
        int8_check_n=min(config.int8_check_n, 100),
        label_max_new_tokens=config.label_max_new_tokens or 64,
        teacher=replace(
            config.teacher,
            model=QUICK_TEACHER,
            train=TrainConfig(steps=40, batch_size=16, lr=3e-3, warmup=5),
            eval_every=0,
        ),
        student=replace(
            config.student,
            model=QUICK_STUDENT if config.student_dir is None else config.student.model,
            train=TrainConfig(steps=40, batch_size=32, lr=3e-3, warmup=5),
            eval_every=0,
        ),
    )


def _check_teacher_dir(path: Path) -> None:
    """ConfigError unless ``path`` is a Hugging Face thinking model: the cloud's own requirements."""
    if not (path / "config.json").is_file():
        raise ConfigError(f"--teacher {path}: not a Hugging Face model folder (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--teacher {path}: its tokenizer does not load: {_first_line(exc)}") from None
    for token in (THINK_START, THINK_END):
        if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
            raise ConfigError(f"--teacher {path}: the tokenizer has no {token} token; a thinking model is required")
    if not tokenizer.chat_template:
        raise ConfigError(f"--teacher {path}: the tokenizer has no chat template")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def _check_student_dir(path: Path) -> None:
    """ConfigError unless ``path`` is a Qwen3 causal LM with a fast tokenizer and an end token."""
    if not (path / "config.json").is_file():
        raise ConfigError(f"--student {path}: not a Hugging Face model folder (no config.json)")
    try:
        model_type = AutoConfig.from_pretrained(str(path)).model_type
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--student {path}: does not load: {_first_line(exc)}") from None
    if model_type != "qwen3":
        raise ConfigError(f"--student {path}: a Qwen3 model is required (the ONNX export's), got {model_type!r}")
    if not tokenizer.is_fast or tokenizer.eos_token is None:
        raise ConfigError(f"--student {path}: the tokenizer must be a fast one (tokenizer.json) with an end token")


def check_build(config: DataBuildConfig) -> Dataset:
    """The dataset, once every argument is checked; ConfigError / InvalidInputError before any training."""
    if config.out.exists() and not config.out.is_dir():
        raise ConfigError(f"--out {config.out}: exists and is not a folder")
    dataset = read_dataset(config.data)
    for split in ("train", "validation"):
        if not any(row.query is not None for row in dataset.split(split)):
            raise InvalidInputError(f"{config.data}: {split}.jsonl has no row with a query (the student reads queries)")
    if config.teacher_dir is None and not any(row.answer.strip() for row in dataset.train):
        raise InvalidInputError(f"{config.data}: no training row has an answer to train a teacher on")
    if config.teacher_dir is not None:
        _check_teacher_dir(config.teacher_dir)
    if config.student_dir is not None:
        _check_student_dir(config.student_dir)
    return dataset


def dataset_record(dataset: Dataset) -> dict[str, object]:
    """What a bundle records of the data it was built from, for ``models improve`` to replay it."""
    digest = hashlib.sha256()
    for split in SPLITS:
        digest.update(
            f"{split}.jsonl {hashlib.sha256((dataset.path / f'{split}.jsonl').read_bytes()).hexdigest()}\n".encode()
        )
    return {
        "path": str(dataset.path.resolve()),
        "name": dataset.name,
        "answer_match": dataset.answer_match,
        "sha256": digest.hexdigest(),
        "rows": {split: len(dataset.split(split)) for split in SPLITS},
    }


def _texts(rows: Sequence[Row]) -> list[str]:
    out = []
    for row in rows:
        out += [m.content for m in row.messages] if row.messages else [row.prompt_text]
        out += [row.answer, row.reasoning or ""]
    return out


def _tokenizers(dataset: Dataset, config: DataBuildConfig):
    """``(teacher tokenizer, student tokenizer, lowercase)`` built from the data's characters and words."""
    every = [row for split in SPLITS for row in dataset.split(split)]
    lowercase = config.lowercase
    if lowercase is None:
        lowercase = all(row.answer == row.answer.lower() for row in every)
    teacher_tok, student_tok = build_data_tokenizers(
        _texts(every),
        lowercase=lowercase,
        word_texts=_texts(dataset.train),
        max_words=config.max_words,
        max_symbol_runs=config.max_symbol_runs,
    )
    log.info("tokenizers: %d tokens, case %s", len(teacher_tok), "folded" if lowercase else "kept")
    return teacher_tok, student_tok, lowercase


def _longest_target(tokenizer, rows: Sequence[Row]) -> int:
    targets = [f"{THINK_START}\n{row.reasoning or ''}\n{THINK_END}\n\n{row.answer}{IM_END}" for row in rows]
    return max(len(ids) for ids in tokenizer(targets, add_special_tokens=False)["input_ids"])


def _obtain_teacher(config: DataBuildConfig, dataset: Dataset, tokenizer, teacher_dir: Path):
    """The teacher, its tokenizer, its manifest metadata and how long its labels may be."""
    started = time.monotonic()
    if config.teacher_dir is not None:
        log.info("using the teacher in %s", config.teacher_dir)
        teacher, tokenizer, meta = _load_teacher(config.teacher_dir, teacher_dir)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return teacher, tokenizer, meta, config.label_max_new_tokens or 1024
    rule = dataset.answer_match
    check_rows = [r for r in dataset.validation if r.answer.strip()][:100]
    max_new = config.label_max_new_tokens or min(2048, _longest_target(tokenizer, dataset.train) * 3 // 2 + 16)

    def on_eval(model):
        def check(_step: int) -> dict[str, float]:
            gens = teacher_answers(model, tokenizer, check_rows, max_new_tokens=max_new)
            right = [answers_match(rule, g.answer_text, r.answer) for g, r in zip(gens, check_rows, strict=True)]
            return {"val_accuracy": float(np.mean(right))}

        return check

    log.info("training the teacher (%d steps)", config.teacher.train.steps)
    teacher, history = train_data_teacher(
        tokenizer, dataset.train, config.teacher, teacher_dir, seed=config.seed, on_eval=on_eval
    )
    meta = {
        "recipe": json.loads(json.dumps(asdict(config.teacher))),
        "train_seconds": time.monotonic() - started,
        "train_final": history[-1] if history else {},
    }
    return teacher, tokenizer, meta, max_new


def _labels(config: DataBuildConfig, teacher, tokenizer, queries: Sequence[str], max_new: int) -> list[str]:
    if not queries:
        return []
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    labelled = cached_teacher_labels(
        teacher,
        tokenizer,
        list(queries),
        cache_dir=config.label_cache or config.out / ".cache",
        batch_size=config.label_batch_size,
        max_new_tokens=max_new,
    )
    return [answer for answer, _ in labelled]


def _obtain_student(config: DataBuildConfig, student_tok, queries, targets, check_rows, rule):
    """The trained student, its tokenizer and recipe (``max_new_tokens`` settled), and its history."""
    model = None
    if config.student_dir is not None:
        log.info("fine-tuning the student in %s", config.student_dir)
        student_tok = AutoTokenizer.from_pretrained(str(config.student_dir))
        if student_tok.pad_token is None:
            student_tok.pad_token = student_tok.eos_token
        model = AutoModelForCausalLM.from_pretrained(str(config.student_dir), dtype=torch.float32)
    recipe = replace(
        config.student, prompt_template=prompt_template_for(student_tok, built_here=config.student_dir is None)
    )
    log.info("training the student (%d steps)", recipe.train.steps)
    student, recipe, history = train_data_student(
        model, student_tok, recipe, queries, targets, seed=config.seed, rule=rule, check_rows=check_rows
    )
    return student, student_tok, recipe, history


def _teacher_golden(teacher, tokenizer, rows: Sequence[Row], expected, rule: str, max_new: int) -> list[GoldenCase]:
    """Validation rows the teacher answers right, thinking (the first ones, when none)."""
    gens = teacher_answers(teacher, tokenizer, rows[:12], max_new_tokens=max_new)
    pairs = list(zip(rows, gens, expected, strict=False))
    chosen = [(r, g) for r, g, want in pairs if answers_match(rule, g.answer_text, want)] or [
        (r, g) for r, g, _ in pairs
    ]
    return [GoldenCase(query=r.prompt_text, expected=g.answer_text) for r, g in chosen[:4]]


def _expected(config, teacher, tokenizer, rows: Sequence[Row], max_new: int) -> list[str]:
    """Each row's answer; the teacher's for a row without one."""
    unlabelled = [row.prompt_text for row in rows if not row.answer.strip()]
    labels = dict(zip(unlabelled, _labels(config, teacher, tokenizer, unlabelled, max_new), strict=True))
    return [row.answer if row.answer.strip() else labels[row.prompt_text] for row in rows]


def _checks(config: DataBuildConfig, validation: list[Row], expected: list[str], rule: str) -> DataChecks:
    """The student's checks: the validation queries with the teacher's answers, within the config's limits."""
    return DataChecks(
        [CheckCase(row.prompt_text, want, row.group) for row, want in zip(validation, expected, strict=True)],
        rule,
        CheckLimits(
            target_precision=config.target_precision,
            calibration_confidence=config.calibration_confidence,
            int8_max_accuracy_drop=config.int8_max_accuracy_drop,
            int8_check_n=config.int8_check_n,
        ),
    )


def _summary(cloud: Manifest, packaged: PackagedStudent, data: dict[str, object]) -> dict[str, object]:
    """What a build reports: both bundles, the labels, the int8 check and the calibration."""
    return {
        "teacher": {"name": cloud.name, "params": cloud.metadata["params"]},
        "student": {"name": packaged.manifest.name, "params": packaged.manifest.metadata["params"]},
        "labels": packaged.manifest.metadata["labels"],
        "int8_check": packaged.int8_check,
        "calibration": packaged.calibration.to_dict(),
        "dataset": data,
    }


def _build(config: DataBuildConfig, dataset: Dataset, staging: Path, version: int) -> dict[str, object]:
    rule = dataset.answer_match
    teacher_tok, student_tok, lowercase = _tokenizers(dataset, config)
    teacher, teacher_tok, teacher_meta, max_new = _obtain_teacher(config, dataset, teacher_tok, staging / TEACHER_DIR)
    rows = [row for row in dataset.train if row.query is not None]
    labels = _labels(config, teacher, teacher_tok, [row.query for row in rows], max_new)
    targets = student_targets(rows, labels, rule)
    label_right = float(np.mean([t != "" for t, r in zip(targets, rows, strict=True) if r.answer.strip()] or [0.0]))
    log.info("labels: the teacher is right on %.1f%% of %d training queries", 100 * label_right, len(rows))
    validation = [row for row in dataset.validation if row.query is not None]
    expected = _expected(config, teacher, teacher_tok, validation, max_new)
    check_rows = [r for r in validation if r.answer.strip()][:200]
    student, student_tok, recipe, history = _obtain_student(
        config, student_tok, [row.query for row in rows], targets, check_rows, rule
    )
    data = dataset_record(dataset)
    shared_meta = {"dataset": data, "lowercase": lowercase}
    checks = _checks(config, validation, expected, rule)
    packaged = package_student(
        student,
        student_tok,
        recipe,
        config,
        bundle_dir=staging / STUDENT_DIR,
        reference_dir=staging / REFERENCE_DIR,
        version=version,
        metadata={
            **shared_meta,
            "distilled_from": {"name": f"{config.name}-teacher", "version": version},
            "train_final": history[-1] if history else {},
            "labels": {"n": len(rows), "teacher_right": label_right, "abstain": targets.count("")},
            **({"fine_tuned_from": str(config.student_dir)} if config.student_dir else {}),
        },
        name=f"{config.name}-student",
        checks=checks.student_checks(),
        io_extra={"answer_match": rule, "conversations": False},
    )
    cloud = _teacher_bundle(
        teacher,
        teacher_tok,
        config,
        folder=staging / TEACHER_DIR,
        version=version,
        feature_dim=int(student.config.hidden_size),
        metadata={**teacher_meta, **shared_meta},
        name=f"{config.name}-teacher",
        golden=_teacher_golden(teacher, teacher_tok, validation, expected, rule, max_new),
        io_extra={"answer_match": rule, "architecture": type(teacher).__name__},
    )
    return _summary(cloud, packaged, data)


def build_from_data(config: DataBuildConfig) -> dict[str, object]:
    """Run the whole pipeline on ``config.data``; returns a summary (also stored in the manifests)."""
    dataset = check_build(config)
    if config.quick:
        config = quick_data_recipes(config)
    started = time.monotonic()
    torch.set_num_threads(config.threads)
    log.info(
        "building %s from %s (%s): %s rows, answers match by %s",
        config.name,
        dataset.path,
        dataset.name,
        {split: len(dataset.split(split)) for split in SPLITS},
        dataset.answer_match,
    )
    config.out.mkdir(parents=True, exist_ok=True)
    version = config.version or _next_version(config.out)
    staging = config.out / f".staging-{int(time.time())}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        summary = _build(config, dataset, staging, version)
        swap_into_place(staging, config.out, (TEACHER_DIR, STUDENT_DIR, REFERENCE_DIR))
    except BaseException:
        keep_failed_staging(staging, config.out)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    summary = {"version": version, "seconds": time.monotonic() - started, **summary}
    log.info("build done in %.0f s", summary["seconds"])
    return summary
