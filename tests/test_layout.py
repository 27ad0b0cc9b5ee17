"""The dependency direction, checked on the source: every import of a project module, by layer.

``proto`` (generated contracts) and ``shared`` are at the bottom; ``edge``, ``cloud``, the fleet
manager and the model kit stand on them; the command line (``edgecloud``) stands on everything
and nothing imports it. The model kit may use the edge runtime (it checks the bundles it builds).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Which layers each layer may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "proto": set(),
    "shared": {"proto"},
    "edge": {"proto", "shared"},
    "cloud": {"proto", "shared"},
    "cloud.fleet": {"proto", "shared"},
    "cloud.modelkit": {"proto", "shared", "edge"},
    "demo": {"proto", "shared"},
    "edgecloud": {"proto", "shared", "edge", "cloud", "cloud.fleet", "cloud.modelkit"},
}
PROJECT = {"proto", "shared", "edge", "cloud", "demo", "edgecloud"}


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "cloud" and len(parts) > 1 and parts[1] in ("fleet", "modelkit"):
        return f"cloud.{parts[1]}"
    return parts[0]


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] in PROJECT]


SOURCES = sorted(p for top in PROJECT for p in (ROOT / top).rglob("*.py") if "_pb2" not in p.name)


def test_the_layers_cover_the_source() -> None:
    assert len(SOURCES) > 50 and {layer(".".join(p.relative_to(ROOT).parts)) for p in SOURCES} == set(ALLOWED)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_imports_point_down(path: Path) -> None:
    own = layer(".".join(path.relative_to(ROOT).with_suffix("").parts))
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name} ({layer(name)} is not below {own})"
        for line, name in imports(path)
        if layer(name) != own and layer(name) not in ALLOWED[own]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_checker_catches_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("from cloud.sessions import SessionManager\nimport edgecloud.cli\n")
    assert [name for _, name in imports(module)] == ["cloud.sessions", "edgecloud.cli"]
    assert {layer(name) for _, name in imports(module)} - ALLOWED["shared"] == {"cloud", "edgecloud"}
