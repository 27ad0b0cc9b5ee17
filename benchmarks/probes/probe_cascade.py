"""Probe: the base student and a reasoner as a pair on the edge, before building a two-model bundle.

The base answers first; what it is not confident of (its own calibrated threshold) goes to the
reasoner, whose answer is kept when it is confident by its own calibration; the rest would be
escalated. Both are int8 bundles on one thread each, on the same fresh test queries of the
evaluation mix as the base alone. Prints JSON per k: share kept on the edge, kept answers right,
edge latency (both models' time on the queries the reasoner saw). Usage::

    python benchmarks/probes/probe_cascade.py REASONER_BUNDLE [--base models/edge-student] [--n 2000]

``REASONER_BUNDLE``: e.g. the student ``models improve --keep-refused DIR`` kept in ``DIR/edge-student``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.support.cloud import REPO, machine_info, unique_problems
from edgecloud.edge.runtime import EdgeModel
from edgecloud.modelkit.arithmetic.task import parse_answer


def _confident(model: EdgeModel, answer) -> bool:  # type: ignore[no-untyped-def]
    return model.calibration is not None and answer.confidence >= model.calibration.threshold


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reasoner", type=Path)
    parser.add_argument("--base", type=Path, default=REPO / "models" / "edge-student")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=29)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    base, reasoner = EdgeModel.from_bundle(args.base), EdgeModel.from_bundle(args.reasoner)
    rows: dict[int, list[tuple[str, bool, float, float]]] = {}
    for problem in unique_problems(args.n, seed=args.seed):
        first = base.answer(problem.query)
        if _confident(base, first):
            by, answer, pair_ms = "base", first, first.latency_ms
        else:
            second = reasoner.answer(problem.query)
            by = "reasoner" if _confident(reasoner, second) else "cloud"
            answer, pair_ms = second, first.latency_ms + second.latency_ms
        right = parse_answer(answer.text) == problem.answer
        rows.setdefault(problem.k, []).append((by, right, first.latency_ms, pair_ms))

    def phase(items, pair: bool) -> dict[str, object]:  # type: ignore[no-untyped-def]
        kept = [(by, right) for by, right, *_ in items if by != "cloud" and (pair or by == "base")]
        return {
            "n": len(items),
            "kept_on_edge": len(kept) / len(items),
            "kept_right": sum(r for _, r in kept) / len(kept) if kept else None,
            "kept_by_reasoner": sum(by == "reasoner" for by, _ in kept) / len(items) if pair else 0.0,
            "edge_latency_ms_p50": statistics.median(p if pair else b for _, _, b, p in items),
            "edge_latency_ms_p90": sorted(p if pair else b for _, _, b, p in items)[int(0.9 * (len(items) - 1))],
        }

    every = [row for items in rows.values() for row in items]
    report = {
        "n": args.n,
        "base": {"all": phase(every, False), **{f"k{k}": phase(v, False) for k, v in sorted(rows.items())}},
        "pair": {"all": phase(every, True), **{f"k{k}": phase(v, True) for k, v in sorted(rows.items())}},
        "thresholds": {"base": base.calibration.threshold, "reasoner": reasoner.calibration.threshold},
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "machine": machine_info(1),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
