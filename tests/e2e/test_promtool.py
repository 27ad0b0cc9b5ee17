"""Prometheus' own linter on every service's ``/metrics``: the edge daemon, the cloud Reasoner and
the fleet manager, each after real traffic (so the histograms and labelled series have samples).

Needs ``promtool`` (Debian's ``prometheus`` package, which ``.ci/run`` installs); without it the
test skips, unless ``EDGECLOUD_REQUIRE_PROMTOOL=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from edgecloud.shared.bundles.manifest import load_manifest
from tests.helpers.cloud import RunningServer, make_config
from tests.helpers.edge import RunningDaemon, edge_config, multi_step
from tests.helpers.real_fleet import Fleet, signed_archive, start_rollout, wait_rollout
from tests.helpers.waiting import wait_until


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("EDGECLOUD_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool is not installed (apt-get install prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def lint(tool: str, exposition: str) -> str:
    """promtool's complaints about ``exposition`` ("" when it is clean)."""
    checked = subprocess.run(  # its exit status is read below
        [tool, "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=30, check=False
    )
    return (checked.stdout + checked.stderr).strip() if checked.returncode or checked.stdout.strip() else ""


def test_promtool_finds_every_service_s_metrics_clean(  # type: ignore[no-untyped-def]
    shipped_models: Path, teacher_dir: Path, teacher, tmp_path: Path, make_fleet: Callable[..., Fleet], keys
) -> None:
    tool = promtool()
    cloud = RunningServer(make_config(teacher_dir, tmp_path, metrics_port=0), loaded=teacher)
    daemon = RunningDaemon(edge_config(shipped_models, tmp_path, cloud=f"127.0.0.1:{cloud.port}"))
    try:
        wait_until(lambda: daemon.service.cloud_healthy)
        query, expected = multi_step(teacher_dir)
        assert daemon.http.post("/v1/query", json={"query": query, "route": "cloud"}).json()["answer"] == expected
        assert daemon.http.post("/v1/query", json={"query": "CALCULATE 2 + 2", "route": "edge"}).status_code == 200
        fleet = make_fleet()
        new = load_manifest(shipped_models / "edge-student").version + 1
        fleet.register(signed_archive(shipped_models / "edge-student", tmp_path, new, keys["good"]))
        assert wait_rollout(fleet, start_rollout(fleet, new), "COMPLETED", "ABORTED")["status"] == "COMPLETED"

        expositions = {
            "edge": daemon.http.get("/metrics").text,
            "cloud": httpx.get(f"http://127.0.0.1:{cloud.service.metrics_port}/metrics", timeout=30).text,
            "fleet": fleet.api.get("/metrics").text,
        }
        assert "edgecloud_edge_escalations_total 1.0" in expositions["edge"]  # the traffic is in them
        assert "edgecloud_fleet" in expositions["fleet"] and "edgecloud_cloud" in expositions["cloud"]
        problems = {name: lint(tool, text) for name, text in expositions.items()}
        assert problems == {"edge": "", "cloud": "", "fleet": ""}
        assert lint(tool, "# TYPE bad_total counter\nbad_total{} 1\nbad 2\n")  # the check can fail
    finally:
        daemon.stop()
        cloud.stop()
