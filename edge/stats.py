"""A rolling window of recent requests: what telemetry reports and what the
post-swap watch window judges (error rate and p99 latency since a moment)."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["RequestStats", "WindowSummary"]


@dataclass(frozen=True)
class WindowSummary:
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class RequestStats:
    def __init__(self, window: int = 5000) -> None:
        self._recent: collections.deque[tuple[float, str, float, bool]] = collections.deque(maxlen=window)
        self._lock = threading.Lock()
        self.totals: collections.Counter[str] = collections.Counter()
        self.errors = 0
        self.degraded = 0

    def record(self, route: str, latency_ms: float, *, ok: bool = True, degraded: bool = False) -> None:
        with self._lock:
            self._recent.append((time.monotonic(), route, latency_ms, ok))
            self.totals[route] += 1
            self.errors += not ok
            self.degraded += degraded

    def summary(self, *, since: float | None = None, route: str | None = None) -> WindowSummary:
        with self._lock:
            rows = [r for r in self._recent if (since is None or r[0] >= since) and (route is None or r[1] == route)]
        latencies = np.array([r[2] for r in rows if r[3]], dtype=np.float64)
        p50, p99 = np.percentile(latencies, [50, 99]).tolist() if latencies.size else [0.0, 0.0]
        return WindowSummary(len(rows), sum(not r[3] for r in rows), float(p50), float(p99))

    def by_route(self) -> dict[str, dict[str, float]]:
        with self._lock:
            routes = {r[1] for r in self._recent}
        return {route: {"p50": s.p50_ms, "p99": s.p99_ms} for route in routes if (s := self.summary(route=route))}
