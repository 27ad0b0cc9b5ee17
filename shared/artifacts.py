"""Bundles as archives, and a safe, resumable download.

:func:`pack_bundle` writes a deterministic ``.tar.gz`` of a bundle directory:
the same files give the same bytes (with the same zlib), hence the same sha256.

:func:`unpack_bundle` treats the archive as hostile. It streams it once,
writes regular files only, through its own ``open`` calls (never
``tarfile.extract``), into a temporary directory that is renamed into place
when everything checked out. It refuses absolute paths, ``..``, links,
devices, fifos, duplicate names, too many entries and more uncompressed bytes
than allowed, counting as it streams, so a gzip bomb stops at the cap.

:func:`download` fetches over HTTP(S) with the standard library, resumes
after a cut with ``Range``, enforces a size cap and checks the sha256 before
renaming the file into place.

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
import http.client
import logging
import os
import re
import shutil
import ssl
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from edgecloud.shared.bundle import MANIFEST_FILE, load_manifest
from edgecloud.shared.errors import (
    BundleError,
    ConfigError,
    IntegrityError,
    ManifestError,
    NotFoundError,
    UnavailableError,
)

__all__ = [
    "ArchiveError",
    "ArtifactTooLargeError",
    "BundleExistsError",
    "DownloadDeadlineError",
    "UnsafeArchiveError",
    "download",
    "pack_bundle",
    "unpack_bundle",
]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_READ = 64 << 10
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE_RE = re.compile(r"bytes \*/(\d+)")
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError)
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


def _bundle_files(root: Path) -> list[tuple[str, Path]]:
    """Sorted ``(POSIX path, path)`` of every regular file; refuses links and special files."""
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
    return sorted(found)


def pack_bundle(directory: str | os.PathLike[str], out_file: str | os.PathLike[str]) -> tuple[str, int]:
    """Write ``directory`` as a deterministic ``.tar.gz``; return its ``(sha256, size)``.

    Entries are the regular files only (``manifest.json`` and ``manifest.sig``
    included), sorted by path, with mtime 0, uid/gid 0, no owner names and
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


class _Retry(Exception):
    """One attempt failed in a way another attempt may fix."""


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but never from https to http, and drops credentials
    when the redirect leaves the original host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is None:
            return None
        old_url, new_url = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(new.full_url)
        if old_url.scheme == "https" and new_url.scheme != "https":
            raise urllib.error.HTTPError(newurl, code, "refusing a redirect from https to http", headers, fp)
        if old_url.netloc != new_url.netloc:
            for name in ("Authorization", "Cookie"):
                new.remove_header(name)
        return new


class _Download:
    """The state of one download across attempts: the ``.part`` file, the
    bytes it holds and their running sha256."""

    def __init__(self, part: Path, max_bytes: int) -> None:
        self.part, self.max_bytes = part, max_bytes
        self.sha, self.have = hashlib.sha256(), 0

    def adopt_leftover(self) -> bool:
        """Continue from a ``.part`` an earlier call left; True if there was one."""
        if not self.part.is_file() or self.part.is_symlink():
            self.part.unlink(missing_ok=True)
            return False
        with self.part.open("rb") as handle:
            while (chunk := handle.read(_CHUNK)) and self.have + len(chunk) <= self.max_bytes:
                self.sha.update(chunk)
                self.have += len(chunk)
            if chunk:  # larger than the cap: useless
                self.restart()
                return False
        return self.have > 0

    def restart(self) -> None:
        self.part.unlink(missing_ok=True)
        self.sha, self.have = hashlib.sha256(), 0


def _parse_content_range(value: str | None) -> tuple[int, int | None] | None:
    match = _CONTENT_RANGE_RE.fullmatch((value or "").strip())
    if not match:
        return None
    return int(match[1]), None if match[3] == "*" else int(match[3])


def _attempt(
    opener: urllib.request.OpenerDirector,
    url: str,
    state: _Download,
    *,
    headers: Mapping[str, str],
    timeout_s: float,
    progress: Callable[[int, int | None], None] | None,
    pace: _Pace,
) -> None:
    """One GET from ``state.have`` on; returns when the body is complete."""
    request_headers = {"Accept-Encoding": "identity", **headers}
    if state.have:
        request_headers["Range"] = f"bytes={state.have}-"
    request = urllib.request.Request(url, headers=request_headers)
    try:
        response = opener.open(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code == 416 and state.have:  # our range starts at or past the end
                match = _UNSATISFIED_RANGE_RE.fullmatch((exc.headers.get("Content-Range") or "").strip())
                if match and int(match[1]) == state.have:
                    return  # the leftover .part was complete already
                have = state.have
                state.restart()
                raise _Retry(f"HTTP 416 for bytes={have}-; restarting from 0") from exc
            if exc.code in (408, 425, 429) or exc.code >= 500:
                raise _Retry(f"HTTP {exc.code} {exc.reason}") from exc
            if exc.code in (404, 410):
                raise NotFoundError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
            hint = "; check the artifact credentials" if exc.code in (401, 403) else ""
            raise ConfigError(f"{url}: HTTP {exc.code} {exc.reason}{hint}") from exc  # redirects refused, other 4xx
    with response:
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        if response.status == 206 and state.have:
            content_range = _parse_content_range(response.headers.get("Content-Range"))
            if content_range is None or content_range[0] != state.have:
                state.restart()
                raise _Retry(f"unexpected Content-Range {response.headers.get('Content-Range')!r}; restarting")
            total = content_range[1] if content_range[1] is not None else (
                state.have + length if length is not None else None
            )  # fmt: skip
        elif response.status == 200:
            if state.have:
                log.info("%s: the server ignored Range; downloading from the start", url)
                state.restart()
            total = length
        else:
            raise UnavailableError(f"{url}: unexpected HTTP {response.status} {response.reason}")
        if total is not None and total > state.max_bytes:
            raise ArtifactTooLargeError(f"{url}: {total} bytes exceeds the limit of {state.max_bytes}")
        if progress is not None:
            progress(state.have, total)
        pace.start_attempt()
        with state.part.open("ab") as out:
            try:
                # read1: at most one read from the socket, so a server that drips bytes cannot keep one
                # call (and the deadline check after it) waiting for a whole chunk.
                while chunk := response.read1(_READ):
                    pace.check(url, state.have, len(chunk))
                    if state.have + len(chunk) > state.max_bytes:
                        raise ArtifactTooLargeError(f"{url}: more than the limit of {state.max_bytes} bytes")
                    out.write(chunk)
                    state.sha.update(chunk)
                    state.have += len(chunk)
                    if progress is not None:
                        progress(state.have, total)
            finally:
                out.flush()
                os.fsync(out.fileno())
        if total is not None and state.have < total:
            raise _Retry(f"connection closed after {state.have} of {total} bytes")
        if total is not None and state.have > total:
            state.restart()
            raise _Retry(f"received {state.have} bytes, more than the {total} announced; restarting")


class DownloadDeadlineError(UnavailableError):
    """The download ran past its overall deadline; the ``.part`` is kept for a later resume."""


@dataclass
class _Pace:
    """The overall deadline and the minimum rate of one :func:`download`."""

    deadline_s: float | None
    min_rate_bps: float
    rate_grace_s: float
    started: float = field(default_factory=time.monotonic)
    attempt_started: float = 0.0
    attempt_bytes: int = 0

    def start_attempt(self) -> None:
        self.attempt_started, self.attempt_bytes = time.monotonic(), 0

    def check_deadline(self, url: str, have: int) -> None:
        if self.deadline_s is not None and time.monotonic() - self.started > self.deadline_s:
            raise DownloadDeadlineError(
                f"{url}: not complete within its deadline of {self.deadline_s:g} s ({have} bytes)"
            )

    def check(self, url: str, have: int, received: int) -> None:
        self.attempt_bytes += received
        self.check_deadline(url, have)
        elapsed = time.monotonic() - self.attempt_started
        if self.min_rate_bps and elapsed > self.rate_grace_s and self.attempt_bytes / elapsed < self.min_rate_bps:
            raise _Retry(
                f"{self.attempt_bytes / elapsed:.0f} B/s over {elapsed:.0f} s, under the minimum of "
                f"{self.min_rate_bps:g} B/s"
            )


def download(
    url: str,
    dest_file: str | os.PathLike[str],
    *,
    expected_sha256: str | None,
    max_bytes: int,
    timeout_s: float,
    headers: dict[str, str] | None = None,
    attempts: int = 5,
    progress: Callable[[int, int | None], None] | None = None,
    backoff_s: float = 0.5,
    deadline_s: float | None = None,
    min_rate_bps: float = 0.0,
    rate_grace_s: float = 10.0,
) -> Path:
    """GET ``url`` into ``dest_file``; return its path.

    The body streams into ``dest_file + ".part"``. After a cut (connection
    error, timeout, short body, 5xx) the next attempt asks for
    ``Range: bytes=<have>-``; a 206 continues, a 200 (range ignored) starts
    over. ``attempts`` bounds consecutive attempts that receive nothing new;
    waits between them double from ``backoff_s``. ``timeout_s`` applies to
    connecting and to each read. More than ``max_bytes`` (announced or
    received) raises ArtifactTooLargeError. With ``expected_sha256`` a
    ``.part`` left by an earlier call is resumed, and the finished file must
    match (IntegrityError otherwise; a mismatch after resuming a leftover
    retries once from scratch); without it any leftover is discarded. The
    file is renamed onto ``dest_file`` only when complete and checked.
    Concurrent downloads to the same ``dest_file`` are not supported.

    ``deadline_s`` bounds the whole call, retries and waits included
    (DownloadDeadlineError; it is checked after every read, so it can be
    overrun by one ``timeout_s``). An attempt slower than ``min_rate_bps``
    on average after its first ``rate_grace_s`` seconds is cut and retried
    from where it stopped: a slow server cannot hold the caller forever.
    """
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ConfigError(f"{url!r}: only http and https URLs can be downloaded")
    if expected_sha256 is not None:
        expected_sha256 = expected_sha256.lower()
        if not _SHA256_RE.fullmatch(expected_sha256):
            raise ConfigError(f"expected_sha256 must be 64 hex digits, got {expected_sha256!r}")
    if attempts < 1 or max_bytes < 0 or timeout_s <= 0:
        raise ConfigError("attempts >= 1, max_bytes >= 0 and timeout_s > 0 required")
    if (deadline_s is not None and deadline_s <= 0) or min_rate_bps < 0 or rate_grace_s < 0:
        raise ConfigError("deadline_s > 0, min_rate_bps >= 0 and rate_grace_s >= 0 required")
    pace = _Pace(deadline_s, min_rate_bps, rate_grace_s)
    dest = Path(dest_file)
    dest.parent.mkdir(parents=True, exist_ok=True)
    state = _Download(dest.with_name(dest.name + ".part"), max_bytes)
    if expected_sha256 is None:
        state.restart()  # nothing could tell a stale leftover from a good one
    resumed_leftover = expected_sha256 is not None and state.adopt_leftover()
    opener = urllib.request.build_opener(_SafeRedirects)
    failures = 0
    try:
        while True:
            before = state.have
            pace.check_deadline(url, state.have)
            try:
                _attempt(opener, url, state, headers=headers or {}, timeout_s=timeout_s, progress=progress, pace=pace)
            except (_Retry, *_NETWORK_ERRORS) as exc:
                failures = 1 if state.have > before else failures + 1
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                if failures >= attempts:
                    raise UnavailableError(
                        f"{url}: giving up after {failures} attempts without progress: {reason}"
                    ) from exc
                log.info("%s: attempt failed (%s); retrying from byte %d", url, reason, state.have)
                time.sleep(min(backoff_s * 2 ** (failures - 1), 30.0))
                continue
            if expected_sha256 is not None and state.sha.hexdigest() != expected_sha256:
                if resumed_leftover:
                    log.info("%s: a leftover .part did not lead to the expected sha256; starting over", url)
                    resumed_leftover = False
                    state.restart()
                    continue
                raise IntegrityError(f"{url}: sha256 is {state.sha.hexdigest()}, expected {expected_sha256}")
            break
        state.part.touch()  # an empty body leaves no .part yet
        os.replace(state.part, dest)
    except BaseException as exc:
        if not isinstance(exc, (UnavailableError, KeyboardInterrupt)):  # keep what may be resumed
            state.restart()
        raise
    return dest
