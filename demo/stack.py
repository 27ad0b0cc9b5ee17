"""The demo's processes: an MQTT broker, the cloud Reasoner, the fleet manager and N edge
daemons, each a separate OS process started through the real CLI, logging to its own file.

Everything binds 127.0.0.1 on free ports. :meth:`Stack.stop` sends SIGTERM to each
process (edges first, the broker last) and records how each one exited.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgecloud.shared.base.errors import ConfigError, UnavailableError

__all__ = ["Process", "Stack", "StackConfig", "free_port"]

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
FLEET = "demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, process: Process | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.popen.poll() is not None:
            raise UnavailableError(
                f"{process.name} exited with {process.popen.returncode} while waiting for {what}; "
                f"see {process.log_path}:\n{process.log_tail()}"
            )
        try:
            value = predicate()
        except (OSError, httpx.HTTPError, grpc.RpcError):
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise UnavailableError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass(frozen=True, kw_only=True)
class StackConfig:
    work: Path
    """Logs, stores, keys and downloaded bundles of this run."""
    models: Path = REPO / "models"
    edges: int = 3
    cloud_threads: int = 1
    cloud_max_batch: int = 16
    telemetry_interval_s: float = 1.0
    watch_s: float = 5.0
    """How long each daemon watches a newly deployed model before acking ACTIVE."""
    shadow_share: float = 0.4
    """The share of kept answers each daemon has the cloud check (the daemon's default is 0.02; its cap of
    30 a minute holds): enough checks in a minute-long demo for the rollout's quality gate to judge each wave."""
    broker: str = "auto"
    """``mosquitto``, ``embedded`` (amqtt, MQTT 3.1.1) or ``auto`` (mosquitto when installed)."""

    def __post_init__(self) -> None:
        if self.edges < 1:
            raise ConfigError("the demo needs at least one edge daemon")
        if not 0 <= self.shadow_share <= 1:
            raise ConfigError(f"shadow_share must be in [0, 1], got {self.shadow_share}")
        if self.broker not in ("auto", "mosquitto", "embedded"):
            raise ConfigError(f"broker must be auto, mosquitto or embedded, got {self.broker!r}")
        for bundle in ("cloud-teacher", "edge-student"):
            if not (self.models / bundle / "manifest.json").is_file():
                raise ConfigError(f"{self.models / bundle} is not a bundle; run `make models` or pass --models")


@dataclass
class Process:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.time)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code (negative: killed by that signal)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.0f s; killing it", self.name, timeout)
                self.popen.kill()
                self.popen.wait(10)
        return int(self.popen.returncode)


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.work = config.work
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "logs").mkdir(exist_ok=True)
        self.processes: dict[str, Process] = {}
        self.exits: dict[str, list[int]] = {}
        self._killed: set[int] = set()
        self.broker_port = free_port()
        self.cloud_port = free_port()
        self.cloud_metrics_port = free_port()
        self.fleet_port = free_port()
        self.edge_ports = [free_port() for _ in range(config.edges)]
        self.broker_kind = self._pick_broker()
        self.key = self.work / "keys" / "demo-signing.key"
        self.public_key = self.work / "keys" / "demo-signing.pub"
        # a second pair for the fleet manager's commands: the key on the server that moves models
        # is not the key that vouches for them
        self.command_key = self.work / "keys" / "demo-commands.key"
        self.command_public_key = self.work / "keys" / "demo-commands.pub"

    def _ensure_keys(self) -> None:
        from edgecloud.shared.bundles.signing import generate_keypair

        for private, public in ((self.key, self.public_key), (self.command_key, self.command_public_key)):
            if not private.exists():
                private.parent.mkdir(parents=True, exist_ok=True)
                generate_keypair(private, public)

    @property
    def devices(self) -> list[str]:
        return [f"edge-{i + 1}" for i in range(self.config.edges)]

    @property
    def fleet_url(self) -> str:
        return f"http://127.0.0.1:{self.fleet_port}"

    def edge_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.edge_ports[index]}"

    def _pick_broker(self) -> str:
        mosquitto = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if self.config.broker == "mosquitto" and mosquitto is None:
            raise ConfigError(
                "mosquitto is not installed (apt-get install mosquitto), and --broker mosquitto was asked"
            )
        if self.config.broker == "embedded" or mosquitto is None:
            return "embedded"
        return mosquitto

    @property
    def mqtt_version(self) -> str:
        return "3.1.1" if self.broker_kind == "embedded" else "5"

    # -- processes ---------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> Process:
        log_path = self.work / "logs" / f"{name}.log"
        handle = log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
        popen = subprocess.Popen(
            argv, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        handle.close()
        process = Process(name, argv, log_path, popen)
        self.processes[name] = process
        log.debug("started %s (pid %d): %s", name, popen.pid, " ".join(argv))
        return process

    @staticmethod
    def _cli(*args: str) -> list[str]:
        return [sys.executable, "-m", "edgecloud", *args]

    def run_command(self, name: str, args: list[str], timeout: float) -> tuple[int, Path]:
        """Run ``edgecloud ARGS`` to completion, its output in ``logs/NAME.log``; its exit status
        (124 when it ran past ``timeout``) and the log's path."""
        log_path = self.work / "logs" / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
        with log_path.open("wb") as handle:
            try:
                done = subprocess.run(
                    self._cli(*args),
                    check=False,
                    cwd=REPO,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env=env,
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired:
                return 124, log_path
        return done.returncode, log_path

    def start_broker(self) -> None:
        if self.broker_kind == "embedded":
            argv = [sys.executable, "-m", "edgecloud.demo.broker", "--port", str(self.broker_port)]
        else:
            conf = self.work / "mosquitto.conf"
            (self.work / "mosquitto").mkdir(exist_ok=True)
            conf.write_text(
                f"listener {self.broker_port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                f"persistence_location {self.work / 'mosquitto'}/\nlog_dest stdout\n"
                "log_type error\nlog_type warning\nlog_type notice\n"
            )
            argv = [self.broker_kind, "-c", str(conf)]
        process = self._spawn("broker", argv)

        def listening() -> bool:
            with socket.create_connection(("127.0.0.1", self.broker_port), timeout=1):
                return True

        wait_until(listening, 15, "the MQTT broker", process)

    def start_cloud(self) -> None:
        c = self.config
        process = self._spawn(
            "cloud",
            self._cli(
                "cloud",
                "serve",
                "--model",
                str(c.models / "cloud-teacher"),
                "--port",
                str(self.cloud_port),
                "--metrics-port",
                str(self.cloud_metrics_port),
                "--store",
                str(self.work / "cloud-sessions.sqlite3"),
                "--max-batch",
                str(c.cloud_max_batch),
                "--threads",
                str(c.cloud_threads),
                "--escalation-log",
                str(self.work / "escalations.jsonl"),
                "--grace",
                "5",
            ),
        )

        def serving() -> bool:
            with grpc.insecure_channel(f"127.0.0.1:{self.cloud_port}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                return reply.status == health_pb2.HealthCheckResponse.SERVING

        wait_until(serving, 90, "the cloud Reasoner to report SERVING", process)

    def kill_cloud(self) -> None:
        """SIGKILL: no drain, no goodbye; what a crashed VM looks like to the edges."""
        process = self.processes["cloud"]
        self._killed.add(process.popen.pid)
        process.popen.kill()
        process.popen.wait(10)
        self.exits.setdefault("cloud", []).append(int(process.popen.returncode))

    def start_fleet(self) -> None:
        self._ensure_keys()
        process = self._spawn(
            "fleet",
            self._cli(
                "fleet",
                "serve",
                "--broker",
                f"127.0.0.1:{self.broker_port}",
                "--fleet",
                FLEET,
                "--port",
                str(self.fleet_port),
                "--store",
                str(self.work / "fleet.sqlite3"),
                "--artifacts",
                str(self.work / "fleet-artifacts"),
                "--trust",
                str(self.public_key),
                "--command-key",
                str(self.command_key),
                "--mqtt-version",
                self.mqtt_version,
            ),
        )
        wait_until(
            lambda: httpx.get(f"{self.fleet_url}/healthz", timeout=2).json()["mqtt_connected"],
            60,
            "the fleet manager to reach the broker",
            process,
        )

    def _edge_argv(self, index: int, device: str, state: Path) -> list[str]:
        """``edgecloud edge serve`` for daemon ``index``: its bundle, cloud, broker, keys and state folder."""
        return self._cli(
            "edge",
            "serve",
            "--bundle",
            str(self.config.models / "edge-student"),
            "--cloud",
            f"127.0.0.1:{self.cloud_port}",
            "--port",
            str(self.edge_ports[index]),
            "--device-id",
            device,
            "--outbox",
            str(state / "outbox.sqlite3"),
            "--threads",
            "1",
            "--broker",
            f"127.0.0.1:{self.broker_port}",
            "--fleet",
            FLEET,
            "--trust",
            str(self.public_key),
            "--trust-commands",
            str(self.command_public_key),
            "--fleet-origin",
            self.fleet_url,
            "--agent-state",
            str(state / "agent"),
            "--telemetry-interval",
            str(self.config.telemetry_interval_s),
            "--label",
            "site=demo",
            "--mqtt-version",
            self.mqtt_version,
            "--watch-s",
            str(self.config.watch_s),
            "--shadow-share",
            str(self.config.shadow_share),
        )

    def start_edges(self) -> None:
        self._ensure_keys()
        started = []
        for index, device in enumerate(self.devices):
            state = self.work / device
            state.mkdir(exist_ok=True)
            started.append(
                self._spawn(
                    device,
                    self._edge_argv(index, device, state),
                )
            )
        for index, process in enumerate(started):
            wait_until(
                lambda i=index: httpx.get(f"{self.edge_url(i)}/readyz", timeout=2).status_code == 200,
                60,
                f"{process.name} to be ready",
                process,
            )

        def online() -> bool:
            devices = httpx.get(f"{self.fleet_url}/v1/devices", timeout=5).json()["devices"]
            return sum(d["online"] for d in devices) >= len(self.devices)

        wait_until(online, 30, "every edge daemon to announce itself to the fleet manager")

    def start(self, progress: Callable[[str], None] = print) -> None:
        for what, step in (
            (
                "MQTT broker (" + ("embedded amqtt" if self.broker_kind == "embedded" else "mosquitto") + ")",
                self.start_broker,
            ),
            ("cloud Reasoner", self.start_cloud),
            ("fleet manager", self.start_fleet),
            (f"{self.config.edges} edge daemons", self.start_edges),
        ):
            started = time.monotonic()
            step()
            progress(f"  started {what} in {time.monotonic() - started:.1f} s")

    def stop(self) -> dict[str, list[int]]:
        """Stop everything, edges first; ``{name: [exit codes, oldest first]}``."""
        order = [*self.devices, "fleet", "cloud", "broker"]
        for name in order:
            process = self.processes.get(name)
            if process is not None and process.popen.poll() is None:
                self.exits.setdefault(name, []).append(process.terminate())
            elif process is not None and name not in self.exits:
                self.exits[name] = [int(process.popen.returncode)]
        return self.exits

    def dead(self) -> list[str]:
        """Processes that exited on their own (not stopped or killed by the demo)."""
        return [
            f"{p.name} (exit {p.popen.returncode}, see {p.log_path})"
            for p in self.processes.values()
            if p.popen.poll() is not None and p.popen.pid not in self._killed
        ]
