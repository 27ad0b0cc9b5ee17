"""The fleet manager's REST API and artifact server: against a real manager on a real mosquitto with
simulated devices (tests/helpers/sim_fleet.py), and over the ASGI transport without a broker."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from edgecloud.fleet.api import create_app, create_server
from edgecloud.fleet.manager import FleetManager, FleetManagerConfig
from edgecloud.shared.fleetlink.quality import FieldQuality
from tests.helpers.sim_fleet import (
    command_key,
    make_archive,
    manager_config,
    start_devices,
    start_manager,
    wait_devices_online,
)
from tests.helpers.waiting import wait_for


def test_rest_api(mqtt_broker, tmp_path, sims, managers) -> None:
    labels = {0: {"site": "lab"}, 1: {"site": "lab"}, 2: {"site": "lab"}, 3: {"site": "field"}}
    devices = start_devices(mqtt_broker, sims, 4, delay_s=0.8, labels=labels.__getitem__)
    manager = start_manager(manager_config(mqtt_broker, tmp_path), managers)
    wait_devices_online(manager, 4)
    server, port = create_server(manager, api_key="sekrit")
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, headers={"Authorization": "Bearer sekrit"}, timeout=10) as api:
            unauthenticated = httpx.get(f"{base}/v1/devices")
            assert unauthenticated.status_code == 401
            assert unauthenticated.json()["error"]["type"] == "unauthenticated"
            assert httpx.get(f"{base}/healthz").json() == {"status": "ok", "mqtt_connected": True}
            assert "edgecloud fleet" in httpx.get(f"{base}/").text

            archive = make_archive(tmp_path, 2, payload_bytes=300_000)
            data = archive.read_bytes()
            created = api.post("/v1/bundles", content=data, headers={"Content-Type": "application/gzip"})
            assert created.status_code == 201, created.text
            bundle = created.json()
            assert bundle["sha256"] == hashlib.sha256(data).hexdigest()
            v1 = api.post(
                "/v1/bundles",
                content=make_archive(tmp_path, 1).read_bytes(),
                headers={"Content-Type": "application/octet-stream"},
            )
            assert v1.status_code == 201 and v1.json()["version"] == 1
            listed = api.get("/v1/bundles").json()["bundles"]
            assert [(b["name"], b["version"]) for b in listed] == [("edge-student", 1), ("edge-student", 2)]
            assert listed[1]["url"].endswith(f"/artifacts/{bundle['sha256']}.tar.gz")

            for i, device in enumerate(devices):  # periodic on a real device; the manager was not there for the first
                device.field[1] = FieldQuality("edge-student", 1, read=100, kept=90, escalated=10, checks=10, agreed=9)
                if i < 2:
                    device.field[2] = FieldQuality(
                        "edge-student", 2, read=50, kept=40, escalated=10, checks=5, agreed=5
                    )
                device.send_telemetry()
            wait_for(
                lambda: all(d["escalation_rate"] == 0.1 for d in api.get("/v1/devices").json()["devices"]),
                10,
                "telemetry of every device",
            )
            listed_devices = api.get("/v1/devices").json()["devices"]
            assert [d["id"] for d in listed_devices] == ["dev00", "dev01", "dev02", "dev03"]
            assert listed_devices[0]["telemetry"]["requests"] == {"edge": 9, "cloud": 1}
            quality = api.get("/v1/quality").json()["versions"]  # summed per version, newest first
            assert [(v["model_version"], v["devices"], v["checks"], v["agreed"], v["read"]) for v in quality] == [
                (2, 2, 10, 10, 100), (1, 4, 40, 36, 400)
            ]  # fmt: skip
            assert quality[1]["agreement"]["value"] == 0.9 and quality[1]["agreement"]["low"] < 0.9

            bad = api.post(
                "/v1/rollouts",
                json={
                    "bundle": "edge-student",
                    "version": 2,
                    "strategy": {"type": "spiral"},
                    "labels": {"site": "lab"},
                },
            )
            assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_input"
            assert api.get("/v1/rollouts/nope").status_code == 404
            missing = api.post("/v1/rollouts", json={"bundle": "edge-student", "version": 9, "labels": {}})
            assert missing.status_code == 404

            made = api.post(
                "/v1/rollouts",
                json={
                    "bundle": "edge-student",
                    "version": 2,
                    "labels": {"site": "lab"},
                    "strategy": {"type": "fixed", "size": 1},
                    "device_timeout_s": 60,
                },
            )
            assert made.status_code == 201, made.text
            rollout = made.json()
            assert rollout["total"] == 3 and [d["device"] for d in rollout["devices"]] == ["dev00", "dev01", "dev02"]
            paused = api.post(f"/v1/rollouts/{rollout['id']}/pause", json={}).json()
            assert paused["status"] == "PAUSED"
            time.sleep(1.6)  # dev00 finishes; no second wave while paused
            state = api.get(f"/v1/rollouts/{rollout['id']}").json()
            assert state["status"] == "PAUSED" and state["wave"] == 1 and state["succeeded"] == 1
            assert not devices[1].received
            assert api.post(f"/v1/rollouts/{rollout['id']}/resume", json={}).json()["status"] == "RUNNING"
            wait_for(
                lambda: api.get(f"/v1/rollouts/{rollout['id']}").json()["status"] == "COMPLETED",
                20,
                "completion after resume",
            )

            other = api.post(
                "/v1/rollouts", json={"id": "field-1", "bundle": "edge-student", "version": 2, "devices": ["dev03"]}
            ).json()
            aborted = api.post(f"/v1/rollouts/{other['id']}/abort", json={"reason": "changed my mind"}).json()
            assert aborted["status"] == "ABORTED" and aborted["abort_reason"] == "changed my mind"
            conflict = api.post(f"/v1/rollouts/{other['id']}/resume", json={})
            assert conflict.status_code == 400
            assert [r["id"] for r in api.get("/v1/rollouts").json()["rollouts"]] == ["field-1", rollout["id"]]

            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text)
                for s in family.samples
            }
            assert samples[("edgecloud_fleet_messages_total", (("leaf", "telemetry"),))] >= 4
            assert samples[("edgecloud_fleet_messages_total", (("leaf", "cmd/ack"),))] >= 3
            assert samples[("edgecloud_fleet_commands_published_total", (("type", "deploy"),))] >= 3
            assert samples[("edgecloud_fleet_devices_online", ())] == 4
            assert samples[("edgecloud_fleet_rollouts_live", ())] == 0
            assert manager.metrics.handled("telemetry") >= 4

            url = f"/artifacts/{bundle['sha256']}.tar.gz"
            part = httpx.get(f"{base}{url}", headers={"Range": "bytes=100-199"})
            assert part.status_code == 206
            assert part.content == data[100:200]
            assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
            half = len(data) // 2  # a resumed download: the first half, then the rest
            first = httpx.get(f"{base}{url}", headers={"Range": f"bytes=0-{half - 1}"}).content
            rest = httpx.get(f"{base}{url}", headers={"Range": f"bytes={half}-"})
            assert rest.status_code == 206 and first + rest.content == data
            assert httpx.get(f"{base}/artifacts/{'0' * 64}.tar.gz").status_code == 404
    finally:
        server.stop()


def test_api_errors_without_broker(tmp_path: Path) -> None:
    """Pure API checks over the ASGI transport: JSON errors, auth off by default, no server-side paths."""
    import asyncio

    manager = FleetManager(FleetManagerConfig(artifact_dir=tmp_path / "a", command_key=command_key(tmp_path)))
    on_the_host = make_archive(tmp_path, 1)

    async def calls() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(manager))
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet") as client:
            return [
                await client.post("/v1/bundles", content=b"x", headers={"Content-Type": "text/plain"}),
                await client.post("/v1/bundles", json={"path": str(on_the_host)}),
                await client.post("/v1/bundles", content=b"", headers={"Content-Type": "application/gzip"}),
                await client.post("/v1/rollouts/x/pause", json={}),
                await client.get("/v1/devices"),
            ]

    try:
        bad_type, by_path, empty, unknown, devices = asyncio.run(calls())
        assert manager.bundles() == []  # a path on the manager's host registers nothing
    finally:
        manager.close()
    assert bad_type.status_code == 415 and bad_type.json()["error"]["type"] == "unsupported_media_type"
    assert by_path.status_code == 415
    assert empty.status_code == 400 and empty.json()["error"]["type"] == "invalid_input"
    assert unknown.status_code == 404
    assert devices.json() == {"devices": []}
