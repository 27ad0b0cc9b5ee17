"""Key compromise, as TUF frames it, against the real device agent over a real mosquitto and the
real fleet manager: a key may sign only what its role allows, a revoked key signs nothing (not
even what a device already serves), and a rotation hands a key's role to its successor."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from edgecloud.edge.agent import resume_bundle
from edgecloud.fleet.registry import BundleRegistry
from edgecloud.fleet.store import FleetStore
from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.bundles.artifacts import pack_bundle
from edgecloud.shared.bundles.signing import KeyRoleError, generate_keypair, key_id, load_private_key, load_public_key
from edgecloud.shared.bundles.trust import rotation_statement, write_rotation
from tests.helpers.device import RecordingServer, acks_for, command, make_bundle, publish_bundle


def policy(path: Path, keys: list[dict], rotations: list[str] = (), revoked: list[str] = ()) -> Path:  # type: ignore[assignment]
    document = {"format": "edgecloud-trust/1", "keys": keys, "rotations": list(rotations), "revoked": list(revoked)}
    path.write_text(json.dumps(document))
    return path


def kid(public: Path) -> str:
    return key_id(load_public_key(public))


def deploy(observer, bundle: dict, revision: int, device: str = "dev-1") -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """Send a signed deploy; its last ack status and reason."""
    sent = command(bundle, revision=revision)
    observer.send(sent, device)
    observer.wait_for(lambda: acks_for(observer, sent["id"])[-1:] in (["ACTIVE"], ["FAILED"]))
    last = [a for a in observer.of("cmd/ack") if a["command_id"] == sent["id"]][-1]
    return last["status"], last.get("reason", "")


@pytest.fixture
def artifacts(servers) -> tuple[Path, RecordingServer]:  # type: ignore[no-untyped-def]
    server = servers("artifacts")
    return server.root, server


def test_a_key_signs_only_what_its_role_allows(make_device, shipped_models, tmp_path, keys, artifacts) -> None:  # type: ignore[no-untyped-def]
    # "rogue" is trusted here, but only for the cloud's teacher: a compromised teacher-signing key.
    trust = policy(
        tmp_path / "trust.json",
        [
            {"public_key": str(keys["trusted_public"]), "names": ["edgecloud-*"], "kinds": ["edge"]},
            {"public_key": str(keys["rogue_public"]), "names": ["cloud-teacher"], "kinds": ["cloud"]},
        ],
    )
    _agent, service, observer = make_device(trusted_keys=(trust,))
    before = service.slot.current
    source = shipped_models / "edge-student"
    forged = make_bundle(source, tmp_path / "forged", before.version + 1, keys["rogue_private"])
    status, reason = deploy(observer, publish_bundle(forged, artifacts, "forged.tar.gz"), revision=3)
    assert status == "FAILED" and "may sign names cloud-teacher; kinds cloud" in reason, reason
    assert service.slot.current is before

    real = make_bundle(source, tmp_path / "real", before.version + 1, keys["trusted_private"])
    assert deploy(observer, publish_bundle(real, artifacts, "real.tar.gz"), revision=4)[0] == "ACTIVE"
    assert service.slot.current.version == before.version + 1


def test_a_revoked_key_signs_nothing_not_even_what_a_device_serves(  # type: ignore[no-untyped-def]
    make_device, shipped_models, tmp_path, keys, artifacts
) -> None:
    agent, service, observer = make_device()
    source = shipped_models / "edge-student"
    version = service.slot.current.version + 1
    installed = make_bundle(source, tmp_path / "installed", version, keys["trusted_private"])
    assert deploy(observer, publish_bundle(installed, artifacts, "v1.tar.gz"), revision=3)[0] == "ACTIVE"
    deployed = service.slot.current.directory
    assert resume_bundle(agent.config, fallback=source) == deployed

    # The release key leaks; the operator revokes it and issues a new one.
    generate_keypair(tmp_path / "keys" / "next.key", tmp_path / "keys" / "next.pub")
    trust = policy(
        tmp_path / "trust.json",
        [{"public_key": str(keys["trusted_public"])}, {"public_key": str(tmp_path / "keys" / "next.pub")}],
        revoked=[kid(keys["trusted_public"])],
    )
    restarted = dataclasses.replace(agent.config, trusted_keys=(trust,))
    assert resume_bundle(restarted, fallback=source) == source  # a restart no longer serves what it signed

    # A device configured with the new policy: the leaked key's next release is refused.
    other = {"device_id": "dev-2", "state_dir": tmp_path / "agent-2", "trusted_keys": (trust,)}
    _agent, service, observer = make_device(**other)
    leaked = make_bundle(source, tmp_path / "leaked", version + 1, keys["trusted_private"])
    status, reason = deploy(observer, publish_bundle(leaked, artifacts, "leaked.tar.gz"), 5, "dev-2")
    assert status == "FAILED" and "revoked" in reason, reason
    fresh = make_bundle(source, tmp_path / "fresh", version + 1, tmp_path / "keys" / "next.key")
    assert deploy(observer, publish_bundle(fresh, artifacts, "fresh.tar.gz"), 6, "dev-2")[0] == "ACTIVE"
    assert service.slot.current.version == version + 1


def test_a_rotation_moves_the_role_to_the_new_key_and_the_old_one_signs_no_new_release(  # type: ignore[no-untyped-def]
    make_device, shipped_models, tmp_path, keys, artifacts
) -> None:
    source = shipped_models / "edge-student"
    before_rotation = policy(
        tmp_path / "trust-v1.json", [{"public_key": str(keys["trusted_public"]), "names": ["edgecloud-demo-student"]}]
    )
    agent, service, observer = make_device(trusted_keys=(before_rotation,))
    version = service.slot.current.version + 1
    old_release = make_bundle(source, tmp_path / "old", version, keys["trusted_private"])
    assert deploy(observer, publish_bundle(old_release, artifacts, "old.tar.gz"), revision=3)[0] == "ACTIVE"
    deployed = service.slot.current.directory

    generate_keypair(tmp_path / "keys" / "next.key", tmp_path / "keys" / "next.pub")
    statement = rotation_statement(
        load_private_key(keys["trusted_private"]), load_public_key(tmp_path / "keys" / "next.pub")
    )
    write_rotation(tmp_path / "rotation.json", statement)
    after_rotation = policy(
        tmp_path / "trust-v2.json",
        [{"public_key": str(keys["trusted_public"]), "names": ["edgecloud-demo-student"]}],
        rotations=["rotation.json"],
    )
    restarted = dataclasses.replace(agent.config, trusted_keys=(after_rotation,))
    assert resume_bundle(restarted, fallback=source) == deployed  # installed under the old key: still served

    other = {"device_id": "dev-2", "state_dir": tmp_path / "agent-2", "trusted_keys": (after_rotation,)}
    _agent, service, observer = make_device(**other)
    stale = make_bundle(source, tmp_path / "stale", version + 1, keys["trusted_private"])
    status, reason = deploy(observer, publish_bundle(stale, artifacts, "stale.tar.gz"), 4, "dev-2")
    assert status == "FAILED" and f"retired by a rotation to key {statement['new_key_id']}" in reason, reason
    rotated = make_bundle(source, tmp_path / "rotated", version + 1, tmp_path / "keys" / "next.key")
    assert deploy(observer, publish_bundle(rotated, artifacts, "rotated.tar.gz"), 5, "dev-2")[0] == "ACTIVE"


def test_the_fleet_manager_registers_only_what_the_key_may_sign(shipped_models: Path, tmp_path: Path, keys) -> None:  # type: ignore[no-untyped-def]
    trust = policy(
        tmp_path / "trust.json",
        [
            {"public_key": str(keys["trusted_public"]), "names": ["edgecloud-demo-student"], "kinds": ["edge"]},
            {"public_key": str(keys["rogue_public"]), "kinds": ["cloud"]},
        ],
    )
    registry = BundleRegistry(
        FleetStore(tmp_path / "fleet.sqlite3"),
        tmp_path / "artifacts",
        trusted_keys=(trust,),
        max_bundle_bytes=64 << 20,
        artifact_url=lambda sha: f"http://127.0.0.1/artifacts/{sha}.tar.gz",
    )
    source = shipped_models / "edge-student"
    pack_bundle(make_bundle(source, tmp_path / "forged", 90, keys["rogue_private"]), tmp_path / "forged.tar.gz")
    with pytest.raises((KeyRoleError, InvalidInputError), match="may sign names \\*; kinds cloud"):
        registry.register(tmp_path / "forged.tar.gz")
    pack_bundle(make_bundle(source, tmp_path / "real", 91, keys["trusted_private"]), tmp_path / "real.tar.gz")
    assert registry.register(tmp_path / "real.tar.gz").version == 91
