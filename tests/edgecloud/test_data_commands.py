"""``edgecloud data arithmetic | smarthome | check``, in-process and through the real command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgecloud import cli
from edgecloud.modelkit.data.datasets import read_dataset
from edgecloud.tasks import arithmetic, smarthome

SIZES = ["--train", "30", "--validation", "8", "--test", "9"]


@pytest.mark.parametrize(
    ("task", "module", "rule"), [("arithmetic", arithmetic, "number"), ("smarthome", smarthome, "json")]
)
def test_a_task_writes_its_folder_and_check_reads_it(
    task: str, module: object, rule: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / task
    assert cli.main(["data", task, "--out", str(out), *SIZES, "--seed", "2"]) == 0
    written = json.loads(capsys.readouterr().out)
    data = read_dataset(out)
    assert (data.name, data.answer_match) == (task, rule)
    assert list(data.train) == module.generate_rows(30, 2, "train")  # type: ignore[attr-defined]

    assert cli.main(["data", "check", str(out)]) == 0
    checked = json.loads(capsys.readouterr().out)
    assert checked == written
    assert {split: s["rows"] for split, s in checked["splits"].items()} == {"train": 30, "validation": 8, "test": 9}
    groups = checked["splits"]["train"]["groups"]
    assert sum(groups.values()) == 30 and set(groups) <= set(module.GROUPS)  # type: ignore[attr-defined]


def test_check_counts_rows_without_a_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for split in ("train", "validation", "test"):
        (tmp_path / f"{split}.jsonl").write_text(
            '{"query": "a", "answer": "b"}\n{"query": "c", "answer": "d", "group": "g"}\n'
        )
    assert cli.main(["data", "check", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["answer_match"] == "exact" and report["name"] == tmp_path.name
    assert report["splits"]["test"] == {"rows": 2, "groups": {"(none)": 1, "g": 1}}


def test_check_refuses_a_bad_folder_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["data", "check", str(tmp_path / "nowhere")]) == 2
    assert "not a dataset folder" in capsys.readouterr().err
    assert cli.main(["data", "check", str(tmp_path)]) == 2
    assert "missing train.jsonl, validation.jsonl, test.jsonl" in capsys.readouterr().err


def test_sizes_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["data", "arithmetic", "--out", str(tmp_path / "x"), "--test", "0"])
    assert exit_info.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_out_must_be_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    assert cli.main(["data", "smarthome", "--out", str(tmp_path / "file"), *SIZES]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_the_real_command_line_names_the_bad_line_and_exits_2(tmp_path: Path) -> None:
    smarthome.write(tmp_path / "home", train=5, validation=3, test=3)
    validation = tmp_path / "home" / "validation.jsonl"
    validation.write_text(validation.read_text() + '{"query": "turn on the tv", "answer": 7}\n')
    result = subprocess.run(
        [sys.executable, "-m", "edgecloud", "data", "check", str(tmp_path / "home")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert f"error: {validation}:4: answer must be a string" in result.stderr
    assert result.stdout == ""
