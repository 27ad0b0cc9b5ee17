"""Fixtures shared across the suite: the shipped demo bundles and a quick build."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED_MODELS = REPO / "models"


@pytest.fixture(scope="session")
def shipped_models() -> Path:
    """The demo bundles committed to the repository."""
    if not (SHIPPED_MODELS / "edge-student" / "manifest.json").exists():
        pytest.fail(f"no shipped bundles under {SHIPPED_MODELS}; run `make models`")
    return SHIPPED_MODELS


@pytest.fixture(scope="session")
def quick_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full pipeline run on tiny models (`edgecloud models build --quick`), once per session."""
    from cloud.modelkit.build import BuildConfig, build_models

    out = tmp_path_factory.mktemp("quick-models")
    build_models(BuildConfig(out=out, quick=True, threads=2))
    return out
