"""Hot swap under load: consecutive signed deployments over MQTT while clients hammer the edge daemon.

Starts a real mosquitto on a free loopback port, an edge daemon (uvicorn,
the shipped int8 student) with its device agent, and an HTTP artifact
server holding N re-versioned, signed copies of the shipped bundle. Load
threads send edge-route queries over HTTP as fast as they can while the
bundles are deployed one after another by publishing commands on the
device's ``cmd`` topic. Reports the request rate, failed requests (must be
0), and the swap latency from command publish to the new version serving a
request (p50/p99). Usage::

    python benchmarks/swap_under_load.py [--swaps 10] [--clients 6] [--out DIR]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgecloud.edge.agent import AgentConfig, DeviceAgent
from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.daemon import create_daemon
from edgecloud.shared.base.asgi import ThreadedServer
from edgecloud.shared.bundles.artifacts import pack_bundle
from edgecloud.shared.bundles.manifest import copy_bundle, load_manifest
from edgecloud.shared.bundles.signing import generate_keypair, load_private_key, sign_bundle
from edgecloud.shared.fleetlink.broker import BrokerSettings
from edgecloud.shared.fleetlink.commands import sign_command
from edgecloud.shared.fleetlink.messages import Command, Topics

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = work / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest none\n")
    process = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(config)])
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return process, port
        time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class Load:
    """Client threads sending edge-route queries over HTTP as fast as they can, until :meth:`stop`;
    every reply as (time, status, model_version): status 0 for a transport error, version -1 if none."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.results: list[tuple[float, int, int]] = []
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stopping.is_set():
                try:
                    response = http.post("/v1/query", json={"query": "12+7", "route": "edge"})
                    version = response.json().get("model_version", -1) if response.status_code == 200 else -1
                    status = response.status_code
                except httpx.HTTPError:
                    status, version = 0, -1
                with self.lock:
                    self.results.append((time.monotonic(), status, version))

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def served(self, version: int) -> bool:
        with self.lock:
            return next((t for t, s, v in reversed(self.results) if v == version), None) is not None

    def first_served(self, version: int) -> float:
        return min(t for t, s, v in self.results if v == version)


def signed_bundles(source_dir: Path, swaps: int, work: Path, artifacts: Path, artifact_url: str) -> list[dict]:
    """``swaps`` re-versioned copies of the bundle, signed with ``work/key`` and packed into ``artifacts``:
    each one as a deploy command names it."""
    generate_keypair(work / "key", work / "key.pub")
    key = load_private_key(work / "key")
    source = load_manifest(source_dir)
    bundles = []
    for i in range(swaps):
        version = source.version + 1 + i
        directory = work / f"bundle-v{version}"
        copy_bundle(source_dir, directory, version=version)
        sign_bundle(directory, key)
        sha, size = pack_bundle(directory, artifacts / f"v{version}.tar.gz")
        bundles.append(
            {
                "name": source.name,
                "version": version,
                "url": f"{artifact_url}/v{version}.tar.gz",
                "sha256": sha,
                "size": size,
            }
        )
    return bundles


def start_agent(bundle: Path, work: Path, broker_port: int) -> tuple[ThreadedServer, DeviceAgent, Any]:
    """The edge daemon on a free port and its device agent, connected to the broker; and the service."""
    app, service = create_daemon(EdgeConfig(bundle=bundle, port=0, outbox=work / "outbox.sqlite3"))
    server = ThreadedServer(app, lifespan="on", name="edge-daemon")
    server.start(timeout=60)
    agent = DeviceAgent(
        AgentConfig(
            device_id="bench-1",
            fleet="bench",
            state_dir=work / "agent",
            trusted_keys=(work / "key.pub",),
            command_keys=(work / "command.pub",),
            broker=BrokerSettings(port=broker_port),
            watch_s=0.0,
        ),
        service,
    )
    agent.start()
    agent.wait_connected(10)
    return server, agent, service


def swap_all(publisher: mqtt.Client, bundles: list[dict], command_key: Any, load: Load) -> list[float]:
    """Deploy each bundle in turn; each swap's ms from command publish to the new version serving."""
    swap_ms = []
    topic = Topics("bench", "bench-1").cmd
    for revision, bundle in enumerate(bundles, 1):
        published = time.monotonic()
        command = {"id": f"swap-{revision}", "type": "deploy", "revision": revision, "bundle": bundle}
        payload = sign_command(Command.from_dict({**command, "device": "bench-1"}), command_key)
        publisher.publish(topic, payload, qos=1).wait_for_publish(5)
        deadline = published + 60
        while time.monotonic() < deadline:
            if load.served(bundle["version"]):
                swap_ms.append((load.first_served(bundle["version"]) - published) * 1e3)
                break
            time.sleep(0.005)
        else:
            print(f"swap to v{bundle['version']} did not happen", file=sys.stderr)
        time.sleep(0.3)
    return swap_ms


def report_of(
    swaps: int, clients: int, swap_ms: list[float], results: list[tuple[float, int, int]], wall: float, final: int
) -> dict[str, Any]:
    return {
        "benchmark": "swap_under_load",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "swaps": swaps,
        "swaps_completed": len(swap_ms),
        "clients": clients,
        "requests": len(results),
        "failed_requests": sum(1 for _, s, _ in results if s != 200),
        "requests_per_s": len(results) / wall,
        "swap_latency_ms": {
            "p50": float(np.percentile(swap_ms, 50)),
            "p99": float(np.percentile(swap_ms, 99)),
            "max": max(swap_ms),
        }
        if swap_ms
        else None,
        "final_version": final,
        "wall_s": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "models" / "edge-student")
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--clients", type=int, default=6, help="concurrent HTTP client threads")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edgecloud-swap-"))
    broker, broker_port = start_broker(work)
    artifacts = work / "artifacts"
    artifacts.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(artifacts)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    bundles = signed_bundles(args.bundle, args.swaps, work, artifacts, f"http://127.0.0.1:{httpd.server_address[1]}")
    generate_keypair(work / "command.key", work / "command.pub")
    command_key = load_private_key(work / "command.key")
    server, agent, service = start_agent(args.bundle, work, broker_port)

    publisher = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:6]}")
    publisher.connect("127.0.0.1", broker_port)
    publisher.loop_start()

    load = Load(server.url, args.clients)
    started = time.monotonic()
    load.start()
    time.sleep(1.0)
    swap_ms = swap_all(publisher, bundles, command_key, load)
    load.stop()
    wall = time.monotonic() - started
    report = report_of(args.swaps, args.clients, swap_ms, load.results, wall, service.slot.current.version)
    failed = report["failed_requests"]
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "swap_under_load.json").write_text(json.dumps(report, indent=2) + "\n")
    publisher.loop_stop()
    agent.stop()
    server.stop()
    httpd.shutdown()
    broker.terminate()
    broker.wait(10)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if failed == 0 and len(swap_ms) == args.swaps else 1


if __name__ == "__main__":
    sys.exit(main())
