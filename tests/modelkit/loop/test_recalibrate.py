"""``models recalibrate`` on field records of the real shipped students.

The field here is a device that served the bundle (its real model, its own calibration deciding
what it kept) on traffic unlike the build's, and a cloud that answers exactly: every escalation is
logged, and a share of the kept answers as shadow checks, in the cloud's JSONL log format. The
recalibrated bundle is then judged on fresh traffic from the same field, against the exact answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecloud.edge.calibration import Calibration
from edgecloud.edge.runtime import EdgeBundle, load_edge_model
from edgecloud.modelkit.arithmetic.task import Problem, Split, generate, parse_answer
from edgecloud.modelkit.loop.recalibrate import RecalibrateConfig, field_records, recalibrate_bundle
from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.bundles.manifest import load_manifest
from edgecloud.shared.bundles.signing import TrustStore, generate_keypair, verify_signed_bundle
from tests.helpers.field_records import FIELD_MIX, field_log, too_strict_student


def kept_precision(bundle: Path, problems: list[Problem]) -> tuple[float, float]:
    """Precision of the answers ``bundle`` keeps on ``problems``, and the share it keeps (exact answers)."""
    model = load_edge_model(bundle, threads=1, warmup=False)
    threshold = model.calibration.threshold
    kept = right = 0
    for problem in problems:
        answer = model.answer(problem.query)
        if not answer.abstained and answer.confidence >= threshold:
            kept += 1
            right += parse_answer(answer.text) == problem.answer
    return right / max(kept, 1), kept / len(problems)


@pytest.fixture(scope="module")
def too_strict(shipped_base_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return too_strict_student(shipped_base_models, tmp_path_factory.mktemp("too-strict"))


def test_a_too_strict_student_keeps_more_at_the_same_precision_after_recalibrating(
    too_strict: Path, tmp_path: Path
) -> None:
    problems = generate(900, 1, Split.TEST, FIELD_MIX)
    log = field_log(too_strict, problems[:600], tmp_path / "escalations.jsonl", share=0.2)
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    summary = recalibrate_bundle(
        RecalibrateConfig(
            logs=(log,),
            bundle=too_strict,
            out=tmp_path / "out",
            key=tmp_path / "k.pem",
            target_precision=0.97,
            min_checks=0,  # this device kept (almost) nothing: its escalations are the whole traffic
            threads=1,
        )
    )
    new = tmp_path / "out" / "edge-student"
    old_manifest, manifest = (
        load_manifest(too_strict),
        verify_signed_bundle(new, TrustStore.from_paths([tmp_path / "k.pub"])),
    )
    assert manifest.version == old_manifest.version + 1 == summary["version"]
    assert {f.path: f.sha256 for f in manifest.files} == {
        f.path: f.sha256 for f in old_manifest.files
    }  # weights untouched
    assert manifest.metadata["recalibrated_from"] == {"name": old_manifest.name, "version": old_manifest.version}
    stage = summary["stages"]["model"]
    assert stage["field_kept_share"]["after"] > stage["field_kept_share"]["before"] + 0.3
    assert stage["precision_lower_bound_after"] >= 0.97  # 99.5% as a bound needs some 600 answers kept, all right
    validation = Calibration.from_dict(manifest.calibration).validation
    assert (validation["n"], validation["shadow_checks"]) == (stage["records"], stage["shadow_checks"]) == (600, 0)
    # judged on fresh traffic from the same field, by the exact answers
    fresh = problems[600:]
    (_, kept_before), (after, kept_after) = kept_precision(too_strict, fresh), kept_precision(new, fresh)
    assert kept_after > kept_before + 0.3, (kept_before, kept_after)
    assert after >= 0.97, after
    assert EdgeBundle.load(new, threads=1).model.answer(manifest.golden[0].query).text == manifest.golden[0].expected


def test_the_pair_is_refitted_stage_by_stage(shipped_models: Path, tmp_path: Path) -> None:
    pair = shipped_models / "edge-student"
    log = field_log(pair, generate(400, 2, Split.TEST), tmp_path / "escalations.jsonl", share=0.5)
    summary = recalibrate_bundle(
        RecalibrateConfig(
            logs=(log,), bundle=pair, out=tmp_path / "out", target_precision=0.95, min_records=100, threads=1
        )
    )
    assert set(summary["stages"]) == {"base", "reasoner"} and summary["signed"] is False
    base, reasoner = summary["stages"]["base"], summary["stages"]["reasoner"]
    assert reasoner["records"] < base["records"] == summary["records"]["used"]
    manifest = load_manifest(tmp_path / "out" / "edge-student")
    assert manifest.calibration["threshold"] == base["threshold"]["after"]
    assert manifest.io["reasoner"]["calibration"]["threshold"] == reasoner["threshold"]["after"]
    assert (
        load_edge_model(tmp_path / "out" / "edge-student", threads=1, warmup=False).calibration.threshold
        == (base["threshold"]["after"])
    )


def test_a_student_the_field_never_confirms_is_refused_and_nothing_is_written(
    shipped_base_models: Path, tmp_path: Path
) -> None:
    base = shipped_base_models / "edge-student"
    log = field_log(base, generate(300, 3, Split.TEST, FIELD_MIX), tmp_path / "escalations.jsonl", share=1.0)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    for line in lines:  # the cloud says every answer is one more than the edge thinks: nothing is ever right
        line["answer"] = str((parse_answer(line["edge"]["answer"]) or 0) + 1)
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(ConfigError, match="would keep nothing; nothing was written"):
        recalibrate_bundle(RecalibrateConfig(logs=(log,), bundle=base, out=tmp_path / "out", min_records=100))
    assert not (tmp_path / "out" / "edge-student").exists()


def test_records_that_say_nothing_about_this_bundle_are_left_out_with_reasons(too_strict: Path, tmp_path: Path) -> None:
    log = field_log(too_strict, generate(60, 4, Split.TEST, FIELD_MIX), tmp_path / "escalations.jsonl", share=1.0)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    lines[0]["producer"]["version"] += 1
    lines[1]["edge"] = None
    lines[2]["messages"] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": lines[2]["query"]}]
    lines[3]["status"] = "failed"
    lines.append(dict(lines[4]))
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    records, dropped, _ = field_records([log], load_manifest(too_strict))
    assert len(records) == 60 - 4 and dropped == {
        "another bundle or version answered it": 1,
        "not triaged by the edge (no edge view)": 1,
        "a conversation (the student reads one query)": 1,
        "not completed, or no answer": 1,
        "duplicate request id": 1,
    }
    with pytest.raises(
        ConfigError, match=r"56 usable field records with \d+ shadow checks; recalibrate needs at least 200"
    ):
        recalibrate_bundle(RecalibrateConfig(logs=(log,), bundle=too_strict, out=tmp_path / "out"))


def test_bad_settings_are_refused_at_construction(tmp_path: Path) -> None:
    for bad, message in (
        ({"shadow_share": 0.0}, "shadow_share must be in"),
        ({"target_precision": 1.0}, "target_precision must be in"),
        ({"confidence_level": 0.3}, "confidence_level must be in"),
        ({"min_checks": -1}, "min_checks >= 0"),
        ({"version": 0}, "version must be >= 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            RecalibrateConfig(logs=(tmp_path / "x.jsonl",), **bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least one escalation log"):
        RecalibrateConfig(logs=())
