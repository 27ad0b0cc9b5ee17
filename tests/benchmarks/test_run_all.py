"""``benchmarks/run_all.py`` for real: the two fastest benchmarks in their quick form
(about 10 s together) plus a deliberately failing script, into a temporary folder."""

from __future__ import annotations

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
    return subprocess.run([sys.executable, str(RUN_ALL), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def section(markdown: str, name: str) -> str:
    """The text of ``## name`` up to the next ``## ``."""
    return markdown.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def with_failure(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    tmp = tmp_path_factory.mktemp("run-all")
    broken = tmp / "broken.py"
    broken.write_text("import sys\nprint('boom: a deliberate failure', file=sys.stderr)\nsys.exit(3)\n")
    result = run("--quick", "--only", *FAST, "broken", "--extra", f"broken={broken}",
                 "--results", str(tmp / "results"), "--out-md", str(tmp / "RESULTS.md"))
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
    for field in ("| CPU |", "| RAM |", "| OS |", "| Python |", "onnxruntime", "grpcio", "paho-mqtt",
                  "| git commit |", "| load average", "benchmarks/run_all.py --quick --only feature_codec"):
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
    result = run("--quick", "--only", "feature_codec", "--results", str(tmp_path / "r"),
                 "--out-md", str(tmp_path / "R.md"))
    assert result.returncode == 0, result.stderr
    assert "**FAILED**" not in (tmp_path / "R.md").read_text()


def test_an_unknown_name_is_refused() -> None:
    result = run("--only", "no_such_benchmark")
    assert result.returncode == 2
    assert "unknown benchmark(s) no_such_benchmark" in result.stderr


@pytest.mark.parametrize("bench", run_all.BENCHMARKS, ids=lambda b: b.name)
def test_every_section_renders_the_committed_results(bench: run_all.Benchmark) -> None:
    """The figures each section reads exist in the JSON its script wrote in the committed run."""
    path = REPO / "benchmarks" / "results" / bench.name / f"{bench.name}.json"
    if not path.exists():
        pytest.skip(f"no committed {path.relative_to(REPO)}")
    lines = bench.section(json.loads(path.read_text()))
    assert any(line.startswith("| ") for line in lines)
