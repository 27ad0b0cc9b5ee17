"""The student: a small Qwen3 distilled from the teacher, answering without thinking.

Sequence-level distillation (Kim & Rush, 2016): the teacher answers a pool of
training queries once, thinking first as it does in the cloud, and the
student learns to say directly what the teacher worked out (cross-entropy on
the teacher's answer tokens). The teacher's answer distribution after its
reasoning is near one-hot, so its logits would add almost nothing to its
answer text, and labelling once costs far less than running the teacher next
to every training step.

The student reads its own prompt, not a chat: the normalised query and ``=``
(``recipe.prompt_template``); its tokenizer's normaliser strips case, spaces,
lead-in words and question marks (:func:`build_student_tokenizer`), so short
inputs carry only the expression. Most of its training queries are simple
(k=1), its job, labelled by the teacher; the multi-step ones, which it cannot
follow without thinking, it learns to abstain on (``recipe.abstain_k``: the
empty answer). The runtime reads an empty answer as "no answer", and the
token probabilities of the answers it does give are the confidence signal
triage calibrates.

Wrapped by :func:`with_features`, the student also returns ``features``: the
mean of its final hidden states over the tokens of the current call, minus a
centre and turned by a rotation, both measured once on training queries
(``config.feature_centre``, ``config.feature_rotation``). On the prompt, that
is the query's feature vector that escalations carry to the cloud. The
rotation is the principal axes of the centred features, largest variance
first (a Karhunen-Loeve transform): orthogonal, so lengths and cosines are
unchanged, but most components come out small, and small integers after
quantisation cost the entropy coder few bits. The cloud's decoder needs
nothing from the bundle that produced them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerFast, Qwen3ForCausalLM
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from edgecloud.modelkit.arithmetic.task import EVAL_MIX, Problem, Split, generate, normalize_query, parse_answer
from edgecloud.modelkit.arithmetic.teacher import ModelSpec, build_model, chat_prompt
from edgecloud.modelkit.decoding import Generation, generate_batch
from edgecloud.modelkit.training import TrainConfig, collate, train

__all__ = [
    "STUDENT_SHAPE",
    "LabelledQuery",
    "StudentOutput",
    "StudentRecipe",
    "cached_teacher_labels",
    "distill_student",
    "fit_feature_transform",
    "label_with_teacher",
    "select_labels",
    "student_prompt",
    "with_features",
]

log = logging.getLogger(__name__)


@dataclass
class StudentOutput(CausalLMOutputWithPast):
    features: torch.FloatTensor | None = None


def features_forward(
    self: Qwen3ForCausalLM,
    input_ids: torch.LongTensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.LongTensor | None = None,
    past_key_values: Cache | None = None,
    use_cache: bool | None = None,
    **kwargs,
) -> StudentOutput:
    """Qwen3's causal-LM forward that also returns the pooled final hidden state."""
    outputs = self.model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=past_key_values,
        use_cache=use_cache,
        **kwargs,
    )
    hidden = outputs.last_hidden_state
    logits = self.lm_head(hidden)
    if attention_mask is None:
        current = torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
    else:
        current = attention_mask[:, -hidden.shape[1] :].to(hidden.dtype)
    weights = current.unsqueeze(-1)
    features = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    centre, rotation = _feature_transform(self, features)
    if centre is not None:
        features = features - centre
    if rotation is not None:
        features = features @ rotation
    return StudentOutput(logits=logits, past_key_values=outputs.past_key_values, features=features)


def _feature_transform(model: Qwen3ForCausalLM, like: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The config's centre and rotation as tensors, converted once per model (not per call)."""
    key = (id(getattr(model.config, "feature_centre", None)), id(getattr(model.config, "feature_rotation", None)))
    cached = getattr(model, "_feature_transform_cache", None)
    if cached is None or cached[0] != key:
        tensors = tuple(
            None if value is None else torch.tensor(value, dtype=like.dtype, device=like.device)
            for value in (
                getattr(model.config, "feature_centre", None),
                getattr(model.config, "feature_rotation", None),
            )
        )
        cached = (key, tensors)
        model._feature_transform_cache = cached
    return cached[1]


def with_features(model: Qwen3ForCausalLM) -> Qwen3ForCausalLM:
    """Make ``model`` return ``features`` too.

    The forward is replaced on the instance, not by subclassing, so the model
    stays a plain transformers ``Qwen3ForCausalLM``: it saves and loads with
    ``AutoModelForCausalLM`` and optimum recognises it for export.
    """
    model.forward = types.MethodType(features_forward, model)
    return model


STUDENT_SHAPE = ModelSpec(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=128,
)
"""A fresh student's shape: the arithmetic and the data kits both start here."""


@dataclass(frozen=True, kw_only=True)
class StudentRecipe:
    model: ModelSpec = STUDENT_SHAPE
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=6500, batch_size=256, lr=2e-3, warmup=100, weight_decay=0.1)
    )
    mix: dict[int, float] = field(default_factory=lambda: {1: 0.88, 2: 0.04, 3: 0.04, 4: 0.04})
    """k distribution of training batches: mostly simple queries, the student's job; enough
    multi-step ones that it learns to abstain on them (``abstain_k``)."""
    label_queries: dict[int, int] = field(default_factory=lambda: {1: 40000, 2: 2000, 3: 2000, 4: 2000})
    """Training queries drawn per k for the teacher to answer (thinking), before de-duplication by
    normalised query. The k=1 space is small: 21,100 distinct expressions (100 starts x 211
    operator-operand pairs); 40000 draws give ~16,000 of them.

    Measured (seed 0, k=1 exact on 300 validation queries): with 3000 steps, 61% at step 1000,
    75% at 2000, 87% at 3000; with 5000 steps (the default), 66% at 1000, 86% at 3000,
    94% at 4000, 99% at 5000. 120,000 k=1 draws (20,740 distinct, 98% of the space; labels of the
    two-stage teacher, label_min_confidence 0.9) learned slower, not faster: 64% at 1000, 74% at
    2500, 91% at 4000, 94% at 5000, and triage kept 78% of k=1 (the v3 student: 87.5%). 7000 steps
    on the default pool (two-stage teacher's labels): 70% at 1000, 83% at 3000, 93% at 4500,
    99.7% at 6000 and 7000, 100% of 797 k=1 test queries; but it also learned the multi-step
    labels by heart (loss 0.018), grew sure of some wrong multi-step answers, and triage kept
    only 80% of k=1 test queries at 99.38% precision (below the 99.5% target), so it was not
    shipped: more steps need a larger multi-step pool (2000 per k is seen ~45 times). A variant
    with 9% multi-step rows, their loss weighted 0.3 per row, and 80000 k=1 draws learned slower
    still (26% at 1000, 57% at 2000)."""
    label_min_confidence: float = 0.0
    """Train only on teacher answers whose every token the teacher gave at least this probability
    (0: every answer). Measured on the two-stage (v4) teacher's labels of 120,000 k=1 and 2,000
    each of k=2..4 draws: at 0.9 it drops 35 of the 59 wrong k=4 labels and 4.3% of all k=4
    labels, 9 of 11 wrong k=3 ones; the k=1 labels are 99.98% right (4 wrong of 20,740, each
    given with probability >= 0.999), so no floor helps them. Off by default: its effect on the
    student is not measured apart from the larger pool's (see ``label_queries``)."""
    abstain_k: tuple[int, ...] = (2, 3, 4)
    """The k whose training queries the student learns to abstain on: its target there is the empty
    answer (the end-of-answer token alone), not the teacher's, so the teacher does not label them.
    The edge runtime reads an empty answer as "no answer" (confidence 0) and triage escalates it.
    A 0.6M-parameter student answering directly cannot follow multi-step queries, and trained on
    the teacher's answers to them it only learns some by heart and grows sure of wrong answers
    (see ``label_queries``); saying that it does not know is a rule it can learn (learning to
    defer). Empty: every query is trained on the teacher's answer, as before v5."""
    prompt_template: str = "{query}="
    """What the student reads; its tokenizer normalises the query inside it."""
    max_new_tokens: int = 10
    """Tokens the edge generates at most (end-of-answer included); k=1 answers need 5. A student
    that reasons (``models improve``) needs its reasoning too: ~75 for k=2, ~95 for k=3."""
    label_batch_size: int = 512
    eval_every: int = 500
    """Steps between progress checks (k=1 accuracy on validation queries); 0: none."""

    def __post_init__(self) -> None:
        if "{query}" not in self.prompt_template:
            raise ValueError("prompt_template must contain '{query}'")
        if set(self.label_queries) != set(self.mix):
            raise ValueError(f"label_queries must give a count for every k of mix {sorted(self.mix)}")
        if not set(self.abstain_k) < set(self.mix):
            raise ValueError(f"abstain_k {self.abstain_k} must be a proper subset of the mix's k {sorted(self.mix)}")
        if any(n < 1 for n in self.label_queries.values()):
            raise ValueError("label_queries counts must be >= 1")
        if not 0 <= self.label_min_confidence < 1:
            raise ValueError(f"label_min_confidence must be in [0, 1), got {self.label_min_confidence}")
        if not 1 <= self.max_new_tokens <= 256:
            raise ValueError(f"max_new_tokens must be in 1..256, got {self.max_new_tokens}")


def student_prompt(recipe_or_template: StudentRecipe | str, query: str) -> str:
    template = recipe_or_template if isinstance(recipe_or_template, str) else recipe_or_template.prompt_template
    return template.replace("{query}", query)  # not format: a template rendered from a chat template may hold braces


@dataclass(frozen=True, slots=True)
class LabelledQuery:
    """A training query and the answer the teacher gave after thinking."""

    problem: Problem
    answer: str
    confidence: float = 1.0
    """The teacher's lowest probability on one of its answer tokens."""


def _length_key(item: Problem | str) -> tuple[int, int]:
    return (item.k, len(item.expression)) if isinstance(item, Problem) else (0, len(item))


def label_with_teacher(
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    problems: Sequence[Problem] | Sequence[str],
    *,
    batch_size: int = 512,
    desc: str = "teacher labels",
    max_new_tokens: int = 200,
    on_batch: Callable[[list[int], list[Generation]], None] | None = None,
) -> list[Generation]:
    """The teacher's generation for each problem (or query text), thinking first (greedy, no budget).
    Batches hold queries of similar length (a problem's k, then its expression's length); ``on_batch``
    sees each batch's indices and generations as they come (to save progress)."""
    order = sorted(range(len(problems)), key=lambda i: _length_key(problems[i]))
    answers: list[Generation | None] = [None] * len(problems)
    with tqdm(total=len(problems), desc=desc, unit="q", dynamic_ncols=True, mininterval=2.0) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            queries = [problems[i] if isinstance(problems[i], str) else problems[i].query for i in chunk]
            prompts = [chat_prompt(tokenizer, query, enable_thinking=True) for query in queries]
            gens = generate_batch(teacher, tokenizer, prompts, max_new_tokens=max_new_tokens)
            for i, gen in zip(chunk, gens, strict=True):
                answers[i] = gen
            if on_batch is not None:
                on_batch(chunk, gens)
            bar.update(len(chunk))
    return answers  # type: ignore[return-value]  # every slot is filled


def _teacher_digest(teacher: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _cached_labels(
    teacher, teacher_tokenizer, problems: Sequence[Problem], recipe: StudentRecipe, cache_dir: Path | None
) -> list[tuple[str, float]]:
    """``(answer, confidence)`` per problem, through :func:`cached_teacher_labels`."""
    return cached_teacher_labels(
        teacher, teacher_tokenizer, problems, cache_dir=cache_dir, batch_size=recipe.label_batch_size
    )


def cached_teacher_labels(
    teacher,
    teacher_tokenizer,
    problems: Sequence[Problem] | Sequence[str],
    *,
    cache_dir: Path | None,
    batch_size: int = 512,
    max_new_tokens: int = 200,
) -> list[tuple[str, float]]:
    """``(answer, confidence)`` per problem (or query text); the teacher labels only the queries
    ``cache_dir`` does not hold.

    Labelling is the slow half of a student build (minutes), and recipes are
    tried many times on the same teacher. The cache is one JSON file per
    teacher (keyed by its weights) mapping each query to its label, so a pool
    that shares queries with an earlier one labels only the new ones.
    """
    cache_file = None
    cached: dict[str, list] = {}
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"teacher-labels-{_teacher_digest(teacher)[:24]}.json"
        try:
            loaded = json.loads(cache_file.read_text())
            if not isinstance(loaded, dict) or not all(
                isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], (int, float))
                for v in loaded.values()
            ):
                raise ValueError("not a mapping of query to [answer, confidence]")
            cached = loaded
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("student: ignoring unreadable label cache %s (%s)", cache_file, exc)
    queries = [p if isinstance(p, str) else p.query for p in problems]
    missing = [p for p in dict.fromkeys(problems) if (p if isinstance(p, str) else p.query) not in cached]
    log.info(
        "student: %d of %d labels from the cache, %d to label",
        len(problems) - len(missing),
        len(problems),
        len(missing),
    )
    if missing:
        saver = _LabelCacheSaver(cache_file, cached, missing)
        label_with_teacher(
            teacher,
            teacher_tokenizer,
            missing,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            on_batch=saver.add,
        )
        saver.save()
    return [(cached[q][0], float(cached[q][1])) for q in queries]


class _LabelCacheSaver:
    """Adds each labelled batch to the cache and writes it every ``every_s`` seconds and at the end, so
    a build stopped while labelling (an hour on a large dataset) loses at most that much work."""

    every_s = 60.0

    def __init__(self, cache_file: Path | None, cached: dict[str, list], pending: Sequence) -> None:
        self.cache_file, self.cached, self.pending = cache_file, cached, pending
        self.saved_at = time.monotonic()

    def add(self, indices: list[int], gens: list[Generation]) -> None:
        for i, gen in zip(indices, gens, strict=True):
            problem = self.pending[i]
            self.cached[problem if isinstance(problem, str) else problem.query] = [
                gen.answer_text,
                gen.answer_confidence,
            ]
        if time.monotonic() - self.saved_at >= self.every_s:
            self.save()

    def save(self) -> None:
        if self.cache_file is None:
            return
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.cache_file.with_suffix(".partial")
        partial.write_text(json.dumps(self.cached))
        partial.replace(self.cache_file)
        self.saved_at = time.monotonic()
        log.info("student: %d teacher labels cached in %s", len(self.cached), self.cache_file)


def _label_pool(
    teacher, teacher_tokenizer, recipe: StudentRecipe, seed: int, cache_dir: Path | None = None
) -> dict[int, list[LabelledQuery]]:
    """Draw, de-duplicate by normalised query, and label the training queries, per k."""
    chosen: dict[str, Problem] = {}
    for k, n in sorted(recipe.label_queries.items()):
        for problem in generate(n, seed * 100 + k, Split.TRAIN, {k: 1.0}):
            chosen.setdefault(normalize_query(problem.query), problem)
    problems = [p for p in chosen.values() if p.k not in recipe.abstain_k]
    abstain = [p for p in chosen.values() if p.k in recipe.abstain_k]
    log.info("student: %d distinct training queries to label, %d to abstain on", len(problems), len(abstain))
    labels = _cached_labels(teacher, teacher_tokenizer, problems, recipe, cache_dir)
    return select_labels(problems + abstain, labels + [("", 1.0)] * len(abstain), recipe)


def select_labels(
    problems: Sequence[Problem], labels: Sequence[tuple[str, float]], recipe: StudentRecipe
) -> dict[int, list[LabelledQuery]]:
    """The training pool per k: labels with an answer and at least ``recipe.label_min_confidence``;
    for the k of ``recipe.abstain_k``, every query (its label is the empty answer)."""
    pool: dict[int, list[LabelledQuery]] = {k: [] for k in recipe.mix}
    dropped: dict[int, list[LabelledQuery]] = {k: [] for k in recipe.mix}
    for problem, (answer, confidence) in zip(problems, labels, strict=True):
        labelled = LabelledQuery(problem, answer, confidence)
        # NaN (no answer at all) compares False: dropped too.
        keep = problem.k in recipe.abstain_k or (bool(answer) and confidence >= recipe.label_min_confidence)
        (pool if keep else dropped)[problem.k].append(labelled)
    log.info(
        "student: teacher labels kept per k: %s, dropped (confidence < %g or no answer): %s; exact among kept: %s, among dropped: %s",
        {k: len(v) for k, v in pool.items()},
        recipe.label_min_confidence,
        {k: len(v) for k, v in dropped.items()},
        _exact(pool, recipe.abstain_k),
        _exact(dropped, recipe.abstain_k),
    )
    empty = [k for k, queries in pool.items() if not queries]
    if empty:
        raise RuntimeError(f"no teacher label of k={empty} is confident enough to train on (label_min_confidence)")
    return pool


def _exact(pool: dict[int, list[LabelledQuery]], abstain_k: Sequence[int] = ()) -> dict[str, float]:
    """Share of the teacher's labels that are right, per k (the demo task knows every answer)."""
    return {
        f"k{k}": round(float(np.mean([parse_answer(q.answer) == q.problem.answer for q in queries])), 5)
        for k, queries in sorted(pool.items())
        if queries and k not in abstain_k
    }


class StudentData:
    """Seeded batches from the labelled pool: pick k by the recipe's mix, then a query of that k."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerFast, recipe: StudentRecipe, pool: dict[int, list[LabelledQuery]], seed: int
    ) -> None:
        self.tokenizer = tokenizer
        self.recipe = recipe
        self.rng = random.Random(f"edgecloud-student-data/{Split.TRAIN.name}/{seed}")
        self.ks = sorted(recipe.mix)
        self.weights = [recipe.mix[k] for k in self.ks]
        self.pool = pool
        eos = tokenizer.eos_token
        # Tokenise each labelled query once: (prompt ids, answer ids).
        self.encoded: dict[int, list[tuple[list[int], list[int]]]] = {}
        for k, queries in pool.items():
            prompts = tokenizer([student_prompt(recipe, q.problem.query) for q in queries], add_special_tokens=False)
            answers = tokenizer([f"{q.answer}{eos}" for q in queries], add_special_tokens=False)
            self.encoded[k] = list(zip(prompts["input_ids"], answers["input_ids"], strict=True))

    def batch(self, _step: int) -> dict[str, torch.Tensor]:
        ks = self.rng.choices(self.ks, weights=self.weights, k=self.recipe.train.batch_size)
        examples = []
        for k in ks:
            prompt, answer = self.rng.choice(self.encoded[k])
            examples.append((prompt + answer, len(prompt)))
        return collate(examples, self.tokenizer.pad_token_id)


@torch.no_grad()
def student_answers(
    student: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    template: str,
    queries: Sequence[str],
    *,
    max_new_tokens: int = 10,
) -> list[str]:
    """Greedy answers of the PyTorch student (batched, no thinking)."""
    out = []
    for start in range(0, len(queries), 256):
        prompts = [student_prompt(template, q) for q in queries[start : start + 256]]
        out.extend(g.answer_text for g in generate_batch(student, tokenizer, prompts, max_new_tokens=max_new_tokens))
    return out


def _progress_check(student, tokenizer, recipe: StudentRecipe, seed: int):
    problems = generate(300, seed + 11, Split.VALIDATION, {1: 1.0})
    hard = generate(100, seed + 12, Split.VALIDATION, {k: 1.0 for k in recipe.abstain_k}) if recipe.abstain_k else []

    def on_eval(_step: int) -> dict[str, float]:
        answers = student_answers(student, tokenizer, recipe.prompt_template, [p.query for p in problems + hard])
        report = {
            "val_k1_exact": float(
                np.mean([parse_answer(a) == p.answer for a, p in zip(answers, problems, strict=False)])
            )
        }
        if hard:
            report["val_abstained"] = float(np.mean([not a.strip() for a in answers[len(problems) :]]))
        return report

    return on_eval


@torch.no_grad()
def fit_feature_transform(
    student: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    template: str,
    seed: int,
    n: int = 2000,
    *,
    queries: Sequence[str] | None = None,
) -> None:
    """Measure and store in ``student.config`` the mean pooled feature vector over ``n`` training
    queries of the evaluation mix, or over ``queries`` when given (``feature_centre``), and the
    principal axes of the centred vectors, as the columns of an orthogonal matrix, largest
    variance first (``feature_rotation``)."""
    with_features(student).eval()
    student.config.feature_centre = None
    student.config.feature_rotation = None
    if queries is None:
        prompts = [student_prompt(template, p.query) for p in generate(n, seed + 13, Split.TRAIN, EVAL_MIX)]
    else:  # replace, not format: a template rendered from a chat template may hold braces
        prompts = [template.replace("{query}", query) for query in queries]
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        rows.append(student(input_ids=ids).features[0].double().numpy())
    vectors = np.stack(rows)
    centre = vectors.mean(0)
    variances, axes = np.linalg.eigh(np.cov(vectors - centre, rowvar=False))
    axes = axes[:, np.argsort(variances)[::-1]]
    # eigh's signs are arbitrary: fix each axis so its largest entry is positive (reproducible builds).
    axes *= np.sign(axes[np.abs(axes).argmax(0), np.arange(axes.shape[1])])
    student.config.feature_centre = [float(v) for v in centre]
    student.config.feature_rotation = [[float(v) for v in row] for row in axes]


def distill_student(
    teacher: torch.nn.Module,
    teacher_tokenizer: PreTrainedTokenizerFast,
    tokenizer: PreTrainedTokenizerFast,
    recipe: StudentRecipe,
    *,
    seed: int,
    label_cache: Path | None = None,
) -> tuple[Qwen3ForCausalLM, list[dict[str, float]]]:
    """Label a training pool with the teacher (or take the labels from ``label_cache``),
    train the student on it, centre and rotate its features."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    pool = _label_pool(teacher, teacher_tokenizer, recipe, seed, label_cache)
    student = build_model(recipe.model, tokenizer, seed)
    log.info("student: %.2fM parameters", sum(p.numel() for p in student.parameters()) / 1e6)
    data = StudentData(tokenizer, recipe, pool, seed)
    history = train(
        student,
        data.batch,
        recipe.train,
        desc="student",
        on_eval=_progress_check(student, tokenizer, recipe, seed) if recipe.eval_every else None,
        eval_every=recipe.eval_every,
    )
    fit_feature_transform(student, tokenizer, recipe.prompt_template, seed)
    student.generation_config.eos_token_id = tokenizer.eos_token_id
    student.generation_config.pad_token_id = tokenizer.pad_token_id
    return student, history
