"""llama.cpp's OpenAI-compatible server (``llama-cpp-python[server]``) on a free loopback port,
serving a GGUF file: the serving engine the OpenAI backend's tests talk to.

The server lives in its own virtual environment (``make llama-server`` builds it into
``.venv-llama``; ``EDGECLOUD_LLAMA_PYTHON`` names another interpreter), so its dependencies never
meet the project's. Without it the tests that need it skip, unless ``EDGECLOUD_REQUIRE_LLAMA=1``
(CI sets it): then they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.waiting import free_port, stop_process

REPO = Path(__file__).resolve().parents[2]


def llama_python() -> Path | None:
    """The interpreter that has ``llama_cpp.server``, or None."""
    configured = os.environ.get("EDGECLOUD_LLAMA_PYTHON")
    candidate = Path(configured) if configured else REPO / ".venv-llama" / "bin" / "python"
    if not candidate.is_file():
        return None
    probe = subprocess.run(
        [str(candidate), "-c", "import llama_cpp.server"], check=False, capture_output=True, timeout=60
    )
    return candidate if probe.returncode == 0 else None


def require_llama_python() -> Path:
    python = llama_python()
    if python is not None:
        return python
    message = "llama-cpp-python[server] is not installed (make llama-server builds it into .venv-llama)"
    if os.environ.get("EDGECLOUD_REQUIRE_LLAMA") == "1":
        pytest.fail(message)
    pytest.skip(message)


class LlamaServer:
    """``python -m llama_cpp.server`` on 127.0.0.1 serving ``model`` as ``alias``, one request at a
    time and none cut short for the next (``--interrupt_requests False``: its default ends a
    stream as soon as another request waits)."""

    def __init__(
        self, python: Path, model: Path, log: Path, *, alias: str = "teacher", n_ctx: int = 384, threads: int = 1
    ) -> None:
        self.port = free_port()
        self.alias = alias
        self.log = log
        command = [
            str(python), "-m", "llama_cpp.server",
            "--model", str(model),
            "--model_alias", alias,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(n_ctx),
            "--n_threads", str(threads),
            "--interrupt_requests", "False",
        ]  # fmt: skip
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        self._wait_ready(timeout=120)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"llama.cpp's server exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as answer:
                    if json.load(answer).get("data"):
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama.cpp's server did not answer within {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        stop_process(self.process)


def serve_model(model_dir: Path, folder: Path, **options: object) -> LlamaServer:
    """The model kit model in ``model_dir`` written as GGUF into ``folder`` and served (options as
    :class:`LlamaServer`'s); skips or fails as :func:`require_llama_python` says when there is no server."""
    from edgecloud.modelkit.gguf_export import export_gguf

    python = require_llama_python()
    return LlamaServer(python, export_gguf(model_dir, folder / "model.gguf"), folder / "server.log", **options)  # type: ignore[arg-type]
