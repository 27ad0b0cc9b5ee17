"""``python -m edgecloud.demo`` end to end (what `make demo` runs), shortened to 150 queries, on the
embedded broker so that path is covered where mosquitto is installed too; and the
invariants that make it fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edgecloud.demo.report import check_invariants

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_runs_every_part_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "edgecloud.demo", "--queries", "150", "--broker", "embedded", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "all invariants hold" in run.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["queries"] == 150 and report["failed_requests"] == 0 and report["invariants_broken"] == []
    assert report["broker"] == "embedded"
    assert report["swap"]["status"] == "COMPLETED" and len(report["swap"]["first_served_by_new_version"]) == 3
    outage = report["outage"]
    assert outage["degraded_answers"] > 0 and outage["accepted_into_outbox"] == outage["delivered_from_outbox"] > 0
    assert report["routes"]["cloud"]["accuracy"] >= 0.9 and report["reasoning_tokens"]["mean"] > 0
    assert 3 < report["bytes_per_escalation"]["ratio"] < 10
    records = [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]
    assert (
        len(records) == 150
        and sum(r["route"] == "cloud" for r in records)
        == report["routes"]["cloud"]["requests"] + outage["accepted_into_outbox"]
    )
    for name in ("accuracy_vs_escalation.png", "latency_by_route.png", "timeline.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    exits = report["process_exits"]
    assert set(exits) == {"broker", "cloud", "fleet", "edge-1", "edge-2", "edge-3"}
    assert exits["cloud"] == [-9, 0]  # killed by the demo, then stopped cleanly
    assert all(codes == [0] for name, codes in exits.items() if name != "cloud"), exits


def good_report() -> dict:
    return {
        "failed_requests": 0,
        "swap": {"status": "COMPLETED", "first_served_by_new_version": {"edge-1": 1.0, "edge-2": 1.0}},
        "outage": {"degraded_answers": 5, "accepted_into_outbox": 2, "undelivered": 0},
        "routes": {"cloud": {"accuracy": 0.98}},
        "process_exits": {"cloud": [-9, 0], "edge-1": [0]},
    }


def test_invariants_hold_for_a_good_run_and_name_each_broken_one() -> None:
    assert check_invariants(good_report(), edges=2, new_version=3) == []
    cases = {
        "request(s) failed": {"failed_requests": 1},
        "not COMPLETED": {"swap": {"status": "ABORTED", "first_served_by_new_version": {}}},
        "no degraded answer": {"outage": {"degraded_answers": 0, "accepted_into_outbox": 2, "undelivered": 0}},
        "never delivered": {"outage": {"degraded_answers": 5, "accepted_into_outbox": 2, "undelivered": 1}},
        "accurate": {"routes": {"cloud": {"accuracy": 0.5}}},
        "exited with 1": {"process_exits": {"cloud": [-9, 1]}},
    }
    for expected, change in cases.items():
        broken = check_invariants({**good_report(), **change}, edges=2, new_version=3)
        assert any(expected in line for line in broken), (expected, broken)
