"""The teacher of a dataset (``models build --data`` without ``--teacher``): what it learns from the rows.

A row's conversation (its ``messages``, or its ``query`` as one user message) rendered with the
chat template, thinking enabled, is the context; the target, the only tokens the loss is taken
on, is the row's reasoning in a think block, then its answer::

    <|im_start|>user\\n{query}<|im_end|>\\n<|im_start|>assistant\\n   <think>\\n{reasoning}</think>\\n\\n{answer}<|im_end|>

A row without reasoning gets an empty think block. As in the demo recipe
(:class:`edgecloud.modelkit.arithmetic.teacher.TeacherRecipe`), a share of the examples is ``direct``
(thinking disabled: the template pre-fills an empty think block and the target is the answer)
and a share ``truncated`` (the reasoning cut at a random point and closed, as the cloud's budget
forcing does, the answer still expected). Rows whose answer is empty (unlabelled) teach nothing.
Batches hold examples of similar length: padding is most of the cost of a naive batch on a CPU.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM

from edgecloud.modelkit.arithmetic.teacher import ModelSpec, build_model, save_teacher
from edgecloud.modelkit.data.datasets import Row
from edgecloud.modelkit.decoding import Generation, generate_batch
from edgecloud.modelkit.tokenizer import IM_END
from edgecloud.modelkit.training import Example, TrainConfig, collate, train
from edgecloud.shared.reasoner.thinking import THINK_END, THINK_START

__all__ = [
    "MODES",
    "DataTeacherRecipe",
    "RowTeacherData",
    "conversation",
    "row_example",
    "teacher_answers",
    "train_data_teacher",
]

log = logging.getLogger(__name__)

MODES = ("think", "direct", "truncated")


@dataclass(frozen=True, kw_only=True)
class DataTeacherRecipe:
    model: ModelSpec = field(default_factory=ModelSpec)
    """The shape; ``max_position_embeddings`` grows to fit the data's longest example."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=2500, batch_size=32, lr=2e-3, warmup=100))
    no_think_share: float = 0.15
    """Share of examples trained with thinking disabled."""
    truncated_share: float = 0.05
    """Share of examples (of rows with reasoning) whose reasoning is cut short, as budget forcing does."""
    max_tokens: int = 1024
    """Examples longer than this (context and target, in tokens) are left out."""
    eval_every: int = 500
    """Steps between progress checks (accuracy on 100 validation rows, thinking); 0: none."""

    def __post_init__(self) -> None:
        if not (0 <= self.no_think_share <= 1 and 0 <= self.truncated_share <= 1):
            raise ValueError("no_think_share and truncated_share must be in [0, 1]")
        if self.no_think_share + self.truncated_share > 1:
            raise ValueError("no_think_share + truncated_share must be at most 1")
        if self.max_tokens < 16:
            raise ValueError(f"max_tokens must be >= 16, got {self.max_tokens}")


def conversation(row: Row) -> list[dict[str, str]]:
    """The row's chat messages: its ``messages``, or its ``query`` as one user message."""
    if row.messages is not None:
        return [{"role": m.role, "content": m.content} for m in row.messages]
    return [{"role": "user", "content": row.prompt_text}]


def _prompt(tokenizer: PreTrainedTokenizerFast, row: Row, *, thinking: bool) -> str:
    return tokenizer.apply_chat_template(
        conversation(row), tokenize=False, add_generation_prompt=True, enable_thinking=thinking
    )


def row_example(
    row: Row,
    tokenizer: PreTrainedTokenizerFast,
    *,
    mode: str,
    rng: random.Random,
    prompts: tuple[str, str] | None = None,
) -> tuple[str, str]:
    """``(context, target)`` texts of one row: the loss is on ``target`` only. ``mode`` is one of
    :data:`MODES`; ``prompts`` (thinking, direct) saves rendering the chat template again."""
    think_prompt, direct_prompt = prompts or (
        _prompt(tokenizer, row, thinking=True),
        _prompt(tokenizer, row, thinking=False),
    )
    answer = f"{row.answer}{IM_END}"
    reasoning = row.reasoning or "\n"  # none: the empty think block the chat template pre-fills
    if mode == "direct":
        return direct_prompt, answer
    if mode == "think":
        return think_prompt, f"{THINK_START}\n{reasoning}{THINK_END}\n\n{answer}"
    if mode == "truncated":
        cut = rng.randrange(0, len(reasoning))
        return f"{think_prompt}{THINK_START}\n{reasoning[:cut]}{THINK_END}\n\n", answer
    raise ValueError(f"unknown mode {mode!r} (modes: {', '.join(MODES)})")


class RowTeacherData:
    """An endless, seeded stream of training batches drawn from the rows."""

    POOL_BATCHES = 16

    def __init__(
        self, tokenizer: PreTrainedTokenizerFast, rows: Sequence[Row], recipe: DataTeacherRecipe, seed: int
    ) -> None:
        self.tokenizer = tokenizer
        self.recipe = recipe
        self.rows = [row for row in rows if row.answer.strip()]
        if not self.rows:
            raise ValueError("no row with an answer to train the teacher on")
        self.prompts = [
            (_prompt(tokenizer, row, thinking=True), _prompt(tokenizer, row, thinking=False)) for row in self.rows
        ]
        self.rng = random.Random(f"edgecloud-data-teacher/{seed}")
        self._pending: list[list[Example]] = []

    def longest(self) -> int:
        """Tokens of the longest ``think`` example (context and target)."""
        pairs = [
            row_example(row, self.tokenizer, mode="think", rng=self.rng, prompts=prompts)
            for row, prompts in zip(self.rows, self.prompts, strict=True)
        ]
        return max(len(ids) for ids, _ in self._encode(pairs))

    def _encode(self, pairs: list[tuple[str, str]]) -> list[Example]:
        contexts = self.tokenizer([c for c, _ in pairs], add_special_tokens=False)["input_ids"]
        targets = self.tokenizer([t for _, t in pairs], add_special_tokens=False)["input_ids"]
        return [(c + t, len(c)) for c, t in zip(contexts, targets, strict=True)]

    def _mode(self, row: Row) -> str:
        r = self.rng.random()
        if r < self.recipe.no_think_share:
            return "direct"
        if r < self.recipe.no_think_share + self.recipe.truncated_share and row.reasoning:
            return "truncated"
        return "think"

    def _refill(self) -> None:
        size = self.recipe.train.batch_size
        pairs = []
        for _ in range(size * self.POOL_BATCHES):
            i = self.rng.randrange(len(self.rows))
            row = self.rows[i]
            pairs.append(row_example(row, self.tokenizer, mode=self._mode(row), rng=self.rng, prompts=self.prompts[i]))
        examples = [e for e in self._encode(pairs) if len(e[0]) <= self.recipe.max_tokens]
        if not examples:
            raise ValueError(f"every example drawn is longer than max_tokens ({self.recipe.max_tokens})")
        examples.sort(key=lambda e: len(e[0]))
        batches = [examples[i : i + size] for i in range(0, len(examples), size)]
        self.rng.shuffle(batches)
        self._pending = batches

    def batch(self, _step: int) -> dict[str, torch.Tensor]:
        if not self._pending:
            self._refill()
        return collate(self._pending.pop(), self.tokenizer.pad_token_id)


def train_data_teacher(
    tokenizer: PreTrainedTokenizerFast,
    rows: Sequence[Row],
    recipe: DataTeacherRecipe,
    out_dir: Path,
    *,
    seed: int,
    on_eval: Callable[[Qwen3ForCausalLM], Callable[[int], dict[str, float]]] | None = None,
) -> tuple[Qwen3ForCausalLM, list[dict[str, float]]]:
    """Train a fresh Qwen3 on ``rows`` and save it with its tokenizer in ``out_dir``.

    ``on_eval(model)`` gives the progress check run every ``recipe.eval_every`` steps.
    """
    data = RowTeacherData(tokenizer, rows, recipe, seed)
    longest = min(data.longest(), recipe.max_tokens)
    # Room for the longest example twice over (a budget-free answer may think longer), in steps of 128.
    positions = max(recipe.model.max_position_embeddings, -(-2 * longest // 128) * 128)
    model = build_model(replace(recipe.model, max_position_embeddings=positions), tokenizer, seed)
    log.info(
        "teacher: %.2fM parameters, %d rows, longest example %d tokens",
        sum(p.numel() for p in model.parameters()) / 1e6,
        len(data.rows),
        longest,
    )
    check = on_eval(model) if on_eval is not None and recipe.eval_every else None
    history = train(model, data.batch, recipe.train, desc="teacher", on_eval=check, eval_every=recipe.eval_every)
    save_teacher(model, tokenizer, out_dir)
    return model, history


def teacher_answers(
    teacher, tokenizer, rows: Sequence[Row], *, max_new_tokens: int, batch_size: int = 64
) -> list[Generation]:
    """The teacher's greedy answers to the rows' conversations, thinking first (no budget)."""
    out: list[Generation] = []
    for start in range(0, len(rows), batch_size):
        prompts = [_prompt(tokenizer, row, thinking=True) for row in rows[start : start + batch_size]]
        out.extend(generate_batch(teacher, tokenizer, prompts, max_new_tokens=max_new_tokens))
    return out
