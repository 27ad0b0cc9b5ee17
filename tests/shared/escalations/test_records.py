"""The escalation record: what the cloud writes and `models improve` reads, validated line by line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.escalations.records import (
    MAX_LINE_BYTES,
    SCHEMA,
    EdgeView,
    Escalation,
    ReadReport,
    read_escalations,
)


def record(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "schema": SCHEMA,
        "request_id": "r-1",
        "device_id": "edge-0",
        "query": "12+34*5",
        "answer": "230",
        "reasoning": "+21+43*50\n+21=20100000000000",
        "reasoning_tokens": 40,
        "budget": 256,
        "budget_reached": False,
        "finish_reason": "stop",
        "status": "completed",
        "producer": {"name": "edgecloud-demo-student", "version": 5, "sha256": "a" * 64},
        "edge": {"answer": "", "confidence": 0.0, "estimated_difficulty": 1.0},
        "features": [0.5, -0.25],
        "created_at": "2026-12-02T06:00:00Z",
    }
    data.update(overrides)
    return data


def test_a_record_round_trips_through_its_json_line() -> None:
    parsed = Escalation.from_dict(record())
    assert parsed.edge == EdgeView(answer="", confidence=0.0, estimated_difficulty=1.0)
    assert parsed.producer_name == "edgecloud-demo-student" and parsed.producer_version == 5
    assert Escalation.from_dict(json.loads(json.dumps(parsed.to_dict()))) == parsed


def test_a_schema_1_record_reads_with_the_new_fields_empty() -> None:
    old = record()
    for name in ("schema", "reasoning", "budget", "finish_reason", "status", "edge"):
        del old[name]
    parsed = Escalation.from_dict(old)
    assert (parsed.reasoning, parsed.budget, parsed.finish_reason, parsed.status, parsed.edge) == (
        "",
        0,
        "",
        "completed",
        None,
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("query", "", r"^query: must have at least 1 character, got ''$"),
        ("query", 7, r"^query: expected a string, got 7$"),
        ("answer", "9" * 9000, r"^answer: must have at most 8192 characters, got '999"),
        ("reasoning_tokens", -1, r"^reasoning_tokens: must be >= 0, got -1$"),
        ("reasoning_tokens", True, r"^reasoning_tokens: expected an integer, got True$"),
        ("budget_reached", "no", r"^budget_reached: expected true or false, got 'no'$"),
        ("features", [1.0, float("nan")], r"^features\[1\]: expected a finite number, got nan$"),
        ("features", [1.0, True], r"^features\[1\]: expected a number, got True$"),
        ("features", [0.0] * 4097, r"^features: must have at most 4096 items"),
        ("features", "0.5", r"^features: expected a list, got str$"),
        ("status", "done", r"^status: must be 'completed', 'failed' or 'cancelled', got 'done'$"),
        ("kind", "guess", r"^kind: must be .escalation. or .shadow_check., got .guess.$"),
        ("schema", 5, r"^schema: must be <= 4, got 5$"),
        ("schema", True, r"^schema: expected an integer, got True$"),
        ("messages", [{"role": "robot", "content": "hi"}], r"^messages\[0\]: message role must be one of"),
        ("messages", [{"role": "user"}], r"^messages\[0\]\.content: missing$"),
        ("messages", [{"role": "user", "content": "hi", "name": "x"}], r"^messages\[0\]\.name: unknown field$"),
        ("messages", [{"role": "user", "content": "x" * 40_000}] * 2, r"^messages: more than 65536 characters"),
        ("messages", "hi", r"^messages: expected a list, got str$"),
        ("producer", ["x"], r"^producer: expected an object, got list$"),
        ("edge", {"confidence": 1.5}, r"^edge\.confidence: must be <= 1\.0, got 1\.5$"),
        ("edge", {"confidence": float("nan")}, r"^edge\.confidence: expected a finite number, got nan$"),
        ("edge", "sure", r"^edge: expected an object, got str$"),
    ],
)
def test_a_bad_field_is_named(field: str, value: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Escalation.from_dict(record(**{field: value}))


def test_a_record_needs_an_id_and_a_query_and_may_hold_fields_a_newer_cloud_writes() -> None:
    for name in ("request_id", "query"):
        data = record()
        del data[name]
        with pytest.raises(InvalidInputError, match=rf"^{name}: missing$"):
            Escalation.from_dict(data)
    assert Escalation.from_dict(record(later="ignored")) == Escalation.from_dict(record())
    with pytest.raises(InvalidInputError, match=r"^expected an object, got list$"):
        Escalation.from_dict([record()])


def test_the_reader_counts_what_it_skips_and_keeps_the_rest(tmp_path: Path) -> None:
    log = tmp_path / "escalations.jsonl"
    lines = [
        json.dumps(record(request_id="r-1")),
        "not json at all",
        json.dumps(record(request_id="r-2", features=[float("inf")]).copy(), allow_nan=True),
        json.dumps(["a", "list"]),
        "",
        json.dumps(record(request_id="r-3", query="x" * MAX_LINE_BYTES)),
        json.dumps(record(request_id="r-4")),
        json.dumps(record(request_id="r-5"))[:40],  # a torn last line: the cloud died mid-write
    ]
    log.write_text("\n".join(lines))
    report = ReadReport()
    records = read_escalations(log, report)
    assert [r.request_id for r in records] == ["r-1", "r-4"]
    assert report.read == 2
    assert report.skipped == {"not JSON": 2, "invalid record": 2, "line too long": 1}
    assert report.examples["invalid record"].startswith(f"{log}:3:")


def test_several_logs_read_in_order(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(json.dumps(record(request_id="a")) + "\n")
    second.write_text(json.dumps(record(request_id="b")) + "\n")
    assert [r.request_id for r in read_escalations([first, second])] == ["a", "b"]
