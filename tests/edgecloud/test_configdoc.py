"""``docs/configuration.md`` is generated from the command line's parser and kept up to date."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecloud import cli, configdoc


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], bool]]:
    """Every command under ``parser`` as ``(path, is_leaf)``, found independently of configdoc."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    yield path, not subparsers
    for action in subparsers:
        for name, child in action.choices.items():
            yield from _commands(child, (*path, name))


def _section(text: str, heading: str) -> str:
    """The text from ``heading`` to the next heading of any level."""
    start = text.index(f"\n{heading}\n") + 1
    end = text.find("\n#", start + len(heading))
    return text[start:] if end < 0 else text[start:end]


def _toy_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toy", description="A toy command line.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run things").add_subparsers(dest="action", required=True)
    fast = run.add_parser("fast", help="run things fast")
    fast.add_argument("target", help="what to run")
    fast.add_argument("--frobnicate", type=int, default=3, metavar="N", help="how hard to frob | twist (%(default)s)")
    fast.add_argument("--mode", choices=("a", "b"), default="a", help="the <mode>")
    fast.add_argument("--tag", action="append", default=[], help="a tag")
    fast.add_argument("--dry-run", action="store_true", help="do nothing")
    fast.add_argument("--key", required=True, help="the key")
    group = fast.add_argument_group("network")
    group.add_argument("--port", type=int, default=8080, help="port to use")
    return parser


def test_configuration_md_is_up_to_date() -> None:
    assert configdoc.DOC_PATH.exists(), f"{configdoc.DOC_PATH} is missing: run `{configdoc.REGENERATE}`"
    assert configdoc.DOC_PATH.read_text(encoding="utf-8") == configdoc.render(), (
        f"docs/configuration.md is out of date with edgecloud.cli.build_parser(): run `{configdoc.REGENERATE}`"
    )


def test_every_command_of_the_real_parser_has_a_heading() -> None:
    text = configdoc.render()
    commands = list(_commands(cli.build_parser(), ("edgecloud",)))
    assert len([path for path, leaf in commands if leaf]) >= 8
    for path, leaf in commands:
        heading = f"{'###' if leaf else '##'} {' '.join(path)}"
        assert f"\n{heading}\n" in text, f"no heading {heading!r}"
    for path in (("edgecloud", "cloud", "serve"), ("edgecloud", "edge", "serve"), ("edgecloud", "fleet", "serve")):
        assert "| `--host HOST` | `127.0.0.1` |" in _section(text, f"### {' '.join(path)}")


def test_a_flag_added_to_the_real_parser_shows_up(monkeypatch: pytest.MonkeyPatch) -> None:
    original = cli.build_parser

    def with_new_flag() -> argparse.ArgumentParser:
        parser = original()
        edge = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["edge"]
        serve = next(a for a in edge._actions if isinstance(a, argparse._SubParsersAction)).choices["serve"]
        serve.add_argument("--brand-new-flag", type=int, default=7, help="a flag nobody documented by hand")
        return parser

    monkeypatch.setattr(cli, "build_parser", with_new_flag)
    text = configdoc.render()
    section = _section(text, "### edgecloud edge serve")
    assert "| `--brand-new-flag BRAND_NEW_FLAG` | `7` | a flag nobody documented by hand |" in section
    assert text != configdoc.DOC_PATH.read_text(encoding="utf-8"), "the up-to-date check would not notice"


def test_a_flag_shows_up_with_its_default_choices_and_help() -> None:
    text = configdoc.render(_toy_parser())
    assert "\n## toy\n" in text and "\n## toy run\n" in text and "\n### toy run fast\n" in text
    assert "- [`toy run fast`](#toy-run-fast)" in text
    fast = _section(text, "### toy run fast")
    assert "run things fast" in fast
    assert "| `target` | required | what to run |" in fast
    assert "| `--frobnicate N` | `3` | how hard to frob \\| twist (3) |" in fast
    assert "| `--mode {a,b}` | `a` | the &lt;mode> |" in fast
    assert "| `--tag TAG` |  | a tag (repeatable) |" in fast
    assert "| `--dry-run` | off | do nothing |" in fast
    assert "| `--key KEY` | required | the key |" in fast
    assert "--help" not in fast
    network = text[text.index("**network**") :]
    assert "| `--port PORT` | `8080` | port to use |" in network


def test_render_is_deterministic() -> None:
    assert configdoc.render() == configdoc.render()
    assert configdoc.render(_toy_parser()) == configdoc.render(_toy_parser())


def test_main_check_and_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    doc = tmp_path / "docs" / "configuration.md"
    monkeypatch.setattr(configdoc, "DOC_PATH", doc)
    assert configdoc.main(["--check"]) == 1
    assert "missing" in capsys.readouterr().err
    assert configdoc.main(["--write"]) == 0
    assert doc.read_text(encoding="utf-8") == configdoc.render()
    assert configdoc.main(["--check"]) == 0
    doc.write_text(doc.read_text(encoding="utf-8") + "hand edit\n", encoding="utf-8")
    assert configdoc.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert configdoc.main([]) == 0
    assert capsys.readouterr().out == configdoc.render()
