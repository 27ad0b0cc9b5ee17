"""The cloud's escalation log: every finished session with edge features, appended as JSONL.

The record format and its reader are :mod:`edgecloud.shared.escalations` (the contract with
``edgecloud models improve``, which trains the next edge student on them). Lines are appended
under a lock, one ``write`` each, so a crash tears at most the last line, which the reader skips.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

from edgecloud.shared.escalations import EdgeView, Escalation, read_escalations

__all__ = ["EdgeView", "Escalation", "EscalationLog", "read_escalations"]


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
