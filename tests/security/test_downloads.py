"""A slow artifact server against the real agent: the command worker handles one command at a
time, so a server that drips bytes (never stalling a read long enough to time out) could hold it,
and every command after it, for as long as it likes. The download's overall deadline ends that."""

from __future__ import annotations

import http.server
import time
from typing import Any

from tests.helpers.device import (
    ArtifactServer,
    artifacts_of,
    command,
    make_bundle,
    publish_bundle,
    wait_final,
)


class _DrippingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files 1 KiB every 50 ms (20 KiB/s): each read gets bytes well within its timeout."""

    def copyfile(self, source: Any, outputfile: Any) -> None:
        while piece := source.read(1024):
            try:
                outputfile.write(piece)
                outputfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            time.sleep(0.05)

    def log_message(self, *args: object) -> None:
        pass


def test_a_dripping_artifact_server_cannot_hold_the_agent_past_its_download_deadline(  # type: ignore[no-untyped-def]
    make_device, shipped_models, tmp_path, keys, servers
) -> None:
    slow_root = tmp_path / "slow"
    slow_root.mkdir()
    slow = ArtifactServer(slow_root, _DrippingHandler)
    try:
        agent, service, observer = make_device(download_deadline_s=3.0, download_min_rate_bps=0)
        before = service.slot.current
        version = before.version + 1
        directory = make_bundle(shipped_models / "edge-student", tmp_path / "next", version, keys["trusted_private"])
        held = command(publish_bundle(directory, artifacts_of(slow), "next.tar.gz"), revision=3)
        assert held["bundle"]["size"] > 200_000  # > 10 s at 20 KiB/s
        started = time.monotonic()
        observer.send(held)
        assert wait_final(observer, held["id"], timeout=20) == "FAILED"
        assert time.monotonic() - started < 10
        reason = [a for a in observer.of("cmd/ack") if a["command_id"] == held["id"]][-1]["reason"]
        assert "deadline of 3 s" in reason, reason
        assert service.slot.current is before and agent.state.newest_revision == 0

        # The same bundle from a server that answers at speed: the next command goes through.
        fast = servers("fast")
        retry = command(publish_bundle(directory, artifacts_of(fast), "next.tar.gz"), revision=4)
        observer.send(retry)
        assert wait_final(observer, retry["id"]) == "ACTIVE"
        assert service.slot.current.version == version
    finally:
        slow.close()
