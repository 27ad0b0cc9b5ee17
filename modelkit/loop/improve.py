"""``edgecloud models improve``: the next edge student, trained on what the cloud answered.

Every escalated query comes back with the thinking model's answer (and its reasoning): the best
training data the edge can get. This reads the cloud's escalation logs
(:mod:`edgecloud.shared.escalations.records`), keeps the records worth learning from, fine-tunes the
base student on them with replay of what the base already answers (so it forgets nothing), and
packages the result as ``models build`` does (ONNX export, int8, int8-vs-fp32 check,
calibration, golden cases). A gate (:mod:`edgecloud.modelkit.loop.gate`) compares the new student with
the base on a fixed validation set; a student worse than its base is never written.

Records kept: completed sessions from the same student (by bundle name), with an answer, not cut
at the answer's token limit, de-duplicated by the query as the student reads it (its tokenizer's
normaliser), the latest record winning. An answer whose thinking was cut by the budget is left
out, or down-weighted with ``budget_cut_weight``. A shadow check the cloud contradicted is drawn
``field_weight`` times as often; one it confirmed is left out (:mod:`.training_set`).

With ``learn_reasoning`` (the default when the records carry reasoning), the student learns the
cloud's reasoning as a scratchpad: it writes ``<think>`` reasoning ``</think>`` answer, and the
edge runtime reads only the answer. A student answering multi-step queries directly learns them
slowly; one that reasons briefly learns them far faster (issue 13), for a few milliseconds more
on the queries it reasons on.

Two ways to build the student (``student``): ``fine-tune`` starts from the base's fp32 weights
and ships alone; ``fresh`` trains a new, somewhat larger reasoner (:data:`FRESH_REASONER`) from
scratch, with the base's tokenizer and prompt, and ships it as a pair with the base
(:mod:`edgecloud.modelkit.loop.pair`): the base answers first, the reasoner takes what the base is
unsure of. A small student trained to answer directly does not learn to follow a scratchpad by
fine-tuning, and a fresh one learns it in under a thousand steps (docs/models.md), so ``auto``
(the default) trains a fresh reasoner when it learns the reasoning. Alone, a fresh reasoner
answers simple queries worse than the base (they are rare among escalations); after the base it
need not answer them at all. It replays nothing by default (it has nothing to forget).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from tokenizers import Tokenizer

from edgecloud.edge.runtime import EdgeModel, load_edge_model
from edgecloud.edge.seams import AnswerModel
from edgecloud.modelkit.arithmetic.build import (
    BuildConfig,
    PackagedStudent,
    StudentChecks,
    load_reference_student,
    package_student,
    swap_into_place,
)
from edgecloud.modelkit.arithmetic.evaluate import REFERENCE_DIR, STUDENT_DIR
from edgecloud.modelkit.arithmetic.student import StudentRecipe, fit_feature_transform
from edgecloud.modelkit.arithmetic.teacher import ModelSpec, build_model
from edgecloud.modelkit.data.student import DataStudentRecipe
from edgecloud.modelkit.loop.base_task import ArithmeticTask, BaseTask, answer_rule, base_task
from edgecloud.modelkit.loop.evidence import hold_out, split_evidence
from edgecloud.modelkit.loop.gate import GateCase, GateConfig, GateResult, evaluate_gate
from edgecloud.modelkit.loop.improve_training import EscalationBatches, parts_loss, progress_check, replay_examples
from edgecloud.modelkit.loop.pair import REASONER_DIR, package_pair
from edgecloud.modelkit.loop.training_set import TrainingSet, collect_training_set
from edgecloud.modelkit.training import TrainConfig, grow_layers, train
from edgecloud.shared.base.errors import ConfigError, EdgecloudError
from edgecloud.shared.bundles.answers import answers_match
from edgecloud.shared.bundles.manifest import Manifest, verify_bundle
from edgecloud.shared.bundles.signing import expiry_in_days, load_private_key, sign_bundle
from edgecloud.shared.reasoner.thinking import THINK_END, THINK_START

__all__ = [
    "FRESH_REASONER",
    "GateFailedError",
    "ImproveConfig",
    "TrainingSet",
    "collect_training_set",
    "improve_student",
]

log = logging.getLogger(__name__)

FRESH_REASONER = ModelSpec(
    hidden_size=160,
    intermediate_size=480,
    num_hidden_layers=4,
    num_attention_heads=5,
    num_key_value_heads=5,
    max_position_embeddings=256,
)
"""The fresh student's shape: 1.34M parameters, which learnt the cloud's scratchpad to 100% on
k=1..3 in 1500 steps (``benchmarks/probes/probe_fresh_reasoner.py``, docs/models.md)."""

STUDENT_MODES = ("auto", "fine-tune", "fresh")


@dataclass(frozen=True)
class _Schedule:
    steps: int
    batch_size: int
    lr: float
    max_new_tokens: int
    replay_share: float
    eval_every: int


# What each way of building the student trains with unless told otherwise. A fresh reasoner needs
# a higher rate and room for k=4's scratchpad (~116 tokens). It replays nothing: it has nothing to
# forget, and the base's direct answers, a few tokens beside scratchpads of a hundred, barely move
# it (measured on 12,320 escalations, docs/models.md: with a third of each batch replayed, k=1
# 76.7% after 1000 steps; without, 38.6% after 900; k=2..4 94-100% either way). Simple queries are
# the base's: in the pair the reasoner sees only what the base hands off. 700 steps keep a turn on
# 20,000 records within 20 minutes on 2 cores (~1.1 s a step); no progress checks for the same reason.
_DEFAULTS = {
    "fine-tune": _Schedule(steps=2000, batch_size=128, lr=1e-3, max_new_tokens=100, replay_share=0.5, eval_every=250),
    "fresh": _Schedule(steps=700, batch_size=64, lr=2e-3, max_new_tokens=130, replay_share=0.0, eval_every=0),
}


class GateFailedError(EdgecloudError):
    """The new student is worse than its base; no bundle was written."""

    code = "gate_failed"

    def __init__(self, result: GateResult) -> None:
        super().__init__("the new student regressed: " + "; ".join(result.regressions))
        self.result = result


@dataclass(frozen=True, kw_only=True)
class ImproveConfig:
    logs: tuple[Path, ...]
    """Escalation logs (JSONL) of the cloud, read in order."""
    bundle: Path
    """The base edge bundle: the student that escalated."""
    out: Path
    """Folder that receives ``edge-student/`` and ``student-reference/``."""
    reference: Path | None = None
    """The base's fp32 PyTorch student; default: ``student-reference`` beside ``bundle``."""
    version: int | None = None
    """Default: the base's version + 1."""
    learn_reasoning: bool | None = None
    """Learn the cloud's reasoning as a scratchpad; None: when most kept records carry it."""
    budget_cut_weight: float = 0.0
    """Sampling weight of answers whose thinking the budget cut (0: left out)."""
    field_weight: float = 2.0
    """Sampling weight of shadow checks the cloud contradicted (kept edge answers that were wrong)."""
    student: str = "auto"
    """``fine-tune`` the base, train a ``fresh`` :data:`FRESH_REASONER`, or ``auto``: fresh when
    learning the reasoning."""
    fresh_model: ModelSpec = FRESH_REASONER
    replay_share: float | None = None
    """Share of each batch drawn from the base's own answers (default: 0.5 fine-tuning, 0 fresh)."""
    replay_n: int = 20000
    """Queries the base answers for replay (its confident answers are kept)."""
    steps: int | None = None
    """Training steps (default: 2000 fine-tuning, 700 fresh)."""
    batch_size: int | None = None
    """Rows per step (default: 128 fine-tuning, 64 fresh)."""
    lr: float | None = None
    """Peak learning rate (default: 1e-3 fine-tuning, 2e-3 fresh)."""
    max_new_tokens: int | None = None
    """Tokens the improved student may generate, reasoning included: the edge's latency cap. An
    escalation whose reasoning and answer are longer is learnt as an abstention. Default: 100
    fine-tuning (the demo's k=2 scratchpad is ~70 tokens, k=3 ~93), 130 fresh (k=4 is ~116)."""
    gate: GateConfig = field(default_factory=GateConfig)
    key: Path | None = None
    """Sign the bundle with this Ed25519 private key (PEM)."""
    expires_in_days: float | None = None
    """With ``key``: a signed expiry this many days ahead, after which devices and the fleet
    manager refuse to install the bundle (default: none)."""
    seed: int = 0
    threads: int = 2
    calibration_n: int = 4000
    holdout_share: float = 0.2
    """Escalation records kept out of training: the gate measures the new student on them."""
    min_fresh_records: int = 2000
    """Fewer training records than this and a fresh reasoner is refused before training: it learns from
    scratch (the shipped one from 9,836; 1,500 steps of 12,400 in the probe)."""
    data: Path | None = None
    """The base's dataset folder, where its manifest's is not here (its validation split is evidence)."""
    eval_every: int | None = None
    """Steps between progress checks (exact answers per k on validation queries; 250 fine-tuning, none
    fresh); 0: none."""
    add_layers: int = 0
    """Decoder layers added to the base before fine-tuning (:func:`grow_layers`)."""
    refused_dir: Path | None = None
    """Where a student the gate refuses is kept, unsigned, for inspection (default: thrown away).
    Never ``out``: nothing refused may sit where releases are picked up."""

    def __post_init__(self) -> None:
        if not self.logs:
            raise ConfigError("at least one escalation log is needed")
        if not 0 <= self.budget_cut_weight <= 1 or not 0 < self.field_weight <= 100:
            raise ConfigError(f"budget_cut_weight must be in [0, 1] and field_weight in (0, 100], got "
                              f"{self.budget_cut_weight} and {self.field_weight}")  # fmt: skip
        if self.student not in STUDENT_MODES:
            raise ConfigError(f"student must be one of {', '.join(STUDENT_MODES)}, got {self.student!r}")
        if self.replay_share is not None and not 0 <= self.replay_share < 1:
            raise ConfigError(f"replay_share must be in [0, 1), got {self.replay_share}")
        if (self.steps is not None and self.steps < 1) or (self.batch_size is not None and self.batch_size < 1):
            raise ConfigError("steps and batch_size must be >= 1")
        if self.eval_every is not None and self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.replay_n < 0 or self.min_fresh_records < 0:
            raise ConfigError(
                f"replay_n and min_fresh_records must be >= 0, got {self.replay_n}, {self.min_fresh_records}"
            )
        if self.lr is not None and not 0 < self.lr < 1:
            raise ConfigError(f"lr must be in (0, 1), got {self.lr}")
        if self.refused_dir is not None and Path(self.refused_dir).resolve() == Path(self.out).resolve():
            raise ConfigError("refused_dir must not be out: a refused student must not sit where releases are")
        if not 0 <= self.add_layers <= 8:
            raise ConfigError(f"add_layers must be in 0..8, got {self.add_layers}")
        if self.add_layers and self.student == "fresh":
            raise ConfigError("add_layers grows the base; a fresh student takes its shape from fresh_model")
        if self.expires_in_days is not None and (self.key is None or not self.expires_in_days > 0):
            raise ConfigError(f"expires_in_days needs a key and must be > 0, got {self.expires_in_days}")
        if self.max_new_tokens is not None and not 1 <= self.max_new_tokens <= 256:
            raise ConfigError(f"max_new_tokens must be in 1..256, got {self.max_new_tokens}")
        if self.calibration_n < 100 or not 0 <= self.holdout_share < 1:  # refused before any training
            raise ConfigError(f"calibration_n must be >= 100 and holdout_share in [0, 1), got "
                              f"{self.calibration_n} and {self.holdout_share}")  # fmt: skip

    def mode(self, reasoning: bool) -> str:
        """How the student is built, once it is known whether the records' reasoning is learnt."""
        if self.student != "auto":
            return self.student
        return "fresh" if reasoning and self.add_layers == 0 else "fine-tune"

    def schedule(self, mode: str) -> _Schedule:
        """The training schedule: what was set, and the mode's defaults for the rest."""
        defaults = _DEFAULTS[mode]
        return _Schedule(
            steps=self.steps if self.steps is not None else defaults.steps,
            batch_size=self.batch_size if self.batch_size is not None else defaults.batch_size,
            lr=self.lr if self.lr is not None else defaults.lr,
            max_new_tokens=self.max_new_tokens if self.max_new_tokens is not None else defaults.max_new_tokens,
            replay_share=self.replay_share if self.replay_share is not None else defaults.replay_share,
            eval_every=self.eval_every if self.eval_every is not None else defaults.eval_every,
        )

    @property
    def reference_dir(self) -> Path:
        return self.reference if self.reference is not None else self.bundle.parent / REFERENCE_DIR


def _load_base(config: ImproveConfig) -> tuple[EdgeModel, Manifest]:
    manifest = verify_bundle(config.bundle)
    if manifest.kind != "edge":
        raise ConfigError(f"{config.bundle} is a {manifest.kind} bundle, not an edge bundle")
    if not (config.reference_dir / "config.json").is_file():
        raise ConfigError(
            f"{config.reference_dir}: no fp32 student here (config.json); pass --reference, the "
            "student-reference folder `models build` wrote with the bundle"
        )
    return EdgeModel.from_bundle(config.bundle, threads=config.threads), manifest


def _training_set(
    config: ImproveConfig, base: EdgeModel, manifest: Manifest, learn_reasoning: bool | None
) -> tuple[TrainingSet, list[GateCase]]:
    normalizer = Tokenizer.from_file(str(base.tokenizer_file)).normalizer
    normalize = normalizer.normalize_str if normalizer is not None else str
    training, held = hold_out(
        collect_training_set(
            config.logs,
            student_name=manifest.name,
            normalize=normalize,
            matches=partial(answers_match, answer_rule(manifest)),
            budget_cut_weight=config.budget_cut_weight,
            field_weight=config.field_weight,
            learn_reasoning=learn_reasoning,
        ),
        config.holdout_share,
        normalize,
    )
    for reason, where in training.read.examples.items():
        log.warning("skipped %d lines (%s), e.g. %s", training.read.skipped[reason], reason, where)
    log.info("training set: %s", training.summary())
    if not training.examples:
        raise ConfigError(f"nothing to learn from in {', '.join(map(str, config.logs))}: {training.summary()}")
    return training, held


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _student(config: ImproveConfig, mode: str, recipe: StudentRecipe):
    """The model to train and its tokenizer: the base's fp32 student (grown by ``add_layers``), or
    a fresh :attr:`ImproveConfig.fresh_model` with the base's tokenizer."""
    if mode == "fine-tune":
        student, tokenizer = load_reference_student(config.reference_dir, recipe, config.seed)
        return grow_layers(student, config.add_layers), tokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(config.reference_dir))
    student = build_model(config.fresh_model, tokenizer, config.seed)
    student.generation_config.eos_token_id = tokenizer.eos_token_id
    log.info("a fresh student: %.2fM parameters", _params(student) / 1e6)
    return student, tokenizer


def _fine_tune(
    config: ImproveConfig,
    base: EdgeModel,
    task: BaseTask,
    training: TrainingSet,
    recipe: StudentRecipe,
    mode: str,
    plan: _Schedule,
):
    """The student (:func:`_student`) trained on the escalations with replay; with its tokenizer,
    training history and the number of replay examples."""
    student, tokenizer = _student(config, mode, recipe)
    replay_n = config.replay_n if plan.replay_share > 0 else 0
    replay = replay_examples(base, task.replay_queries(replay_n, config.seed), abstentions=mode == "fine-tune")
    batches = EscalationBatches(
        tokenizer,
        base.prompt_template,
        training.examples,
        replay,
        batch_size=plan.batch_size,
        replay_share=plan.replay_share,
        seed=config.seed,
        max_target_tokens=plan.max_new_tokens,
    )
    if batches.too_long:
        log.info("%d escalations are over %d tokens: learnt as abstentions", batches.too_long, plan.max_new_tokens)
        training.abstentions = batches.too_long
    schedule = TrainConfig(
        steps=plan.steps,
        batch_size=plan.batch_size,
        lr=plan.lr,
        warmup=min(100, plan.steps // 10 + 1),
        weight_decay=0.01,
        threads=config.threads,
        seed=config.seed,
    )
    log.info(
        "training (%s, %d steps, %d escalations, %d replay)", mode, plan.steps, len(training.examples), len(replay)
    )
    check = progress_check(student, tokenizer, base.prompt_template, plan.max_new_tokens, task, config.seed)
    history = train(
        student,
        batches,
        schedule,
        loss_fn=parts_loss,
        desc=f"improve ({mode})",
        on_eval=check if plan.eval_every else None,
        eval_every=plan.eval_every,
    )
    student.config.use_cache = True
    # Training moved the final hidden states: measure their centre and axes again, as a build does.
    fit_feature_transform(
        student, tokenizer, base.prompt_template, config.seed, queries=task.feature_queries(2000, config.seed)
    )
    return student, tokenizer, history, len(replay)


def _keep_refused(staging: Path, refused_dir: Path) -> None:
    refused_dir.mkdir(parents=True, exist_ok=True)
    for name in (STUDENT_DIR, REFERENCE_DIR):
        shutil.rmtree(refused_dir / name, ignore_errors=True)
        shutil.move(str(staging / name), str(refused_dir / name))
    log.warning("the refused student is kept, unsigned, in %s", refused_dir)


def _served(config: ImproveConfig, base: EdgeModel, manifest: Manifest) -> AnswerModel:
    """What the base bundle serves, for the gate: its student, or its pair."""
    return load_edge_model(config.bundle, threads=config.threads) if REASONER_DIR in manifest.io else base


def _package(
    config: ImproveConfig,
    mode: str,
    base: tuple[EdgeModel, Manifest],
    trained: tuple,
    build: BuildConfig,
    staging: Path,
    version: int,
    metadata: dict[str, object],
    think: tuple[str, str] | None,
    checks: StudentChecks | None,
) -> tuple[PackagedStudent, AnswerModel]:
    """The trained student written to ``staging`` as the next bundle: on its own (fine-tuned), or
    as the reasoner of a pair with the base (fresh); with the model the gate scores."""
    if mode == "fresh":
        return package_pair(
            trained,
            build,
            base=(config.bundle, *base),
            reference_dir=config.reference_dir,
            staging=staging,
            version=version,
            think=think,
            metadata=metadata,
        )
    student, tokenizer, recipe = trained
    packaged = package_student(
        student,
        tokenizer,
        recipe,
        build,
        bundle_dir=staging / STUDENT_DIR,
        reference_dir=staging / REFERENCE_DIR,
        version=version,
        think=think,
        metadata=metadata,
        name=base[1].name,  # the next version of the same bundle
        io_extra={key: base[1].io[key] for key in ("answer_match", "conversations") if key in base[1].io},
        checks=checks,
    )
    return packaged, packaged.model


def _gate(
    config: ImproveConfig,
    mode: str,
    base: EdgeModel,
    manifest: Manifest,
    new: AnswerModel,
    cases: list[GateCase],
    rule: str,
) -> GateResult:
    """The gate's verdict on ``new`` against what the base bundle serves, on ``cases`` (held-out
    escalations and the base's validation data). A pair must also keep more than the base alone: a
    reasoner that takes over nothing only adds latency."""
    gate = evaluate_gate(_served(config, base, manifest), new, config.gate, cases, rule=rule)
    if mode == "fresh" and gate.new.kept_share <= gate.base.kept_share + config.gate.kept_tolerance:
        gate.regressions.append(
            f"the pair keeps {gate.new.kept_share:.2%} of queries, the base alone {gate.base.kept_share:.2%}:"
            " its reasoner takes over nothing and would only add latency"
        )
    return gate


def _learn_reasoning(config: ImproveConfig, task: BaseTask, base: EdgeModel) -> bool | None:
    """Whether the student learns the cloud's reasoning: as asked; by default, for the built-in task,
    when most records carry it (its students reason); for a dataset's student, which answers
    directly, no. Refused when the student's tokenizer has no reasoning block to write it in."""
    if config.learn_reasoning is None:
        return None if task.pairs else False
    if config.learn_reasoning:
        vocab = Tokenizer.from_file(str(base.tokenizer_file))
        if vocab.token_to_id(THINK_START) is None or vocab.token_to_id(THINK_END) is None:
            raise ConfigError(
                f"--learn-reasoning: the base's tokenizer has no {THINK_START} / {THINK_END} tokens to reason between"
            )
    return config.learn_reasoning


def _mode(config: ImproveConfig, task: BaseTask, reasoning: bool) -> str:
    if task.pairs:
        return config.mode(reasoning)
    if config.student == "fresh":
        raise ConfigError(
            "--student fresh (a reasoner paired with the base) is built for the built-in arithmetic task only; "
            f"{task.describe()} takes --student fine-tune"
        )
    return "fine-tune"


def _recipe(task: BaseTask, base: EdgeModel, manifest: Manifest, mode: str, plan: _Schedule, config: ImproveConfig):
    """The recipe the bundle records: the base's prompt and the turn's answer length and schedule."""
    if isinstance(task, ArithmeticTask):
        recipe = replace(
            StudentRecipe(),
            mix=task.mix,
            prompt_template=base.prompt_template,
            max_new_tokens=plan.max_new_tokens,
            abstain_k=(),
        )
        return replace(recipe, model=config.fresh_model) if mode == "fresh" else recipe
    return replace(
        DataStudentRecipe(),
        prompt_template=base.prompt_template,
        max_new_tokens=plan.max_new_tokens,
        train=TrainConfig(steps=plan.steps, batch_size=plan.batch_size, lr=plan.lr),
        eval_every=plan.eval_every,
    )


def _prepare(
    config: ImproveConfig, base: EdgeModel, manifest: Manifest
) -> tuple[BaseTask, TrainingSet, str, tuple[list[GateCase], list[GateCase]]]:
    """The base's task, the training set, how the student is built, and the evidence (what triage is
    calibrated on, what the gate measures). Refuses bad input before any training (ConfigError, exit 2)."""
    task = base_task(manifest, config.data)
    log.info("the base's task: %s", task.describe())
    training, held = _training_set(config, base, manifest, _learn_reasoning(config, task, base))
    mode = _mode(config, task, training.reasoning)
    if mode == "fine-tune" and REASONER_DIR in manifest.io:
        raise ConfigError(
            f"{config.bundle} is a pair (a base and its reasoner): fine-tuning the base alone would drop the "
            "reasoner; --student fresh trains a new reasoner beside the same base"
        )
    if mode == "fresh" and len(training.examples) < config.min_fresh_records:
        raise ConfigError(
            f"{len(training.examples)} escalation records to train on: a fresh reasoner learns from "
            f"scratch and needs at least {config.min_fresh_records} (--min-fresh-records)"
        )
    cases = held + task.validation_cases(config.gate.n, config.seed)
    calibrate_on, gate_on = split_evidence(cases) if task.calibrates_on_evidence else ([], cases)
    if len(gate_on) < config.gate.min_cases:
        raise ConfigError(
            f"no evidence to gate on: {len(gate_on)} cases ({len(held)} held-out escalations and the base's "
            f"validation data), the gate needs {config.gate.min_cases}"
        )
    return task, training, mode, (calibrate_on, gate_on)


def _metadata(
    base_manifest: Manifest, mode: str, plan: _Schedule, training: TrainingSet, history: list[dict[str, float]]
) -> dict[str, object]:
    """The new bundle's manifest metadata: what it improved on, and how."""
    return {
        "improved_from": {"name": base_manifest.name, "version": base_manifest.version},
        "student": mode,
        "schedule": asdict(plan),
        "training_set": training.summary(),
        "train_final": history[-1] if history else {},
    }


def _publish(config: ImproveConfig, staging: Path, gate: GateResult, expires_at: str | None) -> None:
    """A student the gate passed: signed (with a key) and swapped into ``config.out``; GateFailedError
    otherwise (kept in ``config.refused_dir``, if one is set)."""
    log.info("gate: %s", gate.summary())
    if not gate.passed:
        if config.refused_dir is not None:
            _keep_refused(staging, config.refused_dir)
        raise GateFailedError(gate)
    if config.key is not None:
        sign_bundle(staging / STUDENT_DIR, load_private_key(config.key), expires_at=expires_at)
    swap_into_place(staging, config.out, (STUDENT_DIR, REFERENCE_DIR))


def improve_student(config: ImproveConfig) -> dict[str, object]:
    """Build, gate and (if it passes) write the next edge student; returns a summary.

    GateFailedError when the new student is worse than the base (nothing is written);
    ConfigError when the inputs are missing or there is nothing to learn from."""
    started = time.monotonic()
    torch.set_num_threads(config.threads)
    base, base_manifest = _load_base(config)
    version = config.version or base_manifest.version + 1
    task, training, mode, (calibrate_on, gate_on) = _prepare(config, base, base_manifest)
    plan = config.schedule(mode)
    if task.calibrates_on_evidence and config.max_new_tokens is None:
        plan = replace(plan, max_new_tokens=base.max_new_tokens)  # the base's own answer length
    recipe = _recipe(task, base, base_manifest, mode, plan, config)
    student, tokenizer, history, replayed = _fine_tune(config, base, task, training, recipe, mode, plan)

    config.out.mkdir(parents=True, exist_ok=True)
    staging = config.out / f".staging-improve-{int(time.time())}"
    shutil.rmtree(staging, ignore_errors=True)
    build = BuildConfig(out=config.out, seed=config.seed, threads=config.threads, calibration_n=config.calibration_n)
    checks = task.student_checks(build, calibrate_on)
    metadata = _metadata(base_manifest, mode, plan, training, history)
    think = (THINK_START, THINK_END) if training.reasoning else None
    expires_at = None if config.expires_in_days is None else expiry_in_days(config.expires_in_days)
    try:
        packaged, new_model = _package(
            config,
            mode,
            (base, base_manifest),
            (student, tokenizer, recipe),
            build,
            staging,
            version,
            metadata,
            think,
            checks,
        )
        gate = _gate(config, mode, base, base_manifest, new_model, gate_on, task.rule)
        _publish(config, staging, gate, expires_at)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary = {
        "version": version,
        "base": {"name": base_manifest.name, "version": base_manifest.version},
        "bundle": str(config.out / STUDENT_DIR),
        "signed": config.key is not None,
        "expires_at": expires_at,
        "seconds": time.monotonic() - started,
        **training.summary(),
        "replay_examples": replayed,
        "student": mode,
        "pair": mode == "fresh",
        "schedule": asdict(plan),
        "parameters": _params(student),
        "gate": gate.summary(),
        "int8_check": packaged.int8_check,
        "calibration": packaged.calibration.to_dict(),
    }
    log.info("improve done in %.0f s", summary["seconds"])
    return summary
