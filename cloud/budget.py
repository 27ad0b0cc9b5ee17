"""Choosing a thinking budget when the request leaves it to the server.

Two signals, in order:

1. **The query's features.** The cloud remembers, for recent finished
   sessions, the edge's feature vector and how many reasoning tokens the
   model really used. A new query whose nearest neighbours (cosine >=
   ``neighbour_cosine``, same producing edge model) needed at most *n* tokens
   gets ``n * headroom + margin``: generous enough that the model stops on its
   own, tight enough to stop a runaway chain early.
2. **The edge's hint.** Without close neighbours, the estimated difficulty
   interpolates between ``minimum`` and ``maximum``; with no hint either, the
   budget is ``default``.

An explicit ``max_reasoning_tokens`` always wins (clamped to ``maximum``). A request whose caller
chose the cloud (``requested_route: cloud``) is never given less than ``default`` by either signal:
the edge's view of a query it was not asked to triage must not cut the thinking the caller wanted.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.reasoner.session import EdgeHint

__all__ = ["BudgetConfig", "BudgetPolicy"]


@dataclass(frozen=True, kw_only=True)
class BudgetConfig:
    default: int = 256
    """Budget when neither features nor hint say anything."""
    minimum: int = 32
    maximum: int = 1024
    headroom: float = 1.5
    margin: int = 32
    neighbours: int = 8
    neighbour_cosine: float = 0.97
    memory: int = 4096
    """Finished sessions remembered per producing model."""

    def __post_init__(self) -> None:
        if not 0 < self.minimum <= self.default <= self.maximum:
            raise ConfigError("budget: need 0 < minimum <= default <= maximum")
        if self.headroom < 1 or self.margin < 0 or self.neighbours < 1 or self.memory < 1:
            raise ConfigError("budget: headroom >= 1, margin >= 0, neighbours >= 1, memory >= 1")
        if not 0 < self.neighbour_cosine <= 1:
            raise ConfigError("budget: neighbour_cosine must be in (0, 1]")


class _Memory:
    """A ring of unit feature vectors and the reasoning tokens each session used."""

    def __init__(self, dim: int, size: int) -> None:
        self.vectors = np.zeros((size, dim), dtype=np.float32)
        self.used = np.zeros(size, dtype=np.int64)
        self.count = 0

    def add(self, unit: np.ndarray, used: int) -> None:
        slot = self.count % len(self.used)
        self.vectors[slot], self.used[slot] = unit, used
        self.count += 1

    def nearest_used(self, unit: np.ndarray, k: int, min_cosine: float) -> np.ndarray:
        filled = min(self.count, len(self.used))
        if filled == 0:
            return self.used[:0]
        cosines = self.vectors[:filled] @ unit
        top = np.argsort(-cosines)[:k]
        return self.used[top[cosines[top] >= min_cosine]]


class BudgetPolicy:
    def __init__(self, config: BudgetConfig | None = None) -> None:
        self.config = config or BudgetConfig()
        self._memories: dict[str, _Memory] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _unit(vector: np.ndarray) -> np.ndarray | None:
        norm = float(np.linalg.norm(vector))
        return (vector / norm).astype(np.float32) if norm > 0 else None

    def choose(
        self,
        requested: int | None,
        *,
        hint: EdgeHint | None = None,
        features: np.ndarray | None = None,
        producer: str = "",
        at_least_default: bool = False,
    ) -> tuple[int, str]:
        """The budget and which signal chose it: ``request``, ``features``, ``hint`` or ``default``.
        ``at_least_default``: the signals may raise the budget above ``default``, never lower it."""
        c = self.config
        if requested is not None:
            return min(requested, c.maximum), "request"
        floor = c.default if at_least_default else c.minimum
        if features is not None and (unit := self._unit(features)) is not None:
            with self._lock:
                memory = self._memories.get(producer)
                used = memory.nearest_used(unit, c.neighbours, c.neighbour_cosine) if memory else None
            if used is not None and len(used):
                budget = int(used.max() * c.headroom) + c.margin
                return max(floor, min(c.maximum, budget)), "features"
        if hint is not None and hint.estimated_difficulty > 0:
            return max(floor, round(c.minimum + hint.estimated_difficulty * (c.maximum - c.minimum))), "hint"
        return c.default, "default"

    def observe(self, features: np.ndarray, producer: str, reasoning_tokens: int, budget_reached: bool) -> None:
        """Remember what a finished session used. A session cut by its budget says
        nothing about what it needed, so it is not remembered."""
        unit = self._unit(features)
        if unit is None or budget_reached:
            return
        with self._lock:
            memory = self._memories.get(producer)
            if memory is None or memory.vectors.shape[1] != unit.shape[0]:
                memory = self._memories[producer] = _Memory(unit.shape[0], self.config.memory)
            memory.add(unit, reasoning_tokens)
