"""shared.base.errors: the drawn tree and table hold every error class of the project, in its module
under its parent, and every class's HTTP status and gRPC code are real and sent as the class says.

The classes are found, not listed: every module of the project is imported (the folders of
pyproject's ``package-dir``) and :class:`EdgecloudError`'s subclasses are walked. A module whose
optional dependency is not installed (torch in the edge's venv) is passed over; its classes are
checked where it is installed (``make test``).
"""

from __future__ import annotations

import http
import importlib
import json
import re
import tomllib
from pathlib import Path
from types import ModuleType

import grpc
import pytest

from edgecloud.shared.base import errors
from edgecloud.shared.base.asgi import response_for
from edgecloud.shared.base.errors import EdgecloudError, UnavailableError, error_for_grpc_code

REPO = Path(__file__).resolve().parents[3]
MAPPINGS = ("recoverable", "http_status", "grpc_code", "code")
"""The class attributes that map an error to a transport; a class that sets one has a row in the table."""

_TREE_ROW = re.compile(
    r"^    (?P<indent>(?:[│ ]   )*)(?P<branch>[├└]── )?(?P<name>[A-Z]\w*Error)\s+(?P<module>[a-z_]+(?:\.[a-z_]+)+)\s"
)
_TABLE_ROW = re.compile(
    r"^    (?P<name>[A-Z]\w*Error)\s+(?P<retry>fatal(?: \(\*\))?|recoverable)\s+(?P<http>\d+)\s+"
    r"(?P<grpc>[A-Z_]+)\s+(?P<code>[a-z_]+)$"
)


def project_modules() -> list[str]:
    """Every module of the project by the name it installs under, but ``__main__`` (which runs a program)."""
    folders = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    names = []
    for package, folder in folders.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            if parts[-1] == "__main__":
                continue
            names.append(".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts))))
    return names


def load(name: str) -> ModuleType | None:
    """The module; None where a dependency outside the project is not installed here."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] == "edgecloud":
            raise
        return None


def drawn_tree() -> dict[str, tuple[str | None, str]]:
    """``{class name: (parent name, module under edgecloud.)}`` as the docstring's tree draws them."""
    tree: dict[str, tuple[str | None, str]] = {}
    path: list[str] = []
    for line in (errors.__doc__ or "").splitlines():
        row = _TREE_ROW.match(line)
        if row is None:
            continue
        depth = len(row["indent"]) // 4 + (row["branch"] is not None)
        assert depth <= len(path), f"the tree skips a level at {row['name']}"
        assert row["name"] not in tree, f"the tree draws {row['name']} twice"
        del path[depth:]
        tree[row["name"]] = (path[-1] if path else None, row["module"])
        path.append(row["name"])
    return tree


def drawn_table() -> dict[str, dict[str, str]]:
    """``{class name: its row}`` of the docstring's table of mappings."""
    rows = (_TABLE_ROW.match(line) for line in (errors.__doc__ or "").splitlines())
    return {row["name"]: row.groupdict() for row in rows if row is not None}


def parent(cls: type[EdgecloudError]) -> type[EdgecloudError] | None:
    return next((base for base in cls.__bases__ if issubclass(base, EdgecloudError)), None)


def bare(cls: type[EdgecloudError]) -> EdgecloudError:
    """An instance to hand the mapping functions, without the class's own ``__init__`` (some take a
    reason or a gate result)."""
    return cls.__new__(cls, "a test error")


@pytest.fixture(scope="module")
def project_errors() -> list[type[EdgecloudError]]:
    """Every error class the project defines, found after importing every module."""
    for name in project_modules():
        load(name)
    found: set[type[EdgecloudError]] = set()
    todo = [EdgecloudError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo += cls.__subclasses__()
    return sorted((cls for cls in found if cls.__module__.startswith("edgecloud.")), key=lambda cls: cls.__name__)


def test_the_drawings_are_read_whole() -> None:
    tree, table = drawn_tree(), drawn_table()
    branches = sum("── " in line for line in (errors.__doc__ or "").splitlines())
    assert len(tree) == branches + 1, "a row of the tree is not in the shape class, module, meaning"
    assert tree["EdgecloudError"] == (None, "shared.base.errors")
    assert "EdgecloudError" in table and set(table) <= set(tree)


def test_every_error_class_is_drawn_under_its_parent_in_its_module(
    project_errors: list[type[EdgecloudError]],
) -> None:
    tree = drawn_tree()
    names = [cls.__name__ for cls in project_errors]
    assert len(set(names)) == len(names), "two error classes share a name; the tree draws them by name"
    problems = []
    for cls in project_errors:
        up = parent(cls)
        where = (up.__name__ if up else None, cls.__module__.removeprefix("edgecloud."))
        if cls.__name__ not in tree:
            problems.append(f"{cls.__module__}.{cls.__name__} is not drawn in the tree in shared/base/errors.py")
        elif tree[cls.__name__] != where:
            problems.append(f"{cls.__name__} is drawn as (parent, module) {tree[cls.__name__]}, but is {where}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("name", "drawn"), drawn_tree().items(), ids=list(drawn_tree()))
def test_the_tree_names_no_class_that_does_not_exist(name: str, drawn: tuple[str | None, str]) -> None:
    parent_name, module_name = drawn
    module = load(f"edgecloud.{module_name}")
    if module is None:
        pytest.skip(f"edgecloud.{module_name} needs a dependency not installed here")
    cls = getattr(module, name, None)
    assert isinstance(cls, type) and issubclass(cls, EdgecloudError), f"edgecloud.{module_name} has no error {name}"
    assert cls.__module__ == f"edgecloud.{module_name}", f"{name} lives in {cls.__module__}"
    up = parent(cls)
    assert (up.__name__ if up else None) == parent_name


def test_the_table_gives_every_class_that_sets_a_mapping(project_errors: list[type[EdgecloudError]]) -> None:
    table = drawn_table()
    problems = []
    for cls in project_errors:
        if cls.__name__ in table:
            row = table[cls.__name__]
            drawn = (row["retry"] == "recoverable", int(row["http"]), row["grpc"], row["code"])
            actual = tuple(getattr(cls, attribute) for attribute in MAPPINGS)
            if drawn != actual:
                problems.append(f"{cls.__name__}: the table says {drawn}, the class {actual} ({', '.join(MAPPINGS)})")
        elif set(MAPPINGS) & set(vars(cls)):
            problems.append(f"{cls.__name__} sets {sorted(set(MAPPINGS) & set(vars(cls)))} but has no row in the table")
    assert not problems, "\n".join(problems)


def test_every_http_status_is_a_real_error_status_and_the_apis_send_it(
    project_errors: list[type[EdgecloudError]],
) -> None:
    problems = []
    for cls in project_errors:
        try:
            status = http.HTTPStatus(cls.http_status)
        except ValueError:
            problems.append(f"{cls.__name__}.http_status {cls.http_status!r} is not an HTTP status")
            continue
        if not 400 <= status < 600:
            problems.append(f"{cls.__name__}.http_status {status} is not a 4xx or 5xx")
        if not re.fullmatch(r"[a-z_]+", cls.code):
            problems.append(f"{cls.__name__}.code {cls.code!r} is not a short snake_case name")
        response = response_for(bare(cls))
        body = json.loads(response.body)
        if response.status_code != status or body["error"]["type"] != cls.code:
            problems.append(f"{cls.__name__}: response_for sends {response.status_code} {body['error']['type']!r}")
    assert not problems, "\n".join(problems)


def test_every_grpc_code_is_a_real_status_and_the_server_sends_it(
    project_errors: list[type[EdgecloudError]],
) -> None:
    server = load("edgecloud.cloud.server")
    if server is None:
        pytest.skip("the gRPC server needs the cloud extra")
    problems = []
    for cls in project_errors:
        code = grpc.StatusCode.__members__.get(cls.grpc_code)
        if code is None or code is grpc.StatusCode.OK:
            # status_for would fall back to INTERNAL without a word: this is where a wrong name shows
            problems.append(f"{cls.__name__}.grpc_code {cls.grpc_code!r} is not an error grpc.StatusCode")
            continue
        sent = server.status_for(bare(cls))
        if sent is not code:
            problems.append(f"{cls.__name__}: status_for sends {sent.name}, not {code.name}")
        # What a client raises for it: a class of the same code; INTERNAL says the service could not answer.
        back = error_for_grpc_code(code.name)
        if back.grpc_code != code.name and not (code is grpc.StatusCode.INTERNAL and back is UnavailableError):
            problems.append(f"{cls.__name__}: a client reads {code.name} as {back.__name__} ({back.grpc_code})")
    assert not problems, "\n".join(problems)
