"""Attacks on a device's command topic, against the real agent on a real mosquitto.

The attacker can publish anything on ``.../dev-1/cmd`` (a stolen broker password, a lax ACL,
another device): each attack must be refused without changing the device's state, must not stop
its MQTT loop, and a legitimate signed command right after it must still succeed."""

from __future__ import annotations

import base64
import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

from edgecloud.shared.bundles.signing import ALGORITHM, key_id, load_private_key, sign_bundle
from edgecloud.shared.fleetlink.commands import sign_command
from edgecloud.shared.fleetlink.messages import Command, Topics, encode
from tests.helpers.device import (
    FLEET,
    Observer,
    acks_for,
    acted,
    artifacts_of,
    command,
    make_bundle,
    publish_bundle,
    sign,
    wait_final,
)

CMD = Topics(FLEET, "dev-1").cmd


def signed_body(body: dict[str, Any], key: Path) -> bytes:
    """``body`` signed exactly as given, bypassing sign_command's checks: what a holder of the
    key (or a buggy manager) could send."""
    private = load_private_key(key)
    text = encode(body).decode()
    signature = base64.b64encode(private.sign(text.encode())).decode()
    return encode(
        {
            "command": text,
            "signature": {"algorithm": ALGORITHM, "key_id": key_id(private.public_key()), "signature": signature},
        }
    )


def refusals(observer: Any) -> list[dict]:
    """The refusal acks: FAILED, revision 0, no rollout."""
    return [a for a in observer.of("cmd/ack") if a["status"] == "FAILED" and a["revision"] == 0 and not a["rollout_id"]]


def snapshot(agent: Any) -> tuple[bytes, Any]:
    return agent.store.file.read_bytes(), copy.deepcopy(agent.state)


def next_bundle(service: Any, shipped: Path, tmp_path: Path, keys: dict, artifacts: Any, step: int = 1) -> dict:
    version = service.slot.current.version + step
    directory = make_bundle(shipped / "edge-student", tmp_path / f"v{version}", version, keys["trusted_private"])
    return publish_bundle(directory, artifacts, f"v{version}.tar.gz")


def test_poison_pills_and_forgeries_change_nothing_and_a_signed_command_still_succeeds(
    make_device, shipped_models, tmp_path, keys, servers
) -> None:  # type: ignore[no-untyped-def]
    agent, service, observer = make_device()
    artifacts = artifacts_of(servers("artifacts"))
    bundle = next_bundle(service, shipped_models, tmp_path, keys, artifacts)
    good = command(bundle, revision=10)
    now = time.time()
    legit_body = {**good, "device": "dev-1", "issued_at": now, "expires_at": now + 600}
    envelope_ok = {
        "command": "{}",
        "signature": {"algorithm": ALGORITHM, "key_id": "0" * 16, "signature": "A" * 88},
    }
    altered = sign(good, keys["command_private"])
    assert b'\\"revision\\":10' in altered
    altered = altered.replace(b'\\"revision\\":10', b'\\"revision\\":11')
    forged = signed_body(legit_body, keys["rogue_command_private"])
    forged = forged.replace(
        key_id(load_private_key(keys["rogue_command_private"]).public_key()).encode(),
        key_id(load_private_key(keys["command_private"]).public_key()).encode(),
    )
    command_key = keys["command_private"]
    poison: dict[str, bytes] = {
        "not-json": b"not json",
        "binary": b"\xff\xfe\x00\x01",
        "empty": b"",
        "array": b"[1, 2]",
        "deep-nesting": b"[" * 60000,
        "5000-digit-int": b'{"revision": ' + b"9" * 5000 + b"}",
        "oversized": b'{"x": "' + b"a" * (70 * 1024) + b'"}',
        "lone-surrogate": b'{"command": "\\ud800", "signature": {}}',
        "envelope-wrong-types": encode({**envelope_ok, "signature": {**envelope_ok["signature"], "key_id": 7}}),
        "unsigned-issued-at-soon": encode({**good, "issued_at": "soon"}),  # killed paho's thread before
        "unsigned": encode(good),
        "signed-issued-at-soon": signed_body({**legit_body, "issued_at": "soon"}, command_key),
        "signed-revision-2**62": signed_body({**legit_body, "revision": 2**62, "type": "rollback"}, command_key),
        "signed-infinite-expiry": signed_body({**legit_body, "expires_at": float("inf")}, command_key),
        "untrusted-key": sign(good, keys["rogue_command_private"]),
        "bundle-key-signs-commands": sign(good, keys["trusted_private"]),  # bundle keys are not command keys
        "forged-under-the-trusted-key-id": forged,
        "altered-after-signing": altered,
        "expired": sign(good, command_key, now=now - 3600, ttl_s=60),
        "not-yet-valid": sign(good, command_key, now=now + 3600),
        "other-device": sign(good, command_key, device="dev-2"),
    }
    observer.wait_for(lambda: observer.of("state"))
    before = snapshot(agent)
    serving = service.slot.current
    for payload in poison.values():
        observer.publish(CMD, payload)
    observer.wait_for(lambda: len(refusals(observer)) >= len(poison), 20)

    assert agent.client._thread is not None and agent.client._thread.is_alive()  # paho's loop survived
    assert snapshot(agent) == before  # not the revision floor, not the record of commands, nothing
    assert service.slot.current is serving
    reasons = [a["reason"] for a in refusals(observer)]
    for code in ("malformed", "unsigned", "untrusted-key", "bad-signature", "expired", "not-yet-valid"):
        assert any(r.startswith(f"refused ({code})") for r in reasons), (code, reasons)
    assert any(r.startswith("refused (wrong-device)") and "'dev-2'" in r for r in reasons)
    assert not [a for a in observer.of("cmd/ack") if a["status"] != "FAILED"]  # nothing was acted on

    observer.send(good)
    assert wait_final(observer, good["id"]) == "ACTIVE"
    assert acted(observer, good["id"])[:2] == ["DOWNLOADING", "VERIFYING"]
    assert service.slot.current.version == bundle["version"]
    assert agent.state.newest_revision == 10


def test_a_failed_command_at_a_huge_revision_does_not_freeze_the_device(
    make_device, shipped_models, tmp_path, keys, servers
) -> None:  # type: ignore[no-untyped-def]
    """The issue's reproduction: a rollback at revision 2**62 to a version the device never had ended
    FAILED, yet set the floor to 2**62, so every real command after it was IGNORED. Now the floor
    moves only when a verified command is acted on; and 2**62 is out of range for any command."""
    agent, service, observer = make_device()
    artifacts = artifacts_of(servers("artifacts"))
    bundle = next_bundle(service, shipped_models, tmp_path, keys, artifacts)
    never_had = {**bundle, "version": 99}

    observer.publish(CMD, encode(command(never_had, revision=2**62, kind="rollback")))  # unsigned
    observer.wait_for(lambda: refusals(observer))
    highest = command(never_had, revision=2**53, kind="rollback")  # signed, the largest valid revision
    observer.send(highest)
    assert wait_final(observer, highest["id"]) == "FAILED"
    reason = [a for a in observer.of("cmd/ack") if a["command_id"] == highest["id"]][-1]["reason"]
    assert "never had" in reason
    assert agent.state.newest_revision == 0

    real = command(bundle, revision=10)
    observer.send(real)
    assert wait_final(observer, real["id"]) == "ACTIVE"
    assert service.slot.current.version == bundle["version"] and agent.state.newest_revision == 10


def test_a_captured_command_replayed_is_not_applied_twice_and_is_refused_once_expired(
    make_device, shipped_models, tmp_path, keys, servers
) -> None:  # type: ignore[no-untyped-def]
    agent, service, observer = make_device()
    artifacts = artifacts_of(servers("artifacts"))
    bundle = next_bundle(service, shipped_models, tmp_path, keys, artifacts)
    deploy = command(bundle, revision=5)
    captured = sign_command(
        Command.from_dict({**deploy, "device": "dev-1"}), load_private_key(keys["command_private"]), ttl_s=4
    )
    signed_at = time.time()
    observer.publish(CMD, captured)
    assert wait_final(observer, deploy["id"]) == "ACTIVE"
    count = len(acks_for(observer, deploy["id"]))

    observer.publish(CMD, captured)  # replayed while valid: answered from the record, not re-applied
    observer.wait_for(lambda: len(acks_for(observer, deploy["id"])) == count + 1)
    assert acks_for(observer, deploy["id"])[count:] == ["ACTIVE"]

    time.sleep(max(0.0, signed_at + 4.2 - time.time()))
    before = snapshot(agent)
    observer.publish(CMD, captured)  # replayed after its expiry
    observer.wait_for(lambda: any("refused (expired)" in a["reason"] for a in refusals(observer)))
    assert snapshot(agent) == before and service.slot.current.version == bundle["version"]

    # The next command that ends forgets the expired one's record: it can answer nothing now, and
    # the state does not grow with every command a device ever had.
    assert deploy["id"] in agent.state.commands
    unknown = command({**bundle, "version": 99}, revision=6, kind="rollback")
    observer.send(unknown)
    assert wait_final(observer, unknown["id"]) == "FAILED"
    assert deploy["id"] not in agent.state.commands and unknown["id"] in agent.state.commands
    assert set(agent.state.command_expiry) == {unknown["id"]}


def test_a_rollback_goes_only_to_a_version_that_passed_its_watch(
    make_device, shipped_models, tmp_path, keys, servers
) -> None:  # type: ignore[no-untyped-def]
    agent, service, observer = make_device()
    artifacts = artifacts_of(servers("artifacts"))
    start = service.slot.current.version
    bad = next_bundle(service, shipped_models, tmp_path, keys, artifacts, step=1)
    deploy_bad = command(bad, revision=3)
    observer.send(deploy_bad)
    observer.wait_for(lambda: acted(observer, deploy_bad["id"]).count("VERIFYING") == 2)  # swapped, watching
    for _ in range(10):
        service.stats.record("error", 1.0, ok=False)
    assert wait_final(observer, deploy_bad["id"]) == "ROLLED_BACK"  # installed here, never proven

    good = next_bundle(service, shipped_models, tmp_path, keys, artifacts, step=2)
    deploy_good = command(good, revision=4)
    observer.send(deploy_good)
    assert wait_final(observer, deploy_good["id"]) == "ACTIVE"

    to_bad = command(bad, revision=5, kind="rollback")
    observer.send(to_bad)
    assert wait_final(observer, to_bad["id"]) == "FAILED"
    reason = [a for a in observer.of("cmd/ack") if a["command_id"] == to_bad["id"]][-1]["reason"]
    assert "never passed its watch window" in reason
    assert service.slot.current.version == good["version"] and agent.state.newest_revision == 4

    # the version the daemon started on is proven: rolling back to it works
    original = publish_bundle(
        make_bundle(shipped_models / "edge-student", tmp_path / "start", start, keys["trusted_private"]),
        artifacts,
        "start.tar.gz",
    )
    to_start = command(original, revision=6, kind="rollback")
    observer.send(to_start)
    assert wait_final(observer, to_start["id"]) == "ACTIVE"
    assert service.slot.current.version == start
    assert agent.state.proven == {start, good["version"]}


def test_the_artifact_token_goes_only_to_the_fleet_origin(make_device, shipped_models, tmp_path, keys, servers) -> None:  # type: ignore[no-untyped-def]
    fleet, elsewhere = servers("fleet"), servers("elsewhere")
    agent, service, observer = make_device(fleet_origin=fleet.url + "/", artifact_token="sekrit-token")
    before = service.slot.current
    version = before.version + 1
    directory = make_bundle(shipped_models / "edge-student", tmp_path / "next", version, keys["trusted_private"])
    off_origin = command(publish_bundle(directory, artifacts_of(elsewhere), "next.tar.gz"), revision=3)
    observer.send(off_origin)
    assert wait_final(observer, off_origin["id"]) == "FAILED"
    reason = [a for a in observer.of("cmd/ack") if a["command_id"] == off_origin["id"]][-1]["reason"]
    assert "is not on the fleet origin" in reason
    assert elsewhere.authorizations == []  # not even a request, so no token
    assert service.slot.current is before and agent.state.newest_revision == 0

    assert elsewhere.url.split(":")[1] == fleet.url.split(":")[1]  # same host, another port: another origin

    on_origin = command(publish_bundle(directory, artifacts_of(fleet), "next.tar.gz"), revision=4)
    observer.send(on_origin)
    assert wait_final(observer, on_origin["id"]) == "ACTIVE"
    assert fleet.authorizations and set(fleet.authorizations) == {"Bearer sekrit-token"}
    assert elsewhere.authorizations == []


def renamed_bundle(shipped: Path, out: Path, name: str, version: int, key: Path) -> Path:
    """The shipped student as another bundle name (another product line), re-versioned and signed."""
    make_bundle(shipped / "edge-student", out, version, None)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "name": name}))
    sign_bundle(out, load_private_key(key))
    return out


def test_the_version_floor_is_per_bundle_name_and_an_old_release_of_either_is_refused(
    make_device, shipped_models, tmp_path, keys, servers
) -> None:  # type: ignore[no-untyped-def]
    agent, service, observer = make_device()
    artifacts = artifacts_of(servers("artifacts"))
    start, name = service.slot.current.version, service.slot.current.manifest.name
    assert agent.state.floors == {name: start}

    # Another name starts from its own floor: v1 of it installs on a device serving v{start} of this one.
    other = renamed_bundle(shipped_models, tmp_path / "other-v1", "other-student", 1, keys["trusted_private"])
    to_other = command(publish_bundle(other, artifacts, "other-v1.tar.gz"), revision=3)
    observer.send(to_other)
    assert wait_final(observer, to_other["id"]) == "ACTIVE"
    assert agent.state.floors == {name: start, "other-student": 1}

    # Back to the first name: an old signed release of it (a deploy, not a rollback) is below its floor.
    old = make_bundle(shipped_models / "edge-student", tmp_path / "old", start - 1, keys["trusted_private"])
    replayed = command(publish_bundle(old, artifacts, "old.tar.gz"), revision=4)
    observer.send(replayed)
    assert wait_final(observer, replayed["id"]) == "FAILED"
    reason = [a for a in observer.of("cmd/ack") if a["command_id"] == replayed["id"]][-1]["reason"]
    assert f"is not newer than installed v{start}" in reason, reason
    assert service.slot.current.manifest.name == "other-student"

    # A command naming one bundle whose archive holds another is refused.
    later = renamed_bundle(shipped_models, tmp_path / "other-v9", "other-student", start + 5, keys["trusted_private"])
    lying = {**publish_bundle(later, artifacts, "other-v9.tar.gz"), "name": name}
    mislabelled = command(lying, revision=5)
    observer.send(mislabelled)
    assert wait_final(observer, mislabelled["id"]) == "FAILED"
    reason = [a for a in observer.of("cmd/ack") if a["command_id"] == mislabelled["id"]][-1]["reason"]
    assert f"holds edge bundle other-student v{start + 5}, not edge {name} v{start + 5}" in reason, reason

    newer = next_bundle(service, shipped_models, tmp_path, keys, artifacts, step=start)  # name, v{start + 1}
    deploy = command(newer, revision=6)
    observer.send(deploy)
    assert wait_final(observer, deploy["id"]) == "ACTIVE"
    assert agent.state.floors == {name: start + 1, "other-student": 1}


def test_a_flood_of_forged_commands_gets_a_bounded_number_of_acks_and_a_real_command_still_succeeds(
    make_device, shipped_models, tmp_path, keys, servers, caplog
) -> None:  # type: ignore[no-untyped-def]
    # Whoever can publish on the command topic must not turn the device into an amplifier: one
    # refusal ack (and log line) per forged message, at the broker's pace.
    agent, service, observer = make_device()
    artifacts = artifacts_of(servers("artifacts"))
    bundle = next_bundle(service, shipped_models, tmp_path, keys, artifacts)
    forged = sign(command(bundle, revision=99), keys["rogue_command_private"])
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="edgecloud.edge.agent"):
        for _ in range(300):
            observer.publish(CMD, forged)
        time.sleep(1.0)
        observer.publish(CMD, forged)  # after the flood: logged, with how many went unsaid
        good = command(bundle, revision=10)
        observer.send(good)
        assert wait_final(observer, good["id"]) == "ACTIVE"
    elapsed = time.monotonic() - started
    acks = len(refusals(observer))
    assert 32 <= acks <= 32 + 2 * elapsed + 1, (acks, elapsed)
    assert any("more refused since the last one logged" in r.getMessage() for r in caplog.records)
    assert len([r for r in caplog.records if "refused a command" in r.getMessage()]) == acks
    assert agent.client._thread is not None and agent.client._thread.is_alive()
    assert service.slot.current.version == bundle["version"]


def test_a_rotated_command_key_signs_nothing_and_its_successor_is_obeyed(
    make_device, mqtt_broker, shipped_models, tmp_path, keys, servers
) -> None:  # type: ignore[no-untyped-def]
    # The fleet manager's command key is replaced (a leak, a schedule): devices given the policy with
    # the rotation refuse the old key and act on the new one, with no new key file on the device.
    from edgecloud.shared.bundles.signing import generate_keypair, load_public_key
    from edgecloud.shared.bundles.trust import rotation_statement, write_rotation

    generate_keypair(tmp_path / "keys" / "command-2.key", tmp_path / "keys" / "command-2.pub")
    statement = rotation_statement(
        load_private_key(keys["command_private"]), load_public_key(tmp_path / "keys" / "command-2.pub")
    )
    write_rotation(tmp_path / "keys" / "command-rotation.json", statement)
    policy = tmp_path / "keys" / "commands.json"
    policy.write_text(
        json.dumps(
            {
                "format": "edgecloud-trust/1",
                "keys": [{"public_key": "command.pub"}],
                "rotations": ["command-rotation.json"],
            }
        )
    )
    agent, service, observer = make_device(command_keys=(policy,))
    artifacts = artifacts_of(servers("artifacts"))
    bundle = next_bundle(service, shipped_models, tmp_path, keys, artifacts)
    stale = command(bundle, revision=3)
    observer.send(stale)  # signed by the retired key
    observer.wait_for(lambda: any(stale["id"] == a["command_id"] for a in refusals(observer)))
    reason = next(a["reason"] for a in refusals(observer) if a["command_id"] == stale["id"])
    assert f"retired by a rotation to key {statement['new_key_id']}" in reason, reason
    assert agent.state.newest_revision == 0

    rotated = Observer(mqtt_broker, tmp_path / "keys" / "command-2.key")
    try:
        good = command(bundle, revision=4)
        rotated.send(good)
        assert wait_final(observer, good["id"]) == "ACTIVE"
    finally:
        rotated.close()
    assert service.slot.current.version == bundle["version"]
