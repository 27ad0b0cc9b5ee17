"""The edge daemon as the tests start it: its config next to a cloud, served over real HTTP on a
loopback port, and the shipped teacher's multi-step query that the edge escalates."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import httpx

from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.daemon import create_daemon
from edgecloud.shared.base.asgi import ThreadedServer
from edgecloud.shared.bundles.manifest import load_manifest

__all__ = ["API_KEY", "TIMEOUT", "RunningDaemon", "edge_config", "multi_step"]

TIMEOUT = 120
API_KEY = "test-api-key-0123456789"


class RunningDaemon:
    def __init__(self, config: EdgeConfig) -> None:
        self.app, self.service = create_daemon(config)
        self.server = ThreadedServer(self.app, lifespan="on", name="edge-daemon")
        self.server.start(timeout=60)
        self.url = self.server.url
        self.http = httpx.Client(base_url=self.url, timeout=TIMEOUT)

    def stop(self) -> None:
        self.http.close()
        self.server.stop(30)


def edge_config(shipped_base_models: Path, tmp_path: Path, **overrides: object) -> EdgeConfig:
    config = EdgeConfig(
        bundle=shipped_base_models / "edge-student",
        device_id="dev-1",
        port=0,
        outbox=tmp_path / "outbox.sqlite3",
        health_interval_s=0.2,
        cloud_timeout_s=30,
    )
    return replace(config, **overrides)  # type: ignore[arg-type]


def multi_step(teacher_dir: Path) -> tuple[str, str]:
    case = load_manifest(teacher_dir).golden[0]  # "CALCULATE 74 + 59-58  - 13": four operators
    return case.query, case.expected
