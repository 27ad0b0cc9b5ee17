"""``benchmarks/run_all.py`` for real: the two fastest benchmarks in their quick form
(about 10 s together) plus a deliberately failing script, into a temporary folder."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import run_all

REPO = Path(__file__).resolve().parents[2]
RUN_ALL = REPO / "benchmarks" / "run_all.py"
FAST = ["feature_codec", "student_latency"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUN_ALL), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


def section(markdown: str, name: str) -> str:
    """The text of ``## name`` up to the next ``## ``."""
    return markdown.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def with_failure(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    tmp = tmp_path_factory.mktemp("run-all")
    broken = tmp / "broken.py"
    broken.write_text("import sys\nprint('boom: a deliberate failure', file=sys.stderr)\nsys.exit(3)\n")
    result = run(
        "--quick",
        "--only",
        *FAST,
        "broken",
        "--extra",
        f"broken={broken}",
        "--results",
        str(tmp / "results"),
        "--out-md",
        str(tmp / "RESULTS.md"),
    )
    return result, tmp


def test_a_failing_benchmark_is_reported_and_fails_the_run(with_failure: tuple) -> None:
    result, tmp = with_failure
    assert result.returncode == 1, result.stderr
    broken = section((tmp / "RESULTS.md").read_text(), "broken")
    assert "**FAILED**: exit code 3" in broken
    assert "boom: a deliberate failure" in broken
    summary = json.loads((tmp / "results" / "run.json").read_text())
    status = {b["name"]: (b["ok"], b["returncode"]) for b in summary["benchmarks"]}
    assert status == {"feature_codec": (True, 0), "student_latency": (True, 0), "broken": (False, 3)}


def test_report_has_the_machine_and_the_figures_of_each_json(with_failure: tuple) -> None:
    _, tmp = with_failure
    markdown = (tmp / "RESULTS.md").read_text()
    for field in (
        "| CPU |",
        "| RAM |",
        "| OS |",
        "| Python |",
        "onnxruntime",
        "grpcio",
        "paho-mqtt",
        "| git commit |",
        "| load average",
        "benchmarks/run_all.py --quick --only feature_codec",
    ):
        assert field in markdown

    codec = json.loads((tmp / "results" / "feature_codec" / "feature_codec.json").read_text())
    text = section(markdown, "feature_codec")
    assert codec["queries"] == 200  # the quick option reached the script
    assert f"| {codec['raw_float32_bytes']} | {codec['encoded_bytes']['mean']:.1f} |" in text
    assert f"| {codec['ratio']:.2f}x |" in text
    assert f"min {codec['cosine']['min']:.5f} | {'met' if codec['targets']['cosine_met'] else '**missed**'} |" in text
    assert "![feature_codec](results/feature_codec/feature_codec.png)" in text  # drawn by run_all
    assert (tmp / "results" / "feature_codec" / "feature_codec.png").stat().st_size > 0

    latency = json.loads((tmp / "results" / "student_latency" / "student_latency.json").read_text())
    text = section(markdown, "student_latency")
    int8 = latency["latency"]["onnx_int8"]
    assert f"| onnx_int8 | {int8['p50_ms']:.2f} | {int8['p99_ms']:.2f} |" in text
    assert f"| {latency['speedup_p50']['int8_vs_torch_fp32']:.2f}x |" in text
    assert "![student_latency](results/student_latency/student_latency.png)" in text  # drawn by the script


def test_render_only_writes_the_same_report_again(with_failure: tuple) -> None:
    _, tmp = with_failure
    result = run("--render-only", "--results", str(tmp / "results"), "--out-md", str(tmp / "again.md"))
    assert result.returncode == 1, result.stderr  # the recorded run had a failure
    assert (tmp / "again.md").read_text() == (tmp / "RESULTS.md").read_text()


def test_a_clean_run_exits_zero(tmp_path: Path) -> None:
    result = run(
        "--quick", "--only", "feature_codec", "--results", str(tmp_path / "r"), "--out-md", str(tmp_path / "R.md")
    )
    assert result.returncode == 0, result.stderr
    assert "**FAILED**" not in (tmp_path / "R.md").read_text()


def test_an_unknown_name_is_refused() -> None:
    result = run("--only", "no_such_benchmark")
    assert result.returncode == 2
    assert "unknown benchmark(s) no_such_benchmark" in result.stderr


# -- which benchmarks ------------------------------------------------------------------------------

MAKE_BENCH = [
    "cloud_throughput",
    "cloud_resume",
    "student_latency",
    "routing_quality",
    "feature_codec",
    "swap_under_load",
    "fleet_scale",
    "shadow_cost",
]


def scripts() -> set[str]:
    """Every script in benchmarks/, benchmarks/probes/ and benchmarks/field/ (a module that runs as ``__main__``),
    the runner aside."""
    paths = [*(REPO / "benchmarks").glob("*.py"), *(REPO / "benchmarks" / "probes").glob("*.py")]
    paths += (REPO / "benchmarks" / "field").glob("*.py")
    found = {p.stem for p in paths if 'if __name__ == "__main__"' in p.read_text()}
    return found - {"run_all"}


def test_every_benchmark_script_is_run_or_named_as_left_out_with_a_reason() -> None:
    runnable = [bench.name for bench in run_all.BENCHMARKS]
    assert len(runnable) == len(set(runnable)) and not set(runnable) & set(run_all.BY_HAND)
    assert set(runnable) | set(run_all.BY_HAND) == scripts()
    for bench in run_all.BENCHMARKS:
        assert bench.name in MAKE_BENCH or len(bench.skip) > 20, f"{bench.name}: say why it is not in the default run"
    assert all(len(why) > 20 for why in run_all.BY_HAND.values())


def test_the_default_run_is_what_make_bench_ran_before() -> None:
    assert [bench.name for bench in run_all.chosen(None, [])] == MAKE_BENCH
    extra = run_all.Benchmark("mine", script=Path("/tmp/mine.py"))
    assert [bench.name for bench in run_all.chosen(None, [extra])] == [*MAKE_BENCH, "mine"]


def test_only_runs_a_left_out_benchmark_but_never_one_run_by_hand() -> None:
    assert [bench.name for bench in run_all.chosen(["route_accuracy", "feature_codec"], [])] == [
        "feature_codec",
        "route_accuracy",
    ]
    with pytest.raises(ValueError, match="closed_loop is run by hand: one learning-loop turn"):
        run_all.chosen(["feature_codec", "closed_loop"], [])
    with pytest.raises(ValueError, match="unknown benchmark"):
        run_all.chosen(["nope"], [])


def test_a_by_hand_name_is_refused_with_its_reason() -> None:
    result = run("--only", "data_loop")
    assert result.returncode == 2
    assert "data_loop is run by hand: needs a pair built by `models build --data`" in result.stderr


def test_list_names_every_benchmark_and_why() -> None:
    result = run("--list")
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0]: line.split(None, 1)[1] for line in result.stdout.splitlines()}
    assert set(listed) == scripts()
    assert all(listed[name] == "default" for name in MAKE_BENCH)
    assert listed["security_overhead"].startswith("only with --only: runs swap_under_load and fleet_scale")
    assert listed["probe_fresh_reasoner"].startswith("by hand: a probe")


def argument_flags(script: Path) -> set[str]:
    """The ``--flags`` a script's argparse parser declares, read from its source."""
    flags = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")}
    return flags


@pytest.mark.parametrize("bench", run_all.BENCHMARKS, ids=lambda b: b.name)
def test_each_benchmark_takes_the_arguments_the_runner_gives(bench: run_all.Benchmark, tmp_path: Path) -> None:
    script = bench.script or REPO / "benchmarks" / f"{bench.name}.py"
    declared = argument_flags(script)
    command = bench.command(tmp_path / bench.name, quick=True)
    assert command[1] == str(script.relative_to(REPO))
    given = {part for part in command[2:] if part.startswith("--")}
    assert given <= declared, f"{bench.name} does not take {given - declared}"
