"""``benchmarks/support/machine.py``: the machine a run measured, as ``run.json`` records it."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.support.machine import PACKAGES, REPO, machine


def test_the_machine_has_every_field_the_report_shows() -> None:
    m = machine()
    committed = json.loads((REPO / "benchmarks" / "results" / "run.json").read_text())["machine"]
    assert list(m) == list(committed)
    assert list(m["packages"]) == list(PACKAGES) and m["packages"]["numpy"] != "not installed"
    assert m["cpu_count"] >= 1 and m["memory_gib"] > 0 and m["python"].startswith("3.")
    assert len(m["git_commit"]) == 40


def test_what_the_run_writes_does_not_make_the_tree_dirty() -> None:
    everything = [p.name for p in Path(REPO).iterdir()]
    m = machine(everything)
    assert m["git_changed_files"] == 0 and m["git_dirty"] is False


def test_a_changed_file_outside_what_the_run_writes_counts(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The first line of ``git status --porcelain`` keeps its leading space: `` M path``."""
    from benchmarks.support import machine as module

    status = " M benchmarks/results/run.json\n M edge/service.py\nM  fleet/manager.py\n"
    monkeypatch.setattr(module.subprocess, "run", _fake_run(status))
    m = machine(["benchmarks/results", "benchmarks/RESULTS.md"])
    assert m["git_changed_files"] == 2 and m["git_dirty"] is True


def _fake_run(status: str):  # type: ignore[no-untyped-def]
    import subprocess

    def run(command, **_):  # type: ignore[no-untyped-def]
        out = status if command[:2] == ["git", "status"] else "0" * 40 + "\n"
        return subprocess.CompletedProcess(command, 0, stdout=out, stderr="")

    return run
