"""``edgecloud data arithmetic | smarthome | check``: the built-in tasks' dataset folders, and checking any folder.

A dataset folder is the model kit's contract (:mod:`edgecloud.modelkit.data.datasets`); the built-in tasks
(:mod:`edgecloud.tasks`) write one, ``check`` validates one and prints its rows per split and group
as JSON. A bad folder exits 2 with the ``file:line`` of the first problem on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from edgecloud.modelkit.data.datasets import SPLITS, Dataset, read_dataset
from edgecloud.shared.base.errors import InvalidInputError

__all__ = ["add_data_commands", "summary"]

#: Rows per split when not given: (train, validation, test).
DEFAULT_SIZES = (20_000, 2_000, 2_000)
_TASKS = {
    "arithmetic": "integer expressions with 1 to 4 operators; answers match as numbers",
    "smarthome": "smart-home commands in English to JSON actions; answers match as JSON",
}
_NO_GROUP = "(none)"


def summary(data: Dataset) -> dict[str, Any]:
    """What ``data check`` prints for a dataset: its name, answer matching, rows per split and group."""
    splits = {}
    for split in SPLITS:
        rows = data.split(split)
        groups = Counter(row.group or _NO_GROUP for row in rows)
        splits[split] = {"rows": len(rows), "groups": dict(sorted(groups.items()))}
    return {"path": str(data.path), "name": data.name, "answer_match": data.answer_match, "splits": splits}


def _error(message: object) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _write(args: argparse.Namespace) -> int:
    from edgecloud.tasks import arithmetic, smarthome

    task = {"arithmetic": arithmetic, "smarthome": smarthome}[args.task]
    if args.out.exists() and not args.out.is_dir():
        return _error(f"{args.out}: exists and is not a folder")
    try:
        data = task.write(args.out, train=args.train, validation=args.validation, test=args.test, seed=args.seed)
    except OSError as exc:
        return _error(f"{args.out}: {exc.strerror or exc}")
    print(json.dumps(summary(data), indent=2))
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        data = read_dataset(args.path)
    except InvalidInputError as exc:
        return _error(exc)
    print(json.dumps(summary(data), indent=2))
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_data_commands(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser(
        "data", help="write the built-in tasks' dataset folders, check a dataset folder"
    ).add_subparsers(dest="action", required=True)
    train, validation, test = DEFAULT_SIZES
    for name, about in _TASKS.items():
        task = data.add_parser(name, help=f"write the {name} dataset folder ({about})")
        task.add_argument("--out", type=Path, required=True, metavar="DIR", help="the dataset folder to write")
        task.add_argument("--train", type=_positive, default=train, help=f"training rows (default: {train})")
        task.add_argument(
            "--validation", type=_positive, default=validation, help=f"validation rows (default: {validation})"
        )
        task.add_argument("--test", type=_positive, default=test, help=f"test rows (default: {test})")
        task.add_argument("--seed", type=int, default=0, help="generation seed; each split has its own (default: 0)")
        task.set_defaults(func=_write, task=name)
    check = data.add_parser("check", help="validate a dataset folder and print its rows per split and group")
    check.add_argument("path", type=Path, metavar="DIR", help="the dataset folder")
    check.set_defaults(func=_check)
