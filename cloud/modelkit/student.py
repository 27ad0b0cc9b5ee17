"""The student: a small Qwen3 distilled from the teacher, answering without thinking.

It reads the chat prompt with thinking disabled and learns, token by token,
the answer distribution the teacher gives *after* thinking (Hinton-style
distillation: KL to the teacher's softened logits plus cross-entropy on the
exact answer). The teacher reads its full reasoning (the scratchpad) before
the answer; the student sees only the query, so it learns to answer directly
what the teacher works out. On multi-step queries the student cannot follow,
and its own token probabilities spread out: that is the confidence signal
triage calibrates.

Wrapped by :func:`with_features`, the student also returns ``features``: the
mean of its final hidden states over the tokens of the current call. On the
prompt, that is the query's feature vector that escalations carry to the cloud.
"""

from __future__ import annotations

import logging
import random
import types
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from cloud.modelkit.scratchpad import think_text
from cloud.modelkit.teacher import ModelSpec, chat_prompt
from cloud.modelkit.tokenizer import IM_END, THINK_END, THINK_START
from cloud.modelkit.training import Example, TrainConfig, collate, train
from shared.task import Split, make_problem, sample_k

__all__ = ["StudentOutput", "StudentRecipe", "distill_student", "with_features"]

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
    return StudentOutput(logits=logits, past_key_values=outputs.past_key_values, features=features)


def with_features(model: Qwen3ForCausalLM) -> Qwen3ForCausalLM:
    """Make ``model`` return ``features`` too.

    The forward is replaced on the instance, not by subclassing, so the model
    stays a plain transformers ``Qwen3ForCausalLM``: it saves and loads with
    ``AutoModelForCausalLM`` and optimum recognises it for export.
    """
    model.forward = types.MethodType(features_forward, model)
    return model


@dataclass(frozen=True, kw_only=True)
class StudentRecipe:
    model: ModelSpec = field(
        default_factory=lambda: ModelSpec(
            hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4
        )
    )
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=2000, batch_size=128, lr=3e-3, warmup=100))
    mix: dict[int, float] = field(default_factory=lambda: {1: 0.91, 2: 0.03, 3: 0.03, 4: 0.03})
    """Mostly simple queries, the student's job; a few multi-step ones so it learns to be unsure of them.
    (Measured: at 600 steps, 14% of k=1 right with 90% simple queries vs 4% with 70%.)"""
    distill_rows: int = 32
    """Rows per batch that also get the teacher's logits (the rest: exact answer only).
    The teacher reads its whole reasoning first, so its forward costs twice the
    student's training step; its answer distribution is near one-hot once it has
    reasoned, and a quarter of the batch carries that signal at a quarter of the cost."""
    temperature: float = 1.0
    distill_weight: float = 0.3
    """Weight of the KL term; the rest is cross-entropy on the exact answer."""

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 1 <= self.distill_rows <= self.train.batch_size:
            raise ValueError(f"distill_rows must be in [1, batch_size], got {self.distill_rows}")
        if not 0 <= self.distill_weight <= 1:
            raise ValueError(f"distill_weight must be in [0, 1], got {self.distill_weight}")


def build_student(recipe: StudentRecipe, tokenizer: PreTrainedTokenizerFast, seed: int) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    config = recipe.model.to_config(tokenizer)
    config._attn_implementation = "sdpa"
    return Qwen3ForCausalLM(config)


class StudentData:
    """Seeded batches: the student reads ``prompt + answer``, the teacher ``prompt + reasoning + answer``."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, recipe: StudentRecipe, seed: int) -> None:
        self.tokenizer = tokenizer
        self.recipe = recipe
        self.rng = random.Random(f"edgecloud-student-data/{Split.TRAIN.name}/{seed}")

    def batch(self, _step: int) -> dict[str, torch.Tensor]:
        problems = [make_problem(sample_k(self.rng, self.recipe.mix), self.rng) for _ in range(self.recipe.train.batch_size)]
        tokenize = lambda texts: self.tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
        prompts = tokenize([chat_prompt(self.tokenizer, p.query, enable_thinking=False) for p in problems])
        # The teacher reads its own reasoning first, then the same answer tokens.
        taught = problems[: self.recipe.distill_rows]
        teacher_contexts = tokenize(
            [
                f"{chat_prompt(self.tokenizer, p.query, enable_thinking=True)}{THINK_START}\n{think_text(p)}{THINK_END}\n\n"
                for p in taught
            ]
        )
        answers = tokenize([f"{p.answer}{IM_END}" for p in problems])
        student = collate([(c + a, len(c)) for c, a in zip(prompts, answers, strict=True)], self.tokenizer.pad_token_id)
        teacher = collate(
            [(c + a, len(c)) for c, a in zip(teacher_contexts, answers[: len(taught)], strict=True)],
            self.tokenizer.pad_token_id,
        )
        return {**student, **{f"teacher_{key}": value for key, value in teacher.items()}}


TEACHER_CHUNK = 32


def _teacher_answer_logits(teacher: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The teacher's logits on the answer tokens, rows in batch order.

    Reasoning makes teacher inputs long and uneven (a k=4 scratchpad is three
    times a k=1 one), so rows are run in chunks of similar length, each cut to
    its own longest row: padding every row to the batch's longest would
    triple the cost of a step.
    """
    ids, mask, labels = batch["teacher_input_ids"], batch["teacher_attention_mask"], batch["teacher_labels"]
    lengths = mask.sum(1)
    per_row: list[torch.Tensor | None] = [None] * ids.shape[0]
    for chunk in torch.argsort(lengths).split(TEACHER_CHUNK):
        width = int(lengths[chunk].max())
        logits = teacher(input_ids=ids[chunk, :width], attention_mask=mask[chunk, :width]).logits[:, :-1]
        on_answer = labels[chunk, 1:width] != -100
        for i, row in enumerate(chunk.tolist()):
            per_row[row] = logits[i][on_answer[i]]
    # Both sides carry the same answer tokens in the same order, so this lines
    # up with the student's row-major selection position by position.
    return torch.cat([r for r in per_row if r is not None])


def distillation_loss(teacher: torch.nn.Module, recipe: StudentRecipe):
    temperature = recipe.temperature

    def loss_fn(student: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["labels"][:, 1:]
        on_answer = labels != -100
        all_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        hard = torch.nn.functional.cross_entropy(all_logits[on_answer], labels[on_answer])
        with torch.no_grad():
            teacher_logits = _teacher_answer_logits(teacher, batch)
        taught = batch["teacher_input_ids"].shape[0]
        logits = all_logits[:taught][on_answer[:taught]]
        soft = torch.nn.functional.kl_div(
            torch.log_softmax(logits / temperature, -1),
            torch.log_softmax(teacher_logits / temperature, -1),
            log_target=True,
            reduction="batchmean",
        ) * (temperature**2)
        return (1 - recipe.distill_weight) * hard + recipe.distill_weight * soft

    return loss_fn


def distill_student(
    teacher: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, recipe: StudentRecipe, *, seed: int
) -> tuple[Qwen3ForCausalLM, list[dict[str, float]]]:
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = build_student(recipe, tokenizer, seed)
    log.info("student: %.2fM parameters", sum(p.numel() for p in student.parameters()) / 1e6)
    data = StudentData(tokenizer, recipe, seed)
    history = train(student, data.batch, recipe.train, loss_fn=distillation_loss(teacher, recipe), desc="student")
    student.generation_config.eos_token_id = tokenizer.eos_token_id
    student.generation_config.pad_token_id = tokenizer.pad_token_id
    return student, history
