"""The arithmetic task as a dataset: integer expressions with exact answers.

The problems are :mod:`edgecloud.modelkit.arithmetic.task`'s (k operators, k in 1..4, varied wording); a row
carries the query, the answer as an integer's text, the scratchpad the demo teacher learns
(:func:`edgecloud.modelkit.arithmetic.scratchpad.think_text`) as ``reasoning``, and ``k=<k>`` as its group.
Answers match as numbers. Each split draws from its own seed space (:class:`~edgecloud.modelkit.arithmetic.task.Split`),
so no split reuses another's random stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from edgecloud.modelkit.arithmetic.scratchpad import think_text
from edgecloud.modelkit.arithmetic.task import EVAL_MIX, MAX_K, Problem, Split, generate
from edgecloud.modelkit.data.datasets import Dataset, Row
from edgecloud.tasks.common import check_mix, check_split, write_task

__all__ = ["ANSWER_MATCH", "DEFAULT_MIX", "GROUPS", "NAME", "generate_rows", "row_of", "write"]

NAME = "arithmetic"
ANSWER_MATCH = "number"
GROUPS = tuple(f"k={k}" for k in range(1, MAX_K + 1))
#: 40% simple (k=1), 20% each of k=2, 3, 4: the evaluation mix.
DEFAULT_MIX: dict[str, float] = {f"k={k}": weight for k, weight in EVAL_MIX.items()}
DESCRIPTION = "Integer expressions with 1 to 4 operators (+ - *); k=1 is simple, k>=2 needs reasoning."


def row_of(problem: Problem) -> Row:
    """The dataset row of one problem."""
    return Row(query=problem.query, answer=str(problem.answer), reasoning=think_text(problem), group=f"k={problem.k}")


def generate_rows(n: int, seed: int, split: str, mix: Mapping[str, float] | None = None) -> list[Row]:
    """``n`` rows of ``split`` (``train``, ``validation`` or ``test``), groups drawn from ``mix``
    (group -> weight, default :data:`DEFAULT_MIX`); reproducible from ``(seed, split)``."""
    weights = check_mix(DEFAULT_MIX if mix is None else mix, GROUPS)
    by_k = {int(group.removeprefix("k=")): weight for group, weight in weights.items()}
    return [row_of(p) for p in generate(n, seed, Split[check_split(split).upper()], by_k)]


def write(
    out_dir: Path | str, *, train: int = 20_000, validation: int = 2_000, test: int = 2_000, seed: int = 0
) -> Dataset:
    """Write the arithmetic dataset folder to ``out_dir`` and return it as read back."""
    sizes = {"train": train, "validation": validation, "test": test}
    return write_task(
        out_dir, generate_rows, name=NAME, answer_match=ANSWER_MATCH, description=DESCRIPTION, sizes=sizes, seed=seed
    )
