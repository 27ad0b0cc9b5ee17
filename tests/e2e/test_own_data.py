"""A team's own task, through the commands alone: a dataset folder the project has never seen goes
through ``models build --data --quick``, ``cloud serve`` and ``edge serve`` (real processes, real
gRPC and HTTP), its traffic fills the cloud's escalation log, and ``models improve`` learns from
that log. Nothing of the built-in arithmetic task may show up in any bundle, golden case or gate
report."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from edgecloud.cli import main
from edgecloud.modelkit.data.datasets import Row, write_dataset
from edgecloud.shared.bundles.manifest import load_manifest
from edgecloud.shared.escalations.records import read_escalations
from tests.helpers.waiting import free_port, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
WORDS = ("cedar", "maple", "birch", "aspen", "larch", "rowan", "alder", "hazel", "yew", "elm", "fir", "oak", "lime")
GROUPS = {"short", "long", "escalations"}
ARITHMETIC = re.compile(r"\d\s*[-+*/]\s*\d")


def _row(rng: random.Random) -> Row:
    """Sort a word's letters: a task no module of the project was written for."""
    word = rng.choice(WORDS) + "".join(rng.choice("bdgkmpstvz") for _ in range(rng.randint(0, 3)))
    answer = "".join(sorted(word))
    group = "short" if len(word) <= 5 else "long"
    return Row(query=f"sort the letters of {word}", answer=answer, reasoning=" ".join(answer), group=group)


def _write(path: Path) -> Path:
    rng = random.Random(11)
    return write_dataset(
        path,
        name="sorted-letters",
        answer_match="exact",
        train=[_row(rng) for _ in range(400)],
        validation=[_row(rng) for _ in range(240)],
        test=[_row(rng) for _ in range(40)],
    )


@contextmanager
def _process(command: list[str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "edgecloud", *command], cwd=REPO, stdout=out, stderr=out)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _serve_and_query(models: Path, queries: list[str], work: Path) -> Path:
    """The cloud and the edge as processes; every query through the edge's HTTP API. Returns the log."""
    escalations, grpc_port, http_port = work / "escalations.jsonl", free_port(), free_port()
    cloud = ["cloud", "serve", "--model", str(models / "cloud-teacher"), "--port", str(grpc_port)]
    cloud += ["--metrics-port", "-1", "--store", str(work / "sessions.sqlite3"), "--escalation-log", str(escalations)]
    edge = ["edge", "serve", "--bundle", str(models / "edge-student"), "--cloud", f"127.0.0.1:{grpc_port}"]
    edge += ["--port", str(http_port), "--outbox", str(work / "outbox.sqlite3"), "--device-id", "dev-own"]
    with _process(cloud, work / "cloud.log"), _process(edge, work / "edge.log") as daemon:
        url = f"http://127.0.0.1:{http_port}"

        def ready() -> bool:
            assert daemon.poll() is None, (work / "edge.log").read_text()
            try:
                return httpx.get(f"{url}/readyz", timeout=2).json().get("cloud") == "up"
            except (httpx.HTTPError, ValueError):
                return False

        wait_for(ready, 120, "the edge daemon and its cloud")
        with httpx.Client(base_url=url, timeout=60) as client:
            for query in queries:
                response = client.post("/v1/query", json={"query": query})
                assert response.status_code == 200, response.text
    return escalations


def test_a_dataset_never_seen_goes_through_build_serve_and_improve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write(tmp_path / "data")
    models = tmp_path / "models"
    assert main(["models", "build", "--data", str(data), "--quick", "--name", "letters", "--out", str(models)]) == 0
    student = load_manifest(models / "edge-student")
    assert (student.name, load_manifest(models / "cloud-teacher").name) == ("letters-student", "letters-teacher")
    capsys.readouterr()

    queries = [row.query for row in _split(data, "train")[:260]]
    log = _serve_and_query(models, queries, tmp_path)
    records = read_escalations(log)
    assert records and {r.producer_name for r in records} == {"letters-student"}

    improved = tmp_path / "improved"
    status = main(
        ["models", "improve", str(log), "--bundle", str(models / "edge-student"), "--out", str(improved)]
        + ["--steps", "40", "--batch-size", "16", "--replay-n", "200", "--threads", "1", "--gate-min-cases", "60"]
    )
    out, err = capsys.readouterr()
    # 0: a better student; 3: the gate refused it, with its figures (tiny quick models may learn nothing).
    assert status in (0, 3), err
    report = json.loads(out)["gate"] if status == 0 else _printed_report(err)
    groups = {group for side in ("base", "new") for group in report[side]["cases"]}
    assert groups and groups <= GROUPS, groups
    assert sum(report["new"]["cases"].values()) >= 60
    if status == 3:  # the quick models answer (nearly) nothing right: the gate must say so, not pass
        assert report["regressions"] and not (improved / "edge-student").exists()
    else:
        manifest = load_manifest(improved / "edge-student")
        assert (manifest.name, manifest.version) == ("letters-student", student.version + 1)
        assert manifest.io["answer_match"] == "exact"
        dataset_queries = {row.query for split in ("train", "validation") for row in _split(data, split)}
        assert manifest.golden and all(case.query in dataset_queries for case in manifest.golden)
        assert "mix" not in manifest.metadata["recipe"]
        assert not any(ARITHMETIC.search(case.query) for case in manifest.golden)
        assert set(manifest.calibration["validation"]["groups"]) <= GROUPS


def _printed_report(err: str) -> dict:
    """The gate's figures ``models improve`` prints on stderr when the gate refuses."""
    lines = err.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    end = next(i for i in range(start, len(lines)) if lines[i] == "}")
    return json.loads("\n".join(lines[start : end + 1]))


def _split(data: Path, split: str) -> list[Row]:
    from edgecloud.modelkit.data.datasets import read_dataset

    return list(read_dataset(data).split(split))
