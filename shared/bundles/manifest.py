"""Model bundles: a directory of model files described by ``manifest.json``.

The manifest names the bundle, gives it a monotonic ``version``, lists every
file with its size and sha256, and carries the model's I/O contract,
calibration data, golden query/answer pairs and free-form metadata. A bundle
is valid when every listed file matches and no unlisted regular file exists
(``manifest.json`` and the detached signature ``manifest.sig`` excepted).
Symlinks are refused anywhere in a bundle.

:func:`canonical_bytes` is what the Ed25519 signature in ``manifest.sig``
covers; signing lives elsewhere. The manifest's shape is a pydantic model
(``_ManifestDocument``), which both ``manifest.json`` and a :class:`Manifest` built in code
pass through (:func:`~edgecloud.shared.base.documents.parse_document`). A bad manifest
raises ``ManifestError`` naming the field; files that do not match raise
``IntegrityError`` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, field_validator

from edgecloud.shared.base.documents import Document, PartRefused, parse_document
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
_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
_SHA256_PATTERN = r"^[0-9a-f]{64}$"
_RFC3339_UTC_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
_FREE_FORM = ("io", "calibration", "metadata")


def _bad(where: str, message: str) -> ManifestError:
    return ManifestError(f"{where}: {message}")


def _json_copy(value: object, where: str = "") -> Any:
    """A deep copy of ``value`` in JSON types only (tuples become lists); ValueError, naming the
    place under ``where``, on anything JSON cannot represent exactly."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    at = f"{where}: " if where else ""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{at}non-finite number {value!r}")
        return value
    if isinstance(value, (list, tuple)):
        return [_json_copy(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise ValueError(f"{at}object keys must be strings")
        return {key: _json_copy(item, f"{where}.{key}" if where else key) for key, item in value.items()}
    raise ValueError(f"{at}not JSON-serialisable: {type(value).__name__}")


def _check_path(path: object) -> str:
    """``path`` if it is a relative POSIX path inside a bundle; ValueError saying why not."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"expected a non-empty string, got {path!r}")
    if "\\" in path or "\0" in path:
        raise ValueError(f"must be POSIX without backslash or NUL, got {path!r}")
    if path.startswith("/"):
        raise ValueError(f"must be relative, got {path!r}")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError(f"must not contain '..', '.' or empty segments, got {path!r}")
    if path in _RESERVED:
        raise ValueError(f"{path!r} is reserved and never listed")
    return path


def _path_problem(path: object) -> str:
    """Why ``path`` is not a path inside a bundle ("" when it is)."""
    try:
        _check_path(path)
    except ValueError as exc:
        return str(exc)
    return ""


def _check_io(io: dict[str, Any]) -> dict[str, Any]:
    """``io`` has the keys :data:`IO_KEYS`, and the files it names for loading (``tokenizer``,
    every ``graphs`` entry, and the same of a pair's ``reasoner``) stay inside the bundle: a signed
    manifest must not point a loader at ``../../`` or an absolute path."""
    missing = [key for key in IO_KEYS if key not in io]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(missing)}")
    sections: list[tuple[str, Mapping[str, Any]]] = [("", io)]
    if "reasoner" in io:
        if not isinstance(io["reasoner"], Mapping):
            raise PartRefused("reasoner", f"expected an object, got {type(io['reasoner']).__name__}")
        sections.append(("reasoner", io["reasoner"]))
    for part, section in sections:
        if "tokenizer" not in section:
            raise _refused(part, "names no tokenizer")
        graphs = section.get("graphs", {})
        if isinstance(graphs, Mapping):
            reason = next(filter(None, map(_path_problem, (section["tokenizer"], *graphs.values()))), "")
        else:
            reason = f"graphs: expected an object, got {type(graphs).__name__}"
        if reason:
            raise _refused(part, f"a file it names must stay inside the bundle: {reason}")
    return io


def _refused(part: str, reason: str) -> ValueError:
    return PartRefused(part, reason) if part else ValueError(reason)


def _check_timestamp(value: str) -> str:
    if not _RFC3339_UTC_RE.fullmatch(value):
        raise ValueError(f"expected RFC 3339 UTC like 2025-01-31T12:00:00Z, got {value!r}")
    try:
        datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        raise ValueError(f"not a valid date and time: {value!r}") from None
    return value


def _check_files(files: list[_FileDocument]) -> list[_FileDocument]:
    paths = [f.path for f in files]
    if paths != sorted(set(paths)):
        raise ValueError("must be sorted by path with no duplicates")
    return files


def _epoch(value: str) -> float:
    """Unix time of a checked RFC 3339 UTC timestamp (fractions of a second ignored)."""
    return datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()


_Timestamp = Annotated[str, AfterValidator(_check_timestamp)]
"""RFC 3339 UTC, e.g. ``2025-01-31T12:00:00Z``."""
_FreeForm = Annotated[dict[str, Any], BeforeValidator(_json_copy)]
"""Any JSON object, deep-copied to plain JSON types (exactly representable: finite numbers)."""


class _FileDocument(Document):
    """The shape of a :class:`FileEntry`."""

    path: Annotated[str, AfterValidator(_check_path)]
    sha256: Annotated[str, Field(pattern=_SHA256_PATTERN)]
    size: Annotated[int, Field(ge=0)]


class _GoldenDocument(Document):
    """The shape of a :class:`GoldenCase`."""

    query: str
    expected: str


class _ManifestDocument(Document):
    """The shape of ``manifest.json`` (and of a :class:`Manifest`)."""

    format_version: Annotated[int, Field(ge=FORMAT_VERSION, le=FORMAT_VERSION)]
    name: Annotated[str, Field(pattern=_NAME_PATTERN)]
    kind: Literal["edge", "cloud"]
    version: Annotated[int, Field(ge=1)]
    created_at: _Timestamp
    files: Annotated[list[_FileDocument], AfterValidator(_check_files)]
    io: Annotated[_FreeForm, AfterValidator(_check_io)]
    calibration: _FreeForm
    golden: list[_GoldenDocument]
    metadata: _FreeForm
    expires_at: _Timestamp | None = None

    @field_validator("expires_at")
    @classmethod
    def _after_creation(cls, value: str | None, info: ValidationInfo) -> str | None:
        created = info.data.get("created_at")
        if value is not None and created is not None and _epoch(value) <= _epoch(created):
            raise ValueError(f"must be after created_at {created}, got {value}")
        return value


def _plain(data: object) -> object:
    """A mapping as the plain dict a strict document model takes; anything else as it is."""
    return dict(data) if isinstance(data, Mapping) and not isinstance(data, dict) else data


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
        parse_document(_FileDocument, self.to_dict(), ManifestError)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FileEntry:
        return cls(**vars(parse_document(_FileDocument, _plain(data), ManifestError)))


@dataclass(frozen=True, slots=True, kw_only=True)
class GoldenCase:
    """A query and the answer the bundled model must give to it."""

    query: str
    expected: str

    def __post_init__(self) -> None:
        parse_document(_GoldenDocument, self.to_dict(), ManifestError)

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "expected": self.expected}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GoldenCase:
        return cls(**vars(parse_document(_GoldenDocument, _plain(data), ManifestError)))


_MANIFEST_FIELDS = (
    "format_version", "name", "kind", "version", "created_at",
    "files", "io", "calibration", "golden", "metadata",
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """The validated content of ``manifest.json`` (its shape: ``_ManifestDocument``). Free-form
    fields are deep-copied to plain JSON types on construction."""

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
        for name, kind in (("files", FileEntry), ("golden", GoldenCase)):
            items = getattr(self, name)
            if not isinstance(items, tuple) or not all(isinstance(item, kind) for item in items):
                raise _bad(name, f"expected a tuple of {kind.__name__}")
        document = {name: getattr(self, name) for name in (*_MANIFEST_FIELDS, "expires_at")}
        document["files"] = [f.to_dict() for f in self.files]
        document["golden"] = [g.to_dict() for g in self.golden]
        checked = parse_document(_ManifestDocument, document, ManifestError)
        for name in _FREE_FORM:
            object.__setattr__(self, name, getattr(checked, name))

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
        data.update((name, _json_copy(data[name])) for name in _FREE_FORM)
        return data

    @classmethod
    def from_dict(cls, data: object) -> Manifest:
        """Validate ``data`` (parsed JSON); raises ManifestError naming the bad field."""
        document = parse_document(_ManifestDocument, _plain(data), ManifestError)
        fields = {name: getattr(document, name) for name in (*_MANIFEST_FIELDS, "expires_at")}
        fields["files"] = tuple(FileEntry(**vars(f)) for f in document.files)
        fields["golden"] = tuple(GoldenCase(**vars(g)) for g in document.golden)
        return cls(**fields)


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
    io: Mapping[str, Any] | None = None,
    calibration: Mapping[str, Any] | None = None,
) -> Manifest:
    """Copy the bundle at ``source`` to ``destination`` (replaced if it exists) as ``version``.

    The copy gets a new manifest (same name, kind and golden cases; the contract ``io`` and the
    ``calibration`` as given or the old; ``metadata`` merged over the old) and no signature: a new
    release, to sign and roll out.
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
        io=old.io if io is None else io,
        calibration=old.calibration if calibration is None else calibration,
        golden=old.golden,
        metadata={**old.metadata, **(metadata or {})},
    )
