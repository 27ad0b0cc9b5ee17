"""The issue's target, whole: after forged commands and poison pills on a device's command topic,
a real signed rollout from the real fleet manager (its REST API serving the artifact behind a
token) still reaches ACTIVE on the real device agent, over a real mosquitto."""

from __future__ import annotations

import hashlib
import time

import httpx

from edgecloud.fleet.api import create_server
from edgecloud.fleet.manager import FleetManager, FleetManagerConfig
from edgecloud.fleet.rollout import DeviceStatus, RolloutStatus
from edgecloud.shared.bundles.artifacts import pack_bundle
from edgecloud.shared.fleetlink.broker import BrokerSettings
from edgecloud.shared.fleetlink.messages import Topics, encode
from tests.helpers.device import FLEET, command, make_bundle, sign
from tests.helpers.waiting import free_port, wait_for


def test_after_forgeries_and_poison_a_signed_rollout_reaches_active(
    make_device, mqtt_broker, shipped_models, tmp_path, keys
) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    manager = FleetManager(
        FleetManagerConfig(
            fleet=FLEET,
            broker=BrokerSettings(host=mqtt_broker.host, port=mqtt_broker.port),
            store_path=tmp_path / "fleet.sqlite3",
            artifact_dir=tmp_path / "fleet-artifacts",
            public_base_url=origin,
            tick_interval_s=0.2,
            trusted_keys=(keys["trusted_public"],),
            command_key=keys["command_private"],
        )
    )
    manager.start()
    token = "artifact-token-0123456789"  # GET /artifacts behind it: devices send it, to the fleet origin only
    server, _ = create_server(manager, host="127.0.0.1", port=port, artifact_token=token)
    try:
        assert manager.wait_connected(10)
        agent, service, observer = make_device(fleet_origin=origin, artifact_token=token)
        wait_for(lambda: any(d["id"] == "dev-1" and d["online"] for d in manager.devices()), 15, "dev-1 online")
        version = service.slot.current.version + 1
        directory = make_bundle(shipped_models / "edge-student", tmp_path / "next", version, keys["trusted_private"])
        pack_bundle(directory, tmp_path / "next.tar.gz")
        record = manager.register_bundle(tmp_path / "next.tar.gz")
        bundle = {"name": record.name, "version": version, "url": f"{origin}/artifacts/{record.sha256}.tar.gz",
                  "sha256": record.sha256, "size": record.size}  # fmt: skip

        cmd = Topics(FLEET, "dev-1").cmd
        for payload in (
            encode({**command(bundle, revision=2**62, kind="rollback"), "issued_at": "soon"}),  # the old poison pill
            sign(command(bundle, revision=2**53, kind="rollback"), keys["rogue_command_private"]),  # forged
            sign(command({**bundle, "version": 99}, revision=2**53, kind="rollback"), keys["command_private"]),
            b"[" * 60000,
        ):
            observer.publish(cmd, payload)
        time.sleep(0.5)

        rollout = manager.create_rollout(record.name, version, devices=["dev-1"], device_timeout_s=60)
        wait_for(lambda: manager.get_rollout(rollout.id).status is RolloutStatus.COMPLETED, 45, "the rollout")
        assert manager.get_rollout(rollout.id).devices["dev-1"].deploy.status is DeviceStatus.ACTIVE
        assert service.slot.current.version == version
        assert agent.state.newest_revision == rollout.spec.revision  # the forged 2**53 moved nothing
        assert agent.client._thread is not None and agent.client._thread.is_alive()
        # The archive the device fetched with the token, refused to anyone without it.
        assert httpx.get(bundle["url"]).status_code == 401
        assert httpx.get(bundle["url"], headers={"Authorization": "Bearer wrong"}).status_code == 401
        fetched = httpx.get(bundle["url"], headers={"Authorization": f"Bearer {token}"})
        assert fetched.status_code == 200 and hashlib.sha256(fetched.content).hexdigest() == record.sha256
    finally:
        server.stop()
        manager.close()
