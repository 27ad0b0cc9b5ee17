"""Which escalation records the next student learns from, on real log files: the latest record of a
query wins (whatever log it is in), the reasoning is learnt when most records carry it, and each
record left out is counted under its reason. (The full table of reasons is in
tests/modelkit/loop/test_improve.py, which drives the selection through ``models improve``.)"""

from __future__ import annotations

import json
from pathlib import Path

from edgecloud.modelkit.loop.training_set import TrainingExample, collect_training_set
from edgecloud.shared.bundles.answers import answers_match
from edgecloud.shared.escalations.records import SCHEMA
from edgecloud.shared.reasoner.thinking import THINK_END, THINK_START

STUDENT = "edge-student-under-test"


def same(edge: str, cloud: str) -> bool:
    return answers_match("number", edge, cloud)


def record(query: str, answer: str, **overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "schema": SCHEMA, "request_id": f"r-{query}-{answer}-{len(overrides)}", "device_id": "edge-0",
        "query": query, "answer": answer, "reasoning": "", "reasoning_tokens": 0, "budget": 64,
        "budget_reached": False, "finish_reason": "stop", "status": "completed",
        "producer": {"name": STUDENT, "version": 3, "sha256": "b" * 64},
        "edge": {"answer": "", "confidence": 0.0, "estimated_difficulty": 1.0}, "features": [0.0],
        "created_at": "2026-12-02T06:00:00Z",
    }  # fmt: skip
    data.update(overrides)
    return data


def log(path: Path, *records: dict[str, object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def lower(query: str) -> str:
    """What this test's student reads: case and spaces folded."""
    return "".join(query.lower().split())


def test_the_latest_record_of_a_query_wins_across_logs(tmp_path: Path) -> None:
    older = log(tmp_path / "monday.jsonl", record("Lights ON", "on"), record("2 + 2", "5"))
    newer = log(tmp_path / "tuesday.jsonl", record("2+2", "4"), record("lights on", "ON"))
    training = collect_training_set([older, newer], student_name=STUDENT, normalize=lower, matches=same)
    assert sorted((e.query, e.target) for e in training.examples) == [("2+2", "4"), ("lights on", "ON")]
    assert training.dropped == {"duplicate query": 2}
    # Read the other way round, the other records are the latest.
    swapped = collect_training_set([newer, older], student_name=STUDENT, normalize=lower, matches=same)
    assert sorted((e.query, e.target) for e in swapped.examples) == [("2 + 2", "5"), ("Lights ON", "on")]


def test_a_budget_cut_duplicate_replaces_the_earlier_record_with_its_weight(tmp_path: Path) -> None:
    path = log(tmp_path / "e.jsonl", record("6 * 9", "54"), record("6*9", "54", budget_reached=True))
    weighted = collect_training_set([path], student_name=STUDENT, normalize=lower, matches=same, budget_cut_weight=0.5)
    assert [(e.query, e.weight) for e in weighted.examples] == [("6*9", 0.5)]
    # Left out at weight 0, it is no duplicate: the earlier record stays.
    left_out = collect_training_set([path], student_name=STUDENT, normalize=lower, matches=same)
    assert [(e.query, e.weight) for e in left_out.examples] == [("6 * 9", 1.0)]
    assert left_out.dropped == {"thinking cut by the budget": 1}


def test_records_of_other_models_and_whitespace_answers_teach_nothing(tmp_path: Path) -> None:
    path = log(
        tmp_path / "e.jsonl",
        record("1+1", "2", producer={"name": "another-student", "version": 9}),
        record("1+2", "  \n"),
        record("1+3", "4", producer={"name": STUDENT, "version": 1}),  # an older version of the same student
        record("1+4", "5", status="cancelled", producer={"name": "another-student", "version": 9}),
    )
    training = collect_training_set([path], student_name=STUDENT, normalize=lower, matches=same)
    assert [e.query for e in training.examples] == ["1+3"]
    # Each record counts once, under the first reason that leaves it out.
    assert training.dropped == {"another model escalated it": 1, "empty answer": 1, "not completed": 1}


def test_the_reasoning_is_learnt_when_most_records_carry_it(tmp_path: Path) -> None:
    half = log(
        tmp_path / "half.jsonl",
        record("a", "1", reasoning="think a"),
        record("b", "2"),
    )
    assert (
        collect_training_set([half], student_name=STUDENT, normalize=lower, matches=same).reasoning is False
    )  # a tie is not most
    most = log(
        tmp_path / "most.jsonl",
        record("a", "1", reasoning="think a"),
        record("b", "2", reasoning="think b"),
        record("c", "3"),
    )
    training = collect_training_set([most], student_name=STUDENT, normalize=lower, matches=same)
    assert training.reasoning is True
    assert training.examples == [
        TrainingExample("a", f"{THINK_START}think a{THINK_END}1", 1.0, "1"),
        TrainingExample("b", f"{THINK_START}think b{THINK_END}2", 1.0, "2"),
    ]  # the answer alone rides along, to check a held-out record against
    assert training.dropped == {"no reasoning recorded": 1}


def test_what_is_asked_for_wins_over_the_majority(tmp_path: Path) -> None:
    path = log(tmp_path / "e.jsonl", record("a", "1", reasoning="think a"), record("b", "2"))
    answers_only = collect_training_set(
        [path], student_name=STUDENT, normalize=lower, matches=same, learn_reasoning=False
    )
    assert [e.target for e in answers_only.examples] == ["1", "2"] and not answers_only.reasoning
    with_reasoning = collect_training_set(
        [path], student_name=STUDENT, normalize=lower, matches=same, learn_reasoning=True
    )
    assert [e.target for e in with_reasoning.examples] == [f"{THINK_START}think a{THINK_END}1"]
    assert with_reasoning.dropped == {"no reasoning recorded": 1}


def test_empty_logs_give_an_empty_set_and_a_summary_that_says_so(tmp_path: Path) -> None:
    training = collect_training_set([log(tmp_path / "e.jsonl")], student_name=STUDENT, normalize=lower, matches=same)
    assert training.examples == [] and training.reasoning is False
    training.held_out, training.abstentions = 3, 2  # set later by models improve
    assert training.summary() == {
        "records_read": 0, "lines_skipped": {}, "records_used": 0, "records_dropped": {},
        "learnt_as_abstentions": 2, "records_held_out": 3, "field_corrections": 0, "learn_reasoning": False,
    }  # fmt: skip


def test_a_shadow_check_teaches_only_where_the_cloud_contradicted_the_edge(tmp_path: Path) -> None:
    def check(query: str, cloud: str, edge: str) -> dict[str, object]:
        return record(query, cloud, kind="shadow_check", edge={"answer": edge, "confidence": 0.97})

    path = tmp_path / "e.jsonl"
    path.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                check("2 + 2", "4", "4.0"),  # the same number: agreed
                check("3 + 5", "8", "9"),  # kept and wrong
                check("7 - 7", "0", ""),  # no edge answer to compare: taught
                record("9 * 9", "81"),
            ]
        )
    )
    training = collect_training_set([path], student_name=STUDENT, normalize=lower, matches=same, field_weight=3.0)
    assert sorted((e.query, e.weight) for e in training.examples) == [("3 + 5", 3.0), ("7 - 7", 3.0), ("9 * 9", 1.0)]
    assert training.dropped == {"a shadow check the edge answered right": 1}
    assert training.field_corrections == 2 and training.summary()["field_corrections"] == 2
