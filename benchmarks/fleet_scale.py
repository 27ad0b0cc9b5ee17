"""Fleet scale on one machine: N simulated devices, a real mosquitto and the real fleet manager.

Starts mosquitto on a free loopback port (``max_connections -1``, no persistence) and
the real :class:`~edgecloud.fleet.manager.FleetManager` (SQLite store in a temporary
folder, its own paho client) in this process. The devices run in a second process
(``support/fleet_devices.py``) so they do not share the manager's GIL: each one is its own MQTT 5
client with its own client id, will (retained offline state), persistent session, retained
birth on connect and QoS 0 telemetry every ``--interval`` seconds (staggered). The clients
are driven by ``--threads`` selector loops through paho's external-loop API (one socket
each, no thread per device). A device answers a deploy command at once with
DOWNLOADING, VERIFYING and ACTIVE acks (QoS 1) and then reports the new version; it
downloads nothing.

Measured:

* connect: from starting the device process until every device is connected and the
  manager has absorbed every birth;
* telemetry over ``--window`` seconds of steady state: messages/s the devices published
  vs messages/s the manager finished handling (stored), the ingest lag (device
  timestamp -> handled) p50/p99, and how many device rows in the store were updated in
  the window. Counts come from the manager's own ``edgecloud_fleet_messages_total``
  counter; for exact lag percentiles (its histogram has buckets only) the benchmark
  wraps this instance's telemetry handler;
* a rollout to all N devices with an exponential strategy, telemetry still flowing:
  time from ``create_rollout`` to COMPLETED, per-wave durations, and p50/p99 of the
  per-device time from command publish (the delivery's ``sent_at``) to the ACTIVE ack
  being applied, both on the manager's clock;
* CPU seconds of the manager process, the device process and mosquitto in each phase,
  to show which one limited the figures.

Usage::

    python benchmarks/fleet_scale.py [--devices 1000] [--threads 4] [--window 10] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import paho.mqtt

from benchmarks.support.fleet_devices import BUNDLE, FLEET, LABELS, raise_nofile, run_devices
from edgecloud.fleet.manager import FleetManager, FleetManagerConfig
from edgecloud.fleet.rollout import Exponential, Rollout, RolloutStatus
from edgecloud.shared.bundles.artifacts import pack_bundle
from edgecloud.shared.bundles.manifest import write_bundle
from edgecloud.shared.bundles.signing import generate_keypair
from edgecloud.shared.fleetlink.broker import BrokerSettings
from edgecloud.shared.fleetlink.messages import Telemetry

# -- machine and processes -------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_info(broker_binary: str) -> dict[str, Any]:
    def first(path: str, prefix: str) -> str:
        try:
            return next(
                (
                    line.split(":", 1)[1].strip()
                    for line in Path(path).read_text().splitlines()
                    if line.startswith(prefix)
                ),
                "",
            )
        except OSError:
            return ""

    version = subprocess.run([broker_binary, "-h"], capture_output=True, text=True, check=False).stdout.split("\n", 1)[
        0
    ]
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": first("/proc/cpuinfo", "model name"),
        "memory": first("/proc/meminfo", "MemTotal"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "paho_mqtt": paho.mqtt.__version__,
        "mosquitto": version.strip(),
        "rlimit_nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
    }


def start_broker(work: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    config = work / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nmax_connections -1\nallow_anonymous true\npersistence false\nlog_dest none\n"
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return process, port, binary
        time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


# -- the fleet manager side --------------------------------------------------------------


class TelemetryCounter:
    """Telemetry the manager finished handling (stored), from its own metrics, and the
    exact ingest lag of each message, recorded by wrapping the instance's handler."""

    def __init__(self, manager: FleetManager) -> None:
        self.metrics = manager.metrics
        self.lags_ms: list[float] | None = None
        handle = manager._on_telemetry

        def timed(device: str, telemetry: Telemetry, raw: dict[str, Any]) -> None:
            handle(device, telemetry, raw)
            if self.lags_ms is not None:  # only paho's network thread gets here
                self.lags_ms.append((time.time() - telemetry.at) * 1e3)

        manager._on_telemetry = timed  # type: ignore[method-assign]

    @property
    def handled(self) -> int:
        return self.metrics.handled("telemetry")


def percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "p50": round(float(np.percentile(values, 50)), 1),
        "p99": round(float(np.percentile(values, 99)), 1),
        "max": round(max(values), 1),
    }


def make_archive(work: Path, version: int) -> Path:
    """A small edge bundle archive: the simulated devices never download it."""
    bundle = work / f"{BUNDLE}-v{version}"
    bundle.mkdir(parents=True)
    (bundle / "model.bin").write_bytes(os.urandom(4096))
    write_bundle(
        bundle,
        name=BUNDLE,
        kind="edge",
        version=version,
        io={"inputs": [], "outputs": [], "feature_dim": 4, "tokenizer": "none"},
        calibration={},
        golden=[],
        metadata={},
    )
    archive = work / f"{bundle.name}.tar.gz"
    pack_bundle(bundle, archive)  # files at the archive's root, as the manager requires
    return archive


class Probe:
    """CPU seconds of the manager (this process), the device process and mosquitto over a phase."""

    def __init__(self, devices_pid: int, broker_pid: int) -> None:
        self.pids = {"devices": devices_pid, "mosquitto": broker_pid}
        self.mark()

    def _now(self) -> dict[str, float]:
        return {
            "manager": cpu_s(os.getpid()),
            **{name: cpu_s(pid) for name, pid in self.pids.items()},
            "wall": time.monotonic(),
        }

    def mark(self) -> None:
        self._start = self._now()

    def cpu_percent(self) -> dict[str, float]:
        end = self._now()
        wall = max(end["wall"] - self._start["wall"], 1e-9)
        return {name: round(100 * (end[name] - self._start[name]) / wall, 1) for name in end if name != "wall"}


def wait_until(predicate: Any, timeout: float, poll: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False


def _save_ms(manager: FleetManager, live: Rollout) -> list[float]:
    """Milliseconds to save a finished rollout with one device changed: what an ack costs the manager."""
    saves = []
    for device in list(live.devices)[:20]:  # what the manager pays on an ack that changes one device
        live.mark_changed([device])
        t = time.perf_counter()
        manager.store.save_rollout(live)
        saves.append((time.perf_counter() - t) * 1e3)
    return saves


def _wave_durations(view: dict[str, Any]) -> list[dict[str, Any]]:
    """Each sent wave's size and its time from the first command to the last ACK, in ms."""
    waves = []
    for index, size in enumerate(view["wave_sizes"]):
        members = [d["deploy"] for d in view["devices"] if d["wave"] == index and d["deploy"]["sent_at"]]
        if members:
            waves.append(
                {
                    "size": size,
                    "duration_ms": round(
                        (max(m["updated_at"] for m in members) - min(m["sent_at"] for m in members)) * 1e3, 1
                    ),
                }
            )
    return waves


class Bench:
    """The running pieces: mosquitto, the manager (with its counter), the device process."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.broker, port, self.binary = start_broker(work)
        generate_keypair(work / "command.key", work / "command.pub")
        self.manager = FleetManager(
            FleetManagerConfig(
                fleet=FLEET,
                broker=BrokerSettings(port=port),
                store_path=work / "fleet.sqlite3",
                artifact_dir=work / "artifacts",
                tick_interval_s=args.tick,
                client_id="bench-fleet-manager",
                command_key=work / "command.key",
            )
        )
        self.counter = TelemetryCounter(self.manager)
        self.manager.start()
        if not self.manager.wait_connected(10):
            raise RuntimeError("the fleet manager did not connect")
        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        self.published, self.connected, self.commands, self.late_ms = (
            ctx.Array(code, args.threads, lock=False) for code in ("q", "q", "q", "d")
        )
        self.devices = ctx.Process(
            target=run_devices,
            name="fleet-devices",
            args=(
                args.devices,
                args.threads,
                "127.0.0.1",
                port,
                1,
                args.interval,
                self.stop,
                self.published,
                self.connected,
                self.commands,
                self.late_ms,
                str(work / "command.pub"),
            ),
        )
        self.probe: Probe | None = None

    def online(self) -> int:
        return sum(d["online"] for d in self.manager.devices())

    def connect(self) -> dict[str, Any]:
        args = self.args
        started = time.monotonic()
        self.devices.start()
        self.probe = Probe(self.devices.pid or 0, self.broker.pid)
        all_connected = wait_until(lambda: sum(self.connected) >= args.devices, args.timeout, 0.05)
        connected_s = time.monotonic() - started
        all_online = wait_until(lambda: self.online() >= args.devices, args.timeout)
        result = {
            "devices_connected": int(sum(self.connected)),
            "all_connected_s": round(connected_s, 2),
            "manager_online": self.online(),
            "all_births_absorbed_s": round(time.monotonic() - started, 2),
            "cpu_percent": self.probe.cpu_percent(),
        }
        if not (all_connected and all_online):
            raise RuntimeError(f"only {sum(self.connected)} devices connected, {self.online()} online at the manager")
        return result

    def telemetry(self) -> dict[str, Any]:
        args, counter, probe = self.args, self.counter, self.probe
        assert probe is not None
        time.sleep(min(3.0, args.window))  # every device's telemetry schedule is under way
        counter.lags_ms = []
        p0, h0, wall0, t0 = sum(self.published), counter.handled, time.time(), time.monotonic()
        probe.mark()
        time.sleep(args.window)
        p1, h1, elapsed = sum(self.published), counter.handled, time.monotonic() - t0
        lags, counter.lags_ms = counter.lags_ms, None
        with sqlite3.connect(f"file:{self.work / 'fleet.sqlite3'}?mode=ro", uri=True) as db:
            fresh = db.execute(
                "SELECT count(*) FROM devices WHERE last_seen >= ? AND telemetry IS NOT NULL", (wall0,)
            ).fetchone()[0]
        return {
            "window_s": round(elapsed, 2),
            "offered_per_s": round(args.devices / args.interval, 1),
            "published_per_s": round((p1 - p0) / elapsed, 1),
            "absorbed_per_s": round((h1 - h0) / elapsed, 1),
            "absorbed_ratio": round((h1 - h0) / max(p1 - p0, 1), 4),
            "ingest_lag_ms": percentiles(lags),
            "device_rows_updated_in_window": fresh,
            "device_publish_late_ms_max": round(max(self.late_ms), 1),
            "cpu_percent": probe.cpu_percent(),
        }

    def rollout(self) -> dict[str, Any]:
        args, manager, counter, probe = self.args, self.manager, self.counter, self.probe
        assert probe is not None
        record = manager.register_bundle(make_archive(self.work, 2))
        probe.mark()
        p0, h0 = sum(self.published), counter.handled
        counter.lags_ms = []
        t0 = time.monotonic()
        rollout = manager.create_rollout(
            record.name,
            record.version,
            labels=LABELS,
            strategy=Exponential(base_rate=args.base_rate, increment_factor=args.factor),
            device_timeout_s=args.timeout,
        )
        create_s = time.monotonic() - t0
        finished = wait_until(lambda: not manager.get_rollout(rollout.id).status.live, args.timeout, 0.02)
        rollout_s = time.monotonic() - t0
        p1, h1 = sum(self.published), counter.handled
        lags, counter.lags_ms = counter.lags_ms, None
        cpu = probe.cpu_percent()
        wait_until(lambda: sum(self.commands) >= args.devices, 2.0)  # the device process updates it twice a second
        view = manager.rollout(rollout.id)
        live = manager.get_rollout(rollout.id)  # finished: nothing mutates it any more
        saves = _save_ms(manager, live)
        per_device = [
            (d["deploy"]["updated_at"] - d["deploy"]["sent_at"]) * 1e3
            for d in view["devices"]
            if d["deploy"]["status"] == "ACTIVE" and d["deploy"]["sent_at"] is not None
        ]
        return {
            "strategy": {"type": "exponential", "base_rate": args.base_rate, "increment_factor": args.factor},
            "status": view["status"],
            "finished": finished,
            "succeeded": view["succeeded"],
            "failed": view["failed"],
            "create_rollout_ms": round(create_s * 1e3, 1),
            "to_completed_s": round(rollout_s, 2),
            "waves": _wave_durations(view),
            "device_publish_to_active_ms": percentiles(per_device),
            "commands_received_by_devices": int(sum(self.commands)),
            "telemetry_during_rollout": {
                "published_per_s": round((p1 - p0) / rollout_s, 1),
                "absorbed_per_s": round((h1 - h0) / rollout_s, 1),
                "ingest_lag_ms": percentiles(lags),
            },
            "save_rollout_one_device_ms": round(float(np.median(saves)), 2),
            "cpu_percent": cpu,
        }

    def close(self) -> dict[str, Any]:
        """Stop everything; the telemetry totals once the manager's backlog has drained."""
        self.stop.set()
        if self.devices.pid is not None:
            self.devices.join(30)
            if self.devices.is_alive():
                self.devices.terminate()
        handled = -1  # what never arrives once the devices are gone was lost
        while handled != self.counter.handled:
            handled = self.counter.handled
            time.sleep(1.0)
        totals = {
            "published": int(sum(self.published)),
            "absorbed": handled,
            "lost": int(sum(self.published)) - handled,
        }
        self.manager.close()
        self.broker.terminate()
        self.broker.wait(10)
        return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=4, help="selector loops driving the simulated devices")
    parser.add_argument("--interval", type=float, default=1.0, help="telemetry period of each device, seconds")
    parser.add_argument("--window", type=float, default=10.0, help="steady-state telemetry window, seconds")
    parser.add_argument("--base-rate", type=int, default=10, help="devices in the rollout's first wave")
    parser.add_argument("--factor", type=float, default=2.0, help="exponential increment factor")
    parser.add_argument("--tick", type=float, default=0.5, help="the manager's tick interval, seconds")
    parser.add_argument("--timeout", type=float, default=180.0, help="limit for connecting and for the rollout")
    parser.add_argument(
        "--rollout",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the rollout phase (--no-rollout measures telemetry only)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="edgecloud-fleet-scale-"))
    bench = Bench(args, work)
    report: dict[str, Any] = {
        "benchmark": "fleet_scale",
        "machine": machine_info(bench.binary),
        "devices": args.devices,
        "device_threads": args.threads,
        "telemetry_interval_s": args.interval,
        "manager_tick_s": args.tick,
    }
    try:
        report["connect"] = bench.connect()
        report["telemetry"] = bench.telemetry()
        if args.rollout:
            report["rollout"] = bench.rollout()
    finally:
        report["telemetry_totals"] = bench.close()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fleet_scale.json").write_text(json.dumps(report, indent=2) + "\n")
    rollout = report.get("rollout")
    return 0 if rollout is None or rollout["status"] == RolloutStatus.COMPLETED.value else 1


if __name__ == "__main__":
    sys.exit(main())
