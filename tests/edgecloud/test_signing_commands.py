"""``edgecloud models keygen | sign | verify`` on a real copy of the shipped edge bundle."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from edgecloud.shared.bundles.manifest import SIGNATURE_FILE, load_manifest
from edgecloud.shared.bundles.signing import generate_keypair
from edgecloud.signing_commands import add_signing_commands


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    generate_keypair(root / "rogue.key", root / "rogue.pub")
    return {"rogue_pub": root / "rogue.pub"}


@pytest.fixture
def bundle(shipped_models: Path, tmp_path: Path) -> Path:
    """An unsigned copy of the shipped edge bundle."""
    out = tmp_path / "edge-student"
    shutil.copytree(shipped_models / "edge-student", out)
    (out / SIGNATURE_FILE).unlink(missing_ok=True)
    return out


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edgecloud models")
    add_signing_commands(parser.add_subparsers(dest="action", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_keygen_sign_verify(
    bundle: Path, tmp_path: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = tmp_path / "cli.key", tmp_path / "cli.pub"
    assert _cli(["keygen", "--private", str(private), "--public", str(public)]) == 0
    kid = json.loads(capsys.readouterr().out)["key_id"]
    assert _cli(["keygen", "--private", str(private), "--public", str(public)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err

    assert _cli(["sign", str(bundle), "--key", str(private)]) == 0
    assert json.loads(capsys.readouterr().out)["key_id"] == kid

    assert _cli(["verify", str(bundle), "--trust", str(keys["rogue_pub"]), "--trust", str(public)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and json.loads(out)["ok"] is True

    version = load_manifest(bundle).version
    assert _cli(["verify", str(bundle), "--trust", str(public), "--installed-version", str(version)]) == 1
    assert "DowngradeError" in capsys.readouterr().err
    argv = ["verify", str(bundle), "--trust", str(public), "--installed-version", str(version + 1)]
    assert _cli([*argv, "--allow-rollback-to", str(version)]) == 0
    capsys.readouterr()
    assert _cli(["verify", str(bundle), "--trust", str(keys["rogue_pub"])]) == 1
    err = capsys.readouterr().err
    assert "UntrustedKeyError" in err and err.count("\n") == 1


def test_cli_rotate_key_then_verify_against_the_policy(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("old", "new"):
        assert (
            _cli(["keygen", "--private", str(tmp_path / f"{name}.key"), "--public", str(tmp_path / f"{name}.pub")]) == 0
        )
    capsys.readouterr()
    rotate = ["rotate-key", "--old-key", str(tmp_path / "old.key"), "--new-public", str(tmp_path / "new.pub")]
    assert _cli([*rotate, "--out", str(tmp_path / "rotation.json")]) == 0
    said = json.loads(capsys.readouterr().out)
    assert _cli([*rotate, "--out", str(tmp_path / "rotation.json")]) == 1  # never overwrites a statement
    assert "refusing to overwrite" in capsys.readouterr().err
    policy = tmp_path / "trust.json"
    policy.write_text(
        json.dumps(
            {
                "format": "edgecloud-trust/1",
                "keys": [{"public_key": "old.pub", "kinds": ["edge"]}],
                "rotations": ["rotation.json"],
            }
        )
    )
    assert _cli(["sign", str(bundle), "--key", str(tmp_path / "old.key")]) == 0
    capsys.readouterr()
    assert _cli(["verify", str(bundle), "--trust", str(policy)]) == 1
    assert f"RetiredKeyError: {bundle}: signed by key {said['old_key_id']} was retired" in capsys.readouterr().err
    assert _cli(["sign", str(bundle), "--key", str(tmp_path / "new.key")]) == 0
    capsys.readouterr()
    assert _cli(["verify", str(bundle), "--trust", str(policy)]) == 0
    verified = json.loads(capsys.readouterr().out)
    assert verified["key_id"] == said["new_key_id"] and verified["key_role"] == "names *; kinds edge"


def test_cli_pack_writes_the_archive_the_fleet_registers(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgecloud.shared.bundles.artifacts import read_archive_head

    assert _cli(["pack", str(bundle), "--out", str(tmp_path / "b.tar.gz")]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["size"] == (tmp_path / "b.tar.gz").stat().st_size and said["name"] == load_manifest(bundle).name
    manifest, signature = read_archive_head(tmp_path / "b.tar.gz")
    assert json.loads(manifest)["version"] == said["version"] and signature is None  # unsigned copy
    assert _cli(["pack", str(tmp_path / "missing")]) == 1
    assert "refused" in capsys.readouterr().err
