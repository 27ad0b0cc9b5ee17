"""Confidence calibration for triage: Platt scaling and threshold choice.

The edge model's raw signals are the log-probabilities of its greedy answer
tokens. A logistic model over two summaries of them (their sum and their
minimum) maps them to the probability that the answer is right; it is fitted
on a validation split and stored in the bundle manifest. The triage threshold
is the lowest confidence at which the answers kept on the edge are still right
at the target precision: on the validation answers themselves, or (the build's
choice) with a one-sided Wilson lower confidence bound on that precision, so
that a validation split that happens to hold few wrong answers does not set a
threshold fresh queries miss (selective prediction with a guaranteed risk,
Geifman and El-Yaniv, 2017).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Calibration", "choose_threshold", "confidence_signals", "fit_platt", "wilson_lower_bound"]


def confidence_signals(token_logprobs: Sequence[float]) -> tuple[float, float]:
    """``(sum, min)`` of the answer's token log-probabilities (0, 0 for no tokens)."""
    if not token_logprobs:
        return 0.0, 0.0
    return float(sum(token_logprobs)), float(min(token_logprobs))


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """``P(correct) = sigmoid(w_sum * sum_logprob + w_min * min_logprob + bias)``."""

    w_sum: float
    w_min: float
    bias: float
    threshold: float
    """Keep an answer on the edge when its confidence is at least this."""
    target_precision: float
    validation: dict[str, float | None]
    """Figures measured on the validation split at ``threshold`` (None: undefined, e.g. nothing kept)."""
    method: str = "platt"

    def __post_init__(self) -> None:
        for name in ("w_sum", "w_min", "bias", "threshold", "target_precision"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"calibration {name} must be a finite number, got {value!r}")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"calibration threshold must be in [0, 1], got {self.threshold}")
        if self.method != "platt":
            raise ValueError(f"unknown calibration method {self.method!r}")

    def confidence(self, token_logprobs: Sequence[float]) -> float:
        total, worst = confidence_signals(token_logprobs)
        z = self.w_sum * total + self.w_min * worst + self.bias
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Calibration:
        try:
            return cls(**data)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ValueError(f"bad calibration record: {exc}") from None


def _weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    out = np.asarray(weights, dtype=np.float64)
    if out.shape != (n,) or not np.all(np.isfinite(out)) or np.any(out <= 0):
        raise ValueError(f"weights must be {n} finite numbers > 0")
    return out


def fit_platt(
    signals: np.ndarray,
    correct: np.ndarray,
    *,
    l2: float = 1e-3,
    iterations: int = 50,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Logistic regression by Newton's method; returns ``[w_sum, w_min, bias]``.

    ``signals`` is ``(n, 2)`` (see :func:`confidence_signals`), ``correct`` is
    ``(n,)`` of 0/1; ``weights`` (``(n,)``, > 0) counts an answer as that many.
    """
    x = np.hstack([np.asarray(signals, dtype=np.float64), np.ones((len(signals), 1))])
    y = np.asarray(correct, dtype=np.float64)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError("signals and correct must be non-empty and of equal length")
    v = _weights(weights, len(y))
    w = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -500, 500)))
        gradient = x.T @ (v * (p - y)) + l2 * w
        hessian = (x * (v * p * (1 - p))[:, None]).T @ x + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.max(np.abs(step)) < 1e-9:
            break
    return w


def wilson_lower_bound(successes: np.ndarray, trials: np.ndarray, confidence_level: float) -> np.ndarray:
    """One-sided lower bound of a proportion at ``confidence_level`` (Wilson score interval)."""
    from statistics import NormalDist

    if not 0.5 <= confidence_level < 1:
        raise ValueError(f"confidence_level must be in [0.5, 1), got {confidence_level}")
    z = NormalDist().inv_cdf(confidence_level)
    n = np.asarray(trials, dtype=np.float64)
    p = np.asarray(successes, dtype=np.float64) / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def choose_threshold(
    confidence: np.ndarray,
    correct: np.ndarray,
    *,
    target_precision: float,
    min_kept: int = 20,
    confidence_level: float | None = None,
    weights: np.ndarray | None = None,
) -> tuple[float, dict[str, float | None]]:
    """Lowest threshold whose kept set (confidence >= t) reaches ``target_precision``.

    With ``confidence_level`` (e.g. 0.95) it is the kept set's Wilson lower
    bound on precision that must reach the target, not its precision here.
    Returns the threshold and the precision and coverage it gives on this
    data (and the bound, when asked for); 1.0 with coverage 0 (keep nothing)
    if no threshold qualifies.

    ``weights`` count each answer as that many of the traffic it stands for (a sampled answer
    stands for 1/share): precision and coverage are weighted, and the bound's evidence is the
    kept set's effective sample size (Kish: (sum w)^2 / sum w^2), never the weights' sum.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    v = _weights(weights, len(conf))
    order = np.argsort(-conf, kind="stable")
    conf, ok, v = conf[order], ok[order], v[order]
    count = np.arange(1, len(conf) + 1)
    kept = np.cumsum(v)
    precision = np.cumsum(v * ok) / kept
    evidence = kept**2 / np.cumsum(v * v)  # == count without weights
    bound = (
        precision if confidence_level is None else wilson_lower_bound(precision * evidence, evidence, confidence_level)
    )
    # Only cut between distinct confidences.
    boundary = np.append(conf[1:] < conf[:-1], True)
    best = -1
    for i in range(len(conf)):
        if not boundary[i]:
            continue
        if bound[i] >= target_precision and count[i] >= min_kept:
            best = i
    extra = {} if confidence_level is None else {"confidence_level": confidence_level}
    if best < 0:
        return 1.0, {"precision": None, "coverage": 0.0, "kept": 0.0, **extra}
    figures: dict[str, float | None] = {
        "precision": float(precision[best]),
        "coverage": float(kept[best] / kept[-1]),
        "kept": float(count[best]),
    }
    if confidence_level is not None:
        figures |= {"precision_lower_bound": float(bound[best]), **extra}
    return float(conf[best]), figures
