"""Escalations as training data: every finished cloud session with edge features.

One JSON object per line (JSONL), appended as sessions complete, so the model
kit can distil the next student from what the fleet really escalated::

    {"request_id": ..., "device_id": ..., "query": ..., "answer": ...,
     "reasoning_tokens": 57, "budget_reached": false,
     "producer": {"name": "edge-student", "version": 2, "sha256": "..."},
     "features": [0.12, -0.3, ...], "created_at": "2026-11-24T16:00:00Z"}

:func:`read_escalations` is the reader; it skips a torn last line (a crash
mid-write) instead of failing the whole file.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["Escalation", "EscalationLog", "read_escalations"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Escalation:
    request_id: str
    device_id: str
    query: str
    answer: str
    reasoning_tokens: int
    budget_reached: bool
    producer: dict[str, object]
    features: list[float]
    created_at: str


class EscalationLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: Escalation) -> None:
        line = json.dumps(asdict(record), separators=(",", ":")) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)

    @staticmethod
    def now() -> str:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_escalations(path: Path) -> list[Escalation]:
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(Escalation(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as exc:
                log.warning("%s:%d: skipping an unreadable record (%s)", path, number, exc)
    return records
