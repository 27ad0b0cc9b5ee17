"""What the hardening costs the happy path: before and after, side by side in one run.

Issue 14's target: nothing in the happy path slower than before by more than 5%. This runs
``swap_under_load.py`` (requests per second while ten signed bundles are hot-swapped over MQTT)
and ``fleet_scale.py`` (1000 simulated devices: a staged rollout from create to COMPLETED) from two
trees, alternating (before, after, before, after, ...): ``--before REF`` (default: the commit before
the first issue 14 change) checked out as a git worktree, and this working tree. Each tree's own
benchmark scripts drive its own code; only the machine, the broker binary and the models are
shared. Prints JSON with every run, each metric's median per tree and the ratio after / before;
writes ``security_overhead.png``.

    python benchmarks/security_overhead.py [--rounds 3] [--before REF] [--out DIR]

Run it alone: on two cores a build or a test run beside it measures the contention.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BEFORE_ISSUE_14 = "7905e57^"
"""The parent of "Signed fleet commands, the shared layer (issue 14)", the first change of the hardening."""

# The package folders as `pip install -e .` maps them under `edgecloud` (pyproject's package-dir).
PACKAGE_DIRS = ("shared", "edge", "cloud", "fleet", "modelkit", "proto", "demo")

# Imports `edgecloud` from the given folder before the script runs, so that the script's own
# sys.path changes cannot mix the two trees: every edgecloud module comes from that tree.
RUNNER = (
    "import runpy, sys; root, script = sys.argv[1], sys.argv[2]; sys.path.insert(0, root); import edgecloud; "
    "assert edgecloud.__file__.startswith(root), edgecloud.__file__; "
    "sys.argv = [script, *sys.argv[3:]]; runpy.run_path(script, run_name='__main__')"
)

METRICS = {
    # name: (benchmark, path in its JSON, higher is better)
    "swap_requests_per_s": ("swap_under_load", ("requests_per_s",), True),
    "swap_failed_requests": ("swap_under_load", ("failed_requests",), False),
    "rollout_to_completed_s": ("fleet_scale", ("rollout", "to_completed_s"), False),
    "rollout_publish_to_active_ms_p50": ("fleet_scale", ("rollout", "device_publish_to_active_ms", "p50"), False),
    "telemetry_ingest_lag_ms_p50": ("fleet_scale", ("telemetry", "ingest_lag_ms", "p50"), False),
}


def prepare_before(ref: str, work: Path) -> Path:
    """A worktree of ``ref`` and a folder whose ``edgecloud`` package maps onto it; that folder."""
    tree = work / "tree"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), ref], check=True, capture_output=True
    )
    package = work / "pkg" / "edgecloud"
    package.mkdir(parents=True)
    for entry in (tree / "edgecloud").iterdir():
        (package / entry.name).symlink_to(entry)
    for name in PACKAGE_DIRS:
        if (tree / name).is_dir():
            (package / name).symlink_to(tree / name)
    build = "import runpy, sys; sys.path.insert(0, sys.argv[1]); import edgecloud; runpy.run_module('edgecloud.proto.build', run_name='__main__')"
    subprocess.run([sys.executable, "-c", build, str(package.parent)], check=True, capture_output=True, cwd=tree)
    return tree


def run_one(tree: Path, root: Path, benchmark: str, extra: list[str], out: Path) -> dict[str, Any]:
    script = tree / "benchmarks" / f"{benchmark}.py"
    argv = [sys.executable, "-c", RUNNER, str(root), str(script), "--out", str(out), *extra]
    started = time.monotonic()
    done = subprocess.run(argv, check=False, cwd=tree, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{benchmark} in {tree} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads((out / f"{benchmark}.json").read_text())
    report["_wall_s"] = time.monotonic() - started
    return report


def pick(report: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = report
    for key in path:
        value = value[key]
    return float(value)


def _rev(ref: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", ref], check=True, capture_output=True, text=True)
    return done.stdout.strip()


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in summary["metrics"] if summary["metrics"][n]["ratio"] is not None]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ratios = [summary["metrics"][n]["ratio"] for n in names]
    ax.barh(names, ratios, color=["tab:green" if summary["metrics"][n]["within_5pct"] else "tab:red" for n in names])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("after / before (median of rounds)")
    ax.set_title(f"issue 14's hardening, {summary['rounds']} rounds alternating, same machine")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _compare(runs: dict[str, list[dict[str, Any]]], chosen: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Each metric of the chosen benchmarks: every round's value before and after, their medians and ratio."""
    metrics = {}
    for name, (benchmark, path, higher_better) in METRICS.items():
        if benchmark not in chosen:
            continue
        before = [pick(r[benchmark], path) for r in runs["before"]]
        after = [pick(r[benchmark], path) for r in runs["after"]]
        b, a = statistics.median(before), statistics.median(after)
        ratio = a / b if b else None
        slower = None if ratio is None else (1 / ratio if higher_better else ratio)
        metrics[name] = {
            "before": before,
            "after": after,
            "median_before": b,
            "median_after": a,
            "ratio": ratio,
            "higher_is_better": higher_better,
            "within_5pct": None if slower is None else slower <= 1.05,
        }
    return metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--before", default=BEFORE_ISSUE_14, help=f"git ref of the tree before (default: {BEFORE_ISSUE_14})"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument(
        "--only", choices=("swap_under_load", "fleet_scale"), default=None,
        help="run one of the two benchmarks (more rounds of it in the same time)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "security_overhead")
    args = parser.parse_args()
    extra = {
        "swap_under_load": ["--bundle", str(REPO / "models" / "edge-student")],
        "fleet_scale": ["--devices", str(args.devices)],
    }
    chosen = (args.only,) if args.only else ("swap_under_load", "fleet_scale")
    work = Path(tempfile.mkdtemp(prefix="edgecloud-overhead-"))
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    try:
        before_tree = prepare_before(args.before, work)
        trees = {"before": (before_tree, work / "pkg"), "after": (REPO, REPO)}
        for round_ in range(args.rounds):
            for side in ("before", "after") if round_ % 2 == 0 else ("after", "before"):
                tree, root = trees[side]
                row: dict[str, Any] = {"round": round_}
                for benchmark in chosen:
                    out = work / f"{side}-{round_}-{benchmark}"
                    report = run_one(tree, root, benchmark, extra[benchmark], out)
                    row[benchmark] = report
                runs[side].append(row)
                print(f"round {round_} {side}: done", file=sys.stderr, flush=True)
    finally:
        remove = ["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / "tree")]
        subprocess.run(remove, check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    metrics = _compare(runs, chosen)
    summary = {
        "benchmark": "security_overhead",
        "before_ref": args.before,
        "before_commit": _rev(args.before),
        "after_commit": _rev("HEAD"),
        "rounds": args.rounds,
        "devices": args.devices,
        "benchmarks": list(chosen),
        "load_avg_1m_before": load_before,
        "load_avg_1m_after": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "metrics": metrics,
    }
    print(json.dumps(summary, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "security_overhead.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, args.out / "security_overhead.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
