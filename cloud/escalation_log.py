"""The cloud's escalation log: every finished session with edge features, appended as JSONL.

The record format and its reader are :mod:`edgecloud.shared.escalations.records` (the contract with
``edgecloud models improve``, which trains the next edge student on them). Lines are appended
under a lock, one ``write`` each, so a crash tears at most the last line, which the reader skips.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edgecloud.cloud.engine import GenerationResult
from edgecloud.shared.escalations.records import EdgeView, Escalation, read_escalations
from edgecloud.shared.reasoner.session import EdgeHint, ThinkParams

__all__ = ["EdgeView", "Escalation", "EscalationLog", "escalation_record", "read_escalations"]


class EscalationLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: Escalation) -> None:
        line = json.dumps(record.to_dict(), separators=(",", ":")) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)

    @staticmethod
    def now() -> str:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def escalation_record(
    params: ThinkParams, features: np.ndarray | None, budget: int, result: GenerationResult
) -> Escalation:
    """The log's record of a finished session: what the edge sent (its features, its view), and the
    cloud's answer and reasoning."""
    encoded = params.features
    producer = {} if encoded is None else {
        "name": encoded.model_name, "version": encoded.model_version, "sha256": encoded.model_sha256
    }  # fmt: skip
    return Escalation(
        request_id=params.request_id,
        device_id=params.device_id,
        query=params.query,
        answer=result.answer,
        reasoning_tokens=result.usage.reasoning_tokens,
        budget_reached=result.budget_reached,
        producer=producer,
        features=[] if features is None else [float(x) for x in features.ravel()],
        created_at=EscalationLog.now(),
        reasoning=result.reasoning,
        budget=budget,
        finish_reason=result.finish_reason,
        edge=_edge_view(params.hint),
        messages=[m.to_dict() for m in params.messages],
        kind="shadow_check" if params.priority == "verification" else "escalation",
    )


def _edge_view(hint: EdgeHint | None) -> EdgeView | None:
    """What the edge said before escalating."""
    if hint is None:
        return None
    return EdgeView(answer=hint.answer, confidence=hint.confidence, estimated_difficulty=hint.estimated_difficulty)
