"""Which of the cloud's escalation records the next edge student learns from, and why the others
are left out (:func:`collect_training_set`, used by ``models improve``).

Shadow checks (``kind: shadow_check``, a device's kept answer checked by the cloud) teach only where
they disagree: the student was wrong with confidence there, the costliest mistake it makes, so such a
record is drawn ``field_weight`` times as often as an escalation. A check that agreed is left out:
the student already answers it, and replay keeps what it answers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgecloud.shared.escalations.records import Escalation, ReadReport, iter_escalations
from edgecloud.shared.reasoner.thinking import THINK_END, THINK_START

__all__ = ["TrainingExample", "TrainingSet", "collect_training_set"]


@dataclass(frozen=True)
class TrainingExample:
    query: str
    target: str
    """What the student learns to write after the prompt (the stop token is added)."""
    weight: float = 1.0
    answer: str = ""
    """The cloud's answer alone (what a held-out record is checked against)."""


@dataclass
class TrainingSet:
    examples: list[TrainingExample]
    read: ReadReport
    dropped: Counter[str]
    reasoning: bool
    """Whether the targets carry the cloud's reasoning."""
    abstentions: int = 0
    """Records over the edge's token limit, learnt as abstentions (set when the batches are built)."""
    held_out: int = 0
    """Records kept out of training to measure the new student on (``models improve``'s gate)."""
    field_corrections: int = 0
    """Shadow checks whose kept edge answer the cloud contradicted, learnt at ``field_weight``."""

    def summary(self) -> dict[str, object]:
        return {
            "records_read": self.read.read,
            "lines_skipped": dict(self.read.skipped),
            "records_used": len(self.examples),
            "records_dropped": dict(self.dropped),
            "learnt_as_abstentions": self.abstentions,
            "records_held_out": self.held_out,
            "field_corrections": self.field_corrections,
            "learn_reasoning": self.reasoning,
        }


def _target(record: Escalation, reasoning: bool) -> str:
    if reasoning:
        return f"{THINK_START}{record.reasoning}{THINK_END}{record.answer}"
    return record.answer


def is_conversation(record: Escalation) -> bool:
    """More than the query alone: a system message or earlier turns, which a student that reads one
    query would learn out of context."""
    return len(record.messages) > 1


def _agreed(record: Escalation, matches: Callable[[str, str], bool]) -> bool:
    """A shadow check whose kept edge answer the cloud's answer confirms (by the bundle's rule)."""
    return record.edge is not None and bool(record.edge.answer) and matches(record.edge.answer, record.answer)


def collect_training_set(
    logs: Sequence[Path],
    *,
    student_name: str,
    normalize,
    matches: Callable[[str, str], bool],
    budget_cut_weight: float = 0.0,
    field_weight: float = 2.0,
    learn_reasoning: bool | None = None,
) -> TrainingSet:
    """The records worth learning from, one per normalised query (the latest), and why the others
    were dropped. ``normalize`` maps a query to what the student reads; ``matches(edge, cloud)``
    compares two answers by the bundle's rule."""
    report = ReadReport()
    dropped: Counter[str] = Counter()
    chosen: dict[str, tuple[Escalation, float]] = {}
    for record in iter_escalations(list(logs), report):
        if record.status != "completed":
            dropped["not completed"] += 1
        elif record.producer_name != student_name:
            dropped["another model escalated it"] += 1
        elif is_conversation(record):
            dropped["a conversation (the student reads one query)"] += 1
        elif not record.answer.strip():
            dropped["empty answer"] += 1
        elif record.finish_reason == "length":
            dropped["answer cut at its token limit"] += 1
        elif record.budget_reached and budget_cut_weight == 0:
            dropped["thinking cut by the budget"] += 1
        elif record.kind == "shadow_check" and _agreed(record, matches):
            dropped["a shadow check the edge answered right"] += 1
        else:
            key = normalize(record.query)
            if key in chosen:
                dropped["duplicate query"] += 1
            weight = budget_cut_weight if record.budget_reached else 1.0
            chosen[key] = (record, weight * field_weight if record.kind == "shadow_check" else weight)
    records = list(chosen.values())
    if learn_reasoning is None:
        learn_reasoning = bool(records) and sum(bool(r.reasoning) for r, _ in records) * 2 > len(records)
    examples = []
    corrections = 0
    for record, weight in records:
        if learn_reasoning and not record.reasoning:
            dropped["no reasoning recorded"] += 1
            continue
        examples.append(TrainingExample(record.query, _target(record, learn_reasoning), weight, record.answer))
        corrections += record.kind == "shadow_check"
    return TrainingSet(
        examples=examples, read=report, dropped=dropped, reasoning=learn_reasoning, field_corrections=corrections
    )
