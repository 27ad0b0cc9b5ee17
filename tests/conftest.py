"""Fixtures shared across the suite: the shipped demo bundles and a quick build, the cloud's teacher
and a random Qwen3, a mosquitto broker, a Redis server, and the fleet tests' simulated devices and managers (stopped
after each test). What they start is in tests/helpers/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.helpers.redis_server import RedisServer
from tests.helpers.waiting import free_port, stop_process

if TYPE_CHECKING:  # the cloud's model backend needs torch; edge-only installs run without it
    from edgecloud.cloud.transformers_engine import LoadedModel
    from edgecloud.fleet.manager import FleetManager
    from tests.helpers.sim_fleet import SimDevice

REPO = Path(__file__).resolve().parents[1]
SHIPPED_MODELS = REPO / "models"


@pytest.fixture(scope="session")
def shipped_models() -> Path:
    """The demo bundles committed to the repository."""
    if not (SHIPPED_MODELS / "edge-student" / "manifest.json").exists():
        pytest.fail(f"no shipped bundles under {SHIPPED_MODELS}; run `make models`")
    return SHIPPED_MODELS


@pytest.fixture(scope="session")
def shipped_base_models(shipped_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``models/`` as it was before the learning loop's turn: the shipped pair's base as a student of its
    own (version, calibration and files as in the pair, no reasoner), its fp32 reference and the teacher.
    For tests of the single-model path, and of a student that escalates every multi-step query."""
    from edgecloud.edge.runtime import EdgeModel
    from edgecloud.shared.bundles.manifest import load_manifest, write_bundle

    out = tmp_path_factory.mktemp("base-models")
    pair_dir = shipped_models / "edge-student"
    pair = load_manifest(pair_dir)
    student = out / "edge-student"
    for entry in pair.files:
        if Path(entry.path).parts[0] != "reasoner":
            (student / entry.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pair_dir / entry.path, student / entry.path)
    base = pair.metadata["pair"]["base"]
    metadata = {key: value for key, value in pair.metadata.items() if key not in ("pair", "training_set")}

    alone = EdgeModel.from_bundle(pair_dir)  # the pair's first stage: its graph, without the reasoner
    write_bundle(
        student, name=base["name"], kind="edge", version=base["version"],
        io={key: value for key, value in pair.io.items() if key != "reasoner"}, calibration=pair.calibration,
        golden=[case for case in pair.golden if alone.answer(case.query).text == case.expected], metadata=metadata,
    )  # fmt: skip
    shutil.copytree(
        shipped_models / "student-reference", out / "student-reference", ignore=shutil.ignore_patterns("reasoner")
    )
    (out / "cloud-teacher").symlink_to(shipped_models / "cloud-teacher", target_is_directory=True)
    return out


@pytest.fixture(scope="session")
def quick_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full pipeline run on tiny models (`edgecloud models build --quick`), once per session."""
    from edgecloud.modelkit.arithmetic.build import BuildConfig, build_models

    out = tmp_path_factory.mktemp("quick-models")
    build_models(BuildConfig(out=out, quick=True, threads=2))
    return out


@pytest.fixture(scope="session")
def teacher_dir(shipped_models: Path) -> Path:
    return shipped_models / "cloud-teacher"


@pytest.fixture(scope="session")
def teacher(teacher_dir: Path) -> LoadedModel:
    pytest.importorskip("torch", reason="the cloud's model backend needs torch (an edge-only install has none)")
    from edgecloud.cloud.transformers_engine import LoadedModel

    return LoadedModel.from_dir(teacher_dir, device="cpu", name="cloud-teacher", version=1)


@pytest.fixture(scope="session")
def random_qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained Qwen3 saved like any Hugging Face model: it never closes its
    think block on its own, which makes it a long-running session on demand."""
    torch = pytest.importorskip("torch", reason="the cloud's model backend needs torch")
    from transformers import Qwen3ForCausalLM

    from edgecloud.modelkit.tokenizer import build_tokenizer
    from tests.helpers.cloud import tiny_qwen3_config

    directory = tmp_path_factory.mktemp("random-qwen3")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(tiny_qwen3_config(tokenizer, max_position_embeddings=8192))
    with torch.no_grad():  # logits of 0 for the end tokens, while greedy picks a positive one
        for token in (tokenizer.eos_token, "</think>"):
            model.lm_head.weight[tokenizer.convert_tokens_to_ids(token)] = 0.0
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


class MosquittoBroker:
    """A real mosquitto on a free loopback port, restartable on the same port."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.host = "127.0.0.1"
        self.config = directory / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {directory}/\nlog_dest none\n"
        )
        self.process = None
        self.start()

    def start(self) -> None:
        import shutil
        import socket
        import subprocess
        import time

        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen(
            [binary, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex((self.host, self.port)) == 0:
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.process.stderr.read().decode()}")
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        stop_process(self.process)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def mqtt_broker(tmp_path: Path):
    import shutil

    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.fail("mosquitto is not installed (apt-get install mosquitto); .ci/run installs it")
    broker = MosquittoBroker(tmp_path)
    yield broker
    broker.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, this test's alone."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def sims() -> Iterator[list[SimDevice]]:
    started: list[SimDevice] = []
    yield started
    for device in started:
        device.stop()


@pytest.fixture
def managers() -> Iterator[list[FleetManager]]:
    started: list[FleetManager] = []
    yield started
    for manager in started:
        if not manager._stop.is_set():
            manager.close()
