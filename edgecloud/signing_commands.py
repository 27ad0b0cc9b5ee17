"""``edgecloud models keygen | sign | verify | rotate-key | pack``: signing bundles and packing them to ship."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgecloud.shared.base.errors import EdgecloudError
from edgecloud.shared.bundles.manifest import load_manifest
from edgecloud.shared.bundles.signing import (
    expiry_in_days,
    generate_keypair,
    load_private_key,
    load_public_key,
    read_signature,
    sign_bundle,
    verify_signed_bundle,
)
from edgecloud.shared.bundles.trust import load_trust, rotation_statement, write_rotation

__all__ = ["add_signing_commands"]


def _refused(exc: EdgecloudError) -> int:
    print(f"refused: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1


def _keygen(args: argparse.Namespace) -> int:
    try:
        kid = generate_keypair(args.private, args.public)
    except EdgecloudError as exc:
        return _refused(exc)
    print(json.dumps({"key_id": kid, "private": str(args.private), "public": str(args.public)}))
    return 0


def _expiry(days: float | None) -> str | None:
    return None if days is None else expiry_in_days(days)


def _sign(args: argparse.Namespace) -> int:
    try:
        path = sign_bundle(args.bundle, load_private_key(args.key), expires_at=_expiry(args.expires_in_days))
        kid, _ = read_signature(args.bundle)
        manifest = load_manifest(args.bundle)
    except EdgecloudError as exc:
        return _refused(exc)
    summary = {"signed": str(path), "name": manifest.name, "version": manifest.version, "key_id": kid}
    print(json.dumps({**summary, "expires_at": manifest.expires_at}))
    return 0


def _verify(args: argparse.Namespace) -> int:
    try:
        manifest = verify_signed_bundle(
            args.bundle,
            trust := load_trust(args.trust),
            installed_version=args.installed_version,
            allow_rollback_to=frozenset(args.allow_rollback_to),
        )
        kid, _ = read_signature(args.bundle)
    except EdgecloudError as exc:
        return _refused(exc)
    summary = {"ok": True, "name": manifest.name, "kind": manifest.kind, "version": manifest.version, "key_id": kid}
    summary["expires_at"] = manifest.expires_at
    summary["key_role"] = str(trust.role(kid))
    print(json.dumps(summary))
    return 0


def _pack(args: argparse.Namespace) -> int:
    from edgecloud.shared.bundles.artifacts import pack_bundle

    out = args.out or args.bundle.with_name(f"{args.bundle.name}.tar.gz")
    try:
        manifest = load_manifest(args.bundle)
        sha256, size = pack_bundle(args.bundle, out)
    except EdgecloudError as exc:
        return _refused(exc)
    print(json.dumps({"archive": str(out), "name": manifest.name, "version": manifest.version,
                      "sha256": sha256, "size": size}))  # fmt: skip
    return 0


def _rotate_key(args: argparse.Namespace) -> int:
    try:
        statement = rotation_statement(load_private_key(args.old_key), load_public_key(args.new_public))
        path = write_rotation(args.out, statement)
    except EdgecloudError as exc:
        return _refused(exc)
    old, new = statement["old_key_id"], statement["new_key_id"]
    print(json.dumps({"rotation": str(path), "old_key_id": old, "new_key_id": new}))
    return 0


def add_signing_commands(models_subparsers: argparse._SubParsersAction) -> None:
    """Add ``keygen``, ``sign`` and ``verify`` to ``edgecloud models``."""
    keygen = models_subparsers.add_parser("keygen", help="create an Ed25519 bundle signing key pair")
    keygen.add_argument("--private", type=Path, required=True, help="private key to create (PEM, mode 0600)")
    keygen.add_argument("--public", type=Path, required=True, help="public key to create (PEM)")
    keygen.set_defaults(func=_keygen)

    sign = models_subparsers.add_parser("sign", help="verify a bundle's files, then write its manifest.sig")
    sign.add_argument("bundle", type=Path, help="bundle folder")
    sign.add_argument("--key", type=Path, required=True, help="Ed25519 private key (PEM)")
    sign.add_argument(
        "--expires-in-days", type=float, default=None, metavar="DAYS",
        help="write a signed expiry this far ahead into the manifest: devices and the fleet manager refuse to "
        "install the bundle after it (default: no expiry)",
    )  # fmt: skip
    sign.set_defaults(func=_sign)

    verify = models_subparsers.add_parser("verify", help="check a bundle's signature, version and files")
    verify.add_argument("bundle", type=Path, help="bundle folder")
    verify.add_argument(
        "--trust", type=Path, action="append", required=True,
        help="trusted public key (PEM) or trust policy (.json; roles, rotations, revocations); repeatable",
    )  # fmt: skip
    verify.add_argument("--installed-version", type=int, default=None, help="refuse versions not newer than this")
    verify.add_argument(
        "--allow-rollback-to", type=int, action="append", default=[], metavar="N",
        help="a version the device had before and may roll back to (repeatable)",
    )  # fmt: skip
    verify.set_defaults(func=_verify)

    rotate = models_subparsers.add_parser(
        "rotate-key",
        help="write a statement, signed by the old key, that a new key takes over its role",
        description='List the statement under a trust policy\'s "rotations" (docs/security.md): the new key '
        "then signs what the old one could, and the old key signs no new release.",
    )
    rotate.add_argument("--old-key", type=Path, required=True, help="the retiring Ed25519 private key (PEM)")
    rotate.add_argument("--new-public", type=Path, required=True, help="its successor's public key (PEM)")
    rotate.add_argument("--out", type=Path, required=True, help="rotation statement to create (JSON)")
    rotate.set_defaults(func=_rotate_key)

    pack = models_subparsers.add_parser(
        "pack", help="pack a bundle as the .tar.gz the fleet manager registers and devices install"
    )
    pack.add_argument("bundle", type=Path, help="bundle folder (signed: the signature travels inside)")
    pack.add_argument("--out", type=Path, default=None, help="archive to write (default: BUNDLE.tar.gz beside it)")
    pack.set_defaults(func=_pack)
