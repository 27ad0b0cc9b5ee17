"""Uploading bundles to the real fleet manager over real HTTP (issue 14, item 5): the signature is
checked on the archive's head (manifest and signature, its first two members) before anything
else in it is decompressed, then the files; the legitimate upload right after is registered."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgecloud.fleet.api import create_server
from edgecloud.fleet.manager import FleetManager, FleetManagerConfig
from edgecloud.shared.bundles.artifacts import pack_bundle
from edgecloud.shared.bundles.signing import generate_keypair, load_private_key, sign_bundle
from tests.helpers.sim_fleet import command_key, make_bundle


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[httpx.Client, FleetManager, dict[str, Path]]]:
    keys = {name: tmp_path / "keys" / f"{name}.key" for name in ("release", "rogue")}
    (tmp_path / "keys").mkdir()
    for name, private in keys.items():
        generate_keypair(private, tmp_path / "keys" / f"{name}.pub")
    manager = FleetManager(
        FleetManagerConfig(
            artifact_dir=tmp_path / "artifacts",
            trusted_keys=(tmp_path / "keys" / "release.pub",),
            command_key=command_key(tmp_path),
        )
    )
    server, port = create_server(manager)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
            yield api, manager, keys
    finally:
        server.stop()
        manager.close()


def signed_archive(tmp_path: Path, version: int, key: Path, name: str) -> bytes:
    bundle = make_bundle(tmp_path / name, version, payload_bytes=1 << 20)  # random: ~1 MiB compressed
    sign_bundle(bundle, load_private_key(key))
    pack_bundle(bundle, tmp_path / f"{name}.tar.gz")
    return (tmp_path / f"{name}.tar.gz").read_bytes()


def upload(api: httpx.Client, data: bytes) -> httpx.Response:
    return api.post("/v1/bundles", content=data, headers={"Content-Type": "application/gzip"})


def test_an_untrusted_archive_is_refused_on_its_head_before_the_rest_is_read(fleet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    api, manager, keys = fleet
    # Signed by a key the manager does not trust, and cut off after its head: reading on would
    # meet a truncated gzip stream (ArchiveError); refused on the head, it never gets there.
    forged = signed_archive(tmp_path, 2, keys["rogue"], "forged")
    refused = upload(api, forged[: len(forged) // 2])
    assert refused.status_code == 422, refused.text
    assert "UntrustedKey" in refused.text or "is not trusted" in refused.json()["error"]["message"], refused.text
    assert manager.bundles() == []

    # A trusted head over a cut-off body: the head passes, the files are then checked and refused.
    real = signed_archive(tmp_path, 3, keys["release"], "real")
    truncated = upload(api, real[: len(real) // 2])
    assert truncated.status_code == 422 and "not a readable tar.gz" in truncated.json()["error"]["message"]
    assert manager.bundles() == []

    created = upload(api, real)
    assert created.status_code == 201, created.text
    assert [b["version"] for b in api.get("/v1/bundles").json()["bundles"]] == [3]


def test_an_archive_whose_manifest_is_not_its_head_is_refused_with_how_to_pack_it(fleet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    api, manager, keys = fleet
    bundle = make_bundle(tmp_path / "late", 4)
    sign_bundle(bundle, load_private_key(keys["release"]))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:  # the model first, as `tar -czf X .` may write it
        for name in ("model.bin", "manifest.json", "manifest.sig"):
            tar.add(bundle / name, arcname=name)
    refused = upload(api, buffer.getvalue())
    assert refused.status_code == 422
    message = refused.json()["error"]["message"]
    assert "is not the archive's first member" in message and "edgecloud models pack" in message
    assert manager.bundles() == []
