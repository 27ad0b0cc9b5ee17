"""The dependency direction, checked on the source: every import of a project module, by layer.

``proto`` (generated contracts) and ``shared`` are at the bottom; ``edge``, ``cloud``, the fleet
manager (``fleet``) and the model kit (``modelkit``) stand on them; the built-in tasks (``tasks``)
stand on the model kit (they write its dataset folders); the command line (``edgecloud/``) stands
on everything and nothing imports it. The model kit may use the edge runtime (it checks the bundles
it builds), but nothing below the command line uses a built-in task: the rest learns from data. Every import names the installed namespace,
``edgecloud.<folder>``: the old top-level names would collide with other distributions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Which layers each layer may import (besides itself). A layer is a top-level folder; it installs
#: as ``edgecloud.<folder>`` (the command line's modules sit directly in ``edgecloud``: ``cli``).
ALLOWED: dict[str, set[str]] = {
    "proto": set(),
    "shared": {"proto"},
    "edge": {"proto", "shared"},
    "cloud": {"proto", "shared"},
    "fleet": {"proto", "shared"},
    "modelkit": {"proto", "shared", "edge"},
    "demo": {"proto", "shared", "tasks"},
    "tasks": {"proto", "shared", "modelkit"},
    "cli": {"proto", "shared", "edge", "cloud", "fleet", "modelkit", "tasks"},
}
FOLDERS = {"proto", "shared", "edge", "cloud", "fleet", "modelkit", "demo", "tasks", "edgecloud"}
#: Top-level names the project used to install; importing one now means a stale path.
OLD_NAMES = {"proto", "shared", "edge", "cloud", "demo"}


def layer(module: str) -> str:
    """The layer of ``edgecloud.<folder>.…`` (the folder; ``cli`` for the command line's own modules)."""
    parts = module.split(".")
    if parts[0] != "edgecloud":
        raise ValueError(f"{module} is not in the edgecloud namespace")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else "cli"


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] in OLD_NAMES | {"edgecloud"}]


SOURCES = sorted(p for top in FOLDERS for p in (ROOT / top).rglob("*.py") if "_pb2" not in p.name)


def own_layer(path: Path) -> str:
    top = path.relative_to(ROOT).parts[0]
    return "cli" if top == "edgecloud" else top


def test_the_layers_cover_the_source() -> None:
    assert len(SOURCES) > 50 and {own_layer(p) for p in SOURCES} == set(ALLOWED)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_imports_point_down(path: Path) -> None:
    own = own_layer(path)
    found = imports(path)
    stale = [
        f"{path.relative_to(ROOT)}:{line} imports {name}: use edgecloud.{name}"
        for line, name in found
        if name.split(".")[0] != "edgecloud"
    ]
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name} ({layer(name)} is not below {own})"
        for line, name in found
        if name.split(".")[0] == "edgecloud" and layer(name) != own and layer(name) not in ALLOWED[own]
    ]
    assert not stale + wrong, "\n".join(stale + wrong)


@pytest.mark.parametrize("folder", ["edge", "cloud", "fleet", "modelkit"])
def test_no_service_or_the_model_kit_imports_a_built_in_task(folder: str) -> None:
    """A task is data: the services and the model kit read dataset folders, never a task's generator."""
    assert "tasks" not in ALLOWED[folder]
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in SOURCES
        if own_layer(path) == folder
        for line, name in imports(path)
        if name == "edgecloud.tasks" or name.startswith("edgecloud.tasks.")
    ]
    assert not found, "\n".join(found)


def test_the_checker_catches_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("from edgecloud.cloud.sessions import SessionManager\nimport edgecloud.cli\nimport shared.task\n")
    assert [name for _, name in imports(module)] == ["edgecloud.cloud.sessions", "edgecloud.cli", "shared.task"]
    assert {layer(name) for _, name in imports(module)[:2]} - ALLOWED["shared"] == {"cloud", "cli"}


#: Rooms stay small enough to read in one sitting (STYLE.md: one module, one responsibility).
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def oversized(path: Path, root: Path = ROOT) -> list[str]:
    text = path.read_text()
    name = path.relative_to(root)
    found = []
    if len(text.splitlines()) > MAX_MODULE_LINES:
        found.append(f"{name}: {len(text.splitlines())} lines")
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    return found


def test_no_module_or_function_is_oversized() -> None:
    found = [entry for path in SOURCES for entry in oversized(path)]
    assert not found, "over the size limits:\n" + "\n".join(found)


def test_the_size_check_catches_a_long_function_and_module(tmp_path: Path) -> None:
    source = tmp_path / "long.py"
    source.write_text("def f():\n" + "    x = 1\n" * MAX_MODULE_LINES + "    return x\n")
    assert oversized(source, tmp_path) == [
        f"long.py: {MAX_MODULE_LINES + 2} lines",
        f"long.py:1 f: {MAX_MODULE_LINES + 2} lines",
    ]
