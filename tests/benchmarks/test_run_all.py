"""``benchmarks/run_all.py`` for real: the two fastest benchmarks in their quick form
(about 10 s together) plus a deliberately failing script, into a temporary folder."""

from __future__ import annotations

import itertools
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


@pytest.mark.parametrize("bench", run_all.BENCHMARKS, ids=lambda b: b.name)
def test_every_section_renders_the_committed_results(bench: run_all.Benchmark) -> None:
    """The figures each section reads exist in the JSON its script wrote in the committed run."""
    path = REPO / "benchmarks" / "results" / bench.name / f"{bench.name}.json"
    if not path.exists():
        pytest.skip(f"no committed {path.relative_to(REPO)}")
    report = json.loads(path.read_text())
    lines = bench.section(report)
    tables = _tables(lines)
    assert tables, f"{bench.name}: no table"
    for header, rows in tables:
        assert rows, f"{bench.name}: table {header} has no rows"
        assert all(len(row) == len(header) for row in rows), f"{bench.name}: ragged table {header}"
    text = "\n".join(lines)
    for expected in _figures(bench.name, report):
        assert expected in text, f"{bench.name}: {expected!r} not in its section"


def _tables(lines: list[str]) -> list[tuple[list[str], list[list[str]]]]:
    """Each Markdown table of ``lines``: its header cells and the cells of each row."""

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    tables = []
    for i, line in enumerate(lines[:-1]):
        if line.startswith("| ") and lines[i + 1].startswith("|---"):
            rows = [cells(row) for row in itertools.takewhile(lambda row: row.startswith("| "), lines[i + 2 :])]
            tables.append((cells(line), rows))
    return tables


def _f(value: float, digits: int) -> str:
    """A figure as a report shows it: an int as it is, a float to ``digits`` places."""
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def _pct(value: float, digits: int = 1) -> str:
    return f"{100 * value:.{digits}f}%"


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else "met" if met else "**missed**"


def _figures(name: str, r: dict) -> list[str]:  # type: ignore[type-arg]
    """Rows (or runs of cells) each section must show, computed here from its JSON, figure by figure."""
    if name == "cloud_throughput":
        out = []
        for p in r["points"]:
            s, b = p["sequential"], p["batched"]
            out.append(
                f"| {p['concurrency']} | {s['sessions']} | {_f(s['sessions_per_s'], 2)} | "
                f"{_f(b['sessions_per_s'], 2)} | {p['ratio']['sessions_per_s']:.2f}x | "
                f"{_f(s['tokens_per_s'], 0)} | {_f(b['tokens_per_s'], 0)} | {p['ratio']['tokens_per_s']:.2f}x | "
                f"{_f(s['ttft_ms']['p50'], 0)} | {_f(b['ttft_ms']['p50'], 0)} |"
            )
        target = r.get("target")
        if target is not None:
            measured = r["ratio_sessions_per_s"][str(target["concurrency"])]
            out.append(
                f"| batched >= {target['ratio']:g}x sessions/s at {target['concurrency']} concurrent | "
                f"{measured:.2f}x | {_verdict(target['met'])} |"
            )
        return out
    if name == "cloud_resume":
        clean = (
            r["completed"] == r["sessions"]
            and not r["lost_events"]
            and not r["duplicated_events"]
            and not r["replay_mismatches"]
            and not r["rpc_errors"]
        )
        return [
            (
                f"| {r['sessions']} | {r['concurrency']} | {r['completed']} | {r['disconnects']} | "
                f"{r['reattaches_while_running']} | {r['events']} | {r['lost_events']} | {r['duplicated_events']} | "
                f"{r['replay_mismatches']} | {len(r['rpc_errors'])} | {_pct(r['accuracy'], 0)} | {_f(r['wall_s'], 1)} |"
            ),
            (
                f"| {r['completed']}/{r['sessions']} completed, {r['lost_events']} lost, {r['duplicated_events']} "
                f"duplicated | {_verdict(clean)} |"
            ),
        ]
    if name == "student_latency":
        latency, sizes = r["latency"], r["size_bytes"]
        int8 = latency["onnx_int8"]["p50_ms"]
        size_key = {"onnx_int8": "onnx_int8", "onnx_fp32": "onnx_fp32", "torch_fp32": "torch_fp32_safetensors"}
        out = [f"{r['queries']} simple (k=1) queries, {r['threads']} thread"]
        out += [
            f"| {model} | {_f(s['p50_ms'], 2)} | {_f(s['p99_ms'], 2)} | {_f(s['mean_ms'], 2)} | "
            f"{s['p50_ms'] / int8:.2f}x | {sizes[size_key[model]] / 2**20:.1f} |"
            for model, s in latency.items()
        ]
        speedup = r["speedup_p50"]["int8_vs_torch_fp32"]
        out.append(f"| int8 ONNX p50 <= 2 ms | {_f(int8, 2)} ms | {_verdict(int8 <= 2)} |")
        out.append(f"| int8 ONNX >= 3x faster than PyTorch fp32 (p50) | {speedup:.2f}x | {_verdict(speedup >= 3)} |")
        return out
    if name == "routing_quality":
        edge, cloud, cal, routers = r["edge_only_accuracy"], r["cloud_only_accuracy"], r["calibrated"], r["routers"]
        out = [
            f"| edge only | {_pct(edge)} | {_pct(edge / cloud)} | 0.0% |",
            f"| cloud only | {_pct(cloud)} | 100.0% | 100.0% |",
            (
                f"| calibrated threshold ({cal['threshold']:.3f}) | {_pct(cal['system_accuracy'])} | "
                f"{_pct(cal['of_cloud'])} | {_pct(cal['escalation_share'])} |"
            ),
        ]
        random_apgr, oracle_apgr = routers["random"]["apgr"], routers["oracle"]["apgr"]
        out += [
            f"| {router} | {s['apgr']:.3f} | {s['apgr'] / random_apgr:.2f}x | {s['apgr'] / oracle_apgr:.2f}x | "
            f"{_pct(s['cpt_95_cloud_accuracy'])} | {_pct(s['cpt_95_pgr'])} |"
            for router, s in routers.items()
        ]
        confidence = routers["confidence"]["apgr"]
        out.append(f"| APGR of the confidence router >= 0.9 | {confidence:.3f} | {_verdict(confidence >= 0.9)} |")
        out.append(f"| {_verdict(r['target']['calibrated_met'])} |")
        return out
    if name == "feature_codec":
        cosine, t, goal = r["cosine"], r["time_us_per_vector"], r["targets"]
        return [
            (
                f"| {r['raw_float32_bytes']} | {_f(r['encoded_bytes']['mean'], 1)} | "
                f"{_f(r['payload_bytes']['mean'], 1)} | {r['ratio']:.2f}x | {r['ratio_payload_only']:.2f}x | "
                f"{_f(cosine['mean'], 5)} | {_f(cosine['min'], 5)} | {_f(t['encode']['p50'], 1)} | "
                f"{_f(t['decode']['p50'], 1)} |"
            ),
            f"| {r['ratio']:.2f}x | {_verdict(goal['ratio_met'])} |",
            f"| min {_f(cosine['min'], 5)} | {_verdict(goal['cosine_met'])} |",
        ]
    if name == "swap_under_load":
        latency = r["swap_latency_ms"] or {}
        ok = r["failed_requests"] == 0 and r["swaps_completed"] == r["swaps"]
        met = ok if r["swaps"] >= 10 else (False if not ok else None)
        cells = [_f(latency[k], 0) if k in latency else "-" for k in ("p50", "p99", "max")]
        return [
            (
                f"| {r['swaps']} | {r['swaps_completed']} | {r['clients']} | {r['requests']} | "
                f"{_f(r['requests_per_s'], 1)} | {r['failed_requests']} | {' | '.join(cells)} | {r['final_version']} |"
            ),
            (
                f"| 0 failed requests during 10 swaps | {r['failed_requests']} failed of {r['requests']}, "
                f"{r['swaps_completed']}/{r['swaps']} swaps | {_verdict(met)} |"
            ),
        ]
    if name == "fleet_scale":
        connect, steady, totals = r["connect"], r["telemetry"], r["telemetry_totals"]
        out = [
            f"{r['devices']} simulated devices",
            f"| connect | all devices connected | {_f(connect['all_connected_s'], 2)} s |",
            (
                f"| telemetry | offered / published / absorbed per s | {_f(steady['offered_per_s'], 1)} / "
                f"{_f(steady['published_per_s'], 1)} / {_f(steady['absorbed_per_s'], 1)} |"
            ),
            (
                f"| telemetry | device rows updated in window | {steady['device_rows_updated_in_window']} of "
                f"{r['devices']} |"
            ),
            (
                f"| whole run | telemetry published / absorbed / lost | {totals['published']} / {totals['absorbed']} / "
                f"{totals['lost']} |"
            ),
            f"| no telemetry lost | {totals['lost']} lost of {totals['published']} | {_verdict(totals['lost'] == 0)} |",
        ]
        rollout = r.get("rollout")
        if rollout is not None:
            status = f"{rollout['status']} ({rollout['succeeded']} succeeded, {rollout['failed']} failed)"
            out.append(f"| status | {status} |")
            out.append(f"| create_rollout -> COMPLETED | {_f(rollout['to_completed_s'], 2)} s |")
        return out
    raise AssertionError(f"no expected figures for benchmark {name!r}: add them to _figures")
