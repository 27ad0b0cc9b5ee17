"""Trust policies: key roles, rotation statements (chained, in any order), revocation, and every
malformed policy or statement refused with a clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.bundles.manifest import SIGNATURE_FILE
from edgecloud.shared.bundles.signing import (
    KeyRole,
    KeyRoleError,
    RetiredKeyError,
    RevokedKeyError,
    UntrustedKeyError,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    sign_bundle,
    verify_signed_bundle,
)
from edgecloud.shared.bundles.trust import load_trust, rotation_statement, write_rotation


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    paths = {}
    for name in ("a", "b", "c", "other"):
        paths[name] = root / f"{name}.key"
        paths[f"{name}_pub"] = root / f"{name}.pub"
        generate_keypair(paths[name], paths[f"{name}_pub"])
    return paths


def kid(keys: dict[str, Path], name: str) -> str:
    return key_id(load_public_key(keys[f"{name}_pub"]))


def signed_by(shipped_models: Path, out: Path, key: Path) -> Path:
    shutil.copytree(shipped_models / "edge-student", out)
    (out / SIGNATURE_FILE).unlink(missing_ok=True)
    sign_bundle(out, load_private_key(key))
    return out


def write_policy(path: Path, **document: object) -> Path:
    path.write_text(json.dumps({"format": "edgecloud-trust/1", **document}))
    return path


def rotate(keys: dict[str, Path], old: str, new: str, path: Path) -> Path:
    statement = rotation_statement(load_private_key(keys[old]), load_public_key(keys[f"{new}_pub"]))
    return write_rotation(path, statement)


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        (KeyRole(), True),
        (KeyRole(names=("edgecloud-*",)), True),
        (KeyRole(names=("edgecloud-demo-student",), kinds=("edge",)), True),
        (KeyRole(names=("cloud-*",)), False),
        (KeyRole(kinds=("cloud",)), False),
        (KeyRole(names=("Edgecloud-*",)), False),  # case counts: a name is an identifier
    ],
)
def test_a_role_allows_names_and_kinds_by_pattern(role: KeyRole, allowed: bool) -> None:
    assert role.allows("edgecloud-demo-student", "edge") is allowed


@pytest.mark.parametrize("names", [(), "edgecloud-*", ("",), (3,)])
def test_a_role_needs_patterns(names: object) -> None:
    with pytest.raises(ConfigError, match="names must be a non-empty list"):
        KeyRole(names=names)  # type: ignore[arg-type]


def test_a_pem_key_is_trusted_for_any_bundle_and_a_policy_key_for_its_role(
    shipped_models: Path, tmp_path: Path, keys: dict[str, Path]
) -> None:
    bundle = signed_by(shipped_models, tmp_path / "bundle", keys["a"])
    assert verify_signed_bundle(bundle, load_trust([keys["a_pub"]])).name == "edgecloud-demo-student"
    narrow = write_policy(tmp_path / "t.json", keys=[{"public_key": str(keys["a_pub"]), "names": ["cloud-*"]}])
    with pytest.raises(KeyRoleError, match=r"may sign names cloud-\*; kinds \*; not 'edgecloud-demo-student' \(edge\)"):
        verify_signed_bundle(bundle, load_trust([narrow]))
    relative = write_policy(tmp_path / "keys-here.json", keys=[{"public_key": "a.pub", "kinds": ["edge"]}])
    shutil.copy(keys["a_pub"], tmp_path / "a.pub")
    assert verify_signed_bundle(bundle, load_trust([relative])).kind == "edge"


def test_revocation_wins_over_every_other_source_of_trust(
    shipped_models: Path, tmp_path: Path, keys: dict[str, Path]
) -> None:
    bundle = signed_by(shipped_models, tmp_path / "bundle", keys["a"])
    policy = write_policy(tmp_path / "t.json", revoked=[kid(keys, "a")])
    trust = load_trust([keys["a_pub"], policy])
    assert kid(keys, "a") not in trust and trust.revoked == {kid(keys, "a")}
    for accept_retired in (False, True):
        with pytest.raises(RevokedKeyError, match="is revoked"):
            verify_signed_bundle(bundle, trust, accept_retired=accept_retired, check_expiry=False)


def test_rotations_chain_in_any_order_and_retire_each_old_key(
    shipped_models: Path, tmp_path: Path, keys: dict[str, Path]
) -> None:
    (tmp_path / "rot").mkdir()
    # Listed newest first: b -> c can only apply after a -> b.
    rotate(keys, "b", "c", tmp_path / "rot" / "2.json")
    rotate(keys, "a", "b", tmp_path / "rot" / "1.json")
    policy = write_policy(
        tmp_path / "t.json",
        keys=[{"public_key": str(keys["a_pub"]), "names": ["edgecloud-*"]}],
        rotations=["rot/2.json", "rot/1.json", "rot/1.json"],
    )
    trust = load_trust([policy])
    assert trust.key_ids == (kid(keys, "c"),) and trust.role(kid(keys, "c")) == KeyRole(names=("edgecloud-*",))
    assert trust.retired_by(kid(keys, "a")) == kid(keys, "b") and trust.retired_by(kid(keys, "b")) == kid(keys, "c")
    by_a = signed_by(shipped_models, tmp_path / "by-a", keys["a"])
    with pytest.raises(RetiredKeyError, match=f"retired by a rotation to key {kid(keys, 'b')}"):
        verify_signed_bundle(by_a, trust)
    assert (
        verify_signed_bundle(by_a, trust, accept_retired=True).name == "edgecloud-demo-student"
    )  # installed before it
    assert verify_signed_bundle(signed_by(shipped_models, tmp_path / "by-c", keys["c"]), trust).version
    revoked_c = write_policy(tmp_path / "r.json", revoked=[kid(keys, "c")])
    with pytest.raises(RevokedKeyError):
        verify_signed_bundle(signed_by(shipped_models, tmp_path / "by-c2", keys["c"]), load_trust([policy, revoked_c]))


def test_a_forged_or_orphan_rotation_is_refused_at_load(tmp_path: Path, keys: dict[str, Path]) -> None:
    statement = rotation_statement(load_private_key(keys["other"]), load_public_key(keys["c_pub"]))
    forged = {**statement, "old_key_id": kid(keys, "a")}  # claims to come from a, signed by other
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    policy = write_policy(tmp_path / "t.json", keys=[{"public_key": str(keys["a_pub"])}], rotations=["forged.json"])
    with pytest.raises(ConfigError, match="bad signature: not signed by the key"):
        load_trust([policy])
    write_rotation(tmp_path / "orphan.json", statement)
    orphan = write_policy(tmp_path / "o.json", keys=[{"public_key": str(keys["a_pub"])}], rotations=["orphan.json"])
    with pytest.raises(ConfigError, match="rotation statements from keys that are not trusted"):
        load_trust([orphan])
    with pytest.raises(ConfigError, match="cannot rotate to itself"):
        rotation_statement(load_private_key(keys["a"]), load_public_key(keys["a_pub"]))


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"format": "edgecloud-trust/2"}, r"t\.json: format: must be 'edgecloud-trust/1', got 'edgecloud-trust/2'$"),
        ({"format": "edgecloud-trust/1", "keyz": []}, r"t\.json: keyz: unknown field$"),
        ({"keys": []}, r"t\.json: format: missing$"),
        (["edgecloud-trust/1"], r"t\.json: expected an object, got list$"),
        (
            {"format": "edgecloud-trust/1", "keys": [{"public_key": "a.pub", "names": "edge-*"}]},
            r"keys\[0\]\.names: expected a list",
        ),
        (
            {"format": "edgecloud-trust/1", "keys": [{"public_key": "a.pub", "names": []}]},
            r"keys\[0\]: .*non-empty list",
        ),
        ({"format": "edgecloud-trust/1", "keys": {}}, r"t\.json: keys: expected a list, got dict$"),
        ({"format": "edgecloud-trust/1", "keys": [{"names": ["x"]}]}, r"t\.json: keys\[0\]\.public_key: missing$"),
        ({"format": "edgecloud-trust/1", "keys": [{"public_key": "missing.pub"}]}, "cannot read key"),
        ({"format": "edgecloud-trust/1", "revoked": ["ABC"]}, r"revoked\[0\]: must match \[0-9a-f\]\{16\}, got 'ABC'$"),
        ({"format": "edgecloud-trust/1", "rotations": [1]}, r"rotations\[0\]: expected a string, got 1$"),
        ({"format": "edgecloud-trust/1", "rotations": ["missing.json"]}, "cannot read rotation statement"),
    ],
)
def test_a_malformed_policy_is_refused_with_its_reason(tmp_path: Path, document: dict, message: str) -> None:
    (tmp_path / "t.json").write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=message):
        load_trust([tmp_path / "t.json"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "edgecloud-key-rotation/0"}, r"r\.json: format: must be 'edgecloud-key-rotation/1'"),
        ({"extra": 1}, r"r\.json: extra: unknown field$"),
        ({"new_public_key": 5}, r"r\.json: new_public_key: expected a string, got 5$"),
        ({"new_key_id": "0" * 16}, "does not match"),
        ({"signature": "not base64!"}, "base64"),
        ({"old_key_id": "xyz"}, r"r\.json: old_key_id: must match \[0-9a-f\]\{16\}, got 'xyz'$"),
    ],
)
def test_a_malformed_rotation_statement_is_refused(
    tmp_path: Path, keys: dict[str, Path], change: dict, message: str
) -> None:
    statement = {**rotation_statement(load_private_key(keys["a"]), load_public_key(keys["b_pub"])), **change}
    (tmp_path / "r.json").write_text(json.dumps(statement))
    policy = write_policy(tmp_path / "t.json", keys=[{"public_key": str(keys["a_pub"])}], rotations=["r.json"])
    with pytest.raises(ConfigError, match=message):
        load_trust([policy])


def test_an_unknown_key_is_still_untrusted(shipped_models: Path, tmp_path: Path, keys: dict[str, Path]) -> None:
    bundle = signed_by(shipped_models, tmp_path / "bundle", keys["other"])
    with pytest.raises(UntrustedKeyError, match="is not trusted"):
        verify_signed_bundle(bundle, load_trust([keys["a_pub"]]))
