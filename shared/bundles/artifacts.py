"""Bundles as archives (their download is :mod:`edgecloud.shared.bundles.download`).

:func:`pack_bundle` writes a deterministic ``.tar.gz`` of a bundle directory:
the same files give the same bytes (with the same zlib), hence the same sha256.

:func:`unpack_bundle` treats the archive as hostile. It streams it once,
writes regular files only, through its own ``open`` calls (never
``tarfile.extract``), into a temporary directory that is renamed into place
when everything checked out. It refuses absolute paths, ``..``, links,
devices, fifos, duplicate names, too many entries and more uncompressed bytes
than allowed, counting as it streams, so a gzip bomb stops at the cap.

Errors::

    BundleError
    ├── ArtifactTooLargeError     over the size cap (download or unpack)
    ├── BundleExistsError         unpack target exists with other content
    ├── ManifestError             the archive has no valid manifest.json
    ├── IntegrityError            downloaded bytes do not match expected_sha256
    └── ArchiveError              the archive is not a readable tar.gz
        └── UnsafeArchiveError    a member is refused (names the member)
    UnavailableError              network failure after every attempt
    NotFoundError                 HTTP 404 or 410
    ConfigError                   not an http(s) URL, another 4xx (e.g. 401/403:
                                  credentials), or a refused redirect (https to http)
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import IO

from edgecloud.shared.base.errors import (
    BundleError,
    ManifestError,
)
from edgecloud.shared.bundles.manifest import MANIFEST_FILE, SIGNATURE_FILE, load_manifest

__all__ = [
    "ArchiveError",
    "ArtifactTooLargeError",
    "BundleExistsError",
    "UnsafeArchiveError",
    "pack_bundle",
    "read_archive_head",
    "unpack_bundle",
]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_HEADER_ALLOWANCE = 1 << 20
"""Decompressed bytes of tar headers and padding allowed beyond member data..."""
_HEADER_ALLOWANCE_PER_FILE = 8 << 10
"""...plus this much per allowed entry (a pax header with a long name fits)."""


class ArchiveError(BundleError):
    """The archive is not a readable tar.gz."""


class UnsafeArchiveError(ArchiveError):
    """An archive member is refused: absolute path, ``..``, a link or special
    file, a duplicate name, or one entry too many."""


class ArtifactTooLargeError(BundleError):
    """A download or an archive's content exceeds its size cap."""


class BundleExistsError(BundleError):
    """The unpack target already exists and holds different content."""


# -- pack ----------------------------------------------------------------------


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.sha, self.size = raw, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


_HEAD = (MANIFEST_FILE, SIGNATURE_FILE)
"""The archive's first members, so that a receiver can check the signature before reading on."""
_MAX_HEAD_MEMBER_BYTES = 4 << 20


def _bundle_files(root: Path) -> list[tuple[str, Path]]:
    """``(POSIX path, path)`` of every regular file, the manifest and its signature first, the rest
    sorted; refuses links and special files."""
    found = []
    for current, dirs, files in os.walk(root):
        here = Path(current)
        for name in dirs + files:
            path = here / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                raise BundleError(f"{rel}: symlinks are not allowed in a bundle")
            if name in files:
                if not path.is_file():
                    raise BundleError(f"{rel}: not a regular file")
                found.append((rel, path))
    return sorted(found, key=lambda item: (item[0] not in _HEAD, item[0]))


def pack_bundle(directory: str | os.PathLike[str], out_file: str | os.PathLike[str]) -> tuple[str, int]:
    """Write ``directory`` as a deterministic ``.tar.gz``; return its ``(sha256, size)``.

    Entries are the regular files only: ``manifest.json`` and ``manifest.sig`` first (see
    :func:`read_archive_head`), then the others sorted by path, with mtime 0, uid/gid 0, no owner names and
    mode 0644; the gzip header carries no name and mtime 0. Packing does not
    check the files against the manifest: the receiver verifies. The archive
    is written beside ``out_file`` and renamed into place.
    """
    root, out = Path(directory), Path(out_file)
    if not (root / MANIFEST_FILE).is_file():
        raise BundleError(f"{root}: no {MANIFEST_FILE}; not a bundle")
    files = _bundle_files(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tmp.open("wb") as raw:
            writer = _HashingWriter(raw)
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=writer,  # type: ignore[arg-type]
                               compresslevel=6, mtime=0)  # fmt: skip
            with gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for rel, path in files:
                    with path.open("rb") as handle:
                        info = tarfile.TarInfo(rel)
                        info.size = os.fstat(handle.fileno()).st_size
                        info.mode, info.mtime, info.uid, info.gid = 0o644, 0, 0, 0
                        info.uname = info.gname = ""
                        tar.addfile(info, handle)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return writer.sha.hexdigest(), writer.size


def read_archive_head(archive: str | os.PathLike[str]) -> tuple[bytes, bytes | None]:
    """The raw ``manifest.json`` and ``manifest.sig`` (None when absent) from an archive's first
    two members, as :func:`pack_bundle` writes them; reads nothing past them, so a signature can
    be checked before the rest of an untrusted archive is decompressed (ManifestError when the
    manifest is not there, ArchiveError when the archive does not read)."""
    source = Path(archive)
    found: dict[str, bytes] = {}
    try:
        with source.open("rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            reader = _BudgetReader(gz, _HEADER_ALLOWANCE, source)  # type: ignore[arg-type]
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for _ in _HEAD:
                    member = tar.next()
                    name = member.name.removeprefix("./") if member is not None else ""
                    if name not in _HEAD or name in found:
                        break
                    if not member.isfile() or member.size > _MAX_HEAD_MEMBER_BYTES:
                        raise ManifestError(f"{source.name}: {name} is not a regular file under 4 MiB")
                    reader.allowed += member.size
                    handle = tar.extractfile(member)
                    assert handle is not None
                    found[name] = handle.read()
    except OSError as exc:
        raise ArchiveError(f"{source.name}: cannot read: {exc.strerror or exc}") from exc
    except (gzip.BadGzipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"{source.name}: not a readable tar.gz: {exc}") from exc
    if MANIFEST_FILE not in found:
        raise ManifestError(
            f"{source.name}: {MANIFEST_FILE} is not the archive's first member at its root, where "
            "edgecloud.shared.bundles.artifacts.pack_bundle puts it (`edgecloud models pack`, or "
            f"`tar -C BUNDLE -czf X {MANIFEST_FILE} {SIGNATURE_FILE} ...` with the rest after)"
        )
    return found[MANIFEST_FILE], found.get(SIGNATURE_FILE)


# -- unpack --------------------------------------------------------------------


class _BudgetReader:
    """Reads decompressed archive bytes, refusing to go past ``allowed``.

    ``allowed`` starts at the header allowance; the unpacker raises it by each
    member's size before reading that member. tarfile reads pax and GNU
    long-name headers whole into memory, so this also bounds memory.
    """

    def __init__(self, raw: IO[bytes], allowed: int, archive: Path) -> None:
        self.raw, self.allowed, self.consumed, self.archive = raw, allowed, 0, archive

    def read(self, size: int = -1) -> bytes:
        room = self.allowed - self.consumed
        if size < 0 or size > room + 1:
            size = room + 1
        data = self.raw.read(size)
        self.consumed += len(data)
        if self.consumed > self.allowed:
            raise ArtifactTooLargeError(
                f"{self.archive}: more than {self.allowed} uncompressed bytes read without a member"
                " accounting for them (oversized tar headers?)"
            )
        return data


def _member_path(name: str) -> str:
    """The safe relative POSIX path of a member name; UnsafeArchiveError otherwise."""
    if not name or "\0" in name or "\\" in name:
        raise UnsafeArchiveError(f"{name!r}: empty name, NUL or backslash")
    if name.startswith("/"):
        raise UnsafeArchiveError(f"{name!r}: absolute path")
    rel = name
    while rel.startswith("./"):  # as written by `tar -C dir .`
        rel = rel[2:]
    parts = rel.rstrip("/").split("/")
    if ".." in parts:
        raise UnsafeArchiveError(f"{name!r}: path traversal ('..')")
    if any(part in ("", ".") for part in parts):
        raise UnsafeArchiveError(f"{name!r}: empty or '.' path segment")
    return "/".join(parts)


def _check_type(member: tarfile.TarInfo) -> None:
    if member.issym():
        raise UnsafeArchiveError(f"{member.name!r}: symlink (to {member.linkname!r})")
    if member.islnk():
        raise UnsafeArchiveError(f"{member.name!r}: hard link (to {member.linkname!r})")
    if member.ischr() or member.isblk():
        raise UnsafeArchiveError(f"{member.name!r}: device file")
    if member.isfifo():
        raise UnsafeArchiveError(f"{member.name!r}: fifo")
    if member.issparse() or not (member.isreg() or member.isdir()):
        raise UnsafeArchiveError(f"{member.name!r}: unsupported entry type {member.type!r}")


def _extract_all(tar: tarfile.TarFile, reader: _BudgetReader, into: Path, *, max_total_bytes: int,
                 max_files: int) -> dict[str, tuple[str, int]]:  # fmt: skip
    """Write every regular member under ``into``; return ``{path: (sha256, size)}``."""
    written: dict[str, tuple[str, int]] = {}
    directories: set[str] = set()
    total = entries = 0
    for member in tar:
        entries += 1
        if entries > max_files:
            raise UnsafeArchiveError(f"{member.name!r}: more than {max_files} entries in the archive")
        _check_type(member)
        if member.isdir() and member.name.rstrip("/") == ".":
            continue  # the archive's root, as written by `tar -C dir .`
        rel = _member_path(member.name)
        parents = rel.split("/")[:-1]
        if any("/".join(parents[: i + 1]) in written for i in range(len(parents))):
            raise UnsafeArchiveError(f"{member.name!r}: a parent of it is a file in the archive")
        if rel in written or (member.isreg() and rel in directories):
            raise UnsafeArchiveError(f"{member.name!r}: duplicate entry")
        directories.update("/".join(parents[: i + 1]) for i in range(len(parents)))
        if member.isdir():
            directories.add(rel)
            continue
        if total + member.size > max_total_bytes:
            raise ArtifactTooLargeError(
                f"{member.name!r}: {member.size} bytes would bring the archive past its cap of"
                f" {max_total_bytes} uncompressed bytes"
            )
        reader.allowed += member.size
        target = into / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(member)
        assert source is not None  # a regular file always has content
        sha, size = hashlib.sha256(), 0
        with open(target, "xb") as out:
            while chunk := source.read(min(_CHUNK, member.size - size + 1)):
                size += len(chunk)
                if size > member.size or total + size > max_total_bytes:
                    raise ArtifactTooLargeError(f"{member.name!r}: more data than its header says")
                sha.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size != member.size:
            raise ArchiveError(f"{member.name!r}: truncated ({size} of {member.size} bytes)")
        total += size
        written[rel] = (sha.hexdigest(), size)
    return written


def _tree_digests(root: Path) -> dict[str, tuple[str, int]] | None:
    """``{path: (sha256, size)}`` of every file under ``root``, or None if it
    holds anything but regular files and directories."""
    digests = {}
    try:
        for rel, path in _bundle_files(root):
            sha, size = hashlib.sha256(), 0
            with path.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    sha.update(chunk)
                    size += len(chunk)
            digests[rel] = (sha.hexdigest(), size)
    except (BundleError, OSError):
        return None
    return digests


def unpack_bundle(
    archive: str | os.PathLike[str],
    dest_root: str | os.PathLike[str],
    *,
    max_total_bytes: int,
    max_files: int = 1000,
) -> Path:
    """Extract a bundle archive into the new directory ``dest_root/<name>-v<version>``.

    The archive is streamed once into a temporary directory under
    ``dest_root``, its ``manifest.json`` is read to name the bundle, and the
    directory is renamed into place. If the target exists already it is
    reused when it holds exactly the same files (same paths, sizes and
    sha256), so unpacking the same archive twice is harmless; otherwise
    BundleExistsError. Unpacking does not verify the files against the
    manifest or the signature: call ``verify_signed_bundle`` on the result.
    """
    source, root = Path(archive), Path(dest_root)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))
    try:
        allowance = _HEADER_ALLOWANCE + _HEADER_ALLOWANCE_PER_FILE * max_files
        try:
            raw = source.open("rb")
        except OSError as exc:
            raise ArchiveError(f"{source}: cannot open: {exc.strerror or exc}") from exc
        try:
            with raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                reader = _BudgetReader(gz, allowance, source)  # type: ignore[arg-type]
                with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                    digests = _extract_all(tar, reader, staging, max_total_bytes=max_total_bytes, max_files=max_files)
        except (gzip.BadGzipFile, tarfile.TarError, EOFError, zlib.error) as exc:
            raise ArchiveError(f"{source}: not a readable tar.gz: {exc}") from exc
        if MANIFEST_FILE not in digests:
            raise ManifestError(f"{source}: the archive has no {MANIFEST_FILE}")
        try:
            manifest = load_manifest(staging)
        except ManifestError as exc:
            raise ManifestError(f"{source}: {str(exc).replace(str(staging), '<archive>')}") from exc
        target = root / f"{manifest.name}-v{manifest.version}"
        staging.chmod(0o755)  # mkdtemp made it 0700
        return _place(staging, target, digests, source)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _place(staging: Path, target: Path, digests: dict[str, tuple[str, int]], source: Path) -> Path:
    if not os.path.lexists(target):
        try:
            os.rename(staging, target)
            _fsync_dir(target.parent)
            return target
        except OSError:
            if not os.path.lexists(target):
                raise
            # another unpacker won the race; compare below
    if not target.is_symlink() and target.is_dir() and _tree_digests(target) == digests:
        log.info("%s: already unpacked at %s; reusing it", source, target)
        return target
    raise BundleExistsError(f"{target}: exists with different content; not replacing it with {source}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- download ------------------------------------------------------------------
