"""``edgecloud fleet push | bundles | devices | start --watch | rollouts | rollout | rollback`` against
the real fleet manager's REST API over HTTP, with simulated devices on a real mosquitto."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecloud import cli
from edgecloud.fleet.api import create_server
from tests.helpers.sim_fleet import (
    make_archive,
    make_bundle,
    manager_config,
    start_devices,
    start_manager,
    wait_devices_online,
)
from tests.helpers.waiting import wait_for

KEY = "fleet-cli-key-0123456789"


@pytest.fixture
def fleet(mqtt_broker, tmp_path, sims, managers):  # type: ignore[no-untyped-def]
    start_devices(mqtt_broker, sims, 3)
    manager = start_manager(manager_config(mqtt_broker, tmp_path), managers)
    wait_devices_online(manager, 3)
    server, port = create_server(manager, api_key=KEY)
    (tmp_path / "fleet.key").write_text(KEY + "\n")
    yield ["--url", f"http://127.0.0.1:{port}", "--api-key-file", str(tmp_path / "fleet.key")]
    server.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_bundle_lifecycle_from_the_command_line(fleet, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, "fleet", "push", str(make_bundle(tmp_path / "v2", 2)), *fleet)  # a folder: packed
    assert code == 0 and out.splitlines()[0].split()[:2] == ["NAME", "VERSION"] and " 2 " in out.splitlines()[1]
    code, out, _ = run(capsys, "fleet", "push", str(make_archive(tmp_path / "v1", 1)), *fleet)  # an archive
    assert code == 0
    code, out, _ = run(capsys, "fleet", "bundles", "--json", *fleet)
    assert [b["version"] for b in json.loads(out)["bundles"]] == [1, 2]
    code, out, _ = run(capsys, "fleet", "devices", *fleet)
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["dev00", "dev01", "dev02"]

    argv = ["edge-student", "2", "--wave-size", "1", "--watch", "--interval", "0.1", "--watch-timeout", "60"]
    devices = [arg for d in ("dev00", "dev01", "dev02") for arg in ("--device", d)]
    code, out, _ = run(capsys, "fleet", "start", *argv, *devices, *fleet)
    assert code == 0 and out.splitlines()[-1].split()[1:2] == ["COMPLETED"] and "3/3 finished, 0 failed" in out
    code, out, _ = run(capsys, "fleet", "rollouts", "--json", *fleet)
    (rollout,) = json.loads(out)["rollouts"]
    assert rollout["status"] == "COMPLETED" and rollout["succeeded"] == 3
    code, out, _ = run(capsys, "fleet", "rollout", rollout["id"], *fleet)
    assert code == 0 and out.count("ACTIVE") == 3

    code, out, _ = run(capsys, "fleet", "rollback", rollout["id"], "--to-version", "1", "--json", *fleet)
    assert code == 0 and json.loads(out)["rollback"]["version"] == 1
    code, out, _ = run(capsys, "fleet", "watch", rollout["id"], "--interval", "0.1", "--watch-timeout", "60", *fleet)
    assert code == 1 and "ROLLED_BACK" in out  # ended, and not as COMPLETED


def test_errors_say_what_the_manager_said(fleet, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run(capsys, "fleet", "rollout", "no-such-rollout", *fleet)
    assert code == 1 and "404" in err and "no-such-rollout" in err
    (tmp_path / "wrong.key").write_text("not-the-key-0123456789")
    code, _, err = run(capsys, "fleet", "bundles", *fleet[:2], "--api-key-file", str(tmp_path / "wrong.key"))
    assert code == 1 and "401" in err
    code, _, err = run(capsys, "fleet", "start", "edge-student", "9", "--device", "dev00", *fleet)
    assert code == 1 and "404" in err  # not registered
    code, _, err = run(capsys, "fleet", "bundles", "--url", "http://127.0.0.1:9", "--timeout", "2")
    assert code == 2 and "out of reach" in err


def test_a_quality_gate_from_the_command_line_holds_a_wave_without_evidence(fleet, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    for version in (1, 2):  # v1: what a gate compares v2 with (and rolls back to)
        run(capsys, "fleet", "push", str(make_archive(tmp_path / f"v{version}", version)), *fleet)
    gate = ["--min-shadow-checks", "40", "--max-agreement-drop", "1.5"]
    code, out, _ = run(capsys, "fleet", "start", "edge-student", "2", "--wave-size", "1", "--device", "dev00",
                       "--device", "dev01", *gate, "--json", *fleet)  # fmt: skip
    rollout = json.loads(out)
    assert code == 0
    code, out, _ = run(capsys, "fleet", "rollout", rollout["id"], "--json", *fleet)
    shown = json.loads(out)
    assert shown["spec"]["quality"] == {"min_shadow_checks": 40, "max_agreement_drop": 1.5, "max_escalation_rise": 5.0}
    # The simulated devices report no shadow checks: the first wave finishes and waits, and no second wave goes out.
    wait_for(lambda: (gates := cli_rollout(capsys, fleet, rollout["id"])["quality_gates"]) and gates[0] is not None)
    seen = cli_rollout(capsys, fleet, rollout["id"])
    assert seen["status"] == "RUNNING" and seen["wave"] == 1 and seen["quality_gates"][0]["verdict"] == "waiting"
    assert "0 of 40 shadow checks" in seen["quality_gates"][0]["reason"]
    code, _, err = run(capsys, "fleet", "start", "edge-student", "2", "--device", "dev02", "--min-shadow-checks",
                       "0", *fleet)  # fmt: skip
    assert code == 1 and "never passes on no evidence" in err


def cli_rollout(capsys, fleet, rollout_id: str) -> dict:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, "fleet", "rollout", rollout_id, "--json", *fleet)
    assert code == 0
    return json.loads(out)
