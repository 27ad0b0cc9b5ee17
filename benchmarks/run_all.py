"""Run the benchmarks and write ``benchmarks/RESULTS.md``: tables and plots, each comparison a ratio
measured within one run, with the machine it ran on.

Each benchmark runs as its own subprocess (this interpreter, cwd = the repository root), its output
folder at ``<results>/<name>/``, with a per-benchmark timeout and a live progress line on stderr. Its
JSON (from stdout, or the file it wrote) is kept as ``<results>/<name>/<name>.json``; a failure (exit
code, timeout, no JSON) is recorded and reported, the others still run, and the exit status is 1 if
any failed. The run itself (machine, command, status of each benchmark) goes to ``<results>/run.json``.

Which benchmarks: every script in ``benchmarks/`` and ``benchmarks/probes/`` is named here once, in
one of three places (what the scripts share is ``benchmarks/support/``).

* :data:`BENCHMARKS` without a ``skip`` reason: the default run (what ``make bench`` runs, about
  half an hour): cloud_throughput, cloud_resume, student_latency, routing_quality, feature_codec,
  swap_under_load, fleet_scale.
* :data:`BENCHMARKS` with a ``skip`` reason: the runner can run them, but only when named with
  ``--only`` (command_signing, large_student, route_accuracy, security_overhead); the reason says
  why the default run leaves each out.
* :data:`BY_HAND`: scripts the runner cannot run, each with why (closed_loop, data_loop,
  data_accuracy, and the probes in ``benchmarks/probes/``: probe_cascade, probe_fresh_reasoner):
  they need a build or arguments only a person can choose, or print no JSON.

``--list`` prints the three. What a benchmark's JSON looks like in the report is its renderer's
business: ``benchmarks/reports/<name>.py`` (``render``, and ``plot`` where the script draws none);
a benchmark without one is shown field by field. The machine description is
:mod:`benchmarks.support.machine`. Usage::

    python benchmarks/run_all.py [--quick] [--only NAME ...] [--out-md PATH] [--results DIR] [--list]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))

from benchmarks.reports import (
    cloud_resume,
    cloud_throughput,
    feature_codec,
    fleet_scale,
    routing_quality,
    student_latency,
    swap_under_load,
)
from benchmarks.reports.page import render_page
from benchmarks.reports.tables import Report, generic
from benchmarks.support.machine import machine

# -- the benchmarks ------------------------------------------------------------------------


@dataclass(frozen=True)
class Benchmark:
    name: str
    render: Callable[[Report], str] = generic
    """Its JSON as a Markdown section (``benchmarks/reports/<name>.py``)."""
    args: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    """Arguments added by ``--quick`` (a smoke run)."""
    timeout_s: float = 1800
    output: str = "out"
    """How the script is told where to write: ``out`` (``--out DIR``), ``png`` (``--png DIR/<name>.png``), ``none``."""
    plot: Callable[[Report, Path], None] | None = None
    """Draws ``<name>.png`` for a script that draws no plot itself."""
    script: Path | None = None
    """Defaults to ``benchmarks/<name>.py``."""
    skip: str = ""
    """Why the default run leaves it out (it then runs only when ``--only`` names it); empty: it runs."""

    def command(self, out: Path, quick: bool) -> list[str]:
        command = [sys.executable, shown(self.script or HERE / f"{self.name}.py"), *self.args]  # cwd: REPO
        if quick:
            command += self.quick
        if self.output == "out":
            command += ["--out", shown(out)]
        elif self.output == "png":
            command += ["--png", shown(out / f"{self.name}.png")]
        return command


BENCHMARKS = (
    Benchmark("cloud_throughput", cloud_throughput.render, quick=("--quick",), timeout_s=3600),
    Benchmark("cloud_resume", cloud_resume.render, quick=("--quick",), timeout_s=1800, output="none"),
    Benchmark("student_latency", student_latency.render, quick=("--n", "50"), timeout_s=900, output="png"),
    Benchmark("routing_quality", routing_quality.render, quick=("--quick",), timeout_s=3600),
    Benchmark("feature_codec", feature_codec.render, quick=("--n", "200"), timeout_s=900, plot=feature_codec.plot),
    Benchmark(
        "swap_under_load", swap_under_load.render, quick=("--swaps", "3"), timeout_s=900, plot=swap_under_load.plot
    ),
    Benchmark(
        "fleet_scale",
        fleet_scale.render,
        quick=("--devices", "100", "--window", "3"),
        timeout_s=1200,
        plot=fleet_scale.plot,
    ),
    Benchmark("shadow_cost", quick=("--quick",), timeout_s=1800, script=HERE / "field" / "shadow_cost.py"),
    Benchmark(
        "interval_coverage",
        quick=("--quick",),
        timeout_s=3600,
        script=HERE / "field" / "interval_coverage.py",
        skip="20 runs of fresh traffic per version, 35% of the kept answers checked by the cloud: about "
        "10 minutes, for when the field-quality figures or the shadow checks change (issue 28)",
    ),
    Benchmark(
        "command_signing",
        quick=("--n", "500"),
        timeout_s=600,
        skip="one code path timed per command (signing a fleet command, quoted in docs/security.md), "
        "not a figure of the running system",
    ),
    Benchmark(
        "large_student",
        quick=("--new-tokens", "4", "--n", "1"),
        timeout_s=3600,
        skip="builds a Qwen3-0.6B-shaped student: about 12 GB of memory and 15 minutes on 2 cores, and it must "
        "run alone",
    ),
    Benchmark(
        "route_accuracy",
        quick=("--n", "100"),
        timeout_s=5400,
        skip="every query answered by the teacher three times (route cloud, route auto, offline): a second long "
        "cloud run beside routing_quality, for when the request path changes (issue 25)",
    ),
    Benchmark(
        "security_overhead",
        quick=("--rounds", "1", "--devices", "100"),
        timeout_s=2400,
        skip="runs swap_under_load and fleet_scale again from two trees (a git worktree of the commit before "
        "issue 14) and must run alone: a run beside it measures the contention",
    ),
)
"""Every benchmark the runner can run; those with a ``skip`` reason run only when ``--only`` names them."""

BY_HAND: dict[str, str] = {
    "closed_loop": "one learning-loop turn, about an hour, that `make models` runs with its own folders; "
    "its results folder keeps earlier turns that docs/models.md cites, which a run here would clear",
    "data_loop": "needs a pair built by `models build --data` and dataset folders (--models, --data, --traffic)",
    "data_accuracy": "needs a pair built by `models build --data` and its dataset (--models, --data)",
    "probe_cascade": "needs a reasoner bundle, as `models improve --keep-refused DIR` keeps one (its argument)",
    "probe_fresh_reasoner": "a probe: trains a model of the shape its arguments give and prints CHECK lines, no JSON",
}
"""The scripts the runner does not run, and why: each one's docstring says how to run it."""


def listing() -> str:
    """Every benchmark and whether the default run, ``--only`` or a person runs it."""
    lines = [f"{b.name:<22} {'only with --only: ' + b.skip if b.skip else 'default'}" for b in BENCHMARKS]
    lines += [f"{name:<22} by hand: {why}" for name, why in BY_HAND.items()]
    return "\n".join(lines)


# -- running them ------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    command: list[str]
    returncode: int | None = None
    timed_out: bool = False
    elapsed_s: float = 0.0
    loadavg_before: tuple[float, ...] = ()
    loadavg_after: tuple[float, ...] = ()
    report: Report | None = None
    problem: str = ""
    """Why it failed ("" if it did not)."""
    stderr_tail: str = ""
    files: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problem

    @property
    def shown(self) -> str:
        """The command as a reader would type it in the repository root."""
        return " ".join(shlex.quote(part) for part in [shown(Path(self.command[0])), *self.command[1:]])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "problem": self.problem,
            "returncode": self.returncode,
            "timed_out": self.timed_out,
            "elapsed_s": round(self.elapsed_s, 3),
            "loadavg_before": self.loadavg_before,
            "loadavg_after": self.loadavg_after,
            "command": self.shown,
            "stderr_tail": "" if self.ok else self.stderr_tail,
        }

    @classmethod
    def load(cls, entry: dict[str, Any], results: Path) -> Outcome:
        """An outcome as ``run.json`` recorded it, with the JSON and plots now in ``results``."""
        out = results / entry["name"]
        written = out / f"{entry['name']}.json"
        return cls(
            entry["name"],
            shlex.split(entry["command"]),
            returncode=entry["returncode"],
            timed_out=entry["timed_out"],
            elapsed_s=entry["elapsed_s"],
            loadavg_before=tuple(entry["loadavg_before"]),
            loadavg_after=tuple(entry["loadavg_after"]),
            report=json.loads(written.read_text()) if written.exists() else None,
            problem=entry["problem"],
            stderr_tail=entry["stderr_tail"],
            files=_files(out),
        )


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def shown(path: Path) -> str:
    """An absolute ``path`` relative to the repository root when it lies inside it (as the scripts
    record it); a relative one as it is."""
    if not path.is_absolute():
        return str(path)
    path = Path(os.path.normpath(path))  # not resolve(): .venv/bin/python is a link to the base interpreter
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _progress(name: str, index: int, total: int, started: float, done: threading.Event) -> None:
    """A live ``[i/n] name  elapsed`` line on stderr: rewritten every second on a terminal,
    a new line every minute otherwise."""
    tty = sys.stderr.isatty()
    while not done.wait(1.0 if tty else 60.0):
        elapsed = time.monotonic() - started
        if tty:
            print(f"\r[{index}/{total}] {name:<18} {elapsed:6.0f} s", end="", file=sys.stderr, flush=True)
        else:
            print(f"[{index}/{total}] {name:<18} still running, {elapsed:.0f} s", file=sys.stderr, flush=True)


def _parse_json(text: str) -> Report | None:
    """The JSON object a script printed: all of stdout, else from its first line that opens an object."""
    for start in [0] + [i + 1 for i, c in enumerate(text) if c == "\n" and text[i + 1 : i + 2] == "{"]:
        try:
            value = json.loads(text[start:])
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def run_one(bench: Benchmark, results: Path, quick: bool, timeout_s: float | None, index: int, total: int) -> Outcome:
    out = (results / bench.name).absolute()
    shutil.rmtree(out, ignore_errors=True)  # nothing stale may pass for this run's figures
    out.mkdir(parents=True)
    outcome = Outcome(bench.name, bench.command(out, quick), loadavg_before=os.getloadavg())
    limit = timeout_s if timeout_s is not None else bench.timeout_s
    print(f"[{index}/{total}] {bench.name:<18} started (timeout {limit:.0f} s)", file=sys.stderr, flush=True)
    started, done = time.monotonic(), threading.Event()
    ticker = threading.Thread(target=_progress, args=(bench.name, index, total, started, done), daemon=True)
    ticker.start()
    try:
        printed = _run(outcome, limit)
    finally:
        done.set()
        ticker.join()
    outcome.elapsed_s = time.monotonic() - started
    outcome.loadavg_after = os.getloadavg()
    _collect(bench, outcome, printed, out)
    if outcome.timed_out:
        outcome.problem = f"timed out after {limit:.0f} s"
    elif outcome.returncode != 0:
        outcome.problem = f"exit code {outcome.returncode}"
    elif outcome.report is None:
        outcome.problem = "no JSON on stdout or in its output folder"
    outcome.files = _files(out)
    status = "ok" if outcome.ok else f"FAILED: {outcome.problem}"
    end = "\r" if sys.stderr.isatty() else ""
    print(f"{end}[{index}/{total}] {bench.name:<18} {outcome.elapsed_s:6.0f} s  {status}", file=sys.stderr, flush=True)
    return outcome


def _run(outcome: Outcome, limit: float) -> str:
    """Run the command to its end or ``limit``; its stdout (the tail of its stderr goes into ``outcome``)."""
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(outcome.command, cwd=REPO, stdout=stdout, stderr=stderr, start_new_session=True)
        try:
            outcome.returncode = process.wait(limit)
        except subprocess.TimeoutExpired:
            outcome.timed_out = True
            _kill_group(process)
            outcome.returncode = process.wait()
        stdout.seek(0)
        stderr.seek(0)
        outcome.stderr_tail = _tail(stderr.read().decode(errors="replace"))
        return stdout.read().decode(errors="replace")


def _collect(bench: Benchmark, outcome: Outcome, printed: str, out: Path) -> None:
    """Keep the JSON it printed (or wrote) as ``<name>.json`` and draw the runner's plot of it."""
    written = out / f"{bench.name}.json"
    outcome.report = _parse_json(printed)
    if outcome.report is None and written.exists():
        outcome.report = _parse_json(written.read_text())
    if outcome.report is None:
        return
    written.write_text(json.dumps(outcome.report, indent=2) + "\n")
    if bench.plot is not None:
        try:
            bench.plot(outcome.report, out)
        except Exception as exc:  # noqa: BLE001 - a plot never hides the figures
            outcome.problem = f"plot failed: {type(exc).__name__}: {exc}"


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the benchmark's process group (it and what it started), SIGKILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(text: str, lines: int = 20, chars: int = 3000) -> str:
    kept = [line for line in text.replace("\r", "\n").splitlines() if line.strip()][-lines:]
    return "\n".join(kept)[-chars:]


# -- main ------------------------------------------------------------------------------------------


def _extra(spec: str) -> Benchmark:
    name, sep, script = spec.partition("=")
    if not sep or not name or not script:
        raise argparse.ArgumentTypeError(f"expected NAME=SCRIPT, got {spec!r}")
    return Benchmark(name, script=Path(script).absolute(), timeout_s=600)


def _parser() -> argparse.ArgumentParser:
    names = [bench.name for bench in BENCHMARKS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"run only these, of: {', '.join(names)}")
    parser.add_argument("--quick", action="store_true", help="each script's small options: a smoke run of minutes")
    parser.add_argument("--out-md", type=Path, default=HERE / "RESULTS.md", help="the Markdown report")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="JSON and plots, one folder each")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per benchmark (default: each its own)")
    parser.add_argument(
        "--extra",
        type=_extra,
        action="append",
        default=[],
        metavar="NAME=SCRIPT",
        help="also run SCRIPT as benchmark NAME (given --out DIR; reported field by field)",
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="run nothing: draw run_all's plots and write the report again from <results>/run.json and the JSON there",
    )
    parser.add_argument("--list", action="store_true", help="say which benchmarks run by default, which not and why")
    return parser


def chosen(only: Sequence[str] | None, extra: Sequence[Benchmark]) -> list[Benchmark]:
    """The default run and ``extra``; or, given ``only``, those of every runnable benchmark it names.
    A name the runner does not know, or one it does not run (:data:`BY_HAND`), is a ``ValueError``."""
    known = [*BENCHMARKS, *extra]
    if not only:
        return [bench for bench in known if not bench.skip]
    by_hand = [f"{name} is run by hand: {BY_HAND[name]}" for name in only if name in BY_HAND]
    if by_hand:
        raise ValueError("; ".join(by_hand))
    unknown = [name for name in only if name not in {bench.name for bench in known}]
    if unknown:
        names = ", ".join(sorted(bench.name for bench in known))
        raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; known: {names}")
    return [bench for bench in known if bench.name in only]


def render_only(results: Path, out_md: Path, benchmarks: Sequence[Benchmark]) -> int:
    """Draw the runner's plots and write the report again from ``results`` (a run's ``run.json``)."""
    summary = json.loads((results / "run.json").read_text())
    plots = {bench.name: bench.plot for bench in benchmarks if bench.plot is not None}
    for entry in summary["benchmarks"]:
        written = results / entry["name"] / f"{entry['name']}.json"
        if entry["name"] in plots and written.exists():
            plots[entry["name"]](json.loads(written.read_text()), written.parent)
    outcomes = [Outcome.load(entry, results) for entry in summary.pop("benchmarks")]
    out_md.write_text(render_page(summary, outcomes, out_md, {bench.name: bench.render for bench in benchmarks}))
    return 0 if all(o.ok for o in outcomes) else 1


def run_all(args: argparse.Namespace, benchmarks: Sequence[Benchmark], argv: Sequence[str]) -> int:
    """Run ``benchmarks`` one after the other; write ``run.json`` and the report."""
    shown_argv = [shown(Path(sys.executable)), shown(Path(__file__)), *argv]
    run: dict[str, Any] = {
        "command": " ".join(shlex.quote(part) for part in shown_argv),
        "quick": args.quick,
        "machine": machine([shown(path.absolute()) for path in (args.results, args.out_md)]),
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_before": os.getloadavg(),
    }
    started = time.monotonic()
    args.results.mkdir(parents=True, exist_ok=True)
    outcomes = [
        run_one(bench, args.results, args.quick, args.timeout, i, len(benchmarks))
        for i, bench in enumerate(benchmarks, 1)
    ]
    run |= {
        "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_after": os.getloadavg(),
        "wall_s": time.monotonic() - started,
    }
    summary = {**run, "benchmarks": [o.to_dict() for o in outcomes]}
    (args.results / "run.json").write_text(json.dumps(summary, indent=2) + "\n")
    args.out_md.parent.mkdir(parents=True, exist_ok=True)
    renderers = {bench.name: bench.render for bench in benchmarks}
    args.out_md.write_text(render_page(run, outcomes, args.out_md, renderers))
    failed = [o.name for o in outcomes if not o.ok]
    print(
        f"wrote {args.out_md} ({len(outcomes) - len(failed)} ok, {len(failed)} failed"
        f"{': ' + ', '.join(failed) if failed else ''}) in {run['wall_s']:.0f} s",
        file=sys.stderr,
    )
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        print(listing())
        return 0
    if args.render_only:
        return render_only(args.results, args.out_md, [*BENCHMARKS, *args.extra])
    try:
        benchmarks = chosen(args.only, args.extra)
    except ValueError as exc:
        parser.error(str(exc))
    return run_all(args, benchmarks, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
