"""The teacher: a Qwen3 causal LM trained from scratch to think, then answer.

Its reply is ``<think>`` + the scratchpad (:mod:`edgecloud.modelkit.arithmetic.scratchpad`) +
``</think>`` + the answer. It is also trained to answer with thinking disabled
(the chat template pre-fills an empty think block) and to answer after a
reasoning budget cut its thinking short, which is what the cloud engine's
budget forcing does.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from edgecloud.modelkit.arithmetic.scratchpad import think_text
from edgecloud.modelkit.arithmetic.task import Problem, Split, make_problem, sample_k
from edgecloud.modelkit.tokenizer import IM_END
from edgecloud.modelkit.training import Example, TrainConfig, collate, train
from edgecloud.shared.reasoner.thinking import THINK_END, THINK_START

__all__ = [
    "ModelSpec",
    "RefineStage",
    "TeacherRecipe",
    "build_model",
    "chat_prompt",
    "refine_teacher",
    "teacher_example",
    "train_teacher",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Shape of a Qwen3 model built from scratch."""

    hidden_size: int = 192
    intermediate_size: int = 576
    num_hidden_layers: int = 4
    num_attention_heads: int = 6
    num_key_value_heads: int = 6
    max_position_embeddings: int = 384

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")

    def to_config(self, tokenizer: PreTrainedTokenizerFast) -> Qwen3Config:
        return Qwen3Config(
            vocab_size=len(tokenizer),
            head_dim=self.hidden_size // self.num_attention_heads,
            rope_theta=10000.0,
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
            use_cache=True,
            **asdict(self),
        )


@dataclass(frozen=True, kw_only=True)
class RefineStage:
    """A second, shorter stage at a lower learning rate, on the queries the teacher still gets wrong.

    After the first stage, half of the teacher's k=4 misses are in its compute
    lines (mostly ``*`` lines, whose carries reach 11) and half in reading the
    last line, least significant digit first, back into the answer. This stage
    trains on longer queries and adds examples whose loss is on the answer
    only, after the full reasoning.

    Measured on the v2 teacher (first stage only), 400 fresh test queries per k,
    thinking, greedy: k=1 99.75 -> 99.75%, k=2 99.5 -> 100%, k=3 99.25 -> 99.75%,
    k=4 94.25 -> 97.25%. 800 steps took 24 minutes on the 2-core machine (with
    other work beside it).
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=800, batch_size=64, lr=6e-4, warmup=40))
    mix: dict[int, float] = field(default_factory=lambda: {1: 0.1, 2: 0.15, 3: 0.3, 4: 0.45})
    answer_share: float = 0.25
    """Share of examples that read the full reasoning and are trained on the answer alone."""

    def __post_init__(self) -> None:
        if not 0 <= self.answer_share <= 1:
            raise ValueError(f"answer_share must be in [0, 1], got {self.answer_share}")


@dataclass(frozen=True, kw_only=True)
class TeacherRecipe:
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1700, batch_size=64, lr=2e-3, warmup=150))
    mix: dict[int, float] = field(default_factory=lambda: {1: 0.15, 2: 0.2, 3: 0.3, 4: 0.35})
    """k distribution of training queries; harder k are longer and need more practice."""
    no_think_share: float = 0.15
    """Share of examples trained with thinking disabled."""
    truncated_share: float = 0.05
    """Share of thinking examples whose reasoning is cut short, as budget forcing does."""
    refine: RefineStage | None = field(default_factory=RefineStage)
    """The second stage (``None``: first stage only)."""


QUICK_TEACHER = ModelSpec(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2
)
"""The teacher of a ``--quick`` build: tiny, for trying the pipeline."""
QUICK_STUDENT = ModelSpec(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1
)
"""The student of a ``--quick`` build."""


def build_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerFast, seed: int) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    config = spec.to_config(tokenizer)
    config._attn_implementation = "sdpa"
    return Qwen3ForCausalLM(config)


def chat_prompt(tokenizer: PreTrainedTokenizerFast, query: str, *, enable_thinking: bool) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": query}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=enable_thinking,
    )


def teacher_example(
    problem: Problem, tokenizer: PreTrainedTokenizerFast, *, mode: str, rng: random.Random
) -> tuple[str, str]:
    """``(context, target)`` texts: the loss is on ``target`` only.

    ``mode`` is ``think``, ``direct`` (thinking disabled), ``truncated``
    (reasoning cut at a random point and closed, the answer still expected)
    or ``answer`` (the full reasoning is context, the loss is on the answer).
    """
    answer = f"{problem.answer}{IM_END}"
    if mode == "direct":
        return chat_prompt(tokenizer, problem.query, enable_thinking=False), answer
    prompt = chat_prompt(tokenizer, problem.query, enable_thinking=True)
    reasoning = think_text(problem)
    if mode == "think":
        return prompt, f"{THINK_START}\n{reasoning}{THINK_END}\n\n{answer}"
    if mode == "truncated":
        cut = rng.randrange(0, len(reasoning))
        return f"{prompt}{THINK_START}\n{reasoning[:cut]}{THINK_END}\n\n", answer
    if mode == "answer":
        return f"{prompt}{THINK_START}\n{reasoning}{THINK_END}\n\n", answer
    raise ValueError(f"unknown mode {mode!r}")


class TeacherData:
    """An endless, seeded stream of training batches."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerFast, recipe: TeacherRecipe, seed: int, stage: RefineStage | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.recipe = recipe
        self.mix = stage.mix if stage else recipe.mix
        self.answer_share = stage.answer_share if stage else 0.0
        self.batch_size = (stage.train if stage else recipe.train).batch_size
        name = "teacher-refine-data" if stage else "teacher-data"
        self.rng = random.Random(f"edgecloud-{name}/{Split.TRAIN.name}/{seed}")
        self._pending: list[list[Example]] = []

    def _mode(self) -> str:
        # The first stage draws one number per example, as it always has (same seed, same data).
        if self.answer_share and self.rng.random() < self.answer_share:
            return "answer"
        r = self.rng.random()
        if r < self.recipe.no_think_share:
            return "direct"
        if r < self.recipe.no_think_share + self.recipe.truncated_share:
            return "truncated"
        return "think"

    def _refill(self) -> None:
        # Draw several batches at once and group examples of similar length:
        # padding is most of the cost of a naive batch on a CPU.
        size = self.batch_size
        pairs = []
        for _ in range(size * self.POOL_BATCHES):
            problem = make_problem(sample_k(self.rng, self.mix), self.rng)
            pairs.append(teacher_example(problem, self.tokenizer, mode=self._mode(), rng=self.rng))
        contexts = self.tokenizer([c for c, _ in pairs], add_special_tokens=False)["input_ids"]
        targets = self.tokenizer([t for _, t in pairs], add_special_tokens=False)["input_ids"]
        examples: list[Example] = [(c + t, len(c)) for c, t in zip(contexts, targets, strict=True)]
        examples.sort(key=lambda e: len(e[0]))
        batches = [examples[i : i + size] for i in range(0, len(examples), size)]
        self.rng.shuffle(batches)
        self._pending = batches

    POOL_BATCHES = 16

    def batch(self, _step: int) -> dict[str, torch.Tensor]:
        if not self._pending:
            self._refill()
        return collate(self._pending.pop(), self.tokenizer.pad_token_id)


def train_teacher(
    tokenizer: PreTrainedTokenizerFast, recipe: TeacherRecipe, out_dir: Path, *, seed: int, on_eval=None, eval_every=0
) -> tuple[Qwen3ForCausalLM, list[dict[str, float]]]:
    model = build_model(recipe.model, tokenizer, seed)
    log.info("teacher: %.2fM parameters", sum(p.numel() for p in model.parameters()) / 1e6)
    data = TeacherData(tokenizer, recipe, seed)
    history = train(model, data.batch, recipe.train, desc="teacher", on_eval=on_eval, eval_every=eval_every)
    if recipe.refine is not None:
        history += refine_teacher(model, tokenizer, recipe, seed=seed)
    save_teacher(model, tokenizer, out_dir)
    return model, history


def save_teacher(model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> None:
    """Write a trained teacher and its tokenizer to ``out_dir``, generation stopping at its end token."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def refine_teacher(
    model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast, recipe: TeacherRecipe, *, seed: int
) -> list[dict[str, float]]:
    """Run the recipe's second stage on ``model`` in place; returns its history."""
    if recipe.refine is None:
        return []
    for p in model.parameters():
        p.requires_grad_(True)
    data = TeacherData(tokenizer, recipe, seed, stage=recipe.refine)
    log.info("teacher: refining (%d steps)", recipe.refine.train.steps)
    history = train(model, data.batch, recipe.refine.train, desc="teacher refine")
    return [{**record, "stage": 2.0} for record in history]
