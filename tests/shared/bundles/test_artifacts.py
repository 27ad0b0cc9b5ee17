"""Archives against hand-built malicious tars."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from edgecloud.shared.base.errors import (
    BundleError,
    ManifestError,
)
from edgecloud.shared.bundles.artifacts import (
    ArchiveError,
    ArtifactTooLargeError,
    BundleExistsError,
    UnsafeArchiveError,
    pack_bundle,
    unpack_bundle,
)
from edgecloud.shared.bundles.manifest import SIGNATURE_FILE, load_manifest, verify_bundle, write_bundle
from edgecloud.shared.bundles.signing import (
    TrustStore,
    generate_keypair,
    load_private_key,
    sign_bundle,
    verify_signed_bundle,
)

REPO = Path(__file__).resolve().parents[3]
MiB = 1 << 20


@pytest.fixture
def bundle(shipped_base_models: Path, tmp_path: Path) -> Path:
    out = tmp_path / "src" / "edge-student"
    shutil.copytree(shipped_base_models / "edge-student", out)
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
        "from edgecloud.shared.bundles.artifacts import unpack_bundle\n"
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


def test_error_classes_fit_the_hierarchy() -> None:
    for cls in (ArchiveError, UnsafeArchiveError, ArtifactTooLargeError, BundleExistsError):
        assert issubclass(cls, BundleError) and not cls.recoverable
    assert issubclass(UnsafeArchiveError, ArchiveError)
