"""`models improve`: which escalations it learns from, and the gate that refuses a worse student.

The record selection is pure logic on real log files. The two turns run the real pipeline on the
shipped v5 student (fine-tuning, ONNX export, int8, calibration, the gate), kept short.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from edgecloud.edge.runtime import CascadeModel, EdgeModel, load_edge_model
from edgecloud.modelkit.arithmetic.scratchpad import think_text
from edgecloud.modelkit.arithmetic.task import Split, generate
from edgecloud.modelkit.arithmetic.teacher import ModelSpec
from edgecloud.modelkit.loop.gate import GateConfig
from edgecloud.modelkit.loop.improve import GateFailedError, ImproveConfig, collect_training_set, improve_student
from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.bundles.answers import answers_match
from edgecloud.shared.bundles.manifest import SIGNATURE_FILE, load_manifest
from edgecloud.shared.bundles.signing import TrustStore, generate_keypair, verify_signed_bundle
from edgecloud.shared.escalations.records import SCHEMA
from edgecloud.shared.reasoner.thinking import THINK_END, THINK_START

STUDENT = "edgecloud-demo-student"


def same(edge: str, cloud: str) -> bool:
    return answers_match("number", edge, cloud)


def escalation(query: str, answer: str, **overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "schema": SCHEMA,
        "request_id": f"r-{abs(hash((query, answer, str(overrides))))}",
        "device_id": "edge-0",
        "query": query,
        "answer": answer,
        "reasoning": "",
        "reasoning_tokens": 0,
        "budget": 64,
        "budget_reached": False,
        "finish_reason": "stop",
        "status": "completed",
        "producer": {"name": STUDENT, "version": 5, "sha256": "a" * 64},
        "edge": {"answer": "", "confidence": 0.0, "estimated_difficulty": 1.0},
        "features": [0.0],
        "created_at": "2026-12-02T06:00:00Z",
    }
    data.update(overrides)
    return data


def write_log(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def squash(query: str) -> str:
    return query.replace(" ", "")


def test_only_the_records_worth_learning_from_are_kept(tmp_path: Path) -> None:
    log = write_log(
        tmp_path / "escalations.jsonl",
        [
            escalation("1 + 2", "3"),
            escalation("5 * 6", "", status="failed"),
            escalation("5 * 7", "35", producer={"name": "another-student", "version": 1}),
            escalation("5 * 8", ""),
            escalation("5 * 9", "4", finish_reason="length"),
            escalation("6 * 9", "54", budget_reached=True),
            escalation("1+2", "3"),  # the same query as the student reads it: the latest wins
            escalation(
                "2 * 2", "4", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "2 * 2"}]
            ),
        ],
    )
    (tmp_path / "torn.jsonl").write_text('{"schema": 2, "quer')
    training = collect_training_set(
        [log, tmp_path / "torn.jsonl"], student_name=STUDENT, normalize=squash, matches=same, learn_reasoning=None
    )
    assert [(e.query, e.target, e.weight) for e in training.examples] == [("1+2", "3", 1.0)]
    assert training.dropped == {
        "not completed": 1,
        "another model escalated it": 1,
        "empty answer": 1,
        "answer cut at its token limit": 1,
        "thinking cut by the budget": 1,
        "duplicate query": 1,
        "a conversation (the student reads one query)": 1,
    }
    assert training.read.read == 8 and training.read.skipped == {"not JSON": 1}
    assert training.reasoning is False
    summary = training.summary()
    assert summary["records_used"] == 1 and summary["lines_skipped"] == {"not JSON": 1}


def test_budget_cut_answers_can_be_down_weighted(tmp_path: Path) -> None:
    log = write_log(tmp_path / "e.jsonl", [escalation("6 * 9", "54", budget_reached=True), escalation("2 + 2", "4")])
    training = collect_training_set([log], student_name=STUDENT, normalize=squash, matches=same, budget_cut_weight=0.25)
    assert sorted((e.query, e.weight) for e in training.examples) == [("2 + 2", 1.0), ("6 * 9", 0.25)]


def test_with_reasoning_the_target_is_the_scratchpad_then_the_answer(tmp_path: Path) -> None:
    problems = generate(3, 0, Split.TRAIN, {2: 1.0})
    records = [escalation(p.query, str(p.answer), reasoning=think_text(p)) for p in problems]
    records.append(escalation("7 + 1", "8"))  # no reasoning recorded
    training = collect_training_set(
        [write_log(tmp_path / "e.jsonl", records)], student_name=STUDENT, normalize=squash, matches=same
    )
    assert training.reasoning is True
    assert training.dropped == {"no reasoning recorded": 1}
    assert [e.target for e in training.examples] == [
        f"{THINK_START}{think_text(p)}{THINK_END}{p.answer}" for p in problems
    ]


def test_a_config_without_logs_or_with_bad_weights_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one escalation log"):
        ImproveConfig(logs=(), bundle=tmp_path, out=tmp_path)
    with pytest.raises(ConfigError, match="budget_cut_weight"):
        ImproveConfig(logs=(tmp_path / "e.jsonl",), bundle=tmp_path, out=tmp_path, budget_cut_weight=2)
    with pytest.raises(ConfigError, match="field_weight in"):
        ImproveConfig(logs=(tmp_path / "e.jsonl",), bundle=tmp_path, out=tmp_path, field_weight=0)
    with pytest.raises(ConfigError, match="expires_in_days needs a key"):
        ImproveConfig(logs=(tmp_path / "e.jsonl",), bundle=tmp_path, out=tmp_path, expires_in_days=30)
    with pytest.raises(ConfigError, match="must be > 0"):
        ImproveConfig(logs=(tmp_path / "e.jsonl",), bundle=tmp_path, out=tmp_path, key=tmp_path, expires_in_days=0)


def test_auto_trains_a_fresh_student_when_it_learns_the_reasoning(tmp_path: Path) -> None:
    config = ImproveConfig(logs=(tmp_path / "e.jsonl",), bundle=tmp_path, out=tmp_path)
    assert config.mode(reasoning=True) == "fresh" and config.mode(reasoning=False) == "fine-tune"
    assert config.schedule("fresh") == config.schedule("fresh")
    fresh, tuned = config.schedule("fresh"), config.schedule("fine-tune")
    assert (fresh.steps, fresh.lr, fresh.max_new_tokens, fresh.replay_share) == (700, 2e-3, 130, 0.0)
    assert (tuned.steps, tuned.lr, tuned.max_new_tokens) == (2000, 1e-3, 100)
    # What is set wins over the mode's defaults; growing the base means fine-tuning it.
    assert ImproveConfig(logs=config.logs, bundle=tmp_path, out=tmp_path, steps=7).schedule("fresh").steps == 7
    grown = ImproveConfig(logs=config.logs, bundle=tmp_path, out=tmp_path, add_layers=1)
    assert grown.mode(reasoning=True) == "fine-tune"
    with pytest.raises(ConfigError, match="student must be one of"):
        ImproveConfig(logs=config.logs, bundle=tmp_path, out=tmp_path, student="scratch")
    with pytest.raises(ConfigError, match="add_layers grows the base"):
        ImproveConfig(logs=config.logs, bundle=tmp_path, out=tmp_path, student="fresh", add_layers=1)


def quick_turn(shipped_base_models: Path, log: Path, out: Path, **overrides: object) -> ImproveConfig:
    settings: dict[str, object] = {
        "logs": (log,),
        "bundle": shipped_base_models / "edge-student",
        "out": out,
        "steps": 30,
        "batch_size": 64,
        "replay_n": 3000,
        "calibration_n": 4000,  # fewer kept answers cannot show 99.5% precision at 95% confidence
        "max_new_tokens": 10,
        "gate": GateConfig(n=800),
        "lr": 3e-4,
        "eval_every": 0,
    }
    settings.update(overrides)
    return ImproveConfig(**settings)  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_turn_on_corrupted_answers_is_refused_and_writes_nothing(shipped_base_models: Path, tmp_path: Path) -> None:
    # The cloud's answers, each off by one: a student trained on them answers simple queries wrongly.
    problems = generate(600, 5, Split.TRAIN, {1: 1.0})
    log = write_log(tmp_path / "e.jsonl", [escalation(p.query, str(p.answer + 1)) for p in problems])
    out = tmp_path / "improved"
    refused = tmp_path / "refused"
    config = quick_turn(shipped_base_models, log, out, replay_n=0, lr=3e-3, steps=60, refused_dir=refused)
    with pytest.raises(GateFailedError) as failed:
        improve_student(config)
    result = failed.value.result
    assert not result.passed
    assert any(r.startswith("k=1 accuracy") for r in result.regressions), result.regressions
    assert result.new.accuracy["k=1"] < result.base.accuracy["k=1"] - 0.01
    assert "regressed" in str(failed.value) and "points" in str(failed.value)
    assert not (out / "edge-student").exists() and not (out / "student-reference").exists()
    assert [p.name for p in out.iterdir()] == []  # no staging left behind
    # The refused student is kept apart for inspection, unsigned, and loads.
    assert sorted(p.name for p in refused.iterdir()) == ["edge-student", "student-reference"]
    assert not (refused / "edge-student" / SIGNATURE_FILE).exists()
    assert EdgeModel.from_bundle(refused / "edge-student").answer("2+2").text != ""
    with pytest.raises(ConfigError, match="refused_dir must not be out"):
        quick_turn(shipped_base_models, log, out, refused_dir=out)


@pytest.mark.slow
def test_a_turn_on_right_answers_ships_a_signed_next_version(shipped_base_models: Path, tmp_path: Path) -> None:
    problems = generate(600, 6, Split.TRAIN, {1: 1.0})
    log = write_log(tmp_path / "e.jsonl", [escalation(p.query, str(p.answer)) for p in problems])
    generate_keypair(tmp_path / "release.key", tmp_path / "release.pub")
    out = tmp_path / "improved"
    # Recalibrating after 30 steps moves the kept share on 800 queries by about a point either way
    # (seen from -1.00 on CI to +0.25 here, by seed and machine): this test is about the path a passing
    # turn takes; the refused turns below are about the gate's limits.
    gate = GateConfig(n=800, kept_tolerance=0.02)
    config = quick_turn(shipped_base_models, log, out, key=tmp_path / "release.key", gate=gate, expires_in_days=30)
    summary = improve_student(config)
    base = load_manifest(shipped_base_models / "edge-student")
    assert summary["version"] == base.version + 1 and summary["gate"]["passed"] is True
    student_reads = Tokenizer.from_file(str(shipped_base_models / "edge-student" / "tokenizer.json")).normalizer
    distinct = len({student_reads.normalize_str(p.query) for p in problems})
    # A fifth of the records are held out of training: the gate measures the new student on them.
    assert summary["records_used"] + summary["records_held_out"] == distinct
    assert 0.1 * distinct < summary["records_held_out"] < 0.3 * distinct
    assert summary["gate"]["new"]["cases"]["escalations"] == summary["records_held_out"]
    assert summary["records_dropped"] == {"duplicate query": len(problems) - distinct}
    manifest = verify_signed_bundle(out / "edge-student", TrustStore.from_paths([tmp_path / "release.pub"]))
    assert manifest.version == base.version + 1 and manifest.expires_at == summary["expires_at"]
    assert manifest.expired(time.time() + 31 * 86400) and not manifest.expired(time.time() + 29 * 86400)
    assert manifest.metadata["improved_from"] == {"name": base.name, "version": base.version}
    assert manifest.name == base.name  # the next version of the same bundle, whatever its name
    assert manifest.metadata["training_set"]["records_used"] == summary["records_used"]
    assert manifest.metadata["training_set"]["records_held_out"] == summary["records_held_out"]
    model = EdgeModel.from_bundle(out / "edge-student")
    right = [model.answer(p.query).text == str(p.answer) for p in generate(200, 9, Split.TEST, {1: 1.0})]
    assert sum(right) >= 190


@pytest.mark.slow
def test_a_fresh_reasoner_is_packaged_as_a_pair_and_one_that_takes_over_nothing_is_refused(
    shipped_base_models: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Scratchpad records make `auto` train a fresh reasoner from scratch; 30 steps are far too few.
    # It is exported, quantised, calibrated on what the base hands off and paired with the base;
    # the pair answers simple queries as the base does, keeps nothing more, and is refused for it.
    problems = generate(300, 7, Split.TRAIN, {2: 0.5, 3: 0.5})
    log = write_log(
        tmp_path / "e.jsonl", [escalation(p.query, str(p.answer), reasoning=think_text(p)) for p in problems]
    )
    out, refused = tmp_path / "improved", tmp_path / "refused"
    tiny = ModelSpec(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    config = quick_turn(
        shipped_base_models, log, out, fresh_model=tiny, replay_n=500, lr=None, max_new_tokens=8, refused_dir=refused,
        min_fresh_records=100,
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="edgecloud.modelkit"), pytest.raises(GateFailedError) as failed:
        improve_student(config)
    assert "a fresh student: 0.0" in caplog.text and "training (fresh, 30 steps" in caplog.text
    assert "calibration queries to the reasoner" in caplog.text
    result = failed.value.result
    assert result.regressions and all("takes over nothing" in r for r in result.regressions), result.regressions
    assert abs(result.new.accuracy["k=1"] - result.base.accuracy["k=1"]) <= 0.01  # the base still answers them
    assert [p.name for p in out.iterdir()] == []
    # The refused pair, kept for inspection: the base's files as they were, the reasoner beside them.
    pair = load_manifest(refused / "edge-student")
    base = load_manifest(shipped_base_models / "edge-student")
    assert pair.calibration == base.calibration and pair.io["graphs"] == base.io["graphs"]
    assert pair.io["reasoner"]["graphs"] == {"int8": "reasoner/model.int8.onnx"}
    assert pair.io["reasoner"]["think_start"] == THINK_START and pair.metadata["pair"]["base"]["version"] == 5
    assert {f.sha256 for f in base.files} <= {f.sha256 for f in pair.files}
    assert (refused / "student-reference" / "config.json").is_file()
    assert (refused / "student-reference" / "reasoner" / "config.json").is_file()
    served = load_edge_model(refused / "edge-student")
    assert isinstance(served, CascadeModel) and served.reasoner.max_new_tokens == 8


def test_a_pair_base_is_not_fine_tuned_and_a_fresh_reasoner_needs_enough_records(
    shipped_models: Path, tmp_path: Path
) -> None:
    # The shipped student is a pair: fine-tuning its base alone would drop the reasoner, and a new
    # reasoner on a demo's handful of escalations learns nothing. Both are refused before training.
    problems = generate(60, 7, Split.TRAIN, {2: 0.5, 3: 0.5})
    log = write_log(
        tmp_path / "e.jsonl", [escalation(p.query, str(p.answer), reasoning=think_text(p)) for p in problems]
    )
    with pytest.raises(ConfigError, match="is a pair .* would drop the reasoner"):
        improve_student(quick_turn(shipped_models, log, tmp_path / "a", student="fine-tune"))
    with pytest.raises(ConfigError, match=r"\d+ escalation records to train on: .* needs at least 2000"):
        improve_student(quick_turn(shipped_models, log, tmp_path / "b", student="fresh"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "bad",
    [["--calibration-n", "50"], ["--holdout-share", "1.5"], ["--gate-min-cases", "0"], ["--data", "/nonexistent"]],
    ids=["calibration-n", "holdout-share", "gate-min-cases", "missing-data"],
)
def test_every_bad_argument_is_refused_before_training_with_exit_2(
    shipped_base_models: Path, tmp_path: Path, bad: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    from edgecloud.cli import main

    problems = generate(20, 5, Split.TRAIN, {1: 1.0})
    log = write_log(tmp_path / "e.jsonl", [escalation(p.query, str(p.answer)) for p in problems])
    started = time.monotonic()
    argv = [
        "models",
        "improve",
        str(log),
        "--bundle",
        str(shipped_base_models / "edge-student"),
        "--out",
        str(tmp_path),
    ]
    assert main([*argv, *bad]) == 2
    assert time.monotonic() - started < 30  # refused up front, not after a training run
    assert "training (" not in caplog.text
