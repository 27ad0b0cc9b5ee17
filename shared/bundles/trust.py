"""Which keys a device or the fleet manager trusts to sign bundles, and for what: trust policies,
key rotation and revocation (TUF's delegation, rotation and revocation, for one level of keys).

Every ``--trust`` path is a PEM public key (trusted for any bundle) or a JSON trust policy::

    {
      "format": "edgecloud-trust/1",
      "keys": [
        {"public_key": "release.pub", "names": ["edge-*"], "kinds": ["edge"]},
        {"public_key": "teacher.pub", "names": ["cloud-teacher"], "kinds": ["cloud"]}
      ],
      "rotations": ["rotations/release-2027.json"],
      "revoked": ["0123456789abcdef"]
    }

Paths are relative to the policy file. ``names`` are shell-style patterns; a key signs nothing
outside its role (:class:`~edgecloud.shared.bundles.signing.KeyRoleError`).

**Rotation**: ``edgecloud models rotate-key`` writes a statement, signed by the old key, that
names its successor. Applied at load, it moves the old key's role to the new key and retires
the old one: new releases must be signed by the new key (RetiredKeyError), while a bundle a
device installed under the old key keeps serving across restarts. Rotations chain (A to B, then
B to C) in any order in the list. A rotation is only as trusted as the old key: the statements
are the operator's files, delivered as the policy is.

**Revocation**: a key id under ``revoked`` is refused everywhere, even for bundles already
installed (RevokedKeyError); a key a rotation brought in can be revoked like any other. A
revoked key's own rotation statements still stand (its successor stays trusted): revoke the
successor too when the old key signed the rotation after it was compromised.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import Field

from edgecloud.shared.base.documents import Document, parse_document
from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.bundles.signing import KEY_ID_PATTERN, KeyRole, TrustStore, key_id, load_public_key

__all__ = ["POLICY_FORMAT", "ROTATION_FORMAT", "load_trust", "read_rotation", "rotation_statement", "write_rotation"]

POLICY_FORMAT = "edgecloud-trust/1"
ROTATION_FORMAT = "edgecloud-key-rotation/1"
_MAX_POLICY_BYTES = 1 << 20
_MAX_STATEMENT_BYTES = 16384
_KeyId = Annotated[str, Field(pattern=rf"^{KEY_ID_PATTERN.pattern}$")]
"""16 lower-case hex digits, as :func:`~edgecloud.shared.bundles.signing.key_id` writes them."""


class _RotationStatement(Document):
    """The shape of a rotation statement: exactly these fields."""

    format: Literal[ROTATION_FORMAT]
    old_key_id: _KeyId
    new_key_id: _KeyId
    new_public_key: str
    issued_at: Any
    signature: str


class _KeyEntry(Document):
    public_key: str
    """Path of a PEM public key, relative to the policy file."""
    names: list[str] = Field(default_factory=lambda: ["*"])
    kinds: list[str] = Field(default_factory=lambda: ["*"])


class _Policy(Document):
    """The shape of a trust policy (see the module docstring)."""

    format: Literal[POLICY_FORMAT]
    keys: list[_KeyEntry] = Field(default_factory=list)
    rotations: list[str] = Field(default_factory=list)
    revoked: list[_KeyId] = Field(default_factory=list)


def _refusal(path: Path) -> Callable[[str], ConfigError]:
    return lambda message: ConfigError(f"{path}: {message}")


def _signed_bytes(statement: dict) -> bytes:
    # The format string first: a rotation signature can never be taken for a manifest's or a command's.
    body = {k: v for k, v in statement.items() if k != "signature"}
    return (ROTATION_FORMAT + "\n").encode() + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def rotation_statement(
    old_key: Ed25519PrivateKey, new_key: Ed25519PublicKey, *, issued_at: datetime | None = None
) -> dict:
    """A statement, signed by ``old_key``, that ``new_key`` takes over its role."""
    if key_id(old_key.public_key()) == key_id(new_key):
        raise ConfigError("a key cannot rotate to itself")
    statement = {
        "format": ROTATION_FORMAT,
        "old_key_id": key_id(old_key.public_key()),
        "new_key_id": key_id(new_key),
        "new_public_key": base64.b64encode(_raw(new_key)).decode("ascii"),
        "issued_at": (issued_at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    statement["signature"] = base64.b64encode(old_key.sign(_signed_bytes(statement))).decode("ascii")
    return statement


def write_rotation(path: str | os.PathLike[str], statement: dict) -> Path:
    path = Path(path)
    if os.path.lexists(path):
        raise ConfigError(f"{path}: already exists; refusing to overwrite a rotation statement")
    path.write_text(json.dumps(statement, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _read_json(path: Path, limit: int, what: str) -> object:
    try:
        with path.open("rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    if len(raw) > limit:
        raise ConfigError(f"{path}: larger than {limit} bytes; not a {what}")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: {what} is not UTF-8 JSON: {exc}") from exc


def read_rotation(path: str | os.PathLike[str]) -> tuple[dict, Ed25519PublicKey]:
    """A well-formed rotation statement (its shape: ``_RotationStatement``) and the new key it
    names; ConfigError otherwise. The signature is checked when it is applied, against the old key
    the store trusts."""
    path = Path(path)
    statement = _read_json(path, _MAX_STATEMENT_BYTES, "rotation statement")
    checked = parse_document(_RotationStatement, statement, _refusal(path))
    try:
        new_key = Ed25519PublicKey.from_public_bytes(base64.b64decode(checked.new_public_key, validate=True))
        signature = base64.b64decode(checked.signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(
            f"{path}: new_public_key and signature must be base64 of an ed25519 key and signature"
        ) from exc
    if key_id(new_key) != checked.new_key_id or len(signature) != 64:
        raise ConfigError(f"{path}: new_key_id does not match new_public_key, or the signature is not 64 bytes")
    return statement, new_key  # the checked dict as read: its bytes are what the signature covers


def _role(entry: _KeyEntry, where: str) -> KeyRole:
    try:
        return KeyRole(names=tuple(entry.names), kinds=tuple(entry.kinds))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


class _Loading:
    """What the paths say, before rotations are applied."""

    def __init__(self) -> None:
        self.keys: dict[str, Ed25519PublicKey] = {}
        self.roles: dict[str, KeyRole] = {}
        self.revoked: set[str] = set()
        self.rotations: list[Path] = []

    def add_key(self, key: Ed25519PublicKey, role: KeyRole) -> None:
        kid = key_id(key)
        self.keys[kid] = key
        self.roles[kid] = role

    def add_policy(self, path: Path) -> None:
        policy = parse_document(_Policy, _read_json(path, _MAX_POLICY_BYTES, "trust policy"), _refusal(path))
        roles = [_role(entry, f"{path}: keys[{n}]") for n, entry in enumerate(policy.keys)]
        for entry, role in zip(policy.keys, roles, strict=True):
            self.add_key(load_public_key(path.parent / entry.public_key), role)
        self.revoked.update(policy.revoked)
        self.rotations.extend(path.parent / rotation for rotation in policy.rotations)

    def rotate(self) -> dict[str, tuple[Ed25519PublicKey, str]]:
        """Apply every rotation, in whatever order they chain; the retired keys and successors."""
        retired: dict[str, tuple[Ed25519PublicKey, str]] = {}
        pending = [(path, *read_rotation(path)) for path in self.rotations]
        while pending:
            waiting = []
            for path, statement, new_key in pending:
                old = statement["old_key_id"]
                if retired.get(old, (None, ""))[1] == statement["new_key_id"]:
                    continue  # the same rotation, listed twice
                if old not in self.keys:
                    waiting.append((path, statement, new_key))
                    continue
                try:
                    self.keys[old].verify(base64.b64decode(statement["signature"]), _signed_bytes(statement))
                except InvalidSignature:
                    raise ConfigError(f"{path}: bad signature: not signed by the key {old} it rotates") from None
                retired[old] = (self.keys.pop(old), statement["new_key_id"])
                self.add_key(new_key, self.roles[old])  # the old key keeps it, for what it signed before
            if len(waiting) == len(pending):
                names = ", ".join(f"{p} (from {s['old_key_id']})" for p, s, _ in waiting)
                raise ConfigError(f"rotation statements from keys that are not trusted: {names}")
            pending = waiting
        return retired


def load_trust(paths: Iterable[str | os.PathLike[str]]) -> TrustStore:
    """The trust store that PEM public keys (any bundle) and JSON trust policies (see the module
    docstring) make together; ConfigError for anything unreadable or inconsistent."""
    loading = _Loading()
    for raw in paths:
        path = Path(raw)
        if path.suffix == ".json":
            loading.add_policy(path)
        else:
            loading.add_key(load_public_key(path), KeyRole())
    retired = loading.rotate()
    return TrustStore(loading.keys.values(), roles=loading.roles, revoked=loading.revoked, retired=retired)
