from __future__ import annotations

import base64
import json
import shutil
import stat
from pathlib import Path

import pytest

from edgecloud.shared.base.errors import BundleError, ConfigError, IntegrityError, ManifestError
from edgecloud.shared.bundles.manifest import SIGNATURE_FILE, load_manifest, write_bundle
from edgecloud.shared.bundles.signing import (
    ALGORITHM,
    BadSignatureError,
    DowngradeError,
    ExpiredBundleError,
    MalformedSignatureError,
    SignatureError,
    TrustStore,
    UnsignedBundleError,
    UntrustedKeyError,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    read_signature,
    sign_bundle,
    verify_signed_bundle,
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    paths = {}
    for name in ("release", "rogue"):
        paths[name] = root / f"{name}.key"
        paths[f"{name}_pub"] = root / f"{name}.pub"
        generate_keypair(paths[name], paths[f"{name}_pub"])
    return paths


@pytest.fixture
def bundle(shipped_models: Path, tmp_path: Path) -> Path:
    """An unsigned copy of the shipped edge bundle."""
    out = tmp_path / "edge-student"
    shutil.copytree(shipped_models / "edge-student", out)
    (out / SIGNATURE_FILE).unlink(missing_ok=True)
    return out


@pytest.fixture
def signed(bundle: Path, keys: dict[str, Path]) -> Path:
    sign_bundle(bundle, load_private_key(keys["release"]))
    return bundle


@pytest.fixture
def trust(keys: dict[str, Path]) -> TrustStore:
    return TrustStore.from_paths([keys["release_pub"]])


def _rewrite_sig(directory: Path, **changes: object) -> None:
    path = directory / SIGNATURE_FILE
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


def test_round_trip_on_the_shipped_bundle(signed: Path, trust: TrustStore, keys: dict[str, Path]) -> None:
    manifest = verify_signed_bundle(signed, trust)
    assert manifest == load_manifest(signed)
    document = json.loads((signed / SIGNATURE_FILE).read_text())
    assert sorted(document) == ["algorithm", "key_id", "signature"]
    assert document["algorithm"] == ALGORITHM
    assert document["key_id"] == key_id(load_public_key(keys["release_pub"])) == trust.key_ids[0]
    assert len(base64.b64decode(document["signature"])) == 64
    assert read_signature(signed) == (document["key_id"], base64.b64decode(document["signature"]))


def test_newer_version_than_installed_is_accepted(signed: Path, trust: TrustStore) -> None:
    version = load_manifest(signed).version
    assert verify_signed_bundle(signed, trust, installed_version=version - 1).version == version


def test_unsigned_bundle_is_refused(bundle: Path, trust: TrustStore) -> None:
    with pytest.raises(UnsignedBundleError, match="unsigned"):
        verify_signed_bundle(bundle, trust)


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        b'{"algorithm": "ed25519", "key_id": "0123456789abcdef"}',
        b'{"algorithm": "rsa", "key_id": "0123456789abcdef", "signature": "AAAA"}',
        b'{"algorithm": "ed25519", "key_id": "XYZ", "signature": "AAAA"}',
        b'{"algorithm": "ed25519", "key_id": "0123456789abcdef", "signature": "not base64!"}',
        b'{"algorithm": "ed25519", "key_id": "0123456789abcdef", "signature": "AAAA"}',
        b'{"algorithm": "ed25519", "key_id": "0123456789abcdef", "signature": 7}',
        b'{"algorithm": "ed25519", "key_id": "0123456789abcdef", "signature": "AAAA", "extra": 1}',
        b" " * 5000,
    ],
    ids=["not-json", "not-object", "missing-field", "algorithm", "key-id", "base64", "length", "type", "extra", "huge"],
)
def test_malformed_signature_file_is_refused(signed: Path, trust: TrustStore, content: bytes) -> None:
    (signed / SIGNATURE_FILE).write_bytes(content)
    with pytest.raises(MalformedSignatureError):
        verify_signed_bundle(signed, trust)


def test_key_not_in_the_trust_store_is_refused(bundle: Path, trust: TrustStore, keys: dict[str, Path]) -> None:
    sign_bundle(bundle, load_private_key(keys["rogue"]))
    with pytest.raises(UntrustedKeyError, match="not trusted"):
        verify_signed_bundle(bundle, trust)


def test_signature_by_another_key_than_the_named_one_is_refused(
    bundle: Path, trust: TrustStore, keys: dict[str, Path]
) -> None:
    sign_bundle(bundle, load_private_key(keys["rogue"]))
    _rewrite_sig(bundle, key_id=trust.key_ids[0])  # claims to be the release key
    with pytest.raises(BadSignatureError):
        verify_signed_bundle(bundle, trust)


def test_manifest_changed_after_signing_is_refused(signed: Path, trust: TrustStore) -> None:
    path = signed / "manifest.json"
    data = json.loads(path.read_text())
    data["calibration"]["threshold"] = 0.0  # e.g. make the edge answer everything locally
    path.write_text(json.dumps(data, indent=2))
    with pytest.raises(BadSignatureError, match="changed after signing"):
        verify_signed_bundle(signed, trust)


def test_manifest_reformatted_after_signing_still_verifies(signed: Path, trust: TrustStore) -> None:
    path = signed / "manifest.json"
    original = path.read_text()
    path.write_text(json.dumps(json.loads(path.read_text())))  # same content, other whitespace
    assert path.read_text() != original  # the bytes did change...
    assert verify_signed_bundle(signed, trust) == load_manifest(signed)  # ...the signed content did not


def test_tampered_file_byte_is_refused(signed: Path, trust: TrustStore) -> None:
    onnx = signed / "model.int8.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.int8.onnx") as info:
        verify_signed_bundle(signed, trust)
    assert not isinstance(info.value, SignatureError)


def test_added_file_is_refused(signed: Path, trust: TrustStore) -> None:
    (signed / "extra.py").write_text("import os\n")
    with pytest.raises(IntegrityError, match="extra.py: not listed"):
        verify_signed_bundle(signed, trust)


@pytest.mark.parametrize("offset", [0, 1])
def test_same_or_older_version_is_a_downgrade(signed: Path, trust: TrustStore, offset: int) -> None:
    version = load_manifest(signed).version
    with pytest.raises(DowngradeError, match=f"v{version} is not newer than installed v{version + offset}"):
        verify_signed_bundle(signed, trust, installed_version=version + offset)


def test_rollback_to_a_listed_version_is_allowed(signed: Path, trust: TrustStore) -> None:
    version = load_manifest(signed).version
    manifest = verify_signed_bundle(signed, trust, installed_version=version + 3, allow_rollback_to={version, 99})
    assert manifest.version == version
    with pytest.raises(DowngradeError):
        verify_signed_bundle(signed, trust, installed_version=version + 3, allow_rollback_to={version + 1})


def test_downgrade_is_checked_only_after_the_signature(bundle: Path, trust: TrustStore) -> None:
    with pytest.raises(UnsignedBundleError):
        verify_signed_bundle(bundle, trust, installed_version=10**6)


def test_empty_trust_store_is_a_configuration_error(signed: Path) -> None:
    with pytest.raises(ConfigError, match="never trust a bundle not signed by a configured key"):
        verify_signed_bundle(signed, TrustStore())
    with pytest.raises(ConfigError):
        verify_signed_bundle(signed, TrustStore.from_paths([]))


def test_refuses_to_sign_a_bundle_whose_files_do_not_match(bundle: Path, keys: dict[str, Path]) -> None:
    (bundle / "tokenizer.json").write_text("{}")
    with pytest.raises(IntegrityError, match="tokenizer.json"):
        sign_bundle(bundle, load_private_key(keys["release"]))
    assert not (bundle / SIGNATURE_FILE).exists()


def test_rewriting_the_manifest_drops_the_signature(signed: Path, trust: TrustStore) -> None:
    m = load_manifest(signed)
    write_bundle(signed, name=m.name, kind=m.kind, version=m.version + 1, io=m.io, calibration=m.calibration,
                 golden=m.golden, metadata=m.metadata)  # fmt: skip
    with pytest.raises(UnsignedBundleError):
        verify_signed_bundle(signed, trust)


def test_keygen_writes_a_0600_private_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    private, public = tmp_path / "k.key", tmp_path / "k.pub"
    kid = generate_keypair(private, public)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert key_id(load_private_key(private).public_key()) == key_id(load_public_key(public)) == kid
    before = private.read_bytes(), public.read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_keypair(private, tmp_path / "other.pub")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_keypair(tmp_path / "other.key", public)
    assert (private.read_bytes(), public.read_bytes()) == before
    assert not (tmp_path / "other.key").exists() and not (tmp_path / "other.pub").exists()


def test_keys_of_the_wrong_kind_are_configuration_errors(tmp_path: Path, keys: dict[str, Path]) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    for path in (garbage, keys["release_pub"], tmp_path / "missing.pem"):
        with pytest.raises(ConfigError):
            load_private_key(path)
    for path in (garbage, keys["release"], tmp_path / "missing.pem"):
        with pytest.raises(ConfigError):
            load_public_key(path)


def test_trust_store_holds_keys_by_id(keys: dict[str, Path]) -> None:
    store = TrustStore.from_paths([keys["release_pub"], keys["rogue_pub"], keys["release_pub"]])
    assert len(store) == 2
    release = key_id(load_public_key(keys["release_pub"]))
    assert release in store and store.get(release) is not None and store.get("0" * 16) is None
    assert len(release) == 16 and int(release, 16) >= 0


def test_error_classes_fit_the_hierarchy() -> None:
    for cls in (UnsignedBundleError, MalformedSignatureError, UntrustedKeyError, BadSignatureError):
        assert issubclass(cls, SignatureError) and issubclass(cls, IntegrityError)
    assert issubclass(DowngradeError, BundleError) and not issubclass(DowngradeError, IntegrityError)
    assert issubclass(ExpiredBundleError, BundleError) and not issubclass(ExpiredBundleError, IntegrityError)
    assert not issubclass(ManifestError, SignatureError)


def test_a_signed_expiry_is_covered_by_the_signature_and_refused_once_past(
    bundle: Path, trust: TrustStore, keys: dict[str, Path]
) -> None:
    from datetime import UTC, datetime

    sign_bundle(bundle, load_private_key(keys["release"]), expires_at="2030-01-01T00:00:00Z")
    manifest = load_manifest(bundle)
    assert manifest.expires_at == "2030-01-01T00:00:00Z"
    before = datetime(2029, 12, 31, 23, 59, tzinfo=UTC).timestamp()
    after = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert verify_signed_bundle(bundle, trust, now=before).version == manifest.version
    with pytest.raises(ExpiredBundleError, match="expired at 2030-01-01T00:00:00Z"):
        verify_signed_bundle(bundle, trust, now=after)
    # A restart re-checks a bundle installed while it was fresh without its expiry.
    assert verify_signed_bundle(bundle, trust, now=after, check_expiry=False).expires_at == manifest.expires_at
    # Pushing the expiry back after signing breaks the signature: only the signer can extend it.
    data = json.loads((bundle / "manifest.json").read_text())
    data["expires_at"] = "2099-01-01T00:00:00Z"
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BadSignatureError):
        verify_signed_bundle(bundle, trust, now=before)


@pytest.mark.parametrize("bad", ["tomorrow", "2020-01-01T00:00:00Z", 5])
def test_a_malformed_or_backdated_expiry_is_a_manifest_error(bundle: Path, bad: object) -> None:
    data = json.loads((bundle / "manifest.json").read_text())
    data["expires_at"] = bad  # the shipped manifest was created after 2020
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="expires_at"):
        load_manifest(bundle)


def test_a_manifest_without_an_expiry_keeps_its_canonical_bytes(signed: Path, trust: TrustStore) -> None:
    # Bundles signed before expiry existed verify unchanged: no expires_at key appears.
    assert "expires_at" not in load_manifest(signed).to_dict()
    assert verify_signed_bundle(signed, trust, now=4e9).expires_at is None
