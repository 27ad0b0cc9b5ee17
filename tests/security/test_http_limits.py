"""Attacks on the HTTP servers' input (issue 14, items 4, 5 and 8's `edge serve`), each against the real
server over real HTTP (uvicorn on a loopback port), then the legitimate request right after it.

The request body attacks go over a raw socket, so a body can be left unfinished: a server that
answers one whose terminating chunk never came has answered without reading it. Before the
guard, the edge parsed an 8 MiB chunked body and only then checked the key.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecloud.cli import main
from edgecloud.edge.config import EdgeConfig
from edgecloud.fleet.api import MAX_JSON_BYTES, create_server, require_authentication
from edgecloud.fleet.manager import FleetManager, FleetManagerConfig
from edgecloud.fleet.rollout import FixedBatches, RolloutStatus
from edgecloud.shared.base.errors import ConfigError
from tests.helpers.edge import API_KEY, RunningDaemon, edge_config
from tests.helpers.sim_fleet import (
    command_key,
    make_archive,
    manager_config,
    start_devices,
    start_manager,
    wait_devices_online,
    wait_status,
)

FLEET_KEY = "fleet-api-key-0123456789"
EIGHT_MIB = 8 << 20
FLOOD = 64 << 20
"""A chunked flood's length: more than loopback's socket buffers hold, so a server that stops reading
it and closes the connection is seen to, by the sender's failing before the end."""


def flood(size: int = FLOOD) -> Iterator[bytes]:
    """A chunked body of ``size`` bytes of JSON whitespace, never finished."""
    return (chunk(b" " * 65536) for _ in range(size // 65536))


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class RawResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, sent: int, path: str = "") -> None:
        self.status, self.headers, self.body, self.path = status, headers, body, path
        self.sent = sent
        """Body bytes the server took before it answered (or closed)."""

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str],
    parts: Iterable[bytes] = (),
    *,
    timeout: float = 20,
) -> RawResponse:
    """Send the request head, then each body part until the server stops taking them, and read the answer.

    Nothing is sent after ``parts``: a chunked body without its last chunk, or a body shorter than its
    ``Content-Length``, is never finished, so an answer came without the server reading all of it."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        try:
            for part in parts:
                sock.sendall(part)
                sent += len(part)
        except OSError:
            pass  # the server answered and closed while we were still sending
        received = b""
        try:
            while b"\r\n\r\n" not in received:
                data = sock.recv(65536)
                assert data, f"the server closed without an answer after {sent} body bytes"
                received += data
            top, _, body = received.partition(b"\r\n\r\n")
            lines = top.decode("latin-1").split("\r\n")
            fields = dict(line.split(": ", 1) for line in lines[1:])
            response_headers = {k.lower(): v for k, v in fields.items()}
            while len(body) < int(response_headers.get("content-length", "0")):
                data = sock.recv(65536)
                if not data:
                    break
                body += data
        except TimeoutError:
            pytest.fail(f"no answer within {timeout} s: the server is waiting for the rest of the body")
    return RawResponse(int(lines[0].split()[1]), response_headers, body, sent, path)


def assert_refused(response: RawResponse, status: int, kind: str) -> None:
    assert response.status == status, (response.status, response.body)
    error = response.json()["error"]
    openai_shape = set(error) == {"message", "type", "param", "code"}  # on OpenAI's routes: kind is the code
    assert (error["code"] if openai_shape else error["type"]) == kind and error["message"]
    assert openai_shape == response.path.startswith("/v1/chat/"), error


# -- the edge daemon ---------------------------------------------------------------------------


@pytest.fixture
def edge(shipped_models: Path, tmp_path: Path) -> Iterator[RunningDaemon]:
    running = RunningDaemon(edge_config(shipped_models, tmp_path, api_keys=(API_KEY,)))
    yield running
    running.stop()


def test_the_edge_refuses_before_reading_the_body_and_bounds_what_it_reads(edge: RunningDaemon) -> None:
    port = edge.server.port
    limit = edge.service.config.max_body_bytes
    key = {"Authorization": f"Bearer {API_KEY}"}
    chunked = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    for path in ("/v1/query", "/v1/chat/completions"):
        # 8 MiB announced, chunked and declared, without a key: refused on the first KiB, never finished.
        no_key = raw_request(port, "POST", path, chunked, [chunk(b" " * 1024)])
        assert_refused(no_key, 401, "unauthenticated")
        assert no_key.headers["www-authenticate"] == "Bearer"
        declared = {"Content-Type": "application/json", "Content-Length": str(EIGHT_MIB)}
        assert_refused(raw_request(port, "POST", path, declared, [b" " * 1024]), 401, "unauthenticated")
        wrong = raw_request(port, "POST", path, {**chunked, "X-API-Key": "x" * 23}, [chunk(b" " * 1024)])
        assert_refused(wrong, 401, "unauthenticated")

        # With the key: a declared 8 MiB is refused on its headers, a chunked one at the byte past the limit.
        assert_refused(raw_request(port, "POST", path, {**declared, **key}, [b" " * 1024]), 413, "request_too_large")
        flooded = raw_request(port, "POST", path, {**chunked, **key}, flood())
        assert_refused(flooded, 413, "request_too_large")
        assert flooded.sent < FLOOD, f"the server read all {flooded.sent} bytes of a {limit}-byte limit"

        # A cross-site form or a no-CORS fetch cannot declare JSON; nor may a body declare nothing.
        for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            form = raw_request(port, "POST", path, {**key, "Content-Type": kind, "Content-Length": "9"}, [b"query=1+1"])
            assert_refused(form, 415, "unsupported_media_type")
        bare = raw_request(port, "POST", path, {**key, "Content-Length": "17"}, [b'{"query": "1+1"}'])
        assert_refused(bare, 415, "unsupported_media_type")

    # The legitimate requests right after: a chunked JSON body under the limit, and a plain one.
    def body() -> Iterator[bytes]:
        yield b'{"query": "2+2", '
        yield b'"route": "edge"}'

    chunked_ok = edge.http.post("/v1/query", content=body(), headers={**key, "Content-Type": "application/json"})
    assert chunked_ok.status_code == 200, chunked_ok.text
    assert chunked_ok.json()["route_taken"] == "edge" and chunked_ok.json()["answer"]
    chat = edge.http.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "3+4"}], "route": "edge"}, headers=key
    )
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"]
    assert edge.http.get("/healthz").status_code == 200  # probes need no key, nor a media type


def test_edge_serve_off_loopback_needs_an_api_key_unless_allowed(shipped_models: Path, tmp_path: Path) -> None:
    bundle = shipped_models / "edge-student"
    for host in ("0.0.0.0", "::", "192.168.1.20", "edge.example.com"):
        with pytest.raises(ConfigError, match="needs an API key"):
            EdgeConfig(bundle=bundle, host=host)
        EdgeConfig(bundle=bundle, host=host, api_keys=(API_KEY,))
        EdgeConfig(bundle=bundle, host=host, allow_unauthenticated=True)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        EdgeConfig(bundle=bundle, host=host)
    # The command line refuses before it loads anything or binds a port.
    argv = ["edge", "serve", "--bundle", str(bundle), "--host", "0.0.0.0", "--outbox", str(tmp_path / "o.sqlite3")]
    assert main(argv) == 2
    assert not (tmp_path / "o.sqlite3").exists()


# -- the fleet manager -------------------------------------------------------------------------


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[FleetManager, int]]:
    """A fleet manager (no broker needed to register bundles) serving its API with a key, on loopback."""
    manager = FleetManager(
        FleetManagerConfig(
            artifact_dir=tmp_path / "artifacts", command_key=command_key(tmp_path), max_bundle_bytes=200_000
        )
    )
    server, port = create_server(manager, api_key=FLEET_KEY)
    yield manager, port
    server.stop()
    manager.close()


def test_the_fleet_refuses_before_reading_the_body_and_bounds_uploads(
    fleet: tuple[FleetManager, int], tmp_path: Path
) -> None:
    manager, port = fleet
    key = {"Authorization": f"Bearer {FLEET_KEY}"}
    gzip_chunked = {"Content-Type": "application/gzip", "Transfer-Encoding": "chunked"}
    archive = make_archive(tmp_path, 2, payload_bytes=20_000)
    data = archive.read_bytes()

    # Without the key, an 8 MiB upload is refused on its first KiB.
    assert_refused(raw_request(port, "POST", "/v1/bundles", gzip_chunked, [chunk(data[:1024])]), 401, "unauthenticated")
    wrong = raw_request(port, "POST", "/v1/bundles", {**gzip_chunked, "Authorization": "Bearer nope"}, [chunk(b"x")])
    assert_refused(wrong, 401, "unauthenticated")

    # With it: over max_bundle_bytes, declared or chunked, gets 413 and leaves no file behind.
    declared = {"Content-Type": "application/gzip", "Content-Length": str(EIGHT_MIB), **key}
    assert_refused(raw_request(port, "POST", "/v1/bundles", declared, [data[:1024]]), 413, "request_too_large")
    upload = raw_request(port, "POST", "/v1/bundles", {**gzip_chunked, **key}, flood())
    assert_refused(upload, 413, "request_too_large")
    assert upload.sent < FLOOD
    # JSON bodies are bounded too, chunked or not.
    json_chunked = {"Content-Type": "application/json", "Transfer-Encoding": "chunked", **key}
    big = raw_request(port, "POST", "/v1/rollouts", json_chunked, flood())
    assert_refused(big, 413, "request_too_large")
    assert big.sent < FLOOD
    assert f"over {MAX_JSON_BYTES} bytes" in big.json()["error"]["message"]

    # A file on the manager's host cannot be registered by naming it.
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=key, timeout=30) as api:
        by_path = api.post("/v1/bundles", json={"path": str(archive)})
        assert by_path.status_code == 415 and by_path.json()["error"]["type"] == "unsupported_media_type"
        assert manager.bundles() == []
        assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == []  # no upload left half-written

        # The legitimate upload right after, chunked.
        created = api.post(
            "/v1/bundles", content=iter([data[:5000], data[5000:]]), headers={"Content-Type": "application/gzip"}
        )
        assert created.status_code == 201, created.text
        assert [b["version"] for b in api.get("/v1/bundles").json()["bundles"]] == [2]


def test_a_cross_site_form_cannot_touch_an_unauthenticated_fleet_on_loopback(
    mqtt_broker, tmp_path, sims, managers
) -> None:
    """On loopback without a key (the only way it serves without one by default), a page in the operator's
    browser could post to the API: every write needs ``Content-Type: application/json``, which a form
    or a no-CORS fetch cannot send without a preflight the API never answers."""
    start_devices(mqtt_broker, sims, 2, delay_s=0.2)
    manager = start_manager(manager_config(mqtt_broker, tmp_path), managers)
    wait_devices_online(manager, 2)
    record = manager.register_bundle(make_archive(tmp_path, 2))
    server, port = create_server(manager)
    try:
        rollout = manager.create_rollout(
            record.name, record.version, labels={"site": "lab"}, strategy=FixedBatches(size=1)
        )
        manager.pause_rollout(rollout.id)  # held still while the forms try every action on it
        forms = [
            ("text/plain", b'{"reason": "csrf"}'),
            ("application/x-www-form-urlencoded", b"reason=csrf"),
            ("multipart/form-data; boundary=b", b"--b\r\n\r\ncsrf\r\n--b--\r\n"),
        ]
        for action in ("abort", "resume", "rollback"):
            for kind, body in forms:
                form = raw_request(
                    port,
                    "POST",
                    f"/v1/rollouts/{rollout.id}/{action}",
                    {"Content-Type": kind, "Content-Length": str(len(body))},
                    [body],
                )
                assert_refused(form, 415, "unsupported_media_type")
            # fetch(url, {method: "POST", mode: "no-cors"}) sends no Content-Type at all
            assert_refused(
                raw_request(port, "POST", f"/v1/rollouts/{rollout.id}/{action}", {"Content-Length": "0"}),
                415,
                "unsupported_media_type",
            )
        spec = json.dumps({"bundle": record.name, "version": record.version, "labels": {"site": "lab"}}).encode()
        forged = raw_request(
            port, "POST", "/v1/rollouts", {"Content-Type": "text/plain", "Content-Length": str(len(spec))}, [spec]
        )
        assert_refused(forged, 415, "unsupported_media_type")
        assert [r["id"] for r in manager.rollouts()] == [rollout.id]
        assert manager.rollout(rollout.id)["status"] == "PAUSED"

        # The operator's own request works, and the rollout the forms tried to move completes.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
            assert api.post(f"/v1/rollouts/{rollout.id}/resume", json={}).json()["status"] == "RUNNING"
        wait_status(manager, rollout.id, RolloutStatus.COMPLETED)
    finally:
        server.stop()


def test_the_fleet_off_loopback_needs_an_api_key_unless_allowed(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "::", "10.0.0.5", "fleet.example.com"):
        with pytest.raises(ConfigError, match="not loopback"):
            require_authentication(host, None)
        require_authentication(host, FLEET_KEY)
        require_authentication(host, None, allow_unauthenticated=True)
    for host in ("127.0.0.1", "::1", "localhost"):
        require_authentication(host, None)
    manager = FleetManager(FleetManagerConfig(artifact_dir=tmp_path / "a", command_key=command_key(tmp_path)))
    try:
        with pytest.raises(ConfigError, match="not loopback"):
            create_server(manager, host="0.0.0.0")
    finally:
        manager.close()
    # `fleet serve` refuses before it opens its store or its broker connection.
    store = tmp_path / "fleet.sqlite3"
    argv = ["fleet", "serve", "--host", "0.0.0.0", "--public-url", "http://fleet:8090", "--store", str(store)]
    argv += ["--command-key", str(command_key(tmp_path)), "--artifacts", str(tmp_path / "art")]
    assert main(argv) == 2
    assert not store.exists()
