"""``edgecloud models build --data DIR --name NAME``: the flags of a build from a dataset folder.

Without ``--data``, ``models build`` is the demo build and these flags are refused; with it, the
demo build's ``--reuse-*`` / ``--refine-teacher`` are. Every refusal is a ConfigError (exit 2),
raised before anything is trained (:func:`edgecloud.modelkit.data.build.check_build` checks the
rest: the folder, the name, ``--teacher`` and ``--student``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.reasoner.thinking import THINK_START

__all__ = ["add_data_build_arguments", "build_from_data_command", "refuse_data_flags"]

#: Flags of a build from a dataset folder, and the demo build's that do not go with one.
_DATA_ONLY = {
    "--name": "name",
    "--teacher": "teacher",
    "--teacher-steps": "teacher_steps",
    "--label-max-new-tokens": "label_max_new_tokens",
    "--student": "student",
    "--keep-case": "keep_case",
}
_DEMO_ONLY = {
    "--reuse-teacher": "reuse_teacher",
    "--refine-teacher": "refine_teacher",
    "--reuse-student": "reuse_student",
}


def _given(args: argparse.Namespace, flags: dict[str, str]) -> list[str]:
    return [flag for flag, dest in flags.items() if getattr(args, dest) not in (None, False)]


def add_data_build_arguments(build: argparse.ArgumentParser) -> None:
    data = build.add_argument_group(
        "from a dataset folder", "build from your data instead of the demo task (docs/models.md#datasets)"
    )
    data.add_argument(
        "--data", type=Path, default=None, metavar="DIR", help="dataset folder (edgecloud data check DIR)"
    )
    data.add_argument(
        "--name", default=None, help="bundle name prefix, [a-z0-9][a-z0-9._-]*: NAME-teacher, NAME-student"
    )
    data.add_argument(
        "--teacher",
        type=Path,
        default=None,
        metavar="HF_DIR",
        help=f"use this thinking model as the teacher ({THINK_START} tokens, a chat template) instead of training one",
    )
    data.add_argument(
        "--teacher-steps",
        type=int,
        default=None,
        metavar="N",
        help="training steps of the teacher trained on the data (default: 2500); a teacher that binds several "
        "commands needs more rows and steps (docs/models.md)",
    )
    data.add_argument(
        "--label-max-new-tokens",
        type=int,
        default=None,
        metavar="N",
        help="tokens the teacher may write per label (default: 1.5x the longest training target for a teacher "
        "trained on the data, 1024 for --teacher); a batch runs until its longest label ends",
    )
    data.add_argument(
        "--student",
        type=Path,
        default=None,
        metavar="HF_DIR",
        help="fine-tune this Qwen3 model (fast tokenizer, end token) as the student instead of a fresh one",
    )
    data.add_argument("--keep-case", action="store_true", help="never fold case in the tokenizers built from the data")


def refuse_data_flags(args: argparse.Namespace) -> None:
    """ConfigError when a flag of a build from a dataset folder comes without ``--data``."""
    given = _given(args, _DATA_ONLY)
    if given:
        raise ConfigError(f"{', '.join(given)}: only for a build from a dataset folder (--data DIR)")


def _teacher_recipe(args: argparse.Namespace):
    """The recipe of the teacher trained on the data, with ``--teacher-steps`` where given."""
    from edgecloud.modelkit.data.teacher import DataTeacherRecipe

    recipe = DataTeacherRecipe()
    if args.teacher_steps is None:
        return recipe
    if args.teacher_steps < 1:
        raise ConfigError(f"--teacher-steps must be >= 1, got {args.teacher_steps}")
    if args.teacher is not None or args.quick:
        raise ConfigError(
            "--teacher-steps sizes the teacher trained on the data: not with --teacher (none is trained) "
            "or --quick (its own tiny recipe)"
        )
    return replace(recipe, train=replace(recipe.train, steps=args.teacher_steps))


def _label_max_new_tokens(args: argparse.Namespace) -> int | None:
    if args.label_max_new_tokens is not None and args.label_max_new_tokens < 1:
        raise ConfigError(f"--label-max-new-tokens must be >= 1, got {args.label_max_new_tokens}")
    return args.label_max_new_tokens


def build_from_data_command(args: argparse.Namespace) -> int:
    given = _given(args, _DEMO_ONLY)
    if given:
        raise ConfigError(f"{', '.join(given)}: not for a build from a dataset folder (use --teacher, --student)")
    if args.name is None:
        raise ConfigError("--data needs --name NAME (the bundles are NAME-teacher and NAME-student)")
    from edgecloud.modelkit.data.build import DataBuildConfig, build_from_data

    config = DataBuildConfig(
        teacher=_teacher_recipe(args),
        data=args.data,
        out=args.out,
        name=args.name,
        teacher_dir=args.teacher,
        student_dir=args.student,
        quick=args.quick,
        seed=args.seed,
        version=args.version,
        threads=args.threads,
        label_cache=args.label_cache,
        label_max_new_tokens=_label_max_new_tokens(args),
        lowercase=False if args.keep_case else None,
    )
    summary = build_from_data(config)
    print(json.dumps(summary, indent=2, default=str))
    return 0
