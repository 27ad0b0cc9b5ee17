"""The machine a benchmark run measured: CPU, memory, OS, Python, the packages that matter, the
broker, and the commit (and whether the tree had changes). ``run_all.py`` records it in
``run.json``; :mod:`benchmarks.reports.page` shows it at the top of ``RESULTS.md``."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "transformers", "onnxruntime", "grpcio", "paho-mqtt", "numpy", "zstandard")
"""The distributions whose versions change the figures."""


def machine(written: Sequence[str] = ()) -> dict[str, Any]:
    """The machine, its packages, and the commit; a file under one of ``written`` (what this run
    writes, relative to the repository root as ``git status`` shows it) does not make the tree dirty."""
    memory = _proc_field("/proc/meminfo", "MemTotal")
    changed = [
        line
        for line in _git("status", "--porcelain", "--untracked-files=no").splitlines()
        if line and not any(line[3:] == w or line[3:].startswith(w.rstrip("/") + "/") for w in written)
    ]
    return {
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(int(memory.split()[0]) / 2**20, 1) if memory else None,
        "os": _os_name(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "mosquitto": _broker(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(changed),
        "git_changed_files": len(changed),
    }


def _proc_field(path: str, key: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _broker() -> str:
    """The first line of ``mosquitto -h`` (its version), or ``not found``."""
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    try:
        return (
            subprocess.run([mosquitto, "-h"], capture_output=True, text=True, timeout=10, check=False)
            .stdout.split("\n")[0]
            .strip()
        )
    except OSError:
        return "not found"


def _git(*args: str) -> str:
    """Its output without the trailing newline (not ``strip()``: ``status --porcelain`` starts with a space)."""
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=False
        ).stdout.rstrip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _os_name() -> str:
    pretty = ""
    try:
        pretty = next(
            (
                line.split("=", 1)[1].strip('"')
                for line in Path("/etc/os-release").read_text().splitlines()
                if line.startswith("PRETTY_NAME=")
            ),
            "",
        )
    except OSError:
        pass
    return f"{pretty}, {platform.platform()}" if pretty else platform.platform()
