"""``python -m edgecloud.demo`` end to end (what `make demo` runs), shortened to 150 queries, on the
embedded broker so that path is covered where mosquitto is installed too; and the
invariants that make it fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edgecloud.demo.report import check_invariants
from edgecloud.demo.workloads import TASKS

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_runs_every_part_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "edgecloud.demo", "--queries", "250", "--broker", "embedded"),
            *("--out", str(out), "--improve-steps", "20", "--gate-checks", "2"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "all invariants hold" in run.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["queries"] == 250 and report["failed_requests"] == 0 and report["invariants_broken"] == []
    assert report["broker"] == "embedded"
    assert report["swap"]["status"] == "COMPLETED" and len(report["swap"]["first_served_by_new_version"]) == 3
    # `models improve` ran on the run's own escalations midway. The shipped pair escalates ~6% of the
    # traffic, so a 150-query run gives it a handful: it is refused before training (too little evidence)
    # or by its gate, and the demo rolls out a re-export and says so; what passed a gate is rolled out.
    improve = report["swap"]["improve"]
    log_text = Path(improve["log"]).read_text()
    if improve["exit"] == 0:
        assert improve["gate"] is True and 0 < improve["used"] <= improve["records"], improve
        assert report["swap"]["built_by"] == "models improve"
    else:
        assert improve["exit"] in (2, 3) and ("ConfigError: " in log_text or "error: " in log_text), log_text[-2000:]
        assert report["swap"]["built_by"] == "re-export of the shipped student"
        assert "rolling out a re-export instead" in run.stdout
    # the rollout ran under traffic, each wave judged by the cloud's checks of the new version's kept answers
    gates = report["swap"]["quality_gates"]
    assert gates and all(g["verdict"] == "passed" and g["new"]["checks"] >= 2 for g in gates), gates
    assert report["shadow_checks"]["total"] >= 2 * len(gates) and "quality gate passed" in run.stdout
    field = {row["model_version"]: row for row in report["swap"]["field_quality"]}
    assert {report["swap"]["from_version"], report["swap"]["to_version"]} <= set(field)
    assert all(row["checks"] > 0 and row["agreement"]["n"] == row["checks"] for row in field.values())
    versions = report["by_model_version"]
    assert set(versions) == {f"v{report['swap']['from_version']}", f"v{report['swap']['to_version']}"}
    assert all(0 <= row["escalation_rate"] <= 1 and row["requests"] > 0 for row in versions.values())
    assert f"traffic on v{report['swap']['to_version']}" in run.stdout
    outage = report["outage"]
    # While the cloud was down nobody got an empty answer: what the edge could not answer waited in the outbox.
    assert outage["empty_answers"] == 0 and outage["accepted_into_outbox"] == outage["delivered_from_outbox"] > 0
    floor = TASKS["arithmetic"].min_cloud_accuracy
    assert report["routes"]["cloud"]["accuracy"] >= floor and report["reasoning_tokens"]["mean"] > 0
    assert 3 < report["bytes_per_escalation"]["ratio"] < 10
    records = [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]
    assert (
        len(records) == 250
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
        "swap": {
            "status": "COMPLETED",
            "first_served_by_new_version": {"edge-1": 1.0, "edge-2": 1.0},
            "quality_gates": [{"verdict": "passed"}, {"verdict": "passed"}],
        },
        "outage": {"degraded_answers": 5, "accepted_into_outbox": 2, "undelivered": 0},
        "routes": {"cloud": {"accuracy": 0.98}},
        "process_exits": {"cloud": [-9, 0], "edge-1": [0]},
    }


def test_invariants_hold_for_a_good_run_and_name_each_broken_one() -> None:
    assert check_invariants(good_report(), edges=2, new_version=3) == []
    cases = {
        "request(s) failed": {"failed_requests": 1},
        "not COMPLETED": {"swap": {"status": "ABORTED", "first_served_by_new_version": {}}},
        "not every wave passed the quality gate": {
            "swap": {**good_report()["swap"], "quality_gates": [{"verdict": "passed"}, None]}
        },
        "answered with nothing": {"outage": {"empty_answers": 3, "accepted_into_outbox": 2, "undelivered": 0}},
        "never delivered": {"outage": {"degraded_answers": 5, "accepted_into_outbox": 2, "undelivered": 1}},
        "accurate": {"routes": {"cloud": {"accuracy": 0.5}}},
        "exited with 1": {"process_exits": {"cloud": [-9, 1]}},
    }
    for expected, change in cases.items():
        broken = check_invariants({**good_report(), **change}, edges=2, new_version=3)
        assert any(expected in line for line in broken), (expected, broken)


def test_each_version_s_traffic_is_reported_apart_from_the_outage() -> None:
    from edgecloud.demo.report import by_version
    from edgecloud.demo.traffic import QueryRecord

    def record(i: int, version: int, route: str, *, k: int = 1, degraded: bool = False, **fields) -> QueryRecord:
        base = {"requested": "auto", "phase": "steady", "http_status": 200, "correct": True}
        return QueryRecord(
            index=i,
            group=f"k={k}",
            query="q",
            expected="0",
            edge=0,
            sent_at=float(i),
            route=route,
            degraded=degraded,
            model_version=version,
            **{**base, **fields},
        )

    records = [
        record(0, 5, "edge"),
        record(1, 5, "cloud", k=2),
        record(2, 5, "cloud", k=2, correct=False),
        record(3, 6, "edge"),
        record(4, 6, "edge", k=2),
        record(5, 6, "edge", k=2, degraded=True, correct=False),  # the edge did not keep it
        record(6, 6, "cloud", k=2, phase="outage"),  # left out: the cloud was down
        record(7, 6, "cloud", k=2, requested="cloud"),  # left out: the caller chose the route
        record(8, 6, "edge", http_status=500, error="boom"),  # left out: failed
    ]
    report = by_version(records)
    assert report["v5"] == {
        "requests": 3,
        "escalation_rate": round(2 / 3, 4),
        "accuracy": round(2 / 3, 4),
        "edge_kept_accuracy": 1.0,
        "escalation_rate_by_group": {"k=1": 0.0, "k=2": 1.0},
    }
    assert report["v6"]["requests"] == 3 and report["v6"]["escalation_rate"] == round(1 / 3, 4)
    assert report["v6"]["escalation_rate_by_group"] == {"k=1": 0.0, "k=2": 0.5}


def test_each_task_draws_its_test_split_and_judges_by_the_bundle_s_rule(tmp_path: Path) -> None:
    from edgecloud.demo.workloads import TASKS, AnswerCheck, demo_task
    from edgecloud.modelkit.arithmetic.task import Split, generate
    from edgecloud.shared.base.errors import ConfigError

    # The arithmetic traffic is the very problems the demo always sent (its figures stay comparable).
    arithmetic = TASKS["arithmetic"].queries(200)
    problems = generate(200, 20261124, Split.TEST)
    assert [(q.query, q.answer, q.group) for q in arithmetic] == [
        (p.query, str(p.answer), f"k={p.k}") for p in problems
    ]
    assert {q.simple for q in arithmetic if q.group == "k=1"} == {True}
    assert not any(q.simple for q in arithmetic if q.group != "k=1")
    homes = TASKS["smarthome"].queries(200)
    assert {q.group for q in homes} == {"simple", "multi", "conditional", "relative_time"}
    assert all(json.loads(q.answer)["actions"] for q in homes)
    check = AnswerCheck(TASKS["arithmetic"])
    assert check.rule == "number" and check(" 42 ", "42") is True and check("41", "42") is False
    assert check(None, "42") is None
    assert demo_task("smarthome", tmp_path).models == tmp_path
    # The smart-home task on a bundle that declares another rule: the wrong models, said so.
    (tmp_path / "edge-student").mkdir()
    manifest = json.loads((REPO / "models" / "edge-student" / "manifest.json").read_text())
    manifest["io"]["answer_match"] = "number"
    (tmp_path / "edge-student" / "manifest.json").write_text(json.dumps(manifest))
    try:
        AnswerCheck(demo_task("smarthome", tmp_path))
    except ConfigError as exc:
        assert "are these the smarthome bundles?" in str(exc)
    else:
        raise AssertionError("a bundle with another answer rule was accepted")
    try:
        demo_task("chess")
    except ConfigError as exc:
        assert "arithmetic" in str(exc) and "smarthome" in str(exc)
    else:
        raise AssertionError("an unknown task was accepted")
