"""A small, CPU-friendly training loop shared by the teacher and the student."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

__all__ = ["Example", "TrainConfig", "collate", "grow_layers", "train"]

log = logging.getLogger(__name__)

Example = tuple[list[int], int]
"""Token ids and the index of the first token the loss is taken on."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    steps: int
    """Optimizer steps."""
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    """Linear warm-up steps before the cosine decay."""
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    threads: int = 2
    """torch intra-op threads."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine)


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; labels are -100 before each example's loss start and on padding."""
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    for row, (ids, loss_from) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, loss_from : len(ids)] = input_ids[row, loss_from : len(ids)]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def causal_lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1), ignore_index=-100
    )


def train(
    model: torch.nn.Module,
    next_batch: Callable[[int], dict[str, torch.Tensor]],
    config: TrainConfig,
    *,
    loss_fn: LossFn = causal_lm_loss,
    desc: str = "train",
    on_eval: Callable[[int], dict[str, float]] | None = None,
    eval_every: int = 0,
) -> list[dict[str, float]]:
    """Train ``model`` in place; returns the logged history (step, loss, lr, ...)."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
    )
    history: list[dict[str, float]] = []
    model.train()
    smoothed: float | None = None
    started = time.monotonic()
    bar = tqdm(range(config.steps), desc=desc, unit="step", dynamic_ncols=True, mininterval=2.0)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        batch = next_batch(step)
        loss = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        value = float(loss.detach())
        smoothed = value if smoothed is None else 0.98 * smoothed + 0.02 * value
        bar.set_postfix(loss=f"{smoothed:.4f}", refresh=False)
        record = {"step": step + 1, "loss": smoothed, "lr": config.lr_at(step), "elapsed_s": time.monotonic() - started}
        if on_eval is not None and eval_every and ((step + 1) % eval_every == 0 or step + 1 == config.steps):
            model.eval()
            with torch.no_grad():
                record.update(on_eval(step + 1))
            model.train()
            log.info("%s step %d: %s", desc, step + 1, record)
            bar.write(f"{desc} step {step + 1}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items()))
        if (step + 1) % 50 == 0 or step + 1 == config.steps:
            history.append(record)
    model.eval()
    return history


def grow_layers(model, n: int):
    """Append ``n`` decoder layers that leave the model's function unchanged: each new layer's
    attention output and MLP down projections start at zero, so it adds nothing to the residual
    stream until training moves them. More depth for what the base cannot follow (a scratchpad),
    without forgetting what it knows on the first step."""
    if n == 0:
        return model
    layers = model.model.layers
    for _ in range(n):
        layer = copy.deepcopy(layers[-1])
        layer.self_attn.layer_idx = len(layers)
        torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
        torch.nn.init.zeros_(layer.mlp.down_proj.weight)
        layers.append(layer)
    model.config.num_hidden_layers = len(layers)
    if getattr(model.config, "layer_types", None) is not None:
        model.config.layer_types = [*model.config.layer_types, *[model.config.layer_types[-1]] * n]
    log.info(
        "grew the student by %d layers to %d (%.2fM parameters)",
        n,
        len(layers),
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model
