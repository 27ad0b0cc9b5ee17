"""The fleet manager's bundle registry: edge bundle archives checked, stored by digest, recorded.

An archive is registered once: its manifest (the archive's first member, at its
root, where devices expect it) must be an edge bundle's, its signature must
verify against the manager's trusted keys when it has any (devices verify again
either way), and a name and version already registered with other content is
refused. The signature is checked on the archive's head, manifest and signature
alone, before anything else in it is decompressed; the files after that. The
archive is kept as ``{sha256}.tar.gz`` in the artifact folder, which the API
serves to devices; the record goes to the fleet store.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edgecloud.fleet.store import BundleRecord, FleetStorage
from edgecloud.shared.base.errors import InvalidInputError, ManifestError, NotFoundError
from edgecloud.shared.bundles.manifest import MANIFEST_FILE, SIGNATURE_FILE, Manifest, file_digest
from edgecloud.shared.fleetlink.messages import BundleRef

if TYPE_CHECKING:
    from edgecloud.shared.bundles.signing import TrustStore

__all__ = ["BundleRegistry", "read_archive_manifest"]

log = logging.getLogger(__name__)


def read_archive_manifest(archive: Path) -> Manifest:
    """The validated ``manifest.json`` from the head of a bundle archive (its first member, as
    :func:`~edgecloud.shared.bundles.artifacts.pack_bundle` writes it); nothing past the head is read."""
    return _read_head(archive)[0]


def _read_head(archive: Path) -> tuple[Manifest, bytes | None]:
    from edgecloud.shared.bundles.artifacts import read_archive_head

    raw, signature = read_archive_head(archive)
    try:
        return Manifest.from_dict(json.loads(raw.decode("utf-8"))), signature
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{archive.name}: {MANIFEST_FILE} is not UTF-8 JSON: {exc}") from exc


def _load_trust(paths: Sequence[Path]) -> TrustStore:
    from edgecloud.shared.bundles.trust import load_trust

    return load_trust(paths)


def _check_head_signature(archive: Path, manifest: Manifest, signature: bytes | None, trust: TrustStore) -> None:
    """The manifest's signature, checked before anything else in the archive is decompressed."""
    from edgecloud.shared.bundles.signing import UnsignedBundleError, parse_signature, verify_manifest_signature

    if signature is None:
        raise UnsignedBundleError(f"{archive.name}: unsigned bundle (no {SIGNATURE_FILE} after {MANIFEST_FILE})")
    kid, raw = parse_signature(signature, f"{archive.name}: {SIGNATURE_FILE}")
    verify_manifest_signature(manifest, kid, raw, trust, where=archive.name)


def _verify_signature(archive: Path, trust: TrustStore, max_unpacked_bytes: int) -> str:
    """Unpack to a temporary folder and verify signature and files; the signing key's id."""
    from edgecloud.shared.bundles.artifacts import unpack_bundle
    from edgecloud.shared.bundles.signing import read_signature, verify_signed_bundle

    with tempfile.TemporaryDirectory(prefix="fleet-verify-") as tmp:
        directory = unpack_bundle(archive, Path(tmp), max_total_bytes=max_unpacked_bytes)
        verify_signed_bundle(directory, trust)
        kid, _ = read_signature(directory)
    return kid


class BundleRegistry:
    """Registered edge bundles and their archives. Thread-safe as far as the store is."""

    def __init__(
        self,
        store: FleetStorage,
        artifact_dir: Path,
        *,
        trusted_keys: Sequence[Path],
        max_bundle_bytes: int,
        artifact_url: Callable[[str], str],
    ) -> None:
        self.store = store
        self.artifact_dir = Path(artifact_dir)
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        self.trusted_keys = tuple(trusted_keys)
        # Read once: a key file or trust policy that does not load stops the manager at its start.
        self.trust = _load_trust(self.trusted_keys) if self.trusted_keys else None
        self.max_bundle_bytes = max_bundle_bytes
        self.artifact_url = artifact_url

    def register(self, archive_path: str | os.PathLike[str]) -> BundleRecord:
        """Validate an edge bundle archive (.tar.gz), keep it under its sha256 and record it.

        Registering the same archive twice returns the first record; another
        archive under a registered name and version is refused.
        """
        source = Path(archive_path)
        if not source.is_file():
            raise NotFoundError(f"no archive at {source}")
        if source.stat().st_size > self.max_bundle_bytes:
            raise InvalidInputError(f"{source.name} is over max_bundle_bytes ({self.max_bundle_bytes})")
        sha256, size = file_digest(source)
        manifest, signature = _read_head(source)
        if manifest.kind != "edge":
            raise InvalidInputError(
                f"{manifest.name} v{manifest.version} is a {manifest.kind} bundle; devices install edge bundles only"
            )
        key_id = ""
        if self.trust is not None:
            _check_head_signature(source, manifest, signature, self.trust)
            key_id = _verify_signature(source, self.trust, 4 * self.max_bundle_bytes)
        else:
            log.warning(
                "%s v%d registered without a signature check: no trusted_keys configured",
                manifest.name,
                manifest.version,
            )
        try:
            existing = self.store.load_bundle(manifest.name, manifest.version)
        except NotFoundError:
            existing = None
        if existing is not None:
            if existing.sha256 != sha256:
                raise InvalidInputError(
                    f"bundle {manifest.name} v{manifest.version} is already registered "
                    f"with another sha256 ({existing.sha256[:12]}..)"
                )
            return existing
        target = self.artifact_dir / f"{sha256}.tar.gz"
        if not target.exists():
            tmp = target.with_name(f".{sha256}.tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        record = BundleRecord(
            name=manifest.name,
            version=manifest.version,
            sha256=sha256,
            size=size,
            path=str(target),
            key_id=key_id,
            registered_at=time.time(),
        )
        self.store.save_bundle(record)
        log.info("registered %s v%d (%s, %d bytes)", record.name, record.version, sha256[:12], size)
        return record

    def records(self) -> list[BundleRecord]:
        return self.store.list_bundles()

    def artifact_path(self, sha256: str) -> Path:
        """The stored archive with that digest; NotFoundError for anything else."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise NotFoundError(f"no artifact {sha256[:70]!r}")
        path = self.artifact_dir / f"{sha256}.tar.gz"
        if not path.is_file():
            raise NotFoundError(f"no artifact {sha256}")
        return path

    def ref(self, record: BundleRecord) -> BundleRef:
        """What a deploy command names: where devices download the archive, and its digest."""
        return BundleRef(
            name=record.name,
            version=record.version,
            url=self.artifact_url(record.sha256),
            sha256=record.sha256,
            size=record.size,
        )

    def load(self, name: str, version: int) -> BundleRecord:
        """The record of a registered bundle; NotFoundError if there is none."""
        return self.store.load_bundle(name, version)
