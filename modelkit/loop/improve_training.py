"""How ``models improve`` trains: replay of the base's own answers, batches of escalations and replay
padded apart, their loss, and the progress checks on the base's validation data (see
:mod:`edgecloud.modelkit.loop.improve` for the turn as a whole)."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from edgecloud.edge.runtime import EdgeModel
from edgecloud.modelkit.arithmetic.student import student_answers, student_prompt
from edgecloud.modelkit.loop.base_task import BaseTask
from edgecloud.modelkit.loop.training_set import TrainingExample
from edgecloud.modelkit.training import collate
from edgecloud.shared.bundles.answers import answers_match

__all__ = ["EscalationBatches", "parts_loss", "progress_check", "replay_examples"]

log = logging.getLogger(__name__)


def replay_examples(base: EdgeModel, queries: Sequence[str], *, abstentions: bool = True) -> list[TrainingExample]:
    """What the base already does well, in its own words, on training queries of its own task: its
    confident answers, and (``abstentions``) its abstentions, the empty answer. Without them a
    fine-tuning turn on the cloud's multi-step answers unlearns passing on what the student cannot
    do: it answers them wrongly and sure, and no triage threshold keeps 99.5% right any more
    (measured on the demo). A fresh student learns where to pass from the escalations themselves
    (those over its token limit), and the base's abstentions would contradict what they teach."""
    if not queries or base.calibration is None:
        return []
    kept, passed = [], 0
    for query in tqdm(queries, desc="replay", unit="q", dynamic_ncols=True, mininterval=2.0):
        answer = base.answer(query)
        if answer.abstained:
            if abstentions:
                kept.append(TrainingExample(query, ""))
                passed += 1
        elif answer.confidence >= base.calibration.threshold:
            kept.append(TrainingExample(query, answer.text))
    log.info(
        "replay: %d confident answers and %d abstentions of the base on %d training queries",
        len(kept) - passed,
        passed,
        len(queries),
    )
    return kept


class EscalationBatches:
    """Seeded batches: ``replay_share`` of the rows from replay, the rest from the escalations
    (each drawn by its weight). The two parts are padded apart: replay rows are a few tokens,
    reasoning rows a hundred, and padding one to the other would triple the step's work."""

    def __init__(
        self,
        tokenizer,
        template: str,
        escalations,
        replay,
        *,
        batch_size: int,
        replay_share: float,
        seed: int,
        max_target_tokens: int,
    ):
        self.rng = random.Random(f"edgecloud-improve/{seed}")
        self.pad = tokenizer.pad_token_id
        self.replay_rows = round(batch_size * replay_share) if replay else 0
        self.escalation_rows = batch_size - self.replay_rows
        eos = tokenizer.eos_token

        def encode(examples: list[TrainingExample]) -> list[tuple[list[int], list[int]]]:
            if not examples:
                return []
            prompts = tokenizer([student_prompt(template, e.query) for e in examples], add_special_tokens=False)
            targets = tokenizer([f"{e.target}{eos}" for e in examples], add_special_tokens=False)
            return list(zip(prompts["input_ids"], targets["input_ids"], strict=True))

        self.escalations = encode(escalations)
        self.escalation_weights = [e.weight for e in escalations]
        self.replay = encode(replay)
        # What the edge could not write within its token limit it learns to pass on (the stop token
        # alone): the cloud's own records teach it where its budget ends.
        eos_id = tokenizer.eos_token_id
        self.too_long = 0
        for i, (prompt, target) in enumerate(self.escalations):
            if len(target) > max_target_tokens:
                self.escalations[i] = (prompt, [eos_id])
                self.too_long += 1

    def __call__(self, _step: int) -> dict[str, list[dict[str, torch.Tensor]]]:
        parts = []
        chosen = self.rng.choices(self.escalations, weights=self.escalation_weights, k=self.escalation_rows)
        parts.append(collate([(p + t, len(p)) for p, t in chosen], self.pad))
        if self.replay_rows:
            replayed = [self.rng.choice(self.replay) for _ in range(self.replay_rows)]
            parts.append(collate([(p + t, len(p)) for p, t in replayed], self.pad))
        return {"parts": parts}


def parts_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Cross-entropy over every target token of every part (a token counts the same in either)."""
    total, tokens = torch.zeros(()), 0
    for part in batch["parts"]:
        logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
        labels = part["labels"][:, 1:].reshape(-1)
        total = total + torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), labels, ignore_index=-100, reduction="sum"
        )
        tokens += int((labels != -100).sum())
    return total / max(tokens, 1)


def progress_check(student, tokenizer, template: str, max_new_tokens: int, task: BaseTask, seed: int):
    """Right answers of the PyTorch student on the base's validation cases, per group, during training."""
    cases = task.progress_cases(seed)

    def on_eval(_step: int) -> dict[str, float]:
        answers = student_answers(student, tokenizer, template, [c.query for c in cases], max_new_tokens=max_new_tokens)
        report: dict[str, list[bool]] = {}
        for answer, case in zip(answers, cases, strict=True):
            report.setdefault(case.group, []).append(answers_match(task.rule, answer, case.expected))
        return {f"val_{group}_right": sum(right) / len(right) for group, right in sorted(report.items())}

    return on_eval
