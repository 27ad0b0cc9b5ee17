"""One turn of the learning loop on the real parts: the real cloud writes its escalation log while a
real edge service escalates to it over gRPC; ``models improve`` trains, gates and signs the next
student from that log; the real fleet manager registers it and rolls it out over mosquitto; the
devices verify it and serve it.

The turn is short (a few dozen fine-tuning steps): this is the plumbing, end to end. What a full
turn does to the escalation rate is ``benchmarks/closed_loop.py``'s to measure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from edgecloud.cloud.sessions import SessionConfig
from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.escalation import CloudClient, CloudClientConfig
from edgecloud.edge.metrics import EdgeMetrics
from edgecloud.edge.outbox import Outbox
from edgecloud.edge.runtime import EdgeBundle, ModelSlot
from edgecloud.edge.service import EdgeService, QueryRequest
from edgecloud.modelkit.arithmetic.task import EVAL_MIX, Split, generate
from edgecloud.modelkit.loop.gate import GateConfig
from edgecloud.modelkit.loop.improve import ImproveConfig, improve_student
from edgecloud.shared.bundles.artifacts import pack_bundle
from edgecloud.shared.bundles.manifest import load_manifest
from edgecloud.shared.escalations.records import read_escalations
from tests.helpers.cloud import RunningServer, make_config
from tests.helpers.real_fleet import DEVICES, Fleet, start_rollout, wait_rollout

if TYPE_CHECKING:
    from edgecloud.cloud.transformers_engine import LoadedModel


def escalate(bundle: Path, port: int, queries: list[str], work: Path) -> list:
    async def main() -> list:
        config = EdgeConfig(bundle=bundle, outbox=work / "outbox.sqlite3", cloud=f"127.0.0.1:{port}")
        service = EdgeService(
            config,
            ModelSlot(EdgeBundle.load(bundle)),
            client=CloudClient(CloudClientConfig(target=f"127.0.0.1:{port}")),
            outbox=Outbox(config.outbox),
            metrics=EdgeMetrics(),
        )
        await service.start()
        try:
            semaphore = asyncio.Semaphore(16)

            async def one(query: str):
                async with semaphore:
                    return await service.query(QueryRequest(query=query))

            return await asyncio.gather(*(one(q) for q in queries))
        finally:
            await service.stop()

    return asyncio.run(main())


@pytest.mark.slow
def test_escalations_become_a_signed_student_the_fleet_serves(
    make_fleet: Callable[..., Fleet],
    teacher_dir: Path,
    teacher: LoadedModel,
    shipped_models: Path,
    shipped_base_models: Path,
    keys: dict[str, Path],
    tmp_path: Path,
) -> None:
    # A single-model base that escalates every multi-step query; the fleet's devices serve the shipped
    # pair, so the next student is released as the version after the pair's.
    base = load_manifest(shipped_base_models / "edge-student")
    new_version = load_manifest(shipped_models / "edge-student").version + 1
    log = tmp_path / "escalations.jsonl"
    cloud = RunningServer(
        make_config(teacher_dir, tmp_path, sessions=SessionConfig(escalation_log=log)), loaded=teacher
    )
    try:
        problems = generate(120, 21, Split.TEST, EVAL_MIX)
        results = escalate(shipped_base_models / "edge-student", cloud.port, [p.query for p in problems], tmp_path)
    finally:
        cloud.stop()

    # The cloud logged every escalation, with what the loop needs to tell students apart.
    escalated = [r for r in results if r.route_taken == "cloud"]
    logged = read_escalations(log)
    records = [r for r in logged if r.kind == "escalation"]
    kept = {f"shadow-{r.id}" for r in results if r.route_taken == "edge"}
    assert all(r.request_id in kept for r in logged if r.kind == "shadow_check")  # the daemon's 2% of kept answers
    assert len(escalated) >= 40 and len(records) == len(escalated)
    assert {r.request_id for r in records} == {r.id for r in escalated}
    for record in records:
        assert record.producer_name == base.name and record.producer_version == base.version
        assert record.edge is not None and 0 <= record.edge.confidence < 1
        assert record.status == "completed" and record.budget > 0
    assert sum(bool(r.reasoning) for r in records) > len(records) / 2

    # The next student, from that log: trained, gated against the base, signed.
    summary = improve_student(
        ImproveConfig(
            logs=(log,),
            bundle=shipped_base_models / "edge-student",
            out=tmp_path / "improved",
            steps=20,
            batch_size=32,
            lr=1e-4,
            replay_n=2000,
            calibration_n=4000,
            eval_every=0,
            # Direct answers: a short scratchpad turn leaves a student that tries multi-step queries and gets
            # them wrong, whose calibration then keeps nothing and the gate refuses it (docs/models.md).
            learn_reasoning=False,
            version=new_version,
            key=keys["good"],
            gate=GateConfig(n=400, kept_tolerance=0.05, accuracy_tolerance=0.05, precision_tolerance=0.01),
        )
    )
    assert summary["version"] == new_version and summary["signed"] and summary["gate"]["passed"]
    assert summary["records_read"] == len(logged) and summary["learn_reasoning"] is False
    improved = tmp_path / "improved" / "edge-student"
    assert load_manifest(improved).metadata["improved_from"]["version"] == base.version

    # Registered with the real fleet manager and rolled out; every device verifies it and serves it.
    fleet = make_fleet()
    archive = tmp_path / "improved.tar.gz"
    pack_bundle(improved, archive)
    assert fleet.register(archive)["version"] == new_version
    rollout = wait_rollout(fleet, start_rollout(fleet, new_version), "COMPLETED", "ABORTED", timeout=60)
    assert rollout["status"] == "COMPLETED" and rollout["succeeded"] == len(DEVICES), rollout
    for device, service in fleet.services.items():
        assert service.slot.current.version == new_version, device
        assert service.slot.current.model.answer("2+2").text == "4"
