"""Archives against hand-built malicious tars; downloads against a real local
HTTP server that can cut connections, ignore Range, stall and redirect."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgecloud.shared.artifacts import (
    ArchiveError,
    ArtifactTooLargeError,
    BundleExistsError,
    DownloadDeadlineError,
    UnsafeArchiveError,
    _SafeRedirects,
    download,
    pack_bundle,
    unpack_bundle,
)
from edgecloud.shared.bundle import SIGNATURE_FILE, load_manifest, verify_bundle, write_bundle
from edgecloud.shared.errors import (
    BundleError,
    ConfigError,
    IntegrityError,
    ManifestError,
    NotFoundError,
    UnavailableError,
)
from edgecloud.shared.signing import TrustStore, generate_keypair, load_private_key, sign_bundle, verify_signed_bundle

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20


@pytest.fixture
def bundle(shipped_models: Path, tmp_path: Path) -> Path:
    out = tmp_path / "src" / "edge-student"
    shutil.copytree(shipped_models / "edge-student", out)
    (out / SIGNATURE_FILE).unlink(missing_ok=True)
    return out


def _listing(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


# -- pack / unpack -------------------------------------------------------------


def test_pack_unpack_round_trip_verifies_and_keeps_the_signature(bundle: Path, tmp_path: Path) -> None:
    generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    sign_bundle(bundle, load_private_key(tmp_path / "k.key"))
    archive = tmp_path / "b.tar.gz"
    sha, size = pack_bundle(bundle, archive)
    assert (sha, size) == (hashlib.sha256(archive.read_bytes()).hexdigest(), archive.stat().st_size)

    manifest = load_manifest(bundle)
    dest = tmp_path / "installed"
    out = unpack_bundle(archive, dest, max_total_bytes=10 * MiB)
    assert out == dest / f"{manifest.name}-v{manifest.version}"
    assert verify_bundle(out) == manifest
    assert verify_signed_bundle(out, TrustStore.from_paths([tmp_path / "k.pub"])) == manifest
    assert _listing(dest) == [out.name, *(f"{out.name}/{p}" for p in _listing(bundle))]  # no staging left


def test_pack_is_deterministic(bundle: Path, tmp_path: Path) -> None:
    first = pack_bundle(bundle, tmp_path / "a.tar.gz")
    for path in bundle.iterdir():
        os.utime(path, (1_000_000, 1_000_000))
        path.chmod(0o600)
    assert pack_bundle(bundle, tmp_path / "b.tar.gz") == first
    raw = (tmp_path / "a.tar.gz").read_bytes()
    assert raw[4:8] == b"\0\0\0\0"  # gzip header mtime
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["manifest.json", "model.int8.onnx", "tokenizer.json"]
    assert all(m.isreg() and m.mtime == 0 and m.uid == m.gid == 0 and m.uname == m.gname == "" for m in members)


def test_pack_refuses_symlinks(bundle: Path, tmp_path: Path) -> None:
    (bundle / "link").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="link: symlinks"):
        pack_bundle(bundle, tmp_path / "x.tar.gz")
    assert not (tmp_path / "x.tar.gz").exists()


def test_unpacking_the_same_archive_twice_reuses_the_directory(bundle: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    pack_bundle(bundle, archive)
    dest = tmp_path / "installed"
    first = unpack_bundle(archive, dest, max_total_bytes=10 * MiB)
    assert unpack_bundle(archive, dest, max_total_bytes=10 * MiB) == first
    assert [p.name for p in dest.iterdir()] == [first.name]


def test_unpacking_other_content_over_an_existing_version_is_refused(bundle: Path, tmp_path: Path) -> None:
    dest = tmp_path / "installed"
    pack_bundle(bundle, tmp_path / "a.tar.gz")
    first = unpack_bundle(tmp_path / "a.tar.gz", dest, max_total_bytes=10 * MiB)
    m = load_manifest(bundle)
    (bundle / "tokenizer.json").write_text("{}")
    write_bundle(bundle, name=m.name, kind=m.kind, version=m.version, io=m.io, calibration=m.calibration,
                 golden=m.golden, metadata=m.metadata)  # fmt: skip
    pack_bundle(bundle, tmp_path / "b.tar.gz")
    with pytest.raises(BundleExistsError, match=first.name):
        unpack_bundle(tmp_path / "b.tar.gz", dest, max_total_bytes=10 * MiB)
    assert verify_bundle(first) and [p.name for p in dest.iterdir()] == [first.name]


def test_archive_made_with_tar_dot_is_accepted(bundle: Path, tmp_path: Path) -> None:
    archive = tmp_path / "dot.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname=".")  # "./", "./manifest.json", ... like `tar -C bundle -czf x .`
    out = unpack_bundle(archive, tmp_path / "installed", max_total_bytes=10 * MiB)
    assert verify_bundle(out) == load_manifest(bundle)


MANIFEST = b"{}"


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, linkname
    return info


def _build(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


_ATTACKS = {
    "absolute": ([(_info("/tmp/evil"), b"x")], "'/tmp/evil': absolute path"),
    "dotdot": ([(_info("../x"), b"x")], r"'../x': path traversal"),
    "nested-dotdot": ([(_info("a/../../x"), b"x")], r"'a/../../x': path traversal"),
    "symlink": ([(_info("link", tarfile.SYMTYPE, linkname="/etc/passwd"), None)], "'link': symlink"),
    "hardlink": ([(_info("hard", tarfile.LNKTYPE, linkname="manifest.json"), None)], "'hard': hard link"),
    "fifo": ([(_info("pipe", tarfile.FIFOTYPE), None)], "'pipe': fifo"),
    "chardev": ([(_info("null", tarfile.CHRTYPE), None)], "'null': device"),
    "blockdev": ([(_info("sda", tarfile.BLKTYPE), None)], "'sda': device"),
    "duplicate": ([(_info("manifest.json"), b"{}")], "'manifest.json': duplicate"),
    "file-under-file": ([(_info("manifest.json/x"), b"x")], "'manifest.json/x': a parent of it is a file"),
    "dir-over-file": ([(_info("manifest.json", tarfile.DIRTYPE), None)], "'manifest.json': duplicate"),
    "backslash": ([(_info("..\\x"), b"x")], "backslash"),
}


@pytest.mark.parametrize("attack", sorted(_ATTACKS))
def test_malicious_members_are_refused_by_name(attack: str, tmp_path: Path) -> None:
    extra, message = _ATTACKS[attack]
    archive = _build(tmp_path / "evil.tar.gz", [(_info("manifest.json"), MANIFEST), *extra])
    dest = tmp_path / "deep" / "installed"
    with pytest.raises(UnsafeArchiveError, match=message):
        unpack_bundle(archive, dest, max_total_bytes=MiB)
    assert list(dest.iterdir()) == []  # the staging directory is gone
    assert _listing(tmp_path) == ["deep", "deep/installed", "evil.tar.gz"]  # nothing escaped


def test_too_many_entries_are_refused(tmp_path: Path) -> None:
    archive = _build(tmp_path / "many.tar.gz", [(_info(f"f{i}"), b"x") for i in range(4)])
    with pytest.raises(UnsafeArchiveError, match="'f3': more than 3 entries"):
        unpack_bundle(archive, tmp_path / "installed", max_total_bytes=MiB, max_files=3)
    assert list((tmp_path / "installed").iterdir()) == []


class _Zeros(io.RawIOBase):
    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        buffer[:] = bytes(len(buffer))
        return len(buffer)


@pytest.fixture(scope="module")
def gzip_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid manifest, then 200 MB of zeros: about 200 KB compressed."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=6) as tar:
        tar.addfile(_info("manifest.json", size=len(MANIFEST)), io.BytesIO(MANIFEST))
        tar.addfile(_info("zeros.bin", size=200 * 10**6), _Zeros())
    assert path.stat().st_size < 2 * MiB
    return path


def test_gzip_bomb_is_refused_without_writing_past_the_cap(gzip_bomb: Path, tmp_path: Path) -> None:
    # A child process whose files the kernel caps at 1 MiB (RLIMIT_FSIZE): had
    # the unpacker written past the cap it would fail with EFBIG (an OSError),
    # not refuse the member.
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "from edgecloud.shared.artifacts import unpack_bundle\n"
        "try:\n"
        "    unpack_bundle(sys.argv[1], sys.argv[2], max_total_bytes=1 << 20)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    dest = tmp_path / "installed"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", script, str(gzip_bomb), str(dest)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    assert result.stdout.startswith("ArtifactTooLargeError 'zeros.bin'"), result.stdout + result.stderr
    assert time.monotonic() - started < 20
    assert list(dest.iterdir()) == []


def test_many_members_over_the_total_cap_are_refused(tmp_path: Path) -> None:
    chunk = b"\0" * (400 << 10)
    parts = [(_info(f"part{i}"), chunk) for i in range(5)]
    archive = _build(tmp_path / "sum.tar.gz", [(_info("manifest.json"), MANIFEST), *parts])
    with pytest.raises(ArtifactTooLargeError, match="'part2'.*cap of 1048576"):
        unpack_bundle(archive, tmp_path / "installed", max_total_bytes=MiB)
    assert list((tmp_path / "installed").iterdir()) == []


def test_oversized_tar_headers_are_refused(tmp_path: Path) -> None:
    info = _info("manifest.json")
    info.pax_headers = {"comment": "x" * (20 * MiB)}  # tarfile would read it whole into memory
    archive = _build(tmp_path / "pax.tar.gz", [(info, MANIFEST)])
    with pytest.raises(ArtifactTooLargeError, match="oversized tar headers"):
        unpack_bundle(archive, tmp_path / "installed", max_total_bytes=MiB, max_files=10)


@pytest.mark.parametrize("content", [b"not a gzip file", b"", "truncated"])
def test_unreadable_archives_are_refused(content: bytes | str, bundle: Path, tmp_path: Path) -> None:
    archive = tmp_path / "bad.tar.gz"
    if content == "truncated":
        pack_bundle(bundle, archive)
        archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    else:
        assert isinstance(content, bytes)
        archive.write_bytes(content)
    with pytest.raises(ArchiveError):
        unpack_bundle(archive, tmp_path / "installed", max_total_bytes=10 * MiB)
    assert list((tmp_path / "installed").iterdir()) == []


def test_archive_without_a_valid_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest.json"):
        unpack_bundle(_build(tmp_path / "a.tar.gz", [(_info("model.onnx"), b"x")]), tmp_path / "i", max_total_bytes=MiB)
    with pytest.raises(ManifestError, match="manifest.json"):
        unpack_bundle(_build(tmp_path / "b.tar.gz", [(_info("manifest.json"), b"{}")]), tmp_path / "i",
                      max_total_bytes=MiB)  # fmt: skip
    assert list((tmp_path / "i").iterdir()) == []


# -- download ------------------------------------------------------------------

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


def test_error_classes_fit_the_hierarchy() -> None:
    for cls in (ArchiveError, UnsafeArchiveError, ArtifactTooLargeError, BundleExistsError):
        assert issubclass(cls, BundleError) and not cls.recoverable
    assert issubclass(UnsafeArchiveError, ArchiveError)
