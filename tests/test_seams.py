"""Every declared seam matches its shipped implementation, method by method, and so does the tests'
stand-in for the cloud; the tests share code only through tests/helpers/.

``isinstance`` against a ``runtime_checkable`` Protocol only checks that the names exist; this
compares each Protocol method's parameters (names, kinds, defaults) with the implementation's,
so a Protocol and its implementation (or a test double) cannot drift apart unnoticed.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from typing import Protocol

import pytest

SEAMS = [
    ("edgecloud.edge.seams:AnswerModel", "edgecloud.edge.runtime:EdgeModel"),
    ("edgecloud.edge.seams:CloudReasoner", "edgecloud.edge.escalation:CloudClient"),
    ("edgecloud.edge.outbox:OutboxStorage", "edgecloud.edge.outbox:Outbox"),
    ("edgecloud.cloud.engine:ReasoningEngine", "edgecloud.cloud.transformers_engine:TransformersEngine"),
    ("edgecloud.cloud.stores.storage:SessionStorage", "edgecloud.cloud.stores.sqlite_store:SessionStore"),
    ("edgecloud.cloud.stores.storage:SharedSessionStorage", "edgecloud.cloud.stores.redis_store:RedisSessionStore"),
    ("edgecloud.fleet.store:FleetStorage", "edgecloud.fleet.store:FleetStore"),
    ("edgecloud.fleet.link:DeviceMessages", "edgecloud.fleet.service:FleetService"),
]


def load(spec: str) -> type:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def protocol_methods(protocol: type) -> dict[str, inspect.Signature]:
    methods = {}
    for name, member in vars(protocol).items():
        if name.startswith("_") or not callable(member):
            continue
        methods[name] = inspect.signature(member)
    return methods


def parameters(signature: inspect.Signature) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


@pytest.mark.parametrize(("protocol_name", "implementation_name"), SEAMS, ids=[s[0].split(":")[1] for s in SEAMS])
def test_the_implementation_has_every_protocol_method_with_its_parameters(
    protocol_name: str, implementation_name: str
) -> None:
    if implementation_name.startswith("edgecloud.cloud.transformers_engine"):
        pytest.importorskip("torch")
    assert_matches(load(protocol_name), load(implementation_name), implementation_name)


def assert_matches(protocol: type, implementation: type, label: str) -> None:
    """``implementation`` has every method of ``protocol``, each with its parameters and async-ness."""
    assert Protocol in protocol.__mro__, f"{protocol.__name__} is not a Protocol"
    methods = protocol_methods(protocol)
    assert methods, f"{protocol.__name__} declares no method"
    for name, declared in methods.items():
        assert protocol.__dict__[name].__doc__, f"{protocol.__name__}.{name} has no docstring"
        shipped = getattr(implementation, name, None)
        assert shipped is not None, f"{label} has no {name}"
        assert parameters(inspect.signature(shipped)) == parameters(declared), (
            f"{label}.{name}{inspect.signature(shipped)} differs from the Protocol's {declared}"
        )
        assert inspect.iscoroutinefunction(shipped) == inspect.iscoroutinefunction(protocol.__dict__[name]), (
            f"{label}.{name}: async in one and not the other"
        )


def test_the_fake_cloud_of_the_edge_tests_is_a_cloud_reasoner_method_for_method() -> None:
    # The edge unit tests stand it in for the cloud client: it must be what the service sees in
    # production, the Protocol's signatures, and an async generator where the shipped client's is one.
    from edgecloud.edge.escalation import CloudClient
    from edgecloud.edge.seams import CloudReasoner
    from tests.helpers.fake_cloud import FakeCloud

    assert_matches(CloudReasoner, FakeCloud, "tests.helpers.fake_cloud:FakeCloud")
    for name in protocol_methods(CloudReasoner):
        assert inspect.isasyncgenfunction(getattr(FakeCloud, name)) == inspect.isasyncgenfunction(
            getattr(CloudClient, name)
        ), f"FakeCloud.{name}: an async generator in one of FakeCloud and CloudClient only"
    assert isinstance(FakeCloud(), CloudReasoner)


TESTS = Path(__file__).resolve().parent


def imported_test_modules(path: Path) -> list[str]:
    """The modules under ``tests`` that ``path`` imports (relative imports resolved), by dotted name."""
    package = ".".join(path.relative_to(TESTS.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            # ``from tests import x`` and ``from . import x`` may name a module: count it by its own name.
            names_modules = base == "tests" or node.module is None
            found += [f"{base}.{alias.name}" if names_modules else base for alias in node.names]
    return [name for name in dict.fromkeys(found) if name == "tests" or name.startswith("tests.")]


def test_tests_share_code_only_through_the_helpers_package() -> None:
    # A test module or conftest imported by another drags its fixtures and its tests along (pytest
    # collects them twice, or re-declares a fixture under a second definition): what tests share lives
    # in tests/helpers/, and fixtures shared across folders in the nearest common conftest.
    modules = sorted(TESTS.rglob("*.py"))
    assert len(modules) > 50, "the walk found too few test modules"
    wrong = [
        f"{path.relative_to(TESTS.parent)} imports {name}"
        for path in modules
        for name in imported_test_modules(path)
        if name != "tests.helpers" and not name.startswith("tests.helpers.")
    ]
    assert not wrong, "import from tests/helpers/ only:\n" + "\n".join(wrong)


def test_the_helpers_hold_no_fixture_and_no_test() -> None:
    # Fixtures live in conftests, where pytest finds them; a helper module is never collected.
    wrong = []
    for path in sorted((TESTS / "helpers").rglob("*.py")):
        assert not path.name.startswith(("test_", "conftest")), path
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
                "fixture" in ast.unparse(decorator) for decorator in node.decorator_list
            ):
                wrong.append(f"{path.relative_to(TESTS.parent)}: {node.name}")
    assert not wrong, "fixtures belong in a conftest: " + ", ".join(wrong)
