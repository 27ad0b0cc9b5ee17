"""The command line wires the command signing keys: the fleet manager refuses to start without
``--command-key``, the edge agent without ``--trust-commands``, before anything listens."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud import cli
from edgecloud.shared.bundles.signing import generate_keypair


def test_fleet_serve_refuses_to_start_without_a_command_key(tmp_path: Path) -> None:
    argv = ["fleet", "serve", "--store", str(tmp_path / "f.sqlite3"), "--artifacts", str(tmp_path / "a")]
    with pytest.raises(SystemExit, match="fleet serve needs --command-key KEY.pem"):
        cli.main(argv)
    assert not (tmp_path / "f.sqlite3").exists()


def test_edge_serve_with_a_broker_refuses_to_start_without_trusted_command_keys(
    tmp_path: Path, shipped_models: Path, caplog: pytest.LogCaptureFixture
) -> None:
    generate_keypair(tmp_path / "b.key", tmp_path / "b.pub")
    argv = ["edge", "serve", "--bundle", str(shipped_models / "edge-student"), "--broker", "127.0.0.1:1"]
    argv += ["--trust", str(tmp_path / "b.pub"), "--agent-state", str(tmp_path / "agent")]
    argv += ["--outbox", str(tmp_path / "outbox.sqlite3")]
    assert cli.main(argv) == 2
    assert "trusted command key (--trust-commands KEY.pub)" in caplog.text


def test_the_agent_flags_reach_the_parser() -> None:
    args = cli.build_parser().parse_args(
        ["edge", "serve", "--trust-commands", "a.pub", "--trust-commands", "b.pub", "--fleet-origin", "http://f:8090"]
    )
    assert args.trust_commands == [Path("a.pub"), Path("b.pub")] and args.fleet_origin == "http://f:8090"
    fleet = cli.build_parser().parse_args(["fleet", "serve", "--command-key", "c.key"])
    assert fleet.command_key == Path("c.key")


def test_edge_serve_sends_its_artifact_token_only_with_a_fleet_origin(
    tmp_path: Path, shipped_models: Path, caplog: pytest.LogCaptureFixture
) -> None:
    generate_keypair(tmp_path / "b.key", tmp_path / "b.pub")
    (tmp_path / "token").write_text("artifact-token\n")
    argv = ["edge", "serve", "--bundle", str(shipped_models / "edge-student"), "--broker", "127.0.0.1:1"]
    argv += ["--trust", str(tmp_path / "b.pub"), "--trust-commands", str(tmp_path / "b.pub")]
    argv += ["--agent-state", str(tmp_path / "agent"), "--outbox", str(tmp_path / "outbox.sqlite3")]
    assert cli.main([*argv, "--artifact-token-file", str(tmp_path / "token")]) == 2
    assert "artifact_token needs fleet_origin" in caplog.text
    fleet = cli.build_parser().parse_args(["fleet", "serve", "--artifact-token-file", str(tmp_path / "token")])
    assert fleet.artifact_token_file == tmp_path / "token"
