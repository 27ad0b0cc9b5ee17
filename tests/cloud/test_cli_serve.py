"""`edgecloud cloud serve` as a real process: it serves, answers health checks,
and drains and exits cleanly on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgecloud.proto.edgecloud.v1 import reasoner_pb2 as pb
from edgecloud.proto.edgecloud.v1 import reasoner_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[2]


def test_serve_then_sigterm(teacher_dir: Path, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "edgecloud",
        "cloud",
        "serve",
        "--model",
        str(teacher_dir),
        "--port",
        "0",
        "--metrics-port",
        "-1",
        "--store",
        str(tmp_path / "s.sqlite3"),
        "--grace",
        "2",
    ]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.monotonic() + 120
        lines = []
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            if match := re.search(r"reasoner serving .* on 127\.0\.0\.1:(\d+)", line):
                port = int(match.group(1))
        assert port, "".join(lines)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            events = list(
                pb_grpc.ReasonerStub(channel).Think(pb.ThinkRequest(request_id="cli-1", query="2+2"), timeout=60)
            )
            assert events[-1].completed.answer == "4"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
