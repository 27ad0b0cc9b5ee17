"""Routing quality of edge triage, in RouteLLM's terms, on fresh mixed test queries.

Every query is answered by both models: the shipped int8 ONNX student through
the edge runtime (one thread; its calibrated confidence is the router's score)
and the cloud teacher with thinking (budget 256, batched greedy decoding). A
router then only decides which of the two answers counts, so one pass of each
model gives the whole trade-off curve. Reported, as one JSON object:

* edge-only and cloud-only accuracy, and the system accuracy and escalation
  share at the bundle's calibrated threshold (routed by :func:`edgecloud.edge.triage.decide`);
* for the confidence router, a random router and the oracle router (escalate
  exactly what the edge gets wrong): APGR, the area under PGR against the
  escalation share, ``PGR = (acc - edge_acc) / (cloud_acc - edge_acc)``, and
  the escalation share needed to reach 95% of cloud-only accuracy (and, as in
  RouteLLM, to recover 95% of the gap, PGR >= 0.95);
* the target check: system accuracy >= 97% of cloud-only while escalating at
  most the multi-step share (k >= 2) + 5 points, at the calibrated threshold
  and at the best threshold of the sweep.

Curves join the operating points of consecutive thresholds linearly (a point
between two is reached by mixing them at random), and the random router is
its exact expectation. Usage::

    python benchmarks/routing_quality.py [--n 2000] [--seed 7331] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from edgecloud.cloud.transformers_engine import LoadedModel
from edgecloud.edge.runtime import EdgeModel
from edgecloud.edge.triage import Requested, Route, TriageInput, TriagePolicy, decide, estimate_difficulty
from edgecloud.modelkit.arithmetic.evaluate import ModelPaths, edge_answers, per_k_accuracy, run_batched
from edgecloud.modelkit.arithmetic.task import EVAL_MIX, Problem, Split, generate, parse_answer

CLOUD_SHARE = 0.95
"""CPT: the escalation share needed to reach this share of cloud-only accuracy."""
TARGET_ACCURACY_RATIO = 0.98
TARGET_ESCALATION_SLACK = 0.03


@dataclass(frozen=True)
class Curve:
    """System accuracy against escalation share, ``x`` ascending from 0 to 1."""

    x: np.ndarray
    accuracy: np.ndarray
    threshold: list[float | None]
    """The score a query needs to stay on the edge at each point (None: none stays)."""


def router_curve(keep_score: np.ndarray, edge_ok: np.ndarray, cloud_ok: np.ndarray) -> Curve:
    """Keep the queries with the highest ``keep_score`` on the edge, escalate the rest.

    One point per distinct score (a threshold cannot split tied queries), from
    keeping everything (x = 0) to escalating everything (x = 1).
    """
    n = len(keep_score)
    score = np.nan_to_num(np.asarray(keep_score, dtype=np.float64), nan=-np.inf)
    order = np.argsort(-score, kind="stable")
    score = score[order]
    edge_hits = np.concatenate([[0], np.cumsum(edge_ok[order])])
    cloud_hits = np.concatenate([[0], np.cumsum(cloud_ok[order])])
    kept = [n] + [m for m in range(n - 1, 0, -1) if score[m - 1] != score[m]] + [0]
    kept_arr = np.asarray(kept)
    accuracy = (edge_hits[kept_arr] + cloud_hits[n] - cloud_hits[kept_arr]) / n
    thresholds = [float(score[m - 1]) if m else None for m in kept]
    return Curve((n - kept_arr) / n, accuracy, thresholds)


def oracle_curve(edge_ok: np.ndarray, cloud_ok: np.ndarray) -> Curve:
    """The best any router can do: escalate first what only the cloud gets right, then
    what neither does, then what both do, last what only the edge gets right. Ties
    are broken by position, so every query is its own point of the curve."""
    n = len(edge_ok)
    keep_score = 2.0 * edge_ok - cloud_ok + np.arange(n) / (2.0 * n)
    curve = router_curve(keep_score, edge_ok, cloud_ok)
    return Curve(curve.x, curve.accuracy, [None] * len(curve.x))


def share_to_reach(curve: Curve, target: float) -> float | None:
    """The least escalation share whose (interpolated) accuracy reaches ``target``; None if none does."""
    hits = np.flatnonzero(curve.accuracy >= target - 1e-12)
    if not len(hits):
        return None
    i = int(hits[0])
    if i == 0:
        return float(curve.x[0])
    x0, x1, y0, y1 = curve.x[i - 1], curve.x[i], curve.accuracy[i - 1], curve.accuracy[i]
    return float(x0 + (target - y0) / (y1 - y0) * (x1 - x0))


def router_summary(curve: Curve, edge_acc: float, cloud_acc: float) -> dict[str, float | None]:
    gap = cloud_acc - edge_acc
    pgr = (curve.accuracy - edge_acc) / gap if gap > 0 else np.full_like(curve.accuracy, np.nan)
    return {
        "apgr": float(np.trapezoid(pgr, curve.x)),
        f"cpt_{round(100 * CLOUD_SHARE)}_cloud_accuracy": share_to_reach(curve, CLOUD_SHARE * cloud_acc),
        f"cpt_{round(100 * CLOUD_SHARE)}_pgr": share_to_reach(curve, edge_acc + CLOUD_SHARE * gap) if gap > 0 else None,
        "max_accuracy": float(curve.accuracy.max()),
    }


def target_check(curve: Curve, cloud_acc: float, max_escalation: float) -> dict[str, object]:
    """The best point of the sweep within the escalation cap, and the cheapest reaching the accuracy target."""
    target = TARGET_ACCURACY_RATIO * cloud_acc
    within = np.flatnonzero(curve.x <= max_escalation + 1e-12)
    best = int(within[np.argmax(curve.accuracy[within])])
    reaching = np.flatnonzero(curve.accuracy >= target - 1e-12)
    cheapest = int(reaching[0]) if len(reaching) else None
    return {
        "best_within_cap": _point(curve, best, cloud_acc, target, max_escalation),
        "cheapest_reaching_accuracy": (
            None if cheapest is None else _point(curve, cheapest, cloud_acc, target, max_escalation)
        ),
    }


def _point(curve: Curve, i: int, cloud_acc: float, target: float, max_escalation: float) -> dict[str, object]:
    accuracy, share = float(curve.accuracy[i]), float(curve.x[i])
    return {
        "threshold": curve.threshold[i],
        "system_accuracy": accuracy,
        "of_cloud": accuracy / cloud_acc,
        "escalation_share": share,
        "met": accuracy >= target - 1e-12 and share <= max_escalation + 1e-12,
    }


def plot(
    out_file: Path,
    curves: dict[str, Curve],
    edge_acc: float,
    cloud_acc: float,
    calibrated: tuple[float, float],
    max_escalation: float,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.6), dpi=120)
    styles = {"confidence": ("C0", "-"), "random": ("grey", ":"), "oracle": ("C2", "--")}
    for name, curve in curves.items():
        color, ls = styles[name]
        ax.plot(100 * curve.x, 100 * curve.accuracy, color=color, ls=ls, lw=1.6, label=f"{name} router")
    ax.axhline(100 * cloud_acc, color="C3", lw=1, label=f"cloud only ({100 * cloud_acc:.1f}%)")
    ax.axhline(100 * edge_acc, color="C1", lw=1, label=f"edge only ({100 * edge_acc:.1f}%)")
    target = 100 * TARGET_ACCURACY_RATIO * cloud_acc
    ax.axhline(target, color="C3", lw=0.8, ls="-.", alpha=0.6, label=f"target: {TARGET_ACCURACY_RATIO:.0%} of cloud")
    ax.axvline(
        100 * max_escalation,
        color="k",
        lw=0.8,
        ls="-.",
        alpha=0.6,
        label=f"target: multi-step share + {100 * TARGET_ESCALATION_SLACK:.0f} pts",
    )
    ax.plot(100 * calibrated[0], 100 * calibrated[1], "o", color="C0", ms=7, mec="k", label="calibrated threshold")
    ax.set_xlabel("escalated to the cloud (% of queries)")
    ax.set_ylabel("system accuracy (%)")
    ax.set_title("Routing quality: accuracy vs escalation share")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file)
    plt.close(fig)


def _correct(problems: Sequence[Problem], texts: Sequence[str]) -> np.ndarray:
    return np.asarray([parse_answer(t) == p.answer for p, t in zip(problems, texts, strict=True)])


@dataclass(frozen=True)
class Answered:
    """Both models' answers to every query, and how long each model took."""

    edge: EdgeModel
    answers: list
    edge_s: float
    gens: list
    cloud_s: float


def answer_all(problems: list[Problem], models: Path, budget: int, batch_size: int, threads: int) -> Answered:
    """The int8 student on one thread, then the teacher thinking, batched, on ``threads``."""
    paths = ModelPaths(models)
    started = time.perf_counter()
    edge = EdgeModel.from_bundle(paths.student_bundle, threads=1)
    answers = edge_answers(edge, problems, "edge int8")
    edge_s = time.perf_counter() - started

    started = time.perf_counter()
    torch.set_num_threads(threads)
    teacher = LoadedModel.from_dir(paths.teacher, device="cpu")
    gens = run_batched(
        teacher.model,
        teacher.tokenizer,
        problems,
        thinking=True,
        budget=budget,
        batch_size=batch_size,
        desc="cloud teacher",
    )
    return Answered(edge, answers, edge_s, gens, time.perf_counter() - started)


def calibrated(
    run: Answered, difficulty: np.ndarray, edge_ok: np.ndarray, cloud_ok: np.ndarray, ks: np.ndarray
) -> dict[str, object]:
    """The calibrated operating point, routed by the daemon's own decision."""
    edge_acc, cloud_acc = float(edge_ok.mean()), float(cloud_ok.mean())
    policy = TriagePolicy.from_calibration(run.edge.calibration)
    decisions = [
        decide(policy, TriageInput(a.confidence, d, Requested.AUTO, cloud_healthy=True))
        for a, d in zip(run.answers, difficulty, strict=True)
    ]
    escalated = np.asarray([d.route is Route.CLOUD for d in decisions])
    system_ok = np.where(escalated, cloud_ok, edge_ok)
    cal_acc, cal_share = float(system_ok.mean()), float(escalated.mean())
    kept = ~escalated
    gap = cloud_acc - edge_acc
    return {
        "threshold": policy.threshold,
        "system_accuracy": cal_acc,
        "of_cloud": cal_acc / cloud_acc,
        "escalation_share": cal_share,
        "pgr": (cal_acc - edge_acc) / gap if gap > 0 else None,
        "kept": int(kept.sum()),
        "kept_precision": float(edge_ok[kept].mean()) if kept.any() else None,
        "kept_by_k": {str(k): int((kept & (ks == k)).sum()) for k in sorted(set(ks.tolist()))},
        "reasons": dict(Counter(d.reason for d in decisions)),
    }


def models_used(run: Answered, problems: list[Problem], budget: int, batch_size: int, threads: int) -> dict:
    """How each model ran and its accuracy per k (the report's ``edge`` and ``cloud``)."""
    gens = run.gens
    return {
        "edge": {
            "model": "int8 onnx",
            "threads": 1,
            "elapsed_s": run.edge_s,
            "accuracy": per_k_accuracy(problems, [a.text for a in run.answers]),
        },
        "cloud": {
            "thinking_budget": budget,
            "batch_size": batch_size,
            "threads": threads,
            "elapsed_s": run.cloud_s,
            "accuracy": per_k_accuracy(problems, [g.answer_text for g in gens]),
            "mean_reasoning_tokens": float(np.mean([g.reasoning_tokens for g in gens])),
            "max_reasoning_tokens": int(max(g.reasoning_tokens for g in gens)),
            "budget_forced": int(sum(g.forced for g in gens)),
            "no_answer": int(sum(parse_answer(g.answer_text) is None for g in gens)),
        },
    }


def target(cal: dict, curves: dict[str, Curve], cloud_acc: float, max_escalation: float) -> dict[str, object]:
    """The target check, at the calibrated threshold and at the best points of the sweeps."""
    needed = TARGET_ACCURACY_RATIO * cloud_acc
    return {
        "rule": f"system accuracy >= {TARGET_ACCURACY_RATIO:.0%} of cloud-only, escalation <= multi-step share + "
        f"{100 * TARGET_ESCALATION_SLACK:.0f} pts",
        "accuracy_needed": needed,
        "max_escalation_share": max_escalation,
        "calibrated_met": cal["system_accuracy"] >= needed and cal["escalation_share"] <= max_escalation,
        "confidence_sweep": target_check(curves["confidence"], cloud_acc, max_escalation),
        "oracle_sweep": target_check(curves["oracle"], cloud_acc, max_escalation),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--n", type=int, default=None, help="mixed test queries (default 2000; 200 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke run on 200 queries")
    parser.add_argument("--seed", type=int, default=7331, help="TEST-split seed (used by no other benchmark or test)")
    parser.add_argument("--budget", type=int, default=256, help="the teacher's thinking budget")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the teacher")
    parser.add_argument("--out", type=Path, default=None, help="also write routing_quality.json and .png here")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    n = args.n if args.n is not None else (200 if args.quick else 2000)
    problems = generate(n, args.seed, Split.TEST)
    ks = np.asarray([p.k for p in problems])
    run = answer_all(problems, args.models, args.budget, args.batch_size, args.threads)

    edge_ok = _correct(problems, [a.text for a in run.answers])
    cloud_ok = _correct(problems, [g.answer_text for g in run.gens])
    confidence = np.asarray([a.confidence for a in run.answers])
    difficulty = np.asarray(
        [estimate_difficulty(a.token_logprobs, a.input_tokens, abstained=a.abstained) for a in run.answers]
    )
    edge_acc, cloud_acc = float(edge_ok.mean()), float(cloud_ok.mean())
    multi_share = float((ks >= 2).mean())
    max_escalation = multi_share + TARGET_ESCALATION_SLACK
    cal = calibrated(run, difficulty, edge_ok, cloud_ok, ks)
    curves = {
        "confidence": router_curve(confidence, edge_ok, cloud_ok),
        "random": Curve(np.array([0.0, 1.0]), np.array([edge_acc, cloud_acc]), [None, None]),
        "oracle": oracle_curve(edge_ok, cloud_ok),
    }
    extra = {"difficulty": router_curve(-difficulty, edge_ok, cloud_ok)}
    oracle_acc = float((edge_ok | cloud_ok).mean())

    report: dict[str, object] = {
        "benchmark": "routing_quality",
        "n": n,
        "seed": args.seed,
        "split": Split.TEST.name,
        "mix": {str(k): v for k, v in EVAL_MIX.items()},
        "drawn_k": {str(k): int(v) for k, v in sorted(Counter(ks.tolist()).items())},
        "multi_step_share": multi_share,
        **models_used(run, problems, args.budget, args.batch_size, args.threads),
        "edge_only_accuracy": edge_acc,
        "cloud_only_accuracy": cloud_acc,
        "calibrated": cal,
        "routers": {name: router_summary(curve, edge_acc, cloud_acc) for name, curve in {**curves, **extra}.items()},
        "oracle_point": {
            "escalation_share": 1.0 - edge_acc,
            "system_accuracy": oracle_acc,
            "of_cloud": oracle_acc / cloud_acc,
        },
        "signals": {
            "confidence_auroc_edge_correct": _auroc(confidence, edge_ok),
            "difficulty_auroc_multi_step": _auroc(difficulty, ks >= 2),
            "mean_difficulty_by_k": {str(k): float(difficulty[ks == k].mean()) for k in sorted(set(ks.tolist()))},
        },
        "target": target(cal, curves, cloud_acc, max_escalation),
        "machine": _machine(),
    }
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        png = args.out / "routing_quality.png"
        plot(png, curves, edge_acc, cloud_acc, (cal["escalation_share"], cal["system_accuracy"]), max_escalation)
        report["png"] = str(png)
        (args.out / "routing_quality.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def _machine() -> dict[str, object]:
    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _auroc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = score[positive], score[~positive]
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    value = float(greater / (len(pos) * len(neg)))
    return value if math.isfinite(value) else None


if __name__ == "__main__":
    sys.exit(main())
