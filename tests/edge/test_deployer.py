"""The deployment pipeline (edge/deployer.py) driven as the fleet drives it: real signed commands
over a real mosquitto to the device agent, real signed bundles served over HTTP, and the real edge
model slot: download, verify, self-test, swap, watch, roll back."""

from __future__ import annotations

import json
import threading

import pytest

from edgecloud.edge.agent_state import read_state
from edgecloud.edge.cascade import CascadeModel
from edgecloud.edge.deployer import origin_of, resume_bundle
from edgecloud.shared.bundles.manifest import load_manifest
from edgecloud.shared.bundles.signing import load_private_key, sign_bundle
from tests.helpers.bundles import make_pair_bundle
from tests.helpers.device import (
    acks_for,
    command,
    make_bundle,
    publish_bundle,
)


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://fleet:8090/artifacts/x.tar.gz", ("http", "fleet", 8090)),
        ("HTTPS://Fleet.Example/a", ("https", "fleet.example", 443)),
        ("http://fleet", ("http", "fleet", 80)),
        ("http://fleet:8090@evil.example:8090/x", ("http", "evil.example", 8090)),
        ("http://[::1]:8090/", ("http", "::1", 8090)),
        ("ftp://fleet/x", None),
        ("http:///x", None),
        ("http://fleet:port/", None),
        ("http://fleet:70000/", None),
    ],
)
def test_origin_of_is_scheme_host_and_port(url: str, origin: tuple[str, str, int] | None) -> None:
    assert origin_of(url) == origin


def test_signed_newer_bundle_is_deployed_and_commands_are_idempotent(
    device, shipped_models, tmp_path, keys, artifacts
) -> None:  # type: ignore[no-untyped-def]
    agent, service, observer = device
    installed = service.slot.current.version
    bundle = publish_bundle(
        make_bundle(shipped_models / "edge-student", tmp_path / "v-next", installed + 1, keys["trusted_private"]),
        artifacts,
        "next.tar.gz",
    )
    deploy = command(bundle, revision=5)
    observer.send(deploy)
    observer.wait_for(lambda: acks_for(observer, deploy["id"])[-1:] == ["ACTIVE"])
    # VERIFYING twice: checking the bundle, then serving it through the watch window; ACTIVE only after
    assert acks_for(observer, deploy["id"]) == ["DOWNLOADING", "VERIFYING", "VERIFYING", "ACTIVE"]
    assert service.slot.current.version == installed + 1
    assert service.slot.current.model.answer("2+2").text  # the new model serves

    count = len(acks_for(observer, deploy["id"]))
    observer.send(deploy)  # redelivered: answered, not re-applied
    observer.wait_for(lambda: len(acks_for(observer, deploy["id"])) == count + 1)
    assert (
        acks_for(observer, deploy["id"])[-1] == "ACTIVE"
        and "DOWNLOADING" not in acks_for(observer, deploy["id"])[count:]
    )

    stale = command(bundle, revision=4)
    observer.send(stale)
    observer.wait_for(lambda: acks_for(observer, stale["id"]) == ["IGNORED"])

    # a restarted daemon serves what the fleet deployed, not its --bundle, while that still verifies
    shipped = shipped_models / "edge-student"
    deployed = service.slot.current.directory
    assert agent.state.active == str(deployed) and agent.state.installed[installed + 1] == str(deployed)
    assert {installed, installed + 1} <= agent.state.proven and agent.state.newest_revision == 5
    assert read_state(agent.store.folder) == (agent.state, "")  # what is on disk reads back the same
    assert resume_bundle(agent.config, fallback=shipped) == deployed
    (deployed / "tokenizer.json").write_text("{}")  # tampered on disk
    assert resume_bundle(agent.config, fallback=shipped) == shipped


def test_a_pair_bundle_is_deployed_and_serves_both_stages(
    device, shipped_models, shipped_base_models, tmp_path, keys, artifacts
) -> None:  # type: ignore[no-untyped-def]
    # What `models improve` ships after a fresh turn: the base and a reasoner in one signed bundle,
    # here the version after the pair the device serves.
    _agent, service, observer = device
    after = load_manifest(shipped_models / "edge-student").version + 1
    pair = make_pair_bundle(shipped_base_models / "edge-student", tmp_path / "pair", version=after)
    sign_bundle(pair, load_private_key(keys["trusted_private"]))
    deploy = command(publish_bundle(pair, artifacts, "pair.tar.gz"), revision=5)
    observer.send(deploy)
    observer.wait_for(lambda: acks_for(observer, deploy["id"])[-1:] == ["ACTIVE"])
    assert acks_for(observer, deploy["id"]) == ["DOWNLOADING", "VERIFYING", "VERIFYING", "ACTIVE"]
    served = service.slot.current
    assert served.version == load_manifest(pair).version and isinstance(served.model, CascadeModel)
    assert (served.directory / "reasoner" / "model.int8.onnx").is_file()
    assert served.model.answer("2+2").text == "4"


@pytest.mark.parametrize(
    "attack", ["unsigned", "rogue_key", "tampered_file", "downgrade", "wrong_hash", "traversal", "expired"]
)
def test_bad_bundles_are_refused_and_the_old_model_keeps_serving(
    attack, device, shipped_models, tmp_path, keys, artifacts
) -> None:  # type: ignore[no-untyped-def]
    _agent, service, observer = device
    before = service.slot.current
    version = before.version - 1 if attack == "downgrade" else before.version + 1
    key = {"unsigned": None, "rogue_key": keys["rogue_private"]}.get(attack, keys["trusted_private"])
    directory = make_bundle(shipped_models / "edge-student", tmp_path / "candidate", max(version, 1), key)
    if attack == "expired":  # a release replayed after its signed expiry
        data = json.loads((directory / "manifest.json").read_text())
        data.update(created_at="2020-01-01T00:00:00Z", expires_at="2020-02-01T00:00:00Z")
        (directory / "manifest.json").write_text(json.dumps(data))
        sign_bundle(directory, load_private_key(keys["trusted_private"]))
    if attack == "tampered_file":
        onnx = next(directory.glob("*.onnx"))
        data = bytearray(onnx.read_bytes())
        data[len(data) // 2] ^= 0xFF
        onnx.write_bytes(bytes(data))
    bundle = publish_bundle(directory, artifacts, "candidate.tar.gz")
    if attack == "wrong_hash":
        bundle["sha256"] = "0" * 64
    if attack == "traversal":
        import io
        import tarfile

        root, server = artifacts
        with tarfile.open(root / "evil.tar.gz", "w:gz") as tar:
            payload = b"owned"
            info = tarfile.TarInfo("../../escaped.txt")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        import hashlib

        data = (root / "evil.tar.gz").read_bytes()
        bundle = {
            **bundle,
            "url": f"{server.url}/evil.tar.gz",
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }
    deploy = command(bundle, revision=7)
    observer.send(deploy)
    observer.wait_for(lambda: "FAILED" in acks_for(observer, deploy["id"]))
    failed = [a for a in observer.of("cmd/ack") if a["command_id"] == deploy["id"]][-1]
    assert failed["reason"], failed
    if attack == "expired":
        assert "expired at 2020-02-01T00:00:00Z" in failed["reason"], failed
    assert service.slot.current is before and service.slot.current.model.answer("2+2").text
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "agent" / "escaped.txt").exists()


def test_a_misbehaving_new_model_is_rolled_back(device, shipped_models, tmp_path, keys, artifacts) -> None:  # type: ignore[no-untyped-def]
    _agent, service, observer = device
    before = service.slot.current
    bundle = publish_bundle(
        make_bundle(shipped_models / "edge-student", tmp_path / "v-bad", before.version + 1, keys["trusted_private"]),
        artifacts,
        "bad.tar.gz",
    )
    deploy = command(bundle, revision=9)
    observer.send(deploy)
    observer.wait_for(lambda: acks_for(observer, deploy["id"]).count("VERIFYING") == 2)  # swapped, watching
    for _ in range(10):  # requests failing on the new model during the watch window
        service.stats.record("error", 1.0, ok=False)
    observer.wait_for(lambda: "ROLLED_BACK" in acks_for(observer, deploy["id"]))
    assert service.slot.current is before
    reason = [a for a in observer.of("cmd/ack") if a["status"] == "ROLLED_BACK"][-1]["reason"]
    assert "error rate" in reason


def test_a_slower_new_model_is_rolled_back(device, shipped_models, tmp_path, keys, artifacts) -> None:  # type: ignore[no-untyped-def]
    _agent, service, observer = device
    before = service.slot.current
    for _ in range(20):  # the old model's latency: the baseline the watch compares with
        service.stats.record("edge", 2.0, ok=True)
    bundle = publish_bundle(
        make_bundle(shipped_models / "edge-student", tmp_path / "v-slow", before.version + 1, keys["trusted_private"]),
        artifacts,
        "slow.tar.gz",
    )
    deploy = command(bundle, revision=9)
    observer.send(deploy)
    observer.wait_for(lambda: acks_for(observer, deploy["id"]).count("VERIFYING") == 2)  # swapped, watching
    for _ in range(10):  # slow escalations are the cloud's business, not the new model's
        service.stats.record("cloud", 9000.0, ok=True)
    for _ in range(10):  # local answers, but 5 s each: beyond 3 x 2 ms + the 1000 ms allowance
        service.stats.record("edge", 5000.0, ok=True)
    observer.wait_for(lambda: "ROLLED_BACK" in acks_for(observer, deploy["id"]))
    assert service.slot.current is before
    reason = [a for a in observer.of("cmd/ack") if a["status"] == "ROLLED_BACK"][-1]["reason"]
    assert reason.startswith("p99 latency of local answers")


def test_a_new_model_the_clouds_checks_contradict_is_rolled_back(
    device, shipped_models, tmp_path, keys, artifacts
) -> None:  # type: ignore[no-untyped-def]
    _agent, service, observer = device
    before = service.slot.current
    for _ in range(40):  # the old model's kept answers, each confirmed by the cloud
        service.quality.checked(before, agreed=True)
    bundle = publish_bundle(
        make_bundle(shipped_models / "edge-student", tmp_path / "v-wrong", before.version + 1, keys["trusted_private"]),
        artifacts,
        "wrong.tar.gz",
    )
    deploy = command(bundle, revision=9)
    observer.send(deploy)
    observer.wait_for(lambda: acks_for(observer, deploy["id"]).count("VERIFYING") == 2)  # swapped, watching
    new = service.slot.current
    for i in range(20):  # the new model's: the cloud contradicts one in four
        service.quality.checked(new, agreed=i % 4 != 0)
    observer.wait_for(lambda: "ROLLED_BACK" in acks_for(observer, deploy["id"]))
    assert service.slot.current is before
    reason = [a for a in observer.of("cmd/ack") if a["status"] == "ROLLED_BACK"][-1]["reason"]
    assert reason.startswith(f"the cloud agreed with 15 of 20 checked answers of v{before.version + 1}"), reason


def test_ten_swaps_over_mqtt_under_load_fail_no_request(device, shipped_models, tmp_path, keys, artifacts) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    _agent, service, observer = device
    first = service.slot.current.version
    bundles = [
        publish_bundle(
            make_bundle(
                shipped_models / "edge-student", tmp_path / f"v{first + i}", first + i, keys["trusted_private"]
            ),
            artifacts,
            f"v{first + i}.tar.gz",
        )
        for i in range(1, 11)
    ]
    stop = threading.Event()
    outcomes: list[tuple[bool, int]] = []

    def load() -> None:
        import asyncio

        from edgecloud.edge.service import QueryRequest
        from edgecloud.edge.triage import Requested

        async def run() -> None:
            while not stop.is_set():
                try:
                    result = await service.query(QueryRequest(query="12+7", route=Requested.EDGE))
                    outcomes.append((True, result.model_version))
                except Exception:  # noqa: BLE001 - any failure is what this test counts
                    outcomes.append((False, -1))

        asyncio.run(run())

    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(load)
        try:
            for revision, bundle in enumerate(bundles, 20):
                deploy = command(bundle, revision=revision)
                observer.send(deploy)
                observer.wait_for(
                    lambda d=deploy: (
                        "ACTIVE" in acks_for(observer, d["id"])
                        or {"FAILED", "ROLLED_BACK"} & set(acks_for(observer, d["id"]))
                    )
                )
                final = [a for a in observer.of("cmd/ack") if a["command_id"] == deploy["id"]][-1]
                assert final["status"] == "ACTIVE", final
        finally:
            stop.set()  # else a failed wait would leave the pool waiting for the load forever
    assert service.slot.current.version == first + 10
    assert outcomes and all(ok for ok, _ in outcomes)
    assert {first + 10} <= {v for _, v in outcomes}  # the last model served requests too


def test_a_deployment_is_traced_command_download_verify_watch(  # type: ignore[no-untyped-def]
    device, shipped_models, tmp_path, keys, artifacts, monkeypatch
) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from edgecloud.shared.base import tracing

    exporter = InMemorySpanExporter()
    monkeypatch.setattr(tracing, "_provider", None)  # restored (tracing off) after the test
    tracing.configure_tracing("edgecloud-test", exporter=exporter)
    _agent, service, observer = device
    version = service.slot.current.version + 1
    bundle = make_bundle(shipped_models / "edge-student", tmp_path / "traced", version, keys["trusted_private"])
    deploy = command(publish_bundle(bundle, artifacts, "traced.tar.gz"), revision=5)
    observer.send(deploy)
    observer.wait_for(lambda: acks_for(observer, deploy["id"])[-1:] == ["ACTIVE"])
    observer.wait_for(lambda: any(s.name == "agent.command" for s in exporter.get_finished_spans()))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root = spans["agent.command"]
    assert root.attributes["edgecloud.command_id"] == deploy["id"] and root.attributes["edgecloud.status"] == "ACTIVE"
    for name in ("agent.download", "agent.verify", "agent.swap", "agent.watch"):
        assert (
            spans[name].parent.span_id == root.context.span_id and spans[name].context.trace_id == root.context.trace_id
        )
    assert spans["agent.download"].end_time <= spans["agent.verify"].start_time <= spans["agent.watch"].start_time
