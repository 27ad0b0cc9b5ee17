"""Downloads against a real local HTTP server that can cut connections, ignore Range, stall,
drip and redirect."""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgecloud.shared.base.errors import ConfigError, IntegrityError, NotFoundError, UnavailableError
from edgecloud.shared.bundles.artifacts import ArtifactTooLargeError
from edgecloud.shared.bundles.download import DownloadDeadlineError, _SafeRedirects, download

REPO = Path(__file__).resolve().parents[3]
MiB = 1 << 20


def _listing(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


PAYLOAD = hashlib.sha256(b"seed").digest() * 8192  # 256 KiB, not compressible by accident
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class ServerState:
    payload: bytes = PAYLOAD
    honor_range: bool = True
    announce_length: bool = True
    cut_first_after: int | None = None
    """On the first request, send this many body bytes, then close the connection."""
    stall: bool = False
    drip_bytes_per_s: float = 0.0
    """Send the body in 1 KiB pieces at this rate (a slow server that never stalls a read)."""
    redirect_to: str = ""
    requests: list[dict[str, str | None]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        state = self.server.state
        state.requests.append({
            "path": self.path, "range": self.headers.get("Range"), "authorization": self.headers.get("Authorization"),
        })  # fmt: skip
        first = len(state.requests) == 1
        if self.path in ("/missing", "/forbidden"):
            self.send_error(404 if self.path == "/missing" else 403)
            return
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", state.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data, start = state.payload, 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and state.honor_range:
            start = int(match[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if state.announce_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.stall:
            state.release.wait(10)
            return
        if first and state.cut_first_after is not None:
            body = body[: state.cut_first_after]
        piece = 1 << 10 if state.drip_bytes_per_s else 16 << 10
        try:
            for i in range(0, len(body), piece):
                self.wfile.write(body[i : i + piece])
                if state.drip_bytes_per_s:
                    self.wfile.flush()
                    if state.release.wait(piece / state.drip_bytes_per_s):
                        return
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.state
    httpd.state.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def _get(url: str, dest: Path, **kwargs: object) -> Path:
    options: dict[str, object] = {"expected_sha256": PAYLOAD_SHA, "max_bytes": MiB, "timeout_s": 5.0, "backoff_s": 0.01}
    options.update(kwargs)
    return download(url, dest, **options)  # type: ignore[arg-type]


def test_cut_connection_is_resumed_with_range(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    state.cut_first_after = 100_000
    seen: list[tuple[int, int | None]] = []
    out = _get(f"{url}/bundle.tar.gz", tmp_path / "b.tar.gz", progress=lambda have, total: seen.append((have, total)))
    assert out.read_bytes() == PAYLOAD
    assert [r["range"] for r in state.requests] == [None, "bytes=100000-"]
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD)) and (100_000, len(PAYLOAD)) in seen
    assert _listing(tmp_path) == ["b.tar.gz"]


def test_server_ignoring_range_restarts_from_zero(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    state.cut_first_after, state.honor_range = 100_000, False
    assert _get(f"{url}/b", tmp_path / "b").read_bytes() == PAYLOAD
    assert [r["range"] for r in state.requests] == [None, "bytes=100000-"]


def test_cut_without_content_length_is_caught_by_the_hash(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    state.cut_first_after, state.announce_length = 100_000, False  # a cut looks like the end of the body
    with pytest.raises(IntegrityError, match="sha256"):
        _get(f"{url}/b", tmp_path / "b")
    assert _listing(tmp_path) == []


def test_announced_size_over_the_cap_is_refused_up_front(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    with pytest.raises(ArtifactTooLargeError, match=f"{len(PAYLOAD)} bytes exceeds the limit of 1000"):
        _get(f"{url}/b", tmp_path / "b", max_bytes=1000)
    assert len(state.requests) == 1 and _listing(tmp_path) == []


def test_unannounced_size_over_the_cap_is_refused_while_streaming(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    url, state = server
    state.announce_length = False
    with pytest.raises(ArtifactTooLargeError, match="more than the limit of 100000"):
        _get(f"{url}/b", tmp_path / "b", max_bytes=100_000)
    assert len(state.requests) == 1 and _listing(tmp_path) == []


def test_hash_mismatch_is_refused(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, _ = server
    with pytest.raises(IntegrityError, match="sha256"):
        _get(f"{url}/b", tmp_path / "b", expected_sha256="0" * 64)
    assert _listing(tmp_path) == []


def test_without_a_hash_the_body_is_kept_as_is(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, _ = server
    (tmp_path / "b.part").write_bytes(b"stale")  # never resumed without a hash to check it
    assert _get(f"{url}/b", tmp_path / "b", expected_sha256=None).read_bytes() == PAYLOAD


def test_leftover_part_from_an_earlier_call_is_resumed(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    (tmp_path / "b.part").write_bytes(PAYLOAD[:5000])
    assert _get(f"{url}/b", tmp_path / "b").read_bytes() == PAYLOAD
    assert [r["range"] for r in state.requests] == ["bytes=5000-"]


def test_complete_leftover_part_is_accepted_on_416(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    (tmp_path / "b.part").write_bytes(PAYLOAD)
    assert _get(f"{url}/b", tmp_path / "b").read_bytes() == PAYLOAD
    assert [r["range"] for r in state.requests] == [f"bytes={len(PAYLOAD)}-"]


def test_stale_leftover_part_is_discarded_after_a_mismatch(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    (tmp_path / "b.part").write_bytes(b"x" * 5000)
    assert _get(f"{url}/b", tmp_path / "b").read_bytes() == PAYLOAD
    assert [r["range"] for r in state.requests] == ["bytes=5000-", None]


def test_unreachable_server_is_unavailable_quickly(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(UnavailableError, match="giving up after 3 attempts") as info:
        _get(f"http://127.0.0.1:{port}/b", tmp_path / "b", attempts=3)
    assert time.monotonic() - started < 5 and info.value.recoverable


def test_stalled_server_times_out_per_read(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    state.stall = True
    started = time.monotonic()
    with pytest.raises(UnavailableError):
        _get(f"{url}/b", tmp_path / "b", timeout_s=0.3, attempts=2)
    assert time.monotonic() - started < 5 and len(state.requests) == 2


def test_a_slow_server_cannot_hold_a_download_past_its_deadline(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    # 20 KB/s never stalls a read for its 5 s timeout; the 256 KiB would take ~13 s.
    url, state = server
    state.drip_bytes_per_s = 20_000
    started = time.monotonic()
    with pytest.raises(DownloadDeadlineError, match="deadline of 1 s") as info:
        _get(f"{url}/b", tmp_path / "b.tar.gz", deadline_s=1.0)
    assert time.monotonic() - started < 3 and info.value.recoverable
    assert _listing(tmp_path) == ["b.tar.gz.part"]  # kept: the next command resumes it
    # The same server, fast again: the download resumes from the .part and completes within its deadline.
    state.drip_bytes_per_s = 0
    assert _get(f"{url}/b", tmp_path / "b.tar.gz", deadline_s=10.0).read_bytes() == PAYLOAD
    assert state.requests[-1]["range"] is not None


def test_an_attempt_under_the_minimum_rate_is_cut_and_resumed(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    state.drip_bytes_per_s = 20_000
    with pytest.raises(DownloadDeadlineError):
        _get(f"{url}/b", tmp_path / "b", min_rate_bps=100_000, rate_grace_s=0.3, deadline_s=2.5)
    ranges = [r["range"] for r in state.requests]
    assert len(ranges) >= 3 and ranges[0] is None
    starts = [int(r.removeprefix("bytes=").removesuffix("-")) for r in ranges[1:]]
    assert starts == sorted(starts) and starts[0] > 0  # each cut attempt resumed where the last one stopped


def test_deadline_and_rate_arguments_are_checked(tmp_path: Path) -> None:
    for bad in ({"deadline_s": 0}, {"min_rate_bps": -1}, {"rate_grace_s": -1}):
        with pytest.raises(ConfigError, match="deadline_s > 0"):
            _get("http://127.0.0.1:1/b", tmp_path / "b", **bad)


@pytest.mark.parametrize(("path", "error"), [("/missing", NotFoundError), ("/forbidden", ConfigError)])
def test_client_errors_are_not_retried(
    path: str, error: type[Exception], server: tuple[str, ServerState], tmp_path: Path
) -> None:
    url, state = server
    with pytest.raises(error, match="HTTP 40"):
        _get(f"{url}{path}", tmp_path / "b")
    assert len(state.requests) == 1 and _listing(tmp_path) == []


def test_redirect_to_another_host_drops_credentials(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    state.redirect_to = url.replace("127.0.0.1", "localhost") + "/b"
    out = _get(f"{url}/redirect", tmp_path / "b", headers={"Authorization": "Bearer secret"})
    assert out.read_bytes() == PAYLOAD
    assert [(r["path"], r["authorization"]) for r in state.requests] == [("/redirect", "Bearer secret"), ("/b", None)]


def test_redirect_from_https_to_http_is_refused() -> None:
    request = urllib.request.Request("https://artifacts.example/b", headers={"Authorization": "Bearer secret"})
    with pytest.raises(urllib.error.HTTPError, match="from https to http"):
        _SafeRedirects().redirect_request(request, None, 302, "Found", {}, "http://artifacts.example/b")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x"])
def test_only_http_urls_are_fetched(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        _get(url, tmp_path / "b")
