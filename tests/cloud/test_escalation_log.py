"""The cloud's escalation log: what a finished session leaves for the next edge student."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from edgecloud.cloud.engine import GenerationResult
from edgecloud.cloud.escalation_log import EscalationLog, escalation_record
from edgecloud.shared.escalations.records import ReadReport, read_escalations
from edgecloud.shared.reasoner.session import EdgeHint, Message, ThinkParams, Usage


def _result(answer: str = "42") -> GenerationResult:
    return GenerationResult(
        answer=answer,
        usage=Usage(input_tokens=9, reasoning_tokens=7, output_tokens=2),
        budget_reached=False,
        finish_reason="stop",
        reasoning_ms=1.0,
        answer_ms=1.0,
        first_answer_token_ms=1.0,
        reasoning="6*7 is 42",
    )


def test_a_record_holds_what_the_edge_sent_and_what_the_cloud_worked_out(tmp_path: Path) -> None:
    conversation = (Message("system", "Answer tersely."), Message("user", "what is 6*7?"))
    params = ThinkParams(
        request_id="r1",
        query="what is 6*7?",
        device_id="dev-1",
        hint=EdgeHint(confidence=0.3, estimated_difficulty=0.8, answer="41"),
        messages=conversation,
    )
    log = EscalationLog(tmp_path / "logs" / "escalations.jsonl")
    log.append(escalation_record(params, np.array([[0.5, -1.0]], dtype=np.float32), 64, _result()))
    (record,) = read_escalations(log.path)
    assert (record.request_id, record.device_id, record.query, record.answer) == ("r1", "dev-1", "what is 6*7?", "42")
    assert (record.reasoning, record.reasoning_tokens, record.budget, record.budget_reached) == (
        "6*7 is 42",
        7,
        64,
        False,
    )
    assert record.features == [0.5, -1.0]
    assert record.edge is not None and (record.edge.answer, record.edge.confidence) == ("41", 0.3)
    assert [m["role"] for m in record.messages] == ["system", "user"], "the whole conversation is kept"


def test_a_record_without_features_or_hint_is_still_a_record(tmp_path: Path) -> None:
    log = EscalationLog(tmp_path / "escalations.jsonl")
    log.append(escalation_record(ThinkParams(request_id="r2", query="hi"), None, 0, _result("hello")))
    (record,) = read_escalations(log.path)
    assert record.features == [] and record.edge is None and record.producer == {}


def test_a_shadow_check_is_logged_as_one_with_the_answer_the_edge_kept(tmp_path: Path) -> None:
    log = EscalationLog(tmp_path / "escalations.jsonl")
    check = ThinkParams(request_id="shadow-r3", query="what is 6*7?", priority="verification",
                        hint=EdgeHint(confidence=0.97, estimated_difficulty=0.1, answer="41"))  # fmt: skip
    log.append(escalation_record(check, None, 0, _result()))
    log.append(escalation_record(ThinkParams(request_id="r4", query="what is 6*7?"), None, 0, _result()))
    shadow, escalation = read_escalations(log.path)
    assert (shadow.kind, shadow.edge.answer, shadow.answer) == ("shadow_check", "41", "42")
    assert escalation.kind == "escalation"


def test_concurrent_appends_interleave_whole_lines_and_a_torn_tail_is_skipped(tmp_path: Path) -> None:
    log = EscalationLog(tmp_path / "escalations.jsonl")

    def append(start: int) -> None:
        for i in range(start, start + 50):
            log.append(escalation_record(ThinkParams(request_id=f"r{i}", query=f"q{i}"), None, 0, _result(str(i))))

    threads = [threading.Thread(target=append, args=(n * 50,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with log.path.open("a") as f:
        f.write('{"request_id": "torn"')  # a crash mid-write
    report = ReadReport()
    records = read_escalations(log.path, report)
    assert sorted(int(r.answer) for r in records) == list(range(200))
    assert report.read == 200 and sum(report.skipped.values()) == 1
