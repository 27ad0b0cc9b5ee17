from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgecloud.shared.base.errors import BundleError, EdgecloudError, IntegrityError, ManifestError
from edgecloud.shared.bundles.manifest import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    FileEntry,
    GoldenCase,
    Manifest,
    canonical_bytes,
    copy_bundle,
    load_manifest,
    verify_bundle,
    write_bundle,
)

IO = {"inputs": ["input_ids"], "outputs": ["logits"], "feature_dim": 64, "tokenizer": "tokenizer/tokenizer.json"}
CONTENT = {
    "model.onnx": bytes(range(256)) * 40,
    "tokenizer/tokenizer.json": b'{"vocab": {}}\n',
    "tokenizer/special/tokens.txt": b"<pad>\n<eos>\n",
}
CREATED_AT = "2025-01-31T12:00:00Z"


def _populate(root: Path) -> None:
    for rel, data in CONTENT.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _write(root: Path, **overrides: Any) -> Manifest:
    args: dict[str, Any] = {
        "name": "arith-edge",
        "kind": "edge",
        "version": 3,
        "io": IO,
        "calibration": {"threshold": 0.42},
        "golden": [GoldenCase(query="what is 2+3?", expected="5"), {"query": "7*6", "expected": "42"}],
        "metadata": {"base_model": "tiny", "note": "naïve ✓"},
        "created_at": CREATED_AT,
    }
    args.update(overrides)
    return write_bundle(root, **args)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    _populate(tmp_path)
    _write(tmp_path)
    return tmp_path


def test_write_then_verify_round_trip(bundle: Path) -> None:
    manifest = verify_bundle(bundle)
    assert manifest == load_manifest(bundle)
    assert [f.path for f in manifest.files] == sorted(CONTENT)
    for entry in manifest.files:
        assert entry.size == len(CONTENT[entry.path])
        assert entry.sha256 == hashlib.sha256(CONTENT[entry.path]).hexdigest()
    assert manifest.golden == (GoldenCase(query="what is 2+3?", expected="5"), GoldenCase(query="7*6", expected="42"))
    header = (manifest.name, manifest.kind, manifest.version, manifest.created_at)
    assert header == ("arith-edge", "edge", 3, CREATED_AT)
    assert manifest.io == IO and manifest.calibration == {"threshold": 0.42}


def test_manifest_json_is_pretty_sorted_with_trailing_newline(bundle: Path) -> None:
    text = (bundle / MANIFEST_FILE).read_text(encoding="utf-8")
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert "naïve ✓" in text


def test_write_defaults_created_at_to_now_utc(tmp_path: Path) -> None:
    _populate(tmp_path)
    manifest = _write(tmp_path, created_at=None)
    assert manifest.created_at.endswith("Z") and load_manifest(tmp_path) == manifest


def test_rewrite_drops_stale_signature(bundle: Path) -> None:
    (bundle / SIGNATURE_FILE).write_bytes(b"old signature")
    verify_bundle(bundle)  # a signature file is never an unlisted file
    manifest = _write(bundle, version=4)
    assert not (bundle / SIGNATURE_FILE).exists()
    assert verify_bundle(bundle) == manifest


def _flip_byte(root: Path) -> None:
    path = root / "model.onnx"
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(root: Path) -> None:
    path = root / "tokenizer/special/tokens.txt"
    path.write_bytes(path.read_bytes()[:-1])


def _add(rel: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).write_bytes(b"surprise")


TAMPERING = [
    pytest.param(_flip_byte, "model.onnx", "sha256", id="flipped-byte"),
    pytest.param(_truncate, "tokenizer/special/tokens.txt", "size", id="truncated"),
    pytest.param(lambda root: (root / "model.onnx").unlink(), "model.onnx", "missing", id="deleted"),
    pytest.param(_add("extra.bin"), "extra.bin", "not listed", id="unlisted-top-level"),
    pytest.param(_add("tokenizer/extra.txt"), "tokenizer/extra.txt", "not listed", id="unlisted-nested"),
]


@pytest.mark.parametrize(("tamper", "path", "reason"), TAMPERING)
def test_tampering_raises_integrity_error(bundle: Path, tamper: Callable[[Path], None], path: str, reason: str) -> None:
    tamper(bundle)
    with pytest.raises(IntegrityError) as info:
        verify_bundle(bundle)
    assert str(info.value).startswith(f"{path}:")
    assert reason in str(info.value)


SYMLINKS = [
    pytest.param("link.onnx", "model.onnx", id="file"),
    pytest.param("tokenizer/linked", "special", id="directory"),
    pytest.param("dangling", "nowhere", id="dangling"),
]


@pytest.mark.parametrize(("link", "target"), SYMLINKS)
def test_symlinks_are_refused(tmp_path: Path, link: str, target: str) -> None:
    _populate(tmp_path)
    os.symlink(target, tmp_path / link)
    with pytest.raises(BundleError, match=link):
        _write(tmp_path)


def test_symlink_added_after_writing_fails_verification(bundle: Path) -> None:
    os.symlink("model.onnx", bundle / "alias.onnx")
    with pytest.raises(BundleError, match="alias.onnx"):
        verify_bundle(bundle)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda data: data.__setitem__(key, value)


def _set_file(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda data: data["files"][0].__setitem__(key, value)


MALFORMED = [
    pytest.param(_set("kind", "phone"), "kind", id="bad-kind"),
    pytest.param(_set("version", 0), "version", id="version-0"),
    pytest.param(_set("version", True), "version", id="version-bool"),
    pytest.param(_set("version", "3"), "version", id="version-string"),
    pytest.param(_set("format_version", 2), "format_version", id="format-version-2"),
    pytest.param(_set("name", "Arith Edge"), "name", id="bad-name"),
    pytest.param(_set("created_at", "2025-01-31 12:00:00"), "created_at", id="created-at-not-rfc3339"),
    pytest.param(_set("created_at", "2025-01-31T12:00:00+01:00"), "created_at", id="created-at-not-utc"),
    pytest.param(_set("created_at", "2025-02-30T12:00:00Z"), "created_at", id="created-at-bad-date"),
    pytest.param(_set_file("path", "../model.onnx"), "files[0].path", id="path-dotdot"),
    pytest.param(_set_file("path", "/etc/passwd"), "files[0].path", id="path-absolute"),
    pytest.param(_set_file("path", "tokenizer\\vocab.txt"), "files[0].path", id="path-backslash"),
    pytest.param(_set_file("path", "manifest.json"), "files[0].path", id="path-reserved"),
    pytest.param(_set_file("sha256", "xyz"), "files[0].sha256", id="sha256-not-hex"),
    pytest.param(_set_file("sha256", "A" * 64), "files[0].sha256", id="sha256-upper-case"),
    pytest.param(_set_file("size", -1), "files[0].size", id="negative-size"),
    pytest.param(lambda d: d["files"][0].pop("size"), "files[0].size", id="file-missing-size"),
    pytest.param(lambda d: d["files"].reverse(), "files", id="files-unsorted"),
    pytest.param(lambda d: d["files"].append(d["files"][-1]), "files", id="files-duplicate"),
    pytest.param(_set("files", {}), "files", id="files-not-list"),
    pytest.param(lambda d: d["io"].pop("tokenizer"), "io", id="io-missing-key"),
    pytest.param(_set("io", []), "io", id="io-not-object"),
    pytest.param(_set("calibration", None), "calibration", id="calibration-not-object"),
    pytest.param(_set("golden", [{"query": "1+1"}]), "golden[0].expected", id="golden-missing-expected"),
    pytest.param(_set("golden", [{"query": 1, "expected": "1"}]), "golden[0].query", id="golden-query-not-str"),
    pytest.param(lambda d: d.pop("metadata"), "metadata", id="missing-field"),
    pytest.param(_set("extra", 1), "extra", id="unknown-field"),
]


@pytest.mark.parametrize(("mutate", "field"), MALFORMED)
def test_malformed_manifest_raises_manifest_error_naming_field(
    bundle: Path, mutate: Callable[[dict[str, Any]], None], field: str
) -> None:
    data = load_manifest(bundle).to_dict()
    mutate(data)
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(data)
    assert str(info.value).startswith(f"{field}: ")
    (bundle / MANIFEST_FILE).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ManifestError, match=str(bundle / MANIFEST_FILE)):
        load_manifest(bundle)
    with pytest.raises(ManifestError):
        verify_bundle(bundle)


UNREADABLE = [
    pytest.param(b"{not json", id="not-json"),
    pytest.param(b"\xff\xfe{}", id="not-utf8"),
    pytest.param(b"[]", id="not-an-object"),
    pytest.param(b"", id="empty"),
]


@pytest.mark.parametrize("raw", UNREADABLE)
def test_unreadable_manifest_raises_manifest_error(bundle: Path, raw: bytes) -> None:
    (bundle / MANIFEST_FILE).write_bytes(raw)
    with pytest.raises(ManifestError, match=MANIFEST_FILE):
        load_manifest(bundle)


def test_missing_manifest_raises_manifest_error(tmp_path: Path) -> None:
    _populate(tmp_path)
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path)


@pytest.mark.parametrize(
    ("field", "value"),
    [("io", {**IO, "weights": {1, 2}}), ("metadata", {"nan": float("nan")}), ("metadata", {1: "int key"})],
)
def test_free_form_fields_must_be_json(bundle: Path, field: str, value: dict[Any, Any]) -> None:
    manifest = load_manifest(bundle)
    args = {name: getattr(manifest, name) for name in Manifest.__dataclass_fields__}
    args[field] = value
    with pytest.raises(ManifestError, match=f"^{field}"):
        Manifest(**args)


def test_canonical_bytes_is_stable_and_tracks_content(bundle: Path) -> None:
    first, second = load_manifest(bundle), load_manifest(bundle)
    assert canonical_bytes(first) == canonical_bytes(second)
    raw = canonical_bytes(first)
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert "naïve ✓".encode() in raw
    changed = Manifest.from_dict({**first.to_dict(), "version": first.version + 1})
    assert canonical_bytes(changed) != raw
    retagged = Manifest.from_dict({**first.to_dict(), "metadata": {**first.metadata, "note": "other"}})
    assert canonical_bytes(retagged) != raw


def test_dict_round_trip_and_copies(bundle: Path) -> None:
    manifest = load_manifest(bundle)
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    assert FileEntry.from_dict(manifest.files[0].to_dict()) == manifest.files[0]
    data = manifest.to_dict()
    data["io"]["feature_dim"] = 0
    assert manifest.io["feature_dim"] == 64


def test_empty_directory_makes_an_empty_bundle(tmp_path: Path) -> None:
    manifest = _write(tmp_path, golden=[], calibration={}, metadata={})
    assert manifest.files == () and verify_bundle(tmp_path) == manifest


def test_bundle_errors_are_fatal_edgecloud_errors() -> None:
    for cls in (ManifestError, IntegrityError):
        assert issubclass(cls, BundleError) and issubclass(cls, EdgecloudError)
        assert cls.recoverable is False


def test_copy_bundle_makes_an_unsigned_release_of_another_version(shipped_models: Path, tmp_path: Path) -> None:
    source = shipped_models / "edge-student"
    before = load_manifest(source)
    target = tmp_path / "release"
    target.mkdir()
    (target / "stale.txt").write_text("left from an earlier copy")
    copied = copy_bundle(source, target, version=before.version + 7, metadata={"released_by": "a test"})
    assert copied.version == before.version + 7 and copied.name == before.name and copied.io == before.io
    assert copied.metadata == {**before.metadata, "released_by": "a test"}
    assert not (target / SIGNATURE_FILE).exists() and not (target / "stale.txt").exists()
    assert verify_bundle(target) == copied
    assert [f.sha256 for f in copied.files] == [f.sha256 for f in before.files]
    assert load_manifest(source) == before  # the source is untouched


@pytest.mark.parametrize(
    "io",
    [
        {**IO, "tokenizer": "../../etc/passwd"},
        {**IO, "tokenizer": "/etc/passwd"},
        {**IO, "tokenizer": "tokenizer/../../x.json"},
        {**IO, "graphs": {"int8": "../other-bundle/model.onnx"}},
        {**IO, "graphs": {"int8": 7}},
        {**IO, "graphs": ["model.onnx"]},
    ],
)
def test_files_the_io_names_must_stay_inside_the_bundle(tmp_path: Path, io: dict[str, Any]) -> None:
    _populate(tmp_path)
    with pytest.raises(ManifestError, match="must stay inside the bundle"):
        _write(tmp_path, io=io)
    # The same refusal when reading a manifest written by someone else.
    good = _write(tmp_path).to_dict()
    (tmp_path / "manifest.json").write_text(json.dumps({**good, "io": io}))
    with pytest.raises(ManifestError, match="must stay inside the bundle"):
        load_manifest(tmp_path)
