"""Model bundles: a directory of model files described by ``manifest.json``.

The manifest names the bundle, gives it a monotonic ``version``, lists every
file with its size and sha256, and carries the model's I/O contract,
calibration data, golden query/answer pairs and free-form metadata. A bundle
is valid when every listed file matches and no unlisted regular file exists
(``manifest.json`` and the detached signature ``manifest.sig`` excepted).
Symlinks are refused anywhere in a bundle.

:func:`canonical_bytes` is what the Ed25519 signature in ``manifest.sig``
covers; signing lives elsewhere. A bad manifest raises ``ManifestError``
naming the field; files that do not match raise ``IntegrityError`` naming
the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from edgecloud.shared.base.errors import BundleError, IntegrityError, ManifestError

__all__ = [
    "FORMAT_VERSION",
    "IO_KEYS",
    "KINDS",
    "MANIFEST_FILE",
    "SIGNATURE_FILE",
    "FileEntry",
    "GoldenCase",
    "Manifest",
    "canonical_bytes",
    "copy_bundle",
    "file_digest",
    "load_manifest",
    "verify_bundle",
    "write_bundle",
]

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
KINDS = ("edge", "cloud")
#: Keys the ``io`` contract must contain.
IO_KEYS = ("inputs", "outputs", "feature_dim", "tokenizer")
_RESERVED = frozenset((MANIFEST_FILE, SIGNATURE_FILE))
_CHUNK = 1 << 20
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_RFC3339_UTC_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
_FREE_FORM = ("io", "calibration", "metadata")


def _bad(where: str, message: str) -> ManifestError:
    return ManifestError(f"{where}: {message}")


def _require_int(value: object, where: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(where, f"expected an integer, got {value!r}")
    if value < minimum:
        raise _bad(where, f"must be >= {minimum}, got {value}")


def _json_copy(value: object, where: str) -> Any:
    """A deep copy of ``value`` in JSON types only (tuples become lists);
    raises ManifestError on anything JSON cannot represent exactly."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _bad(where, f"non-finite number {value!r}")
        return value
    if isinstance(value, (list, tuple)):
        return [_json_copy(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise _bad(where, "object keys must be strings")
        return {key: _json_copy(item, f"{where}.{key}") for key, item in value.items()}
    raise _bad(where, f"not JSON-serialisable: {type(value).__name__}")


def _check_path(path: object) -> None:
    if not isinstance(path, str) or not path:
        raise _bad("path", f"expected a non-empty string, got {path!r}")
    if "\\" in path or "\0" in path:
        raise _bad("path", f"must be POSIX without backslash or NUL, got {path!r}")
    if path.startswith("/"):
        raise _bad("path", f"must be relative, got {path!r}")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise _bad("path", f"must not contain '..', '.' or empty segments, got {path!r}")
    if path in _RESERVED:
        raise _bad("path", f"{path!r} is reserved and never listed")


def _check_io_paths(io: Mapping[str, Any]) -> None:
    """The files ``io`` names for loading (``tokenizer``, every ``graphs`` entry, and the same of a
    pair's ``reasoner``) stay inside the bundle: a signed manifest must not point a loader at
    ``../../`` or an absolute path."""
    sections: list[tuple[str, Mapping[str, Any]]] = [("io", io)]
    if "reasoner" in io:
        if not isinstance(io["reasoner"], Mapping):
            raise _bad("io.reasoner", f"expected an object, got {type(io['reasoner']).__name__}")
        sections.append(("io.reasoner", io["reasoner"]))
    for where, section in sections:
        try:
            _check_path(section["tokenizer"])
            graphs = section.get("graphs", {})
            if not isinstance(graphs, Mapping):
                raise _bad(f"{where}.graphs", f"expected an object, got {type(graphs).__name__}")
            for graph in graphs.values():
                _check_path(graph)
        except KeyError:
            raise _bad(where, "names no tokenizer") from None
        except ManifestError as exc:
            raise _bad(where, f"a file it names must stay inside the bundle: {exc}") from None


def _fields(data: Mapping[str, Any], names: Sequence[str], optional: Sequence[str] = ()) -> dict[str, Any]:
    """A copy of ``data``, which must have exactly the keys ``names`` (and may have ``optional``)."""
    known = (*names, *optional)
    missing, unknown = [n for n in names if n not in data], [str(k) for k in data if k not in known]
    if missing or unknown:
        raise _bad((missing or unknown)[0], "missing" if missing else "unknown field")
    return dict(data)


def _items(data: Mapping[str, Any], name: str, parse: Callable[[Mapping[str, Any]], Any]) -> tuple[Any, ...]:
    """Parse the list ``data[name]`` item by item; errors name the index."""
    if not isinstance(data[name], list):
        raise _bad(name, f"expected a list, got {type(data[name]).__name__}")
    parsed = []
    for i, item in enumerate(data[name]):
        if not isinstance(item, Mapping):
            raise _bad(f"{name}[{i}]", f"expected an object, got {type(item).__name__}")
        try:
            parsed.append(parse(item))
        except ManifestError as exc:
            raise ManifestError(f"{name}[{i}].{exc}") from exc
    return tuple(parsed)


@dataclass(frozen=True, slots=True, kw_only=True)
class FileEntry:
    """One file of a bundle."""

    path: str
    """Relative POSIX path inside the bundle directory."""
    sha256: str
    """Lower-case hex digest of the file's content."""
    size: int
    """Size in bytes."""

    def __post_init__(self) -> None:
        _check_path(self.path)
        if not isinstance(self.sha256, str) or not _SHA256_RE.fullmatch(self.sha256):
            raise _bad("sha256", f"expected 64 lower-case hex digits, got {self.sha256!r}")
        _require_int(self.size, "size", 0)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FileEntry:
        return cls(**_fields(data, ("path", "sha256", "size")))


@dataclass(frozen=True, slots=True, kw_only=True)
class GoldenCase:
    """A query and the answer the bundled model must give to it."""

    query: str
    expected: str

    def __post_init__(self) -> None:
        for name, value in (("query", self.query), ("expected", self.expected)):
            if not isinstance(value, str):
                raise _bad(name, f"expected a string, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "expected": self.expected}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GoldenCase:
        return cls(**_fields(data, ("query", "expected")))


_MANIFEST_FIELDS = (
    "format_version", "name", "kind", "version", "created_at",
    "files", "io", "calibration", "golden", "metadata",
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """The validated content of ``manifest.json``. Free-form fields are
    deep-copied to plain JSON types on construction."""

    name: str
    """Bundle name: ``[a-z0-9][a-z0-9._-]*``."""
    kind: Literal["edge", "cloud"]
    version: int
    """Monotonic, >= 1: a newer bundle of the same name has a larger version."""
    created_at: str
    """RFC 3339 UTC timestamp, e.g. ``2025-01-31T12:00:00Z``."""
    files: tuple[FileEntry, ...]
    """Every bundled file, sorted by path, paths unique."""
    io: dict[str, Any]
    """The model's I/O contract; has at least the keys :data:`IO_KEYS`."""
    calibration: dict[str, Any] = field(default_factory=dict)
    golden: tuple[GoldenCase, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    expires_at: str | None = None
    """RFC 3339 UTC; after it, devices and the fleet manager refuse to install the bundle (a
    signed freshness bound: a mirror or a broker cannot replay an old release forever). None:
    no expiry. Optional in ``manifest.json``, so bundles signed before it verify unchanged."""

    def __post_init__(self) -> None:
        _require_int(self.format_version, "format_version", FORMAT_VERSION)
        if self.format_version != FORMAT_VERSION:
            raise _bad("format_version", f"expected {FORMAT_VERSION}, got {self.format_version}")
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise _bad("name", f"must match [a-z0-9][a-z0-9._-]*, got {self.name!r}")
        if self.kind not in KINDS:
            raise _bad("kind", f"expected one of {', '.join(KINDS)}, got {self.kind!r}")
        _require_int(self.version, "version", 1)
        _check_created_at(self.created_at)
        if self.expires_at is not None:
            _check_created_at(self.expires_at, "expires_at")
            if _epoch(self.expires_at) <= _epoch(self.created_at):
                raise _bad("expires_at", f"must be after created_at {self.created_at}, got {self.expires_at}")
        if not isinstance(self.files, tuple) or not all(isinstance(f, FileEntry) for f in self.files):
            raise _bad("files", "expected a tuple of FileEntry")
        paths = [f.path for f in self.files]
        if paths != sorted(set(paths)):
            raise _bad("files", "must be sorted by path with no duplicates")
        if not isinstance(self.golden, tuple) or not all(isinstance(g, GoldenCase) for g in self.golden):
            raise _bad("golden", "expected a tuple of GoldenCase")
        for name in _FREE_FORM:
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise _bad(name, f"expected an object, got {type(value).__name__}")
            object.__setattr__(self, name, _json_copy(value, name))
        missing = [key for key in IO_KEYS if key not in self.io]
        if missing:
            raise _bad("io", f"missing key(s) {', '.join(missing)}")
        _check_io_paths(self.io)

    def expired(self, now: float) -> bool:
        """Whether the bundle's signed expiry (if any) has passed at ``now`` (a Unix time)."""
        return self.expires_at is not None and now >= _epoch(self.expires_at)

    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain JSON types (fresh copies, safe to mutate)."""
        data = {name: getattr(self, name) for name in _MANIFEST_FIELDS}
        if self.expires_at is not None:
            data["expires_at"] = self.expires_at
        data["files"] = [f.to_dict() for f in self.files]
        data["golden"] = [g.to_dict() for g in self.golden]
        data.update((name, _json_copy(data[name], name)) for name in _FREE_FORM)
        return data

    @classmethod
    def from_dict(cls, data: object) -> Manifest:
        """Validate ``data`` (parsed JSON); raises ManifestError naming the bad field."""
        if not isinstance(data, Mapping):
            raise ManifestError(f"expected a JSON object, got {type(data).__name__}")
        fields = _fields(data, _MANIFEST_FIELDS, optional=("expires_at",))
        fields["files"] = _items(fields, "files", FileEntry.from_dict)
        fields["golden"] = _items(fields, "golden", GoldenCase.from_dict)
        return cls(**fields)


def _check_created_at(value: object, name: str = "created_at") -> None:
    if not isinstance(value, str) or not _RFC3339_UTC_RE.fullmatch(value):
        raise _bad(name, f"expected RFC 3339 UTC like 2025-01-31T12:00:00Z, got {value!r}")
    try:
        datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError as exc:
        raise _bad(name, f"not a valid date and time: {value!r}") from exc


def _epoch(value: str) -> float:
    """Unix time of a checked RFC 3339 UTC timestamp (fractions of a second ignored)."""
    return datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()


def canonical_bytes(manifest: Manifest) -> bytes:
    """Deterministic encoding of ``manifest``: what ``manifest.sig`` signs."""
    text = json.dumps(manifest.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def _walk(root: Path, prefix: str = "") -> Iterator[tuple[str, Path]]:
    """``(relative POSIX path, path)`` of every regular file under ``root``
    except the manifest and signature. Refuses symlinks and special files."""
    with os.scandir(root) as entries:
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_symlink():
                raise BundleError(f"{rel}: symlinks are not allowed in a bundle")
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(Path(entry.path), rel + "/")
            elif not entry.is_file(follow_symlinks=False):
                raise BundleError(f"{rel}: not a regular file")
            elif rel not in _RESERVED:
                yield rel, Path(entry.path)


def _scan(directory: Path) -> dict[str, Path]:
    if not directory.is_dir():
        raise BundleError(f"{directory}: not a directory")
    return dict(sorted(_walk(directory)))


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 hex digest and size of ``path``, read in 1 MiB chunks."""
    sha, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def write_bundle(
    directory: str | os.PathLike[str],
    *,
    name: str,
    kind: Literal["edge", "cloud"],
    version: int,
    io: Mapping[str, Any],
    calibration: Mapping[str, Any],
    golden: Sequence[GoldenCase | Mapping[str, str]],
    metadata: Mapping[str, Any],
    created_at: str | None = None,
) -> Manifest:
    """Hash every file under ``directory`` and write its ``manifest.json``.

    ``created_at`` (RFC 3339 UTC) defaults to now. A ``manifest.sig`` left
    from an earlier manifest is removed: it signed bytes that no longer exist.
    """
    root = Path(directory)
    if created_at is None:
        created_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    files = []
    for rel, path in _scan(root).items():
        sha, size = file_digest(path)
        files.append(FileEntry(path=rel, sha256=sha, size=size))
    manifest = Manifest(
        name=name,
        kind=kind,
        version=version,
        created_at=created_at,
        files=tuple(files),
        io=dict(io),
        calibration=dict(calibration),
        golden=tuple(g if isinstance(g, GoldenCase) else GoldenCase.from_dict(g) for g in golden),
        metadata=dict(metadata),
    )
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    tmp = root / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, root / MANIFEST_FILE)
    (root / SIGNATURE_FILE).unlink(missing_ok=True)
    return manifest


def load_manifest(directory: str | os.PathLike[str]) -> Manifest:
    """Read and validate ``directory/manifest.json``."""
    path = Path(directory) / MANIFEST_FILE
    try:
        if path.is_symlink():
            raise ManifestError("is a symlink")
        return Manifest.from_dict(json.loads(path.read_bytes().decode("utf-8")))
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from exc
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not valid UTF-8 JSON: {exc}") from exc


def verify_bundle(directory: str | os.PathLike[str]) -> Manifest:
    """Load the manifest and check the directory matches it exactly."""
    root = Path(directory)
    manifest = load_manifest(root)
    present = _scan(root)
    for entry in manifest.files:
        path = present.pop(entry.path, None)
        if path is None:
            raise IntegrityError(f"{entry.path}: listed in the manifest but missing")
        size = path.stat().st_size
        if size != entry.size:
            raise IntegrityError(f"{entry.path}: size is {size} bytes, manifest says {entry.size}")
        sha, _ = file_digest(path)
        if sha != entry.sha256:
            raise IntegrityError(f"{entry.path}: sha256 is {sha}, manifest says {entry.sha256}")
    if present:
        raise IntegrityError(f"{next(iter(present))}: not listed in the manifest")
    return manifest


def copy_bundle(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    version: int,
    metadata: Mapping[str, Any] | None = None,
) -> Manifest:
    """Copy the bundle at ``source`` to ``destination`` (replaced if it exists) as ``version``.

    The copy gets a new manifest (same name, kind, contract, calibration and golden cases;
    ``metadata`` merged over the old) and no signature: a new release, to sign and roll out.
    """
    old = load_manifest(source)
    target = Path(destination)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    return write_bundle(
        target,
        name=old.name,
        kind=old.kind,  # type: ignore[arg-type]
        version=version,
        io=old.io,
        calibration=old.calibration,
        golden=old.golden,
        metadata={**old.metadata, **(metadata or {})},
    )
