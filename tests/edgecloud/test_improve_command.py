"""``models improve`` through the real command line: bad arguments refused with exit 2 before
anything is read or trained, what the flags become in the turn's configuration, and a gate's
refusal as exit 3 with its figures. (Four refusals are in tests/modelkit/loop/test_improve.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecloud.cli import main
from edgecloud.modelkit.loop import improve
from edgecloud.modelkit.loop.gate import GateResult, ModelScore
from edgecloud.modelkit.loop.improve import GateFailedError, ImproveConfig


@pytest.fixture
def turns(monkeypatch: pytest.MonkeyPatch) -> list[ImproveConfig]:
    """The configurations the command hands the turn; a turn that trains is never started."""
    seen: list[ImproveConfig] = []
    monkeypatch.setattr(improve, "improve_student", lambda config: seen.append(config) or {"version": 6})
    return seen


def argv(tmp_path: Path, *extra: str, more_logs: tuple[Path, ...] = ()) -> list[str]:
    log = tmp_path / "escalations.jsonl"
    log.touch()
    logs = [str(p) for p in (log, *more_logs)]
    return ["models", "improve", *logs, "--bundle", str(tmp_path / "base"), "--out", str(tmp_path / "out"), *extra]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--budget-cut-weight", "1.5"], "budget_cut_weight must be in"),
        (["--replay-share", "1"], "replay_share must be in"),
        (["--steps", "0"], "steps and batch_size must be >= 1"),
        (["--batch-size", "0"], "steps and batch_size must be >= 1"),
        (["--lr", "2"], "lr must be in"),
        (["--add-layers", "9"], "add_layers must be in 0..8"),
        (["--student", "fresh", "--add-layers", "1"], "add_layers grows the base"),
        (["--max-new-tokens", "300"], "max_new_tokens must be in 1..256"),
        (["--expires-in-days", "30"], "expires_in_days needs a key"),
        (["--key", "{dir}", "--expires-in-days", "0"], "expires_in_days needs a key and must be > 0"),
        (["--keep-refused", "{out}"], "refused_dir must not be out"),
        (["--replay-n", "-1"], "replay_n and min_fresh_records must be >= 0"),
        (["--min-fresh-records", "-1"], "replay_n and min_fresh_records must be >= 0"),
    ],
)
def test_bad_arguments_are_refused_before_the_turn_starts(
    tmp_path: Path, turns: list[ImproveConfig], caplog: pytest.LogCaptureFixture, flags: list[str], message: str
) -> None:
    places = {"{dir}": str(tmp_path), "{out}": str(tmp_path / "out")}
    assert main(argv(tmp_path, *[places.get(f, f) for f in flags])) == 2
    assert message in caplog.text
    assert turns == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags", [["--student", "scratch"], ["--learn-reasoning", "maybe"], ["--steps", "many"]], ids=lambda f: f[0]
)
def test_values_outside_a_flag_s_choices_are_usage_errors(
    tmp_path: Path, turns: list[ImproveConfig], capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv(tmp_path, *flags))
    assert exited.value.code == 2 and flags[0] in capsys.readouterr().err
    assert turns == []


def test_the_flags_become_the_turn_s_configuration(
    tmp_path: Path, turns: list[ImproveConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    second = tmp_path / "more.jsonl"
    second.touch()
    flags = [
        "--learn-reasoning", "yes", "--budget-cut-weight", "0.25", "--student", "fine-tune",
        "--replay-share", "0.3", "--steps", "40", "--batch-size", "16", "--add-layers", "2", "--lr", "0.001",
        "--max-new-tokens", "20", "--gate-n", "300", "--gate-min-cases", "50", "--holdout-share", "0.1",
        "--calibration-n", "500", "--replay-n", "100", "--min-fresh-records", "10", "--data", str(tmp_path),
        "--keep-refused", str(tmp_path / "refused"), "--version", "9", "--seed", "4", "--threads", "1",
        "--key", str(tmp_path / "release.key"), "--expires-in-days", "30", "--reference", str(tmp_path / "ref"),
    ]  # fmt: skip
    assert main(argv(tmp_path, *flags, more_logs=(second,))) == 0
    assert json.loads(capsys.readouterr().out) == {"version": 6}
    (config,) = turns
    assert config.logs == (tmp_path / "escalations.jsonl", second)  # read in the order given
    assert (config.bundle, config.out, config.reference) == (tmp_path / "base", tmp_path / "out", tmp_path / "ref")
    assert (config.learn_reasoning, config.budget_cut_weight, config.student) == (True, 0.25, "fine-tune")
    assert (config.replay_share, config.steps, config.batch_size, config.add_layers) == (0.3, 40, 16, 2)
    assert (config.lr, config.max_new_tokens, config.version, config.seed, config.threads) == (0.001, 20, 9, 4, 1)
    assert (config.gate.n, config.gate.min_cases, config.holdout_share) == (300, 50, 0.1)
    assert (config.calibration_n, config.replay_n, config.min_fresh_records) == (500, 100, 10)
    assert (config.data, config.refused_dir) == (tmp_path, tmp_path / "refused")
    assert (config.key, config.expires_in_days) == (tmp_path / "release.key", 30.0)


def test_the_defaults_learn_the_reasoning_when_the_records_carry_it(tmp_path: Path, turns: list[ImproveConfig]) -> None:
    for choice, learn in (("auto", None), ("no", False)):
        assert main(argv(tmp_path, "--learn-reasoning", choice)) == 0
        assert turns[-1].learn_reasoning is learn
    assert main(argv(tmp_path)) == 0
    default = turns[-1]
    assert (default.learn_reasoning, default.student, default.budget_cut_weight) == (None, "auto", 0.0)
    assert (default.steps, default.lr, default.key, default.refused_dir) == (None, None, None, None)
    assert (default.gate.n, default.gate.min_cases, default.holdout_share) == (2000, 100, 0.2)


def test_a_student_the_gate_refuses_exits_3_with_the_gate_s_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ModelScore(precision_kept=1.0, kept_share=0.6, accuracy={"k=1": 0.98}, kept_by_group={"k=1": 0.6})
    new = ModelScore(precision_kept=0.9, kept_share=0.6, accuracy={"k=1": 0.80}, kept_by_group={"k=1": 0.6})
    result = GateResult(base=base, new=new, regressions=["k=1 accuracy 98.0% -> 80.0%"], rule="number")

    def refused(config: ImproveConfig) -> dict:
        raise GateFailedError(result)

    monkeypatch.setattr(improve, "improve_student", refused)
    assert main(argv(tmp_path)) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    figures, _, message = captured.err.rpartition("}\n")
    assert json.loads(figures + "}") == result.summary()
    assert message.strip() == "error: the new student regressed: k=1 accuracy 98.0% -> 80.0%; no bundle was written"
