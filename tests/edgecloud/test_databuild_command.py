"""``models build --data``'s flags through the real command line: each flag of the other kind of
build refused with exit 2 before anything is built, and what the flags become in the build's
configuration. (The folder, the name, ``--teacher`` and the step counts are refused in
tests/modelkit/data/test_build.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecloud.cli import main
from edgecloud.modelkit.data.build import DataBuildConfig
from edgecloud.modelkit.data.datasets import Row, write_dataset


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rows = [Row(query=f"reverse word{i}", answer=f"{i}drow") for i in range(20)]
    return write_dataset(
        tmp_path / "data", name="reverse", answer_match="exact", train=rows, validation=rows, test=rows
    )


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--teacher", "{dir}"], "--teacher"),
        (["--teacher-steps", "100"], "--teacher-steps"),
        (["--label-max-new-tokens", "64"], "--label-max-new-tokens"),
        (["--student", "{dir}"], "--student"),
        (["--keep-case"], "--keep-case"),
        (["--name", "toy", "--keep-case", "--teacher-steps", "9"], "--name, --teacher-steps, --keep-case"),
    ],
)
def test_flags_of_a_build_from_data_are_refused_without_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, flags: list[str], named: str
) -> None:
    out = tmp_path / "out"
    argv = ["models", "build", "--quick", "--out", str(out), *[str(tmp_path) if f == "{dir}" else f for f in flags]]
    assert main(argv) == 2
    assert f"{named}: only for a build from a dataset folder (--data DIR)" in caplog.text
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--refine-teacher"], "--refine-teacher"),
        (["--reuse-student", "{dir}"], "--reuse-student"),
        (["--reuse-teacher", "{dir}", "--reuse-student", "{dir}"], "--reuse-teacher, --reuse-student"),
    ],
)
def test_flags_of_the_demo_build_are_refused_with_data(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, flags: list[str], named: str
) -> None:
    out = tmp_path / "out"
    given = [str(tmp_path) if f == "{dir}" else f for f in flags]
    assert main(["models", "build", "--quick", "--data", str(data), "--name", "toy", "--out", str(out), *given]) == 2
    assert f"{named}: not for a build from a dataset folder (use --teacher, --student)" in caplog.text
    assert not out.exists()


def test_teacher_steps_are_refused_with_a_teacher_that_is_not_trained(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    argv = ["models", "build", "--data", str(data), "--name", "toy", "--out", str(out), "--teacher", str(tmp_path)]
    assert main([*argv, "--teacher-steps", "100"]) == 2  # without --quick too
    assert "not with --teacher (none is trained)" in caplog.text
    assert not out.exists()


def test_the_flags_become_the_build_s_configuration(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgecloud.modelkit.data import build as databuild

    seen: list[DataBuildConfig] = []
    monkeypatch.setattr(databuild, "build_from_data", lambda config: seen.append(config) or {"built": config.name})
    argv = ["models", "build", "--data", str(data), "--name", "toy", "--out", str(tmp_path / "out")]
    extra = ["--seed", "3", "--version", "4", "--threads", "1", "--label-cache", str(tmp_path / "labels")]
    assert main([*argv, *extra, "--keep-case", "--quick"]) == 0
    assert json.loads(capsys.readouterr().out) == {"built": "toy"}  # the build's summary, as JSON
    assert main(argv) == 0
    keep, default = seen
    assert (keep.name, keep.data, keep.out) == ("toy", data, tmp_path / "out")
    assert (keep.seed, keep.version, keep.threads, keep.quick) == (3, 4, 1, True)
    assert keep.label_cache == tmp_path / "labels" and keep.teacher_dir is None and keep.student_dir is None
    assert keep.lowercase is False and default.lowercase is None  # --keep-case never folds; else the build decides
    assert default.quick is False and default.label_max_new_tokens is None
