"""Every declared seam matches its shipped implementation, method by method.

``isinstance`` against a ``runtime_checkable`` Protocol only checks that the names exist; this
compares each Protocol method's parameters (names, kinds, defaults) with the implementation's,
so a Protocol and its implementation cannot drift apart unnoticed.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Protocol

import pytest

SEAMS = [
    ("edgecloud.edge.seams:AnswerModel", "edgecloud.edge.runtime:EdgeModel"),
    ("edgecloud.edge.seams:CloudReasoner", "edgecloud.edge.escalation:CloudClient"),
    ("edgecloud.edge.outbox:OutboxStorage", "edgecloud.edge.outbox:Outbox"),
    ("edgecloud.cloud.engine:ReasoningEngine", "edgecloud.cloud.transformers_engine:TransformersEngine"),
    ("edgecloud.cloud.store:SessionStorage", "edgecloud.cloud.store:SessionStore"),
    ("edgecloud.fleet.store:FleetStorage", "edgecloud.fleet.store:FleetStore"),
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
    protocol, implementation = load(protocol_name), load(implementation_name)
    assert Protocol in protocol.__mro__, f"{protocol_name} is not a Protocol"
    methods = protocol_methods(protocol)
    assert methods, f"{protocol_name} declares no method"
    for name, declared in methods.items():
        assert protocol.__dict__[name].__doc__, f"{protocol_name}.{name} has no docstring"
        shipped = getattr(implementation, name, None)
        assert shipped is not None, f"{implementation_name} has no {name}"
        assert parameters(inspect.signature(shipped)) == parameters(declared), (
            f"{implementation_name}.{name}{inspect.signature(shipped)} differs from the Protocol's {declared}"
        )
        assert inspect.iscoroutinefunction(shipped) == inspect.iscoroutinefunction(protocol.__dict__[name]), (
            f"{implementation_name}.{name}: async in one and not the other"
        )
