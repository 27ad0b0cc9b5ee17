"""The student of a dataset (``models build --data``): its targets, its batches, its training.

Sequence-level distillation, as for the demo student (:mod:`edgecloud.modelkit.arithmetic.student`): the
teacher answers every training query once, thinking first, and the student learns to say its
answer directly. Where the teacher's answer does not match the row's (by the dataset's matching
rule), the student's target is the empty answer, the end token alone: it learns to defer what the
teacher itself gets wrong, and the edge runtime reads an empty answer as "no answer". A row whose
answer is empty (unlabelled) takes the teacher's answer as it is. Conversations (rows with
``messages``) are left out: the student reads single queries.

The student reads ``prompt_template`` with the query in it: for a student built here, the query,
then ``<|im_start|>assistant`` (a token the normaliser cannot strip, so the query's end is
unmistakable); for one brought with ``--student``, its chat template rendered once with thinking
disabled (``{query}\\n`` when it has none).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast, Qwen3ForCausalLM

from edgecloud.edge.runtime import MAX_NEW_TOKENS
from edgecloud.modelkit.arithmetic.student import STUDENT_SHAPE, fit_feature_transform, with_features
from edgecloud.modelkit.arithmetic.teacher import ModelSpec, build_model, chat_prompt
from edgecloud.modelkit.data.datasets import Row
from edgecloud.modelkit.decoding import generate_batch
from edgecloud.modelkit.tokenizer import IM_START
from edgecloud.modelkit.training import Example, TrainConfig, collate, train
from edgecloud.shared.bundles.answers import answers_match
from edgecloud.shared.reasoner.thinking import THINK_END, THINK_START

__all__ = [
    "STUDENT_PROMPT",
    "DataStudentRecipe",
    "RowStudentData",
    "prompt_template_for",
    "student_targets",
    "train_data_student",
]

log = logging.getLogger(__name__)

STUDENT_PROMPT = "{query}" + IM_START + "assistant"
"""What a student built here reads (its tokenizer collapses the query's whitespace and strips it)."""


@dataclass(frozen=True, kw_only=True)
class DataStudentRecipe:
    model: ModelSpec = STUDENT_SHAPE
    """The shape of a fresh student; ``max_position_embeddings`` grows to fit the data."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=4000, batch_size=64, lr=2e-3, warmup=100, weight_decay=0.1)
    )
    prompt_template: str = STUDENT_PROMPT
    max_new_tokens: int = 0
    """Tokens the edge generates at most (end token included); 0: the longest training answer and a
    quarter more, at most the edge's limit."""
    eval_every: int = 500
    """Steps between progress checks (accuracy on 200 validation rows); 0: none."""

    def __post_init__(self) -> None:
        if "{query}" not in self.prompt_template:
            raise ValueError("prompt_template must contain '{query}'")
        if not 0 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens must be in 0..{MAX_NEW_TOKENS}, got {self.max_new_tokens}")


def prompt_template_for(tokenizer: PreTrainedTokenizerFast, *, built_here: bool) -> str:
    """The student's prompt: :data:`STUDENT_PROMPT` for a student built here, else the tokenizer's
    chat template rendered once with thinking disabled; without a template, :data:`STUDENT_PROMPT`
    when ``<|im_start|>`` is one of its special tokens (a student built here before), else ``{query}\\n``."""
    if built_here:
        return STUDENT_PROMPT
    if tokenizer.chat_template:
        return chat_prompt(tokenizer, "{query}", enable_thinking=False)
    if IM_START in tokenizer.all_special_tokens or IM_START in tokenizer.get_added_vocab():
        return STUDENT_PROMPT
    return "{query}\n"


def student_targets(rows: Sequence[Row], labels: Sequence[str], rule: str) -> list[str]:
    """The student's target per row: the teacher's label where it matches the row's answer (or the row
    has none), else the empty answer (abstain)."""
    return [
        label if not row.answer.strip() or answers_match(rule, label, row.answer) else ""
        for row, label in zip(rows, labels, strict=True)
    ]


class RowStudentData:
    """Seeded batches of (prompt, target) pairs, examples of similar length batched together."""

    POOL_BATCHES = 16

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerFast,
        prompts: Sequence[str],
        targets: Sequence[str],
        batch_size: int,
        seed: int,
    ) -> None:
        self.tokenizer, self.batch_size = tokenizer, batch_size
        eos = tokenizer.eos_token
        prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        target_ids = tokenizer([f"{t}{eos}" for t in targets], add_special_tokens=False)["input_ids"]
        self.examples: list[Example] = [(p + t, len(p)) for p, t in zip(prompt_ids, target_ids, strict=True)]
        self.longest_target = max(len(t) for t in target_ids)
        self.longest_prompt = max(len(p) for p in prompt_ids)
        self.rng = random.Random(f"edgecloud-data-student/{seed}")
        self._pending: list[list[Example]] = []

    def batch(self, _step: int) -> dict[str, torch.Tensor]:
        if not self._pending:
            drawn = sorted(
                (self.rng.choice(self.examples) for _ in range(self.batch_size * self.POOL_BATCHES)),
                key=lambda e: len(e[0]),
            )
            self._pending = [drawn[i : i + self.batch_size] for i in range(0, len(drawn), self.batch_size)]
            self.rng.shuffle(self._pending)
        return collate(self._pending.pop(), self.tokenizer.pad_token_id)


def _progress_check(
    student: PreTrainedModel, tokenizer, template: str, rows: Sequence[Row], rule: str, max_new_tokens: int
) -> Callable[[int], dict[str, float]] | None:
    if not rows or None in (tokenizer.convert_tokens_to_ids(t) for t in (THINK_START, THINK_END)):
        return None
    prompts = [template.replace("{query}", row.prompt_text) for row in rows]

    def on_eval(_step: int) -> dict[str, float]:
        gens = generate_batch(student, tokenizer, prompts, max_new_tokens=max_new_tokens)
        right = [answers_match(rule, g.answer_text, r.answer) for g, r in zip(gens, rows, strict=True)]
        return {
            "val_accuracy": float(np.mean(right)),
            "val_abstained": float(np.mean([not g.answer_text for g in gens])),
        }

    return on_eval


def train_data_student(
    student: Qwen3ForCausalLM | None,
    tokenizer: PreTrainedTokenizerFast,
    recipe: DataStudentRecipe,
    queries: Sequence[str],
    targets: Sequence[str],
    *,
    seed: int,
    rule: str,
    check_rows: Sequence[Row] = (),
) -> tuple[Qwen3ForCausalLM, DataStudentRecipe, list[dict[str, float]]]:
    """Train ``student`` (None: a fresh one of ``recipe.model``) on ``queries`` -> ``targets``; centre
    and rotate its features. Returns the student, the recipe with ``max_new_tokens`` settled, and
    the training history. ``check_rows`` (validation rows with answers) feed the progress check."""
    prompts = [recipe.prompt_template.replace("{query}", q) for q in queries]
    data = RowStudentData(tokenizer, prompts, targets, recipe.train.batch_size, seed)
    max_new = recipe.max_new_tokens or min(MAX_NEW_TOKENS, -(-data.longest_target * 5 // 4) + 2)
    if data.longest_target > max_new:
        log.warning(
            "student: the longest target is %d tokens, the edge generates at most %d", data.longest_target, max_new
        )
    recipe = replace(recipe, max_new_tokens=max_new)
    if student is None:
        positions = -(-(data.longest_prompt + max_new) * 2 // 64) * 64
        spec = replace(recipe.model, max_position_embeddings=max(recipe.model.max_position_embeddings, positions))
        student = build_model(spec, tokenizer, seed)
    log.info(
        "student: %.2fM parameters, %d training queries (%d abstain), answers up to %d tokens",
        sum(p.numel() for p in student.parameters()) / 1e6,
        len(queries),
        sum(1 for t in targets if not t),
        max_new,
    )
    check = _progress_check(student, tokenizer, recipe.prompt_template, check_rows, rule, max_new)
    history = train(
        student, data.batch, recipe.train, desc="student", on_eval=check, eval_every=recipe.eval_every if check else 0
    )
    sample = random.Random(f"edgecloud-data-features/{seed}").sample(list(queries), min(2000, len(queries)))
    fit_feature_transform(student, tokenizer, recipe.prompt_template, seed, queries=sample)
    student.generation_config.eos_token_id = tokenizer.eos_token_id
    student.generation_config.pad_token_id = tokenizer.pad_token_id
    return with_features(student), recipe, history
