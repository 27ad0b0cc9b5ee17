"""The device agent's MQTT session against a real mosquitto: birth, will and telemetry, its config,
and its state on disk (edge/agent.py). The deployments it hands to the deployer are in
test_deployer.py; attacks on the commands themselves are in tests/security."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from edgecloud.edge.agent import AgentConfig, DeviceAgent, resume_bundle
from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.daemon import create_daemon
from edgecloud.edge.service import QueryRequest
from edgecloud.shared.base.errors import ConfigError
from tests.helpers.device import (
    Observer,
    acks_for,
    agent_config,
    command,
    make_bundle,
    publish_bundle,
)


def test_state_is_written_through_to_the_disk_before_and_after_its_rename(  # type: ignore[no-untyped-def]
    shipped_models, tmp_path, mqtt_broker, keys, monkeypatch
) -> None:
    import os
    import stat

    _app, service = create_daemon(
        EdgeConfig(bundle=shipped_models / "edge-student", outbox=tmp_path / "outbox.sqlite3")
    )
    agent = DeviceAgent(agent_config(tmp_path, mqtt_broker, keys), service)  # not started: no other writer
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        synced.append("folder" if stat.S_ISDIR(mode) else Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    agent.state.session += 1
    agent.store.save()
    # The file's data before the rename, the folder (the rename itself) after it.
    assert synced == ["agent-state.tmp", "folder"]
    assert json.loads(agent.store.file.read_text())["session"] == agent.state.session
    assert not agent.store.file.with_suffix(".tmp").exists()


def test_a_corrupt_state_file_starts_the_agent_which_says_so_and_still_deploys(  # type: ignore[no-untyped-def]
    shipped_models, tmp_path, mqtt_broker, keys, artifacts
) -> None:
    state_dir = tmp_path / "agent"
    state_dir.mkdir()
    (state_dir / "agent-state.json").write_text('{"session": 4, "newest_rev')  # truncated
    _app, service = create_daemon(
        EdgeConfig(bundle=shipped_models / "edge-student", outbox=tmp_path / "outbox.sqlite3")
    )
    assert resume_bundle(agent_config(tmp_path, mqtt_broker, keys), fallback=shipped_models / "x") == (
        shipped_models / "x"
    )
    agent = DeviceAgent(agent_config(tmp_path, mqtt_broker, keys), service)
    agent.start()
    observer = Observer(mqtt_broker, keys["command_private"])
    try:
        assert agent.wait_connected(10)
        observer.wait_for(lambda: observer.of("telemetry"))
        assert "agent-state.json is unreadable" in observer.of("telemetry")[-1]["state_problem"]
        installed = service.slot.current.version
        bundle = make_bundle(shipped_models / "edge-student", tmp_path / "next", installed + 1, keys["trusted_private"])
        deploy = command(publish_bundle(bundle, artifacts, "next.tar.gz"), revision=1)
        observer.send(deploy)
        observer.wait_for(lambda: acks_for(observer, deploy["id"])[-1:] == ["ACTIVE"])
        assert service.slot.current.version == installed + 1
    finally:
        observer.close()
        agent.stop()
    assert json.loads((state_dir / "agent-state.json").read_text())["newest_revision"] == 1


def test_agent_config_needs_command_keys_and_an_origin_for_its_token(tmp_path: Path, keys: dict[str, Path]) -> None:
    base = {"device_id": "dev-1", "state_dir": tmp_path, "trusted_keys": (keys["trusted_public"],)}
    with pytest.raises(ConfigError, match="trusted command key"):
        AgentConfig(**base)  # type: ignore[arg-type]
    with_keys = {**base, "command_keys": (keys["command_public"],)}
    with pytest.raises(ConfigError, match="artifact_token needs fleet_origin"):
        AgentConfig(**with_keys, artifact_token="t")  # type: ignore[arg-type]
    for bad in ("fleet:8090", "ftp://fleet", "http://", "http://fleet:99999"):
        with pytest.raises(ConfigError, match="fleet_origin must be an http"):
            AgentConfig(**with_keys, fleet_origin=bad)  # type: ignore[arg-type]
    config = AgentConfig(**with_keys, fleet_origin="https://Fleet.example/api", artifact_token="t")  # type: ignore[arg-type]
    assert config.command_keys == (keys["command_public"],)


def test_birth_telemetry_and_will(device, mqtt_broker) -> None:  # type: ignore[no-untyped-def]
    agent, service, observer = device
    results = [asyncio.run(service.query(QueryRequest(query=q))) for q in ("3 + 4", "12 * 3 - 7 + 40", "9 * 9")]
    # telemetry is periodic: one sent between the queries counts only the first ones
    observer.wait_for(
        lambda: (
            observer.of("state")
            and any(t["quality"] and t["quality"][0]["read"] == 3 for t in observer.of("telemetry"))
        )
    )
    birth = observer.of("state")[-1]
    assert birth["online"] and birth["model_version"] == service.slot.current.version and birth["session"] >= 1
    telemetry = next(t for t in reversed(observer.of("telemetry")) if t["quality"])
    assert {"requests", "latency_ms", "escalation_rate", "outbox_depth", "cpu_percent", "memory_mb"} <= telemetry.keys()
    (quality,) = telemetry["quality"]  # field quality per version, as counts the fleet adds up
    kept = sum(r.reason == "confident" for r in results)
    assert (quality["model_version"], quality["read"], quality["kept"], quality["escalated"]) == (
        service.slot.current.version,
        3,
        kept,
        3 - kept,
    )
    agent.stop()
    observer.wait_for(lambda: observer.of("state")[-1]["online"] is False)


def test_a_dropped_connection_publishes_a_will_with_the_births_session_then_a_rebirth(device) -> None:  # type: ignore[no-untyped-def]
    agent, service, observer = device
    observer.wait_for(lambda: observer.of("state") and observer.of("state")[-1]["online"])
    session = observer.of("state")[-1]["session"]
    agent.client.socket().shutdown(socket.SHUT_RDWR)  # no DISCONNECT packet: the broker sends the will
    observer.wait_for(lambda: any(s["online"] and s["session"] == session + 1 for s in observer.of("state")), 20)
    states = observer.of("state")
    will = next(s for s in states if not s["online"])
    assert will["session"] == session and will["model_version"] == service.slot.current.version
    assert states.index(will) < next(i for i, s in enumerate(states) if s["session"] == session + 1)
