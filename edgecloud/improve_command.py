"""``edgecloud models improve``: the next edge student from the cloud's escalation logs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_improve_command"]


def _models_improve(args: argparse.Namespace) -> int:
    from edgecloud.modelkit.loop.gate import GateConfig
    from edgecloud.modelkit.loop.improve import GateFailedError, ImproveConfig, improve_student

    config = ImproveConfig(
        logs=tuple(args.logs),
        bundle=args.bundle,
        reference=args.reference,
        out=args.out,
        version=args.version,
        learn_reasoning={"auto": None, "yes": True, "no": False}[args.learn_reasoning],
        budget_cut_weight=args.budget_cut_weight,
        field_weight=args.field_weight,
        student=args.student,
        replay_share=args.replay_share,
        steps=args.steps,
        batch_size=args.batch_size,
        add_layers=args.add_layers,
        lr=args.lr,
        max_new_tokens=args.max_new_tokens,
        key=args.key,
        expires_in_days=args.expires_in_days,
        seed=args.seed,
        threads=args.threads,
        gate=GateConfig(n=args.gate_n, min_cases=args.gate_min_cases),
        calibration_n=args.calibration_n,
        holdout_share=args.holdout_share,
        min_fresh_records=args.min_fresh_records,
        data=args.data,
        replay_n=args.replay_n,
        refused_dir=args.keep_refused,
    )
    try:
        summary = improve_student(config)
    except GateFailedError as exc:
        print(json.dumps(exc.result.summary(), indent=2), file=sys.stderr)
        print(f"error: {exc}; no bundle was written", file=sys.stderr)
        return 3
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _add_improve_training_args(improve: argparse.ArgumentParser) -> None:
    """How ``models improve`` trains: the model, the schedule and what it may write."""
    improve.add_argument(
        "--student",
        choices=("auto", "fine-tune", "fresh"),
        default="auto",
        help="fine-tune the base, or train a fresh 1.3M-parameter reasoner from scratch and ship it as a pair "
        "with the base, which hands it what it is unsure of (auto: fresh when learning the reasoning)",
    )
    improve.add_argument(
        "--replay-share",
        type=float,
        default=None,
        help="share of each batch replaying the base's answers (default: 0.5 fine-tuning, 0 fresh)",
    )
    improve.add_argument(
        "--steps", type=int, default=None, help="training steps (default: 2000 fine-tuning, 700 fresh)"
    )
    improve.add_argument(
        "--batch-size", type=int, default=None, help="rows per step (default: 128 fine-tuning, 64 fresh)"
    )
    improve.add_argument(
        "--add-layers",
        type=int,
        default=0,
        help="decoder layers added to the base first, starting as identities (default: 0)",
    )
    improve.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (default: 1e-3 fine-tuning, 2e-3 fresh)"
    )
    improve.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="tokens the new student may write, reasoning included; longer escalations are learnt as "
        "abstentions (default: 100 fine-tuning, 130 fresh)",
    )


def _add_improve_io_args(improve: argparse.ArgumentParser) -> None:
    """The escalation logs, the base bundle and where the improved one goes."""
    improve.add_argument("logs", type=Path, nargs="+", metavar="LOG", help="escalation logs (JSONL) of the cloud")
    improve.add_argument(
        "--bundle",
        type=Path,
        default=Path("models/edge-student"),
        help="the base edge bundle (default: models/edge-student)",
    )
    improve.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="the base's fp32 student (default: student-reference beside --bundle)",
    )
    improve.add_argument(
        "--out", type=Path, default=Path("models/improved"), help="output folder (default: models/improved)"
    )
    improve.add_argument("--version", type=int, default=None, help="bundle version (default: the base's + 1)")


def _add_improve_gate_args(improve: argparse.ArgumentParser) -> None:
    """What the gate compares the new student with the base on, and when it refuses."""
    improve.add_argument(
        "--gate-n", type=int, default=2000, help="cases of the base's validation data the gate adds (default: 2000)"
    )
    improve.add_argument(
        "--gate-min-cases", type=int, default=100,
        help="fewer comparable cases than this is no evidence: the gate refuses (default: 100)",
    )  # fmt: skip
    improve.add_argument(
        "--holdout-share", type=float, default=0.2,
        help="share of the escalation records kept out of training for the gate (default: 0.2)",
    )  # fmt: skip
    improve.add_argument(
        "--min-fresh-records", type=int, default=2000,
        help="a fresh reasoner is refused on fewer training records than this (default: 2000)",
    )  # fmt: skip


def _add_improve_signing_args(improve: argparse.ArgumentParser) -> None:
    """Signing the improved bundle, and keeping one the gate refuses."""
    improve.add_argument("--key", type=Path, default=None, help="sign the bundle with this Ed25519 private key (PEM)")
    improve.add_argument(
        "--expires-in-days", type=float, default=None, metavar="DAYS",
        help="with --key: a signed expiry this far ahead; devices and the fleet manager refuse to install the "
        "bundle after it (default: none)",
    )  # fmt: skip
    improve.add_argument(
        "--keep-refused",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep a student the gate refuses here, unsigned, for inspection (default: thrown away)",
    )


def add_improve_command(models: argparse._SubParsersAction) -> None:
    improve = models.add_parser(
        "improve", help="train the next edge student on the cloud's answers to escalations, gate it, bundle it"
    )
    _add_improve_io_args(improve)
    improve.add_argument(
        "--learn-reasoning",
        choices=("auto", "yes", "no"),
        default="auto",
        help="learn the cloud's reasoning as a scratchpad (auto: when the records carry it)",
    )
    improve.add_argument(
        "--budget-cut-weight",
        type=float,
        default=0.0,
        help="sampling weight of answers whose thinking the budget cut (default: 0, left out)",
    )
    improve.add_argument(
        "--field-weight",
        type=float,
        default=2.0,
        help="sampling weight of shadow checks the cloud contradicted: answers the edge kept and got wrong "
        "(default: 2; checks it confirmed are left out)",
    )
    _add_improve_training_args(improve)
    _add_improve_gate_args(improve)
    improve.add_argument(
        "--data", type=Path, default=None, metavar="DIR",
        help="the base's dataset folder, where the one its manifest names is not here",
    )  # fmt: skip
    improve.add_argument(
        "--calibration-n", type=int, default=4000, help="validation queries triage is calibrated on (default: 4000)"
    )
    improve.add_argument(
        "--replay-n", type=int, default=20000, help="queries the base answers for replay (default: 20000)"
    )
    _add_improve_signing_args(improve)
    improve.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    improve.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    improve.set_defaults(func=_models_improve)
