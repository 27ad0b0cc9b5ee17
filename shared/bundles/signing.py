"""Ed25519 signatures over model bundles.

A signed bundle carries ``manifest.sig`` next to ``manifest.json``::

    {"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64>"}

The signature covers :func:`edgecloud.shared.bundles.manifest.canonical_bytes` of the manifest,
and the manifest lists every file's sha256, so one signature vouches for the
whole directory. ``key_id`` (the first 16 hex digits of the sha256 of the raw
32-byte public key) only picks the key to try; it is not trusted on its own.

:func:`verify_signed_bundle` refuses, each with its own error::

    ConfigError                   the trust store is empty
    BundleError
    ├── DowngradeError            version not newer than the installed one
    ├── ExpiredBundleError        past the manifest's signed ``expires_at``
    └── IntegrityError            a file does not match the manifest (verify_bundle)
        └── SignatureError
            ├── UnsignedBundleError       no manifest.sig
            ├── MalformedSignatureError   manifest.sig is not a valid signature file
            ├── UntrustedKeyError         signed by a key the store does not hold
            │   ├── RevokedKeyError       signed by a revoked key
            │   ├── RetiredKeyError       signed by a key a rotation replaced
            │   └── KeyRoleError          the key may not sign this bundle's name or kind
            └── BadSignatureError         the manifest changed after signing

Which key may sign what (roles), which keys were rotated out or revoked: a
:class:`TrustStore` holds it; :mod:`edgecloud.shared.bundles.trust` builds one from key
files and trust policies.

The checks run cheapest first: signature, version, then every file's hash.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import fnmatch
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgecloud.shared.base.errors import BundleError, ConfigError, IntegrityError
from edgecloud.shared.bundles.manifest import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    Manifest,
    canonical_bytes,
    load_manifest,
    verify_bundle,
)

__all__ = [
    "ALGORITHM",
    "KEY_ID_PATTERN",
    "SIGNATURE_FIELDS",
    "BadSignatureError",
    "DowngradeError",
    "EnvelopeFault",
    "ExpiredBundleError",
    "KeyRole",
    "KeyRoleError",
    "MalformedSignatureError",
    "RetiredKeyError",
    "RevokedKeyError",
    "SignatureError",
    "TrustStore",
    "UnsignedBundleError",
    "UntrustedKeyError",
    "expiry_in_days",
    "generate_keypair",
    "is_key_id",
    "key_id",
    "load_private_key",
    "load_public_key",
    "parse_signature",
    "read_envelope",
    "read_signature",
    "sign_bundle",
    "verify_manifest_signature",
    "verify_signed_bundle",
]

ALGORITHM = "ed25519"
KEY_ID_PATTERN = re.compile(r"[0-9a-f]{16}")
"""A key id as written (:func:`key_id`): 16 lower-case hex digits. :func:`is_key_id` checks a value."""
SIGNATURE_FIELDS = ("algorithm", "key_id", "signature")
"""The fields of a signature envelope, exactly these: a bundle's ``manifest.sig`` and a signed fleet
command's ``signature`` object (:func:`read_envelope` reads one)."""
_MAX_SIG_BYTES = 4096
_MAX_KEY_BYTES = 16384


class SignatureError(IntegrityError):
    """The bundle's signature is missing, unreadable, untrusted or wrong."""


class UnsignedBundleError(SignatureError):
    """The bundle has no ``manifest.sig``."""


class MalformedSignatureError(SignatureError):
    """``manifest.sig`` is not a well-formed ed25519 signature file."""


class UntrustedKeyError(SignatureError):
    """The signature names a key the trust store does not hold."""


class RevokedKeyError(UntrustedKeyError):
    """The signature is by a key the trust policy revoked: nothing it signed is accepted."""


class RetiredKeyError(UntrustedKeyError):
    """The signature is by a key a rotation statement replaced: new releases need the new key."""


class KeyRoleError(UntrustedKeyError):
    """The key is trusted, but not for this bundle's name or kind."""


class BadSignatureError(SignatureError):
    """The signature does not match the manifest: it changed after signing,
    or the signature was made by another key than the one it names."""


class DowngradeError(BundleError):
    """The bundle's version is not newer than the installed one, and it is
    not an explicitly allowed rollback."""


class ExpiredBundleError(BundleError):
    """The bundle's signed expiry has passed: it is not installed, however well signed."""


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the sha256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def is_key_id(value: object) -> bool:
    """Whether ``value`` is a key id as :func:`key_id` writes it (:data:`KEY_ID_PATTERN`)."""
    return isinstance(value, str) and KEY_ID_PATTERN.fullmatch(value) is not None


EnvelopeFault = Literal["fields", "algorithm", "key_id", "signature", "base64", "length"]
"""Which check of a signature envelope failed (:func:`read_envelope`)."""


def read_envelope(
    document: object, refuse: Callable[[EnvelopeFault, object], Exception], *, max_encoded: int | None = None
) -> tuple[str, bytes]:
    """``(key_id, signature bytes)`` from a signature envelope, the parsed JSON object
    ``{"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64>"}``.

    The checks run in this order; the first that fails raises ``refuse(fault, value)``, which its
    caller words (a bundle and a fleet command word them differently):

    ``fields``     not an object with exactly :data:`SIGNATURE_FIELDS` (value: the document)
    ``algorithm``  not :data:`ALGORITHM` (value: the algorithm)
    ``key_id``     not a key id (:func:`is_key_id`; value: the key id)
    ``signature``  not a string, or longer than ``max_encoded`` characters (value: the signature)
    ``base64``     not base64 (value: the decoding error, also the raised error's cause)
    ``length``     not the 64 bytes of an ed25519 signature (value: the decoded length)
    """
    if not isinstance(document, dict) or sorted(document) != sorted(SIGNATURE_FIELDS):
        raise refuse("fields", document)
    if document["algorithm"] != ALGORITHM:
        raise refuse("algorithm", document["algorithm"])
    kid, encoded = document["key_id"], document["signature"]
    if not is_key_id(kid):
        raise refuse("key_id", kid)
    if not isinstance(encoded, str) or (max_encoded is not None and len(encoded) > max_encoded):
        raise refuse("signature", encoded)
    try:
        signature = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise refuse("base64", exc) from exc
    if len(signature) != 64:
        raise refuse("length", len(signature))
    return kid, signature


def generate_keypair(private_path: str | os.PathLike[str], public_path: str | os.PathLike[str]) -> str:
    """Write a new Ed25519 key pair as PEM and return its key id.

    The private key is unencrypted PKCS8 with mode 0600; the public key is
    SubjectPublicKeyInfo. Refuses (ConfigError) to overwrite either file.
    """
    private, public = Path(private_path), Path(public_path)
    for path in (private, public):
        if os.path.lexists(path):
            raise ConfigError(f"{path}: already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private, private_pem, 0o600)
    try:
        _write_new(public, public_pem, 0o644)
    except BaseException:
        private.unlink(missing_ok=True)
        raise
    return key_id(key.public_key())


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    except FileExistsError as exc:
        raise ConfigError(f"{path}: already exists; refusing to overwrite a key") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)  # the umask may only have narrowed it; make it exact
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _read_pem(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read key: {exc.strerror or exc}") from exc
    if len(data) > _MAX_KEY_BYTES:
        raise ConfigError(f"{path}: too large to be a PEM key")
    return data


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """An unencrypted Ed25519 private key from PEM; ConfigError otherwise."""
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(_read_pem(path), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: expected an Ed25519 private key, got {type(key).__name__}")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo); ConfigError otherwise."""
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(_read_pem(path))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: expected an Ed25519 public key, got {type(key).__name__}")
    return key


@dataclasses.dataclass(frozen=True)
class KeyRole:
    """What one key may sign: bundle names (shell-style patterns) and kinds."""

    names: tuple[str, ...] = ("*",)
    kinds: tuple[str, ...] = ("*",)

    def __post_init__(self) -> None:
        for field in ("names", "kinds"):
            values = getattr(self, field)
            if isinstance(values, str) or not values or not all(isinstance(v, str) and v for v in values):
                raise ConfigError(f"a key role's {field} must be a non-empty list of non-empty strings, got {values!r}")
            object.__setattr__(self, field, tuple(values))

    def allows(self, name: str, kind: str) -> bool:
        return any(fnmatch.fnmatchcase(name, n) for n in self.names) and any(
            fnmatch.fnmatchcase(kind, k) for k in self.kinds
        )

    def __str__(self) -> str:
        return f"names {', '.join(self.names)}; kinds {', '.join(self.kinds)}"


ANY_BUNDLE = KeyRole()


class TrustStore:
    """The public keys whose signatures are accepted, by key id, each with the role it may sign
    for (default: any bundle); the keys revoked, and those retired by a rotation (with the key
    that replaced them), so that a refusal says which it was."""

    def __init__(
        self,
        keys: Iterable[Ed25519PublicKey] = (),
        *,
        roles: Mapping[str, KeyRole] | None = None,
        revoked: Iterable[str] = (),
        retired: Mapping[str, tuple[Ed25519PublicKey, str]] | None = None,
    ) -> None:
        self._revoked = frozenset(revoked)
        self._keys = {kid: key for key in keys if (kid := key_id(key)) not in self._revoked}
        self._retired = {kid: pair for kid, pair in (retired or {}).items() if kid not in self._revoked}
        self._roles = {kid: r for kid, r in (roles or {}).items() if kid in self._keys or kid in self._retired}

    @classmethod
    def from_paths(cls, paths: Iterable[str | os.PathLike[str]]) -> TrustStore:
        """Load every PEM public key in ``paths``, each trusted for any bundle (trust policies,
        with roles, rotation and revocation: :func:`edgecloud.shared.bundles.trust.load_trust`)."""
        return cls(load_public_key(path) for path in paths)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    @property
    def revoked(self) -> frozenset[str]:
        return self._revoked

    def get(self, kid: str) -> Ed25519PublicKey | None:
        return self._keys.get(kid)

    def role(self, kid: str) -> KeyRole:
        return self._roles.get(kid, ANY_BUNDLE)

    def retired_by(self, kid: str) -> str | None:
        """The key id that replaced ``kid`` in a rotation, or None."""
        pair = self._retired.get(kid)
        return pair[1] if pair else None

    def signer(self, kid: str, *, accept_retired: bool = False) -> Ed25519PublicKey:
        """The key to check a signature by ``kid`` against; UntrustedKeyError (or the subclass
        saying why: revoked, retired) when the store does not accept its signatures."""
        if kid in self._revoked:
            raise RevokedKeyError(f"key {kid} is revoked")
        key = self._keys.get(kid)
        if key is not None:
            return key
        if kid in self._retired:
            if accept_retired:
                return self._retired[kid][0]
            raise RetiredKeyError(f"key {kid} was retired by a rotation to key {self._retired[kid][1]}")
        raise UntrustedKeyError(f"key {kid} is not trusted (trusted: {', '.join(self.key_ids) or 'none'})")

    def check_role(self, kid: str, name: str, kind: str) -> None:
        role = self.role(kid)
        if not role.allows(name, kind):
            raise KeyRoleError(f"key {kid} may sign {role}; not {name!r} ({kind})")

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self.key_ids)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"TrustStore(key_ids={list(self.key_ids)}, revoked={sorted(self._revoked)})"


def expiry_in_days(days: float, *, now: float | None = None) -> str:
    """The RFC 3339 UTC time ``days`` from ``now`` (default: the clock), for ``sign_bundle(expires_at=)``."""
    if not days > 0:
        raise ConfigError(f"an expiry must be > 0 days ahead, got {days}")
    at = datetime.fromtimestamp(time.time() if now is None else now, UTC) + timedelta(days=days)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def sign_bundle(
    directory: str | os.PathLike[str], private_key: Ed25519PrivateKey, *, expires_at: str | None = None
) -> Path:
    """Verify ``directory`` against its manifest, then write ``manifest.sig``.

    ``expires_at`` (RFC 3339 UTC) first writes that expiry into the manifest, so the signature
    covers it (:attr:`Manifest.expires_at`). Refuses (IntegrityError, ManifestError) a bundle
    whose files do not match: signing it would vouch for content nobody checked. Returns the
    signature path.
    """
    root = Path(directory)
    manifest = verify_bundle(root)
    if expires_at is not None:
        manifest = dataclasses.replace(manifest, expires_at=expires_at)
        text = json.dumps(manifest.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        tmp = root / f".{MANIFEST_FILE}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, root / MANIFEST_FILE)
    signature = private_key.sign(canonical_bytes(manifest))
    document = {
        "algorithm": ALGORITHM,
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    path = root / SIGNATURE_FILE
    tmp = root / f".{SIGNATURE_FILE}.tmp"
    tmp.write_text(json.dumps(document, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_signature(directory: str | os.PathLike[str]) -> tuple[str, bytes]:
    """``(key_id, signature bytes)`` from ``directory/manifest.sig``.

    Raises UnsignedBundleError when it is absent and MalformedSignatureError
    when it is not exactly the documented JSON object.
    """
    path = Path(directory) / SIGNATURE_FILE
    if not os.path.lexists(path):
        raise UnsignedBundleError(f"{Path(directory)}: unsigned bundle (no {SIGNATURE_FILE})")
    if path.is_symlink() or not path.is_file():
        raise MalformedSignatureError(f"{path}: not a regular file")
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_SIG_BYTES + 1)
    except OSError as exc:
        raise MalformedSignatureError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return parse_signature(raw, str(path))


def parse_signature(raw: bytes, where: str) -> tuple[str, bytes]:
    """``(key_id, signature bytes)`` from the bytes of a ``manifest.sig`` (``where`` names it in
    errors); MalformedSignatureError unless it is exactly the documented JSON object."""
    if len(raw) > _MAX_SIG_BYTES:
        raise MalformedSignatureError(f"{where}: larger than {_MAX_SIG_BYTES} bytes")
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedSignatureError(f"{where}: not UTF-8 JSON: {exc}") from exc
    return read_envelope(document, lambda fault, value: MalformedSignatureError(f"{where}: {_malformed(fault, value)}"))


def _malformed(fault: EnvelopeFault, value: object) -> str:
    """What is wrong with a ``manifest.sig`` (:func:`read_envelope`'s ``fault``)."""
    match fault:
        case "fields":
            return f"expected an object with exactly {', '.join(SIGNATURE_FIELDS)}"
        case "algorithm":
            return f"algorithm {value!r} is not {ALGORITHM!r}"
        case "key_id":
            return f"key_id must be 16 lower-case hex digits, got {value!r}"
        case "signature":
            return f"signature must be a base64 string, got {type(value).__name__}"
        case "base64":
            return f"signature is not base64: {value}"
        case "length":
            return f"an ed25519 signature is 64 bytes, got {value}"


def _require_keys(trust: TrustStore) -> None:
    if not len(trust) and not trust.revoked:  # all revoked: the refusal says so
        raise ConfigError("no trusted signing keys configured; never trust a bundle not signed by a configured key")


def verify_manifest_signature(
    manifest: Manifest,
    kid: str,
    signature: bytes,
    trust: TrustStore,
    *,
    where: str,
    now: float | None = None,
    check_expiry: bool = True,
    accept_retired: bool = False,
) -> None:
    """Check that ``signature`` by ``kid`` vouches for ``manifest``: the key accepted (not
    revoked, retired or unknown), the signature right, the key's role covering the bundle's name
    and kind, the expiry not past. The files are not looked at (:func:`verify_signed_bundle`
    does both); ``where`` names the bundle in errors."""
    _require_keys(trust)
    try:
        public_key = trust.signer(kid, accept_retired=accept_retired)
    except UntrustedKeyError as exc:
        raise type(exc)(f"{where}: signed by {exc}") from None
    try:
        public_key.verify(signature, canonical_bytes(manifest))
    except InvalidSignature:
        raise BadSignatureError(
            f"{where}: bad signature by key {kid}: the manifest was changed after signing"
        ) from None
    try:
        trust.check_role(kid, manifest.name, manifest.kind)
    except KeyRoleError as exc:
        raise KeyRoleError(f"{where}: {exc}") from None
    if check_expiry and manifest.expired(time.time() if now is None else now):
        raise ExpiredBundleError(
            f"{where}: {manifest.name} v{manifest.version} expired at {manifest.expires_at}; re-sign a fresh release"
        )


def verify_signed_bundle(
    directory: str | os.PathLike[str],
    trust: TrustStore,
    *,
    installed_version: int | None = None,
    allow_rollback_to: set[int] | frozenset[int] = frozenset(),
    now: float | None = None,
    check_expiry: bool = True,
    accept_retired: bool = False,
) -> Manifest:
    """Check signature, the key's role, expiry, version and every file; return the verified manifest.

    A manifest past its signed ``expires_at`` at ``now`` (default: the clock) is refused
    (ExpiredBundleError), unless ``check_expiry`` is False; a signature by a key a rotation
    retired is refused (RetiredKeyError) unless ``accept_retired``. Both are for a bundle
    installed while it was fresh and its key current, only re-checked at a restart, where
    serving it beats falling back. A revoked key is never accepted.

    ``installed_version``: the version serving now; a bundle whose version is
    not larger is refused (DowngradeError) unless it is in
    ``allow_rollback_to``, the versions this device had installed before and
    may explicitly roll back to. ``None`` skips the version check.
    """
    root = Path(directory)
    _require_keys(trust)
    kid, signature = read_signature(root)
    manifest = load_manifest(root)
    signed = canonical_bytes(manifest)
    verify_manifest_signature(
        manifest, kid, signature, trust, where=str(root), now=now, check_expiry=check_expiry,
        accept_retired=accept_retired,
    )  # fmt: skip
    if (
        installed_version is not None
        and manifest.version <= installed_version
        and manifest.version not in allow_rollback_to
    ):
        raise DowngradeError(
            f"{root}: {manifest.name} v{manifest.version} is not newer than installed v{installed_version}"
            " and is not an allowed rollback"
        )
    checked = verify_bundle(root)
    if canonical_bytes(checked) != signed:
        raise BadSignatureError(f"{root}: manifest.json changed during verification")
    return checked
