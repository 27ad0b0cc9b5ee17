"""The dependency direction, checked on the source: every import of a project module, by layer.

``proto`` (generated contracts) and ``shared`` are at the bottom; ``edge``, ``cloud``, the fleet
manager (``fleet``) and the model kit (``modelkit``) stand on them; the built-in tasks (``tasks``)
stand on the model kit (they write its dataset folders); the command line (``edgecloud/``) stands
on everything and nothing imports it. The model kit may use the edge runtime (it checks the bundles
it builds), but nothing below the command line uses a built-in task: the rest learns from data. Every import names the installed namespace,
``edgecloud.<folder>``: the old top-level names would collide with other distributions.

Inside ``shared``, each contract is a package with its own rule (:data:`SHARED_ALLOWED`): the base
imports nothing of the project, the reasoner contract stands on the base and the generated protobuf,
and so on; no module sits directly in ``shared/``. No folder holds more than :data:`MAX_FOLDER_MODULES`
modules directly. The think tags are spelled in one module (:data:`THINK_TAGS_HOME`).

The size limits (:data:`MAX_MODULE_LINES`, :data:`MAX_FUNCTION_LINES`, :data:`MAX_CLASS_LINES`) hold for ``benchmarks/`` too,
and so does the folder limit: ``benchmarks/`` holds the scripts and the runner, what they share is
``benchmarks/support/``, the probes run by hand ``benchmarks/probes/``. The benchmarks stand outside
the layers: a script may import any.
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
    module.write_text(
        "from edgecloud.cloud.sessions import SessionManager\nimport edgecloud.cli\nimport shared.base.errors\n"
    )
    assert [name for _, name in imports(module)] == ["edgecloud.cloud.sessions", "edgecloud.cli", "shared.base.errors"]
    assert {layer(name) for _, name in imports(module)[:2]} - ALLOWED["shared"] == {"cloud", "cli"}


#: Rooms stay small enough to read in one sitting (STYLE.md: one module, one responsibility).
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 300


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
        elif isinstance(node, ast.ClassDef):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_CLASS_LINES:
                found.append(f"{name}:{node.lineno} class {node.name}: {length} lines")
    return found


BENCHMARKS = ROOT / "benchmarks"
SIZED = SOURCES + sorted(BENCHMARKS.rglob("*.py"))


def test_no_module_or_function_is_oversized() -> None:
    assert any(path.parent == BENCHMARKS for path in SIZED)
    assert {"reports", "support", "probes"} <= {path.parent.name for path in SIZED if path.parent.parent == BENCHMARKS}
    found = [entry for path in SIZED for entry in oversized(path)]
    assert not found, "over the size limits:\n" + "\n".join(found)


def test_the_size_check_catches_a_long_function_and_module(tmp_path: Path) -> None:
    source = tmp_path / "long.py"
    source.write_text("def f():\n" + "    x = 1\n" * MAX_MODULE_LINES + "    return x\n")
    assert oversized(source, tmp_path) == [
        f"long.py: {MAX_MODULE_LINES + 2} lines",
        f"long.py:1 f: {MAX_MODULE_LINES + 2} lines",
    ]


def test_the_size_check_catches_a_long_class_and_a_function_just_over(tmp_path: Path) -> None:
    method = "    def m(self):\n" + "        x = 1\n" * (MAX_FUNCTION_LINES - 1)
    fits = tmp_path / "fits.py"
    fits.write_text("def f():\n" + "    x = 1\n" * (MAX_FUNCTION_LINES - 1))
    assert oversized(fits, tmp_path) == []
    source = tmp_path / "big.py"
    methods = MAX_CLASS_LINES // MAX_FUNCTION_LINES + 1
    source.write_text("class Big:\n" + method * methods + "\n\ndef g():\n" + "    x = 1\n" * MAX_FUNCTION_LINES)
    assert oversized(source, tmp_path) == [
        f"big.py:1 class Big: {1 + methods * MAX_FUNCTION_LINES} lines",
        f"big.py:{4 + methods * MAX_FUNCTION_LINES} g: {MAX_FUNCTION_LINES + 1} lines",
    ]


#: What each contract package under ``shared/`` may import besides itself: another package of
#: ``shared`` by its name, or a layer (only ``proto`` is below ``shared``).
SHARED_ALLOWED: dict[str, set[str]] = {
    "base": set(),  # errors, documents, sqlite, tracing, asgi, net: the project's floor
    "reasoner": {"base", "proto"},  # the edge<->cloud contract: session objects, the protobuf wire, features
    "bundles": {"base"},  # manifest, signing, trust, artifacts, downloads, answer matching
    "fleetlink": {"base", "bundles"},  # device<->fleet MQTT: commands are signed with the bundles' keys
    "escalations": {"base", "reasoner"},  # a record holds the reasoner's messages, within its limits
}
SHARED = ROOT / "shared"


def shared_part(module: str) -> str:
    """``edgecloud.shared.<package>.…`` -> the package; any other project module -> its layer."""
    parts = module.split(".")
    return parts[2] if parts[:2] == ["edgecloud", "shared"] and len(parts) > 2 else layer(module)


def test_shared_holds_only_its_contract_packages() -> None:
    modules = sorted(p.name for p in SHARED.glob("*.py") if p.name != "__init__.py")
    packages = {p.name for p in SHARED.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert not modules, f"modules directly in shared/: {modules}; put each in its contract package"
    assert packages == set(SHARED_ALLOWED), "every package under shared/ needs its rule in SHARED_ALLOWED"


@pytest.mark.parametrize("path", sorted(SHARED.rglob("*.py")), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_each_shared_package_imports_only_what_its_rule_allows(path: Path) -> None:
    own = path.relative_to(SHARED).parts[0]
    if own not in SHARED_ALLOWED:  # shared/__init__.py
        return
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name} ({shared_part(name)} is not allowed for shared/{own})"
        for line, name in imports(path)
        if name.split(".")[0] == "edgecloud"
        and shared_part(name) != own
        and shared_part(name) not in SHARED_ALLOWED[own]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_shared_rule_catches_a_sideways_import(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("from edgecloud.shared.bundles.manifest import Manifest\nimport edgecloud.proto.build\n")
    assert {shared_part(name) for _, name in imports(module)} - SHARED_ALLOWED["base"] == {"bundles", "proto"}
    assert {shared_part(name) for _, name in imports(module)} - SHARED_ALLOWED["fleetlink"] == {"proto"}


#: A folder a newcomer can take in at a glance.
MAX_FOLDER_MODULES = 15


def folder_sizes(root: Path = ROOT) -> dict[str, int]:
    """Every source folder (top-level and below, ``benchmarks/`` included) -> how many modules it holds
    directly, ``__init__.py`` aside."""
    tops = FOLDERS | {"benchmarks"}
    folders = {d for top in tops for d in [root / top, *(root / top).rglob("*")] if d.is_dir()}
    return {
        d.relative_to(root).as_posix(): sum(1 for p in d.glob("*.py") if p.name != "__init__.py")
        for d in sorted(folders)
        if d.name != "__pycache__"
    }


def crowded_folders(root: Path = ROOT) -> dict[str, int]:
    """The folders holding more than :data:`MAX_FOLDER_MODULES` modules directly -> how many."""
    return {folder: n for folder, n in folder_sizes(root).items() if n > MAX_FOLDER_MODULES}


def test_no_folder_holds_too_many_modules() -> None:
    sizes = folder_sizes()
    assert {"shared/base", "edge/api", "modelkit/loop", "benchmarks"} <= set(sizes)
    assert {"benchmarks/reports", "benchmarks/support", "benchmarks/probes"} <= set(sizes)
    crowded = crowded_folders()
    assert not crowded, f"more than {MAX_FOLDER_MODULES} modules in one folder: {crowded}"


def test_the_folder_check_catches_a_crowded_folder_benchmarks_included(tmp_path: Path) -> None:
    for top in ["edge", "benchmarks"]:
        (tmp_path / top).mkdir()
        for i in range(MAX_FOLDER_MODULES):
            (tmp_path / top / f"m{i}.py").write_text("")
    assert crowded_folders(tmp_path) == {}
    (tmp_path / "benchmarks" / "one_more.py").write_text("")
    assert crowded_folders(tmp_path) == {"benchmarks": MAX_FOLDER_MODULES + 1}


def test_the_folder_count_skips_packages_init_and_caches(tmp_path: Path) -> None:
    for name in ["__init__.py", "a.py", "b.py", "sub/__init__.py", "sub/c.py", "sub/__pycache__/c.py"]:
        (tmp_path / "edge" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "edge" / name).write_text("")
    assert {k: v for k, v in folder_sizes(tmp_path).items() if k.startswith("edge")} == {"edge": 2, "edge/sub": 1}


#: The one module that spells the think tags; everyone else imports them from it.
THINK_TAGS_HOME = "shared/reasoner/thinking.py"


def string_literals(path: Path) -> list[tuple[int, str]]:
    """Every string constant of the code (f-string parts included), not its documentation: a string
    that stands alone as a statement (a docstring, an attribute's docstring) is left out, as are
    comments, which the parser never sees."""
    tree = ast.parse(path.read_text(), str(path))
    documentation = {
        id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    return sorted(
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in documentation
    )


def modules_spelling_the_think_tags(paths: list[Path], root: Path = ROOT) -> dict[str, list[int]]:
    """Module -> the lines of its string literals that contain ``<think>`` or ``</think>``."""
    from edgecloud.shared.reasoner.thinking import THINK_END, THINK_START

    found: dict[str, list[int]] = {}
    for path in paths:
        for line, text in string_literals(path):
            if THINK_START in text or THINK_END in text:
                found.setdefault(path.relative_to(root).as_posix(), []).append(line)
    return found


def test_the_think_tags_are_spelled_in_one_module() -> None:
    """A second spelling is a second definition that can drift: build strings from the constants."""
    benchmarks = sorted((ROOT / "benchmarks").rglob("*.py"))
    found = modules_spelling_the_think_tags([*SOURCES, *benchmarks])
    assert set(found) == {THINK_TAGS_HOME}, f"the think tags spelled outside {THINK_TAGS_HOME}: {found}"


def test_the_think_tag_check_reads_code_not_documentation(tmp_path: Path) -> None:
    module = tmp_path / "tags.py"
    module.write_text(
        '"""Writes <think> reasoning </think> answer."""\n'
        "# a comment: <think>\n"
        "def f(x):\n"
        '    """</think> in a docstring."""\n'
        '    return f"{x}</think>" + "<think>\\n"\n'
        "TAG = 1\n"
        '"""<think>: an attribute docstring."""\n'
        "TEMPLATE = \"{%- if x == '</think>' %}\"\n"
    )
    assert modules_spelling_the_think_tags([module], tmp_path) == {"tags.py": [5, 5, 8]}
