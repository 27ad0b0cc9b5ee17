"""Each benchmark's renderer (``benchmarks/reports/<name>.py``), a pure function of its JSON: on the
committed results of its last run (every figure it shows computed again here, figure by figure), on
small variations of them (a missing target, no rollout, a busy machine), the plots it draws, the
field-by-field section of the benchmarks without a renderer, and the page around them."""

from __future__ import annotations

import ast
import copy
import itertools
import json
from pathlib import Path
from types import ModuleType

import pytest

from benchmarks import run_all
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
from benchmarks.reports.tables import generic

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
RENDERERS: dict[str, ModuleType] = {
    module.__name__.rsplit(".", 1)[1]: module
    for module in (
        cloud_throughput,
        cloud_resume,
        student_latency,
        routing_quality,
        feature_codec,
        swap_under_load,
        fleet_scale,
    )
}


def committed(name: str) -> dict:  # type: ignore[type-arg]
    path = RESULTS / name / f"{name}.json"
    if not path.exists():
        pytest.skip(f"no committed {path.relative_to(REPO)}")
    return json.loads(path.read_text())


def test_the_runner_uses_each_renderer_of_this_package() -> None:
    """A renderer module is the one its benchmark's entry names (and every module here is a benchmark's)."""
    by_name = {bench.name: bench for bench in run_all.BENCHMARKS}
    folder = REPO / "benchmarks" / "reports"
    modules = {p.stem for p in folder.glob("*.py")} - {"__init__", "tables", "plots", "page"}
    assert modules == set(RENDERERS)
    for name, module in RENDERERS.items():
        assert by_name[name].render is module.render
        assert by_name[name].plot is getattr(module, "plot", None)
    assert all(bench.render is generic for bench in run_all.BENCHMARKS if bench.name not in RENDERERS)


def test_the_reports_import_only_the_standard_library_and_each_other() -> None:
    """A report reads JSON: nothing of the project, nothing that measures (matplotlib inside a plot only)."""
    for path in sorted((REPO / "benchmarks" / "reports").glob("*.py")):
        tree = ast.parse(path.read_text())
        top = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
        names = [alias.name for node in top if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module or "" for node in top if isinstance(node, ast.ImportFrom)]
        foreign = [n for n in names if n.split(".")[0] in {"edgecloud", "matplotlib", "numpy", "torch"}]
        foreign += [n for n in names if n.startswith("benchmarks.") and not n.startswith("benchmarks.reports")]
        assert not foreign, f"{path.name} imports {foreign}"


@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_each_renderer_shows_the_committed_figures(name: str) -> None:
    """The figures each section reads exist in the JSON its script wrote in the committed run."""
    report = committed(name)
    text = RENDERERS[name].render(report)
    tables = _tables(text.split("\n"))
    assert tables, f"{name}: no table"
    for header, rows in tables:
        assert rows, f"{name}: table {header} has no rows"
        assert all(len(row) == len(header) for row in rows), f"{name}: ragged table {header}"
    for expected in EXPECTED[name](report):
        assert expected in text, f"{name}: {expected!r} not in its section"


@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_a_renderer_is_a_pure_function_of_the_json(name: str) -> None:
    report = committed(name)
    before = copy.deepcopy(report)
    assert RENDERERS[name].render(report) == RENDERERS[name].render(copy.deepcopy(report))
    assert report == before


def test_cloud_throughput_without_a_16_point_and_on_a_busy_machine() -> None:
    r = committed("cloud_throughput")
    r.pop("target")
    r["other_processes_cpu_share"] = 0.35
    text = cloud_throughput.render(r)
    assert "| batched >= 4x sessions/s at 16 concurrent | no 16-concurrency point in this run | not measured |" in text
    assert "Other processes took 35.0% of the machine's CPU" in text
    assert "**The machine was busy (over 20% of its CPU taken by other processes)" in text
    r["other_processes_cpu_share"] = 0.1
    assert "**The machine was busy" not in cloud_throughput.render(r)


def test_cloud_resume_misses_its_target_on_a_lost_event() -> None:
    r = committed("cloud_resume") | {"lost_events": 2}
    assert f"| {r['completed']}/{r['sessions']} completed, 2 lost, " in cloud_resume.render(r)
    assert cloud_resume.render(r).rstrip().endswith("| **missed** |")


def test_student_latency_cold_figures_and_a_missed_target() -> None:
    r = committed("student_latency")
    r["latency"]["onnx_int8"]["p50_ms"] = 4.0
    r["cold_int8"] = {"p50_ms": 8.0, "p99_ms": 12.5}
    r["block"] = None
    text = student_latency.render(r)
    assert "the three interleaved." in text
    assert (
        "Cold: int8 with a PyTorch call between every two queries (caches evicted): p50 8.00 ms, p99 12.50 ms" in text
    )
    assert "(2.00x the steady p50)" in text
    assert "| int8 ONNX p50 <= 2 ms | 4.00 ms | **missed** |" in text


def test_swap_under_load_with_no_swap_done() -> None:
    r = committed("swap_under_load") | {"swaps": 3, "swaps_completed": 0, "swap_latency_ms": None}
    text = swap_under_load.render(r)
    assert "| - | - | - |" in text  # no latency figures
    assert "0/3 swaps | **missed** |" in text
    few = r | {"swaps_completed": 3, "failed_requests": 0}
    assert "3/3 swaps | not measured |" in swap_under_load.render(few)  # fewer swaps than the target's 10


def test_fleet_scale_without_a_rollout() -> None:
    r = committed("fleet_scale")
    r.pop("rollout")
    text = fleet_scale.render(r)
    assert "| rollout | value |" not in text
    assert "| the rollout reaches every device | - | not measured |" in text
    assert "| rollout |" not in text.split("CPU % of one core")[1].split("Targets:")[0]


def test_routing_quality_shows_each_router() -> None:
    r = committed("routing_quality")
    text = routing_quality.render(r)
    for router in r["routers"]:
        assert f"| {router} | {r['routers'][router]['apgr']:.3f} |" in text


@pytest.mark.parametrize("name", ["feature_codec", "swap_under_load", "fleet_scale"])
def test_the_runner_draws_the_plot_a_script_does_not(name: str, tmp_path: Path) -> None:
    RENDERERS[name].plot(committed(name), tmp_path)
    assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_no_swap_latency_draws_no_plot(tmp_path: Path) -> None:
    swap_under_load.plot(committed("swap_under_load") | {"swap_latency_ms": None}, tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "name", ["closed_loop", "command_signing", "large_student", "security_overhead", "probe_cascade"]
)
def test_generic_shows_every_top_level_figure(name: str) -> None:
    """A benchmark without a renderer of its own (the opt-in and by-hand ones) is shown field by field."""
    r = committed(name)
    text = generic(r)
    scalars = {k: v for k, v in r.items() if isinstance(v, int | float | str | bool) and k != "benchmark"}
    assert scalars, f"{name}: nothing to show"
    rows = _tables(text.split("\n"))[0][1]
    assert [row[0] for row in rows] == list(scalars)
    for key, value in scalars.items():
        shown = ("yes" if value else "no") if isinstance(value, bool) else value
        shown = f"{value:.4f}" if isinstance(value, float) else shown
        assert f"| {key} | {shown} |" in text


def test_the_page_falls_back_to_the_fields_when_a_figure_is_missing(tmp_path: Path) -> None:
    """A JSON without a figure its renderer reads still shows, field by field, with a note saying why."""
    outcome = run_all.Outcome("feature_codec", ["python", "benchmarks/feature_codec.py"], returncode=0)
    outcome.report = {"queries": 3, "ratio": 2.5}
    run = json.loads((RESULTS / "run.json").read_text())
    run.pop("benchmarks")
    text = render_page(run, [outcome], tmp_path / "R.md", {"feature_codec": feature_codec.render})
    section = text.split("\n## feature_codec\n", 1)[1]
    assert "(its JSON lacks a figure this report expects: KeyError: 'encoded_bytes')" in section
    assert "| queries | 3 |" in section and "| ratio | 2.5000 |" in section
    assert "[feature_codec](#feature_codec) | ok |" in text


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


# -- the figures each section must show, computed here from its JSON ------------------------------


def _cloud_throughput(r: dict) -> list[str]:  # type: ignore[type-arg]
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


def _cloud_resume(r: dict) -> list[str]:  # type: ignore[type-arg]
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


def _student_latency(r: dict) -> list[str]:  # type: ignore[type-arg]
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


def _routing_quality(r: dict) -> list[str]:  # type: ignore[type-arg]
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


def _feature_codec(r: dict) -> list[str]:  # type: ignore[type-arg]
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


def _swap_under_load(r: dict) -> list[str]:  # type: ignore[type-arg]
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


def _fleet_scale(r: dict) -> list[str]:  # type: ignore[type-arg]
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


EXPECTED = {
    "cloud_throughput": _cloud_throughput,
    "cloud_resume": _cloud_resume,
    "student_latency": _student_latency,
    "routing_quality": _routing_quality,
    "feature_codec": _feature_codec,
    "swap_under_load": _swap_under_load,
    "fleet_scale": _fleet_scale,
}
"""Rows (or runs of cells) each section must show, per benchmark."""
