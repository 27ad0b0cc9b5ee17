"""What every built-in task shares: split names, mixes, and writing the dataset folder."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from edgecloud.modelkit.data.datasets import SPLITS, Dataset, Row, read_dataset, write_dataset

__all__ = ["GenerateRows", "check_mix", "check_split", "write_task"]

log = logging.getLogger(__name__)

GenerateRows = Callable[[int, int, str], list[Row]]
"""``generate_rows(n, seed, split)`` of a task."""


def check_split(split: str) -> str:
    """``split`` if it names a dataset split; raises ValueError otherwise."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def check_mix(mix: Mapping[str, float], groups: tuple[str, ...]) -> dict[str, float]:
    """A copy of ``mix`` (group -> weight) after checking its groups and weights."""
    unknown = sorted(set(mix) - set(groups))
    if unknown:
        raise ValueError(f"unknown group {unknown[0]!r} in the mix (groups: {', '.join(groups)})")
    if any(not weight >= 0 for weight in mix.values()) or not sum(mix.values()) > 0:
        raise ValueError(f"mix weights must be >= 0 with a positive sum, got {dict(mix)}")
    return dict(mix)


def write_task(
    out_dir: Path | str,
    generate_rows: GenerateRows,
    *,
    name: str,
    answer_match: str,
    description: str,
    sizes: Mapping[str, int],
    seed: int,
) -> Dataset:
    """Generate every split of a task with ``generate_rows`` and write it to ``out_dir``."""
    for split, n in sizes.items():
        if n < 1:
            raise ValueError(f"{split} needs at least one row, got {n}")
    rows = {}
    for split in SPLITS:
        log.info("%s: generating %d %s rows (seed %d)", name, sizes[split], split, seed)
        rows[split] = generate_rows(sizes[split], seed, split)
    write_dataset(out_dir, name=name, answer_match=answer_match, description=description, **rows)
    log.info("%s: wrote %s", name, out_dir)
    return read_dataset(out_dir)
