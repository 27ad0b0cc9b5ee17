"""A matplotlib figure for a report's plot, drawn without a display, and how it is saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def figure(width: float = 6.0, height: float = 3.4, ncols: int = 1) -> tuple[Any, Any]:
    """A figure and its axes (``ncols`` of them side by side); matplotlib is imported only here."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height), dpi=100)


def save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
