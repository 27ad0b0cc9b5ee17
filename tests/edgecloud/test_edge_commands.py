"""``edgecloud edge serve``'s options: API key files, and shadow checks from the flags to the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud import cli, edge_commands
from edgecloud.shared.base.errors import ConfigError


def test_an_api_key_file_holds_one_key_a_line_each_a_tenant(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# tenants\ntenant-a-key-0123456789\n\n  tenant-b-key-0123456789  \n")
    assert edge_commands._api_keys(keys) == ("tenant-a-key-0123456789", "tenant-b-key-0123456789")
    assert edge_commands._api_keys(None) == ()
    keys.write_text("# nothing but a comment\n")
    with pytest.raises(ConfigError, match="holds no key"):
        edge_commands._api_keys(keys)


def test_shadow_check_flags_reach_the_config_and_bad_ones_are_refused(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(
        ["edge", "serve", "--bundle", str(tmp_path), "--shadow-share", "0.1", "--shadow-per-minute", "12"]
    )
    config = edge_commands.edge_config(args)
    assert (config.shadow_share, config.shadow_per_minute) == (0.1, 12.0)
    assert (
        edge_commands.edge_config(
            cli.build_parser().parse_args(["edge", "serve", "--bundle", str(tmp_path)])
        ).shadow_share
        == 0.02
    )
    for flags, message in (
        (["--shadow-share", "1.5"], "shadow_share must be in"),
        (["--shadow-per-minute", "0"], "shadow_per_minute"),
    ):
        bad = cli.build_parser().parse_args(["edge", "serve", "--bundle", str(tmp_path), *flags])
        with pytest.raises(ConfigError, match=message):
            edge_commands.edge_config(bad)
