"""Rollouts gated on field quality, on the real parts: three real edge daemons answer steady traffic
and have the real cloud (the shipped teacher over gRPC) check a share of the answers they keep; the
real fleet manager sums their telemetry from mosquitto and judges each wave of a rollout against the
version the fleet ran before.

The defective student is the shipped one with a decoding defect: every 9 it writes comes out as an 8
(a ``Replace`` step in its tokenizers' decoder), so it is wrong, as confidently as when it is right,
on about one answer in eight that it keeps. Its golden self-test cases are the ones it still gets
right (what a build that wrote them from its own answers would ship), so each device installs it.

Run with ``-s`` to see each decision's figures (checks and seconds).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import pytest

from edgecloud.edge.service import EdgeService, QueryRequest
from edgecloud.modelkit.arithmetic.task import EVAL_MIX, Split, generate
from edgecloud.shared.bundles.artifacts import pack_bundle
from edgecloud.shared.bundles.manifest import SIGNATURE_FILE, load_manifest, write_bundle
from edgecloud.shared.bundles.signing import load_private_key, sign_bundle
from tests.helpers.cloud import RunningServer, make_config
from tests.helpers.real_fleet import DEVICES, Fleet, signed_archive, start_rollout, wait_rollout
from tests.helpers.waiting import wait_for

if TYPE_CHECKING:
    from edgecloud.cloud.transformers_engine import LoadedModel

SHADOW = {"shadow_share": 0.25, "shadow_per_minute": 3000.0}
"""More checks than the 2% default, so that a wave is judged in seconds, not minutes."""
GATE = {"min_shadow_checks": 20, "max_agreement_drop": 2.0, "max_escalation_rise": 5.0}
WORKERS = 3
"""Queries each daemon has in flight at once."""


def defective_archive(source: Path, work: Path, version: int, key: Path) -> Path:
    """``source`` as ``version`` writing 8 for every 9, with the golden cases it still passes; signed."""
    directory = work / f"defective-v{version}"
    shutil.copytree(source, directory)
    (directory / SIGNATURE_FILE).unlink(missing_ok=True)
    for path in directory.rglob("tokenizer.json"):
        tokenizer = json.loads(path.read_text())
        replace = {"type": "Replace", "pattern": {"String": "9"}, "content": "8"}
        tokenizer["decoder"] = {"type": "Sequence", "decoders": [tokenizer["decoder"], replace]}
        path.write_text(json.dumps(tokenizer))
    old = load_manifest(directory)
    (directory / "manifest.json").unlink()
    golden = [case for case in old.golden if "9" not in case.expected]
    assert golden, "no golden case left to self-test"
    write_bundle(directory, name=old.name, kind=old.kind, version=version, io=old.io,
                 calibration=old.calibration, golden=golden, metadata=old.metadata)  # fmt: skip
    sign_bundle(directory, load_private_key(key))
    archive = work / f"{directory.name}.tar.gz"
    pack_bundle(directory, archive)
    return archive


class Traffic:
    """Every daemon answering fresh queries, ``WORKERS`` at a time, on an event loop of its own."""

    def __init__(self, services: dict[str, EdgeService]) -> None:
        self.services = services
        self.served: dict[str, set[int]] = {device: set() for device in services}
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="traffic", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        wait_for(lambda: self.answered >= 30, 30, "traffic flowing")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _main(self) -> None:
        for service in self.services.values():
            await service.start()
        try:
            await asyncio.gather(
                *(self._worker(d, s, seed) for seed, (d, s) in enumerate(self.services.items()) for _ in range(WORKERS))
            )
        finally:
            for service in self.services.values():
                await service.stop()

    async def _worker(self, device: str, service: EdgeService, seed: int) -> None:
        problems = generate(4000, 1000 + seed, Split.TEST, EVAL_MIX)
        while not self._stop.is_set():
            problem = problems[self.answered % len(problems)]
            self.answered += 1
            self.served[device].add(service.slot.current.version)
            await service.query(QueryRequest(query=problem.query))


def checks_of(fleet: Fleet, version: int) -> int:
    return sum(s.quality.of(s.slot.current.name, version).checks for s in fleet.services.values())


def run_rollout(
    make_fleet: Callable[..., Fleet], teacher_dir: Path, teacher: LoadedModel, tmp_path: Path,
    shipped_models: Path, keys: dict[str, Path], archive_of: Callable[[int], Path], *final: str,
) -> tuple[Fleet, dict[str, Any], dict[str, set[int]], float]:  # fmt: skip
    """The fleet under traffic, with the version it runs registered and checked enough to compare
    against; then the rollout of ``archive_of(next version)`` until it reaches a ``final`` status."""
    old = load_manifest(shipped_models / "edge-student").version
    cloud = RunningServer(make_config(teacher_dir, tmp_path), loaded=teacher)
    try:
        fleet = make_fleet(cloud=f"127.0.0.1:{cloud.port}", **SHADOW)
        fleet.register(signed_archive(shipped_models / "edge-student", tmp_path, old, keys["good"]))
        with Traffic(fleet.services) as traffic:
            wait_for(lambda: checks_of(fleet, old) >= 2 * GATE["min_shadow_checks"], 90, "the baseline's checks")
            time.sleep(0.5)  # a telemetry interval: the manager has the devices' counts
            assert fleet.register(archive_of(old + 1))["version"] == old + 1
            started = time.monotonic()
            rollout = wait_rollout(fleet, start_rollout(fleet, old + 1, quality=GATE), *final, timeout=300)
            took = time.monotonic() - started
    finally:
        cloud.stop()
    return fleet, rollout, traffic.served, took


def report(kind: str, rollout: dict[str, Any], took: float) -> None:
    gates = [
        {"wave": g["wave"], "verdict": g["verdict"], "checks": g["new"]["checks"], "agreement": g["new"]["agreement"]}
        for g in rollout["quality_gates"]
        if g is not None
    ]
    print(json.dumps({"student": kind, "status": rollout["status"], "seconds": round(took, 1), "gates": gates}))


@pytest.mark.slow
def test_a_confidently_wrong_student_is_stopped_in_wave_1_and_rolled_back(
    make_fleet: Callable[..., Fleet], teacher_dir: Path, teacher: LoadedModel, tmp_path: Path,
    shipped_models: Path, keys: dict[str, Path],
) -> None:  # fmt: skip
    old = load_manifest(shipped_models / "edge-student").version
    fleet, rollout, served, took = run_rollout(
        make_fleet, teacher_dir, teacher, tmp_path, shipped_models, keys,
        lambda version: defective_archive(shipped_models / "edge-student", tmp_path, version, keys["good"]),
        "ROLLED_BACK", "ABORTED", "COMPLETED",
    )  # fmt: skip
    report("defective", rollout, took)
    assert rollout["status"] == "ROLLED_BACK", rollout
    assert rollout["abort_reason"].startswith("wave 1 failed its quality gate: agreement worse by"), rollout
    first = rollout["quality_gates"][0]
    assert first["verdict"] == "failed" and first["new"]["checks"] >= GATE["min_shadow_checks"]
    assert rollout["quality_gates"][1:] == [None] * (len(DEVICES) - 1)
    # The wave-1 device served the defect and went back; no other device ever served it.
    (wave_1,) = [device for device, versions in served.items() if old + 1 in versions]
    for device, service in fleet.services.items():
        wait_for(lambda s=service: s.slot.current.version == old, 30, f"{device} back on v{old}")
        assert device == wave_1 or served[device] == {old}


@pytest.mark.slow
def test_a_good_student_passes_every_wave(
    make_fleet: Callable[..., Fleet], teacher_dir: Path, teacher: LoadedModel, tmp_path: Path,
    shipped_models: Path, keys: dict[str, Path],
) -> None:  # fmt: skip
    old = load_manifest(shipped_models / "edge-student").version
    fleet, rollout, _served, took = run_rollout(
        make_fleet, teacher_dir, teacher, tmp_path, shipped_models, keys,
        lambda version: signed_archive(shipped_models / "edge-student", tmp_path, version, keys["good"]),
        "COMPLETED", "ABORTED", "ROLLED_BACK",
    )  # fmt: skip
    report("good", rollout, took)
    assert rollout["status"] == "COMPLETED", rollout
    for gate in rollout["quality_gates"]:
        assert gate["verdict"] == "passed" and gate["new"]["checks"] >= GATE["min_shadow_checks"], gate
    assert all(service.slot.current.version == old + 1 for service in fleet.services.values())
