"""``models build --data``: bundles from a dataset folder the code was not written for, and its parts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from edgecloud.cli import main
from edgecloud.edge.runtime import EdgeBundle
from edgecloud.modelkit.arithmetic.evaluate import REFERENCE_DIR, STUDENT_DIR, TEACHER_DIR
from edgecloud.modelkit.data.build import DataBuildConfig
from edgecloud.modelkit.data.datasets import Row, read_dataset, write_dataset
from edgecloud.modelkit.data.student import STUDENT_PROMPT
from edgecloud.modelkit.tokenizer import build_data_tokenizers
from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.bundles.manifest import load_manifest, verify_bundle

WORDS = ("amber", "basil", "cedar", "delta", "ember", "fjord", "grove", "heron", "inlet", "juniper")


def _row(rng: random.Random, i: int, *, conversation: bool = False) -> Row:
    """Reverse a word: a task no module was written for; some rows reason, some have a group."""
    word = rng.choice(WORDS) + rng.choice("xyz")
    reasoning = None if i % 3 == 0 else f"letters: {' '.join(word)}\nbackwards: {' '.join(word[::-1])}\n"
    group = None if i % 5 == 0 else ("short" if len(word) <= 6 else "long")
    if conversation:
        messages = [{"role": "system", "content": "You reverse words."}, {"role": "user", "content": word}]
        return Row(messages=messages, answer=word[::-1], reasoning=reasoning, group=group)
    return Row(query=f"Reverse  the word {word.title()}", answer=word[::-1], reasoning=reasoning, group=group)


def _write_toy(path: Path) -> Path:
    rng = random.Random(7)
    return write_dataset(
        path,
        name="reverse-words",
        answer_match="exact",
        train=[_row(rng, i, conversation=i < 12) for i in range(300)],
        validation=[_row(rng, i) for i in range(100)],
        test=[_row(rng, i) for i in range(50)],
    )


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A quick build through the command line: (dataset folder, output folder)."""
    root = tmp_path_factory.mktemp("databuild")
    data = _write_toy(root / "data")
    out = root / "models"
    assert main(["models", "build", "--quick", "--data", str(data), "--out", str(out), "--name", "toy"]) == 0
    return data, out


def test_bundles_load_under_the_name_given(toy: tuple[Path, Path]) -> None:
    from edgecloud.cloud.transformers_engine import LoadedModel

    _, out = toy
    assert sorted(p.name for p in out.iterdir()) == sorted([TEACHER_DIR, STUDENT_DIR, REFERENCE_DIR, ".cache"])
    edge = EdgeBundle.load(out / STUDENT_DIR)
    assert (edge.name, edge.manifest.kind) == ("toy-student", "edge")
    assert verify_bundle(out / TEACHER_DIR).name == "toy-teacher"
    LoadedModel.from_dir(out / TEACHER_DIR, device="cpu")
    assert load_manifest(out / STUDENT_DIR).metadata["distilled_from"] == {"name": "toy-teacher", "version": 1}


def test_golden_cases_are_rows_of_the_data(toy: tuple[Path, Path]) -> None:
    data, out = toy
    queries = {row.prompt_text for row in read_dataset(data).validation}
    for bundle in (STUDENT_DIR, TEACHER_DIR):
        golden = load_manifest(out / bundle).golden
        assert golden and {case.query for case in golden} <= queries, bundle
    # The edge's cases are what its own int8 graph answers, so a device's self-test passes.
    edge = EdgeBundle.load(out / STUDENT_DIR)
    assert all(edge.model.answer(case.query).text == case.expected for case in edge.manifest.golden)


def test_manifests_declare_the_matching_rule_and_the_data(toy: tuple[Path, Path]) -> None:
    data, out = toy
    teacher, student = load_manifest(out / TEACHER_DIR), load_manifest(out / STUDENT_DIR)
    assert teacher.io["answer_match"] == student.io["answer_match"] == "exact"
    assert student.io["conversations"] is False
    assert student.io["prompt_template"] == STUDENT_PROMPT
    for manifest in (teacher, student):
        record = manifest.metadata["dataset"]
        assert record["path"] == str(data.resolve()) and record["name"] == "reverse-words"
        assert record["rows"] == {"train": 300, "validation": 100, "test": 50}
        assert len(record["sha256"]) == 64
    # Conversations are the cloud's: the student learnt from the 288 single queries only.
    assert student.metadata["labels"]["n"] == 288


def test_calibration_ran_on_the_validation_split(toy: tuple[Path, Path]) -> None:
    data, out = toy
    validation = load_manifest(out / STUDENT_DIR).calibration["validation"]
    assert validation["n"] == len(read_dataset(data).validation) == 100
    assert set(validation["groups"]) == {"short", "long", "(none)"}
    assert sum(g["n"] for g in validation["groups"].values()) == 100


def _not_a_thinking_model(path: Path) -> Path:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(WordLevel(vocab={"<unk>": 0, "a": 1}, unk_token="<unk>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="a")
    tokenizer.chat_template = "{{ messages[0]['content'] }}"
    tokenizer.save_pretrained(str(path))
    (path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "Bad Name"], "--name must match"),
        (["--name", "x/y"], "--name must match"),
        ([], "--data needs --name"),
        (["--name", "ok", "--data", "{missing}"], "not a dataset folder"),
        (["--name", "ok", "--teacher", "{plain}"], "no <think> token"),
        (["--name", "ok", "--reuse-teacher", "{plain}"], "--reuse-teacher"),
        (["--name", "ok", "--teacher-steps", "0"], "--teacher-steps must be >= 1"),
        (["--name", "ok", "--teacher-steps", "100"], "not with --teacher (none is trained) or --quick"),
        (["--name", "ok", "--label-max-new-tokens", "0"], "--label-max-new-tokens must be >= 1"),
    ],
)
def test_bad_arguments_are_refused_before_training(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, args: list[str], message: str
) -> None:
    data = _write_toy(tmp_path / "data")
    out = tmp_path / "out"
    paths = {"{missing}": str(tmp_path / "nowhere"), "{plain}": str(_not_a_thinking_model(tmp_path / "plain"))}
    argv = ["models", "build", "--quick", "--out", str(out), "--data", str(data), *[paths.get(a, a) for a in args]]
    assert main(argv) == 2
    assert message in caplog.text
    assert not out.exists(), "nothing is written before the arguments are checked"


def test_teacher_steps_reach_the_teacher_s_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgecloud.modelkit.data import build as databuild

    seen: list[DataBuildConfig] = []
    monkeypatch.setattr(databuild, "build_from_data", lambda config: seen.append(config) or {})
    data = _write_toy(tmp_path / "data")
    argv = ["models", "build", "--out", str(tmp_path / "out"), "--data", str(data), "--name", "ok"]
    assert main([*argv, "--teacher-steps", "5000", "--label-max-new-tokens", "300"]) == 0
    assert main(argv) == 0
    assert [c.teacher.train.steps for c in seen] == [5000, 2500]
    assert [c.label_max_new_tokens for c in seen] == [300, None]


def test_data_flags_need_data(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    assert main(["models", "build", "--out", str(tmp_path / "out"), "--name", "x"]) == 2
    assert "only for a build from a dataset folder" in caplog.text


def test_the_config_checks_the_name_first(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--name"):
        DataBuildConfig(data=tmp_path, out=tmp_path, name="UPPER")


def test_smarthome_builds_and_matches_as_json(tmp_path: Path) -> None:
    from edgecloud.modelkit.data.build import build_from_data
    from edgecloud.tasks import smarthome

    data = smarthome.write(tmp_path / "data", train=300, validation=100, test=50)
    summary = build_from_data(DataBuildConfig(data=tmp_path / "data", out=tmp_path / "models", name="home", quick=True))
    assert summary["student"]["name"] == "home-student"
    for bundle in (STUDENT_DIR, TEACHER_DIR):
        manifest = load_manifest(tmp_path / "models" / bundle)
        assert manifest.io["answer_match"] == "json"
        assert {case.query for case in manifest.golden} <= {row.query for row in data.validation}
    assert set(summary["calibration"]["validation"]["groups"]) == set(smarthome.GROUPS)


# The parts, without training.


def test_data_tokenizers_keep_spaces_and_cover_every_character() -> None:
    texts = ["Turn on the Kitchen lights", '{"room":"living_room"}', "commands: 1\n1: light"]
    teacher, student = build_data_tokenizers(texts, word_texts=texts * 20, max_words=5, lowercase=True)
    ids = teacher("Turn  on\tthe light\nok", add_special_tokens=False)["input_ids"]
    assert teacher.decode(ids) == "turn on the light\nok"
    assert teacher.unk_token_id not in teacher('{"room":"living_room"}', add_special_tokens=False)["input_ids"]
    assert "the" in teacher.get_vocab() and teacher.get_vocab() == student.get_vocab()
    ids = student("  Turn on\n the  lights " + STUDENT_PROMPT.replace("{query}", ""), add_special_tokens=False)
    assert student.decode(ids["input_ids"]) == "turn on the lights<|im_start|>assistant"
    cased, _ = build_data_tokenizers(texts, lowercase=False)
    assert cased.decode(cased("Turn", add_special_tokens=False)["input_ids"]) == "Turn"
    runs, _ = build_data_tokenizers(texts, word_texts=texts * 20, max_words=5, max_symbol_runs=2, lowercase=True)
    ids = runs('{"room":"kitchen"}', add_special_tokens=False)["input_ids"]
    assert runs.convert_ids_to_tokens(ids)[:2] == ['{"', "r"] and runs.decode(ids) == '{"room":"kitchen"}'


def test_improve_on_a_dataset_bundle_refuses_a_fresh_pair_or_no_evidence_before_training(
    toy: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, out = toy
    record = {
        "request_id": "r1", "query": "Reverse the word cedarx", "answer": "xradec", "reasoning_tokens": 3,
        "budget_reached": False, "producer": {"name": "toy-student", "version": 1}, "features": [],
        "created_at": "2026-12-07T00:00:00Z",
    }  # fmt: skip
    log = tmp_path / "escalations.jsonl"
    log.write_text(json.dumps(record) + "\n")
    args = ["models", "improve", str(log), "--bundle", str(out / STUDENT_DIR), "--out", str(tmp_path / "next")]
    assert main([*args, "--student", "fresh"]) == 2
    assert "--student fresh" in caplog.text and "reverse-words" in caplog.text
    # Half the 100 validation rows are calibration's: fewer than the gate's 100 cases is no evidence.
    assert main(args) == 2
    assert "no evidence to gate on" in caplog.text
    assert not (tmp_path / "next").exists()
