"""``edgecloud models recalibrate``: the same student, its triage refitted on the field's records."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_recalibrate_command"]


def _models_recalibrate(args: argparse.Namespace) -> int:
    from edgecloud.modelkit.loop.recalibrate import RecalibrateConfig, recalibrate_bundle

    config = RecalibrateConfig(
        logs=tuple(args.logs),
        bundle=args.bundle,
        out=args.out,
        version=args.version,
        shadow_share=args.shadow_share,
        target_precision=args.target_precision,
        confidence_level=args.confidence_level,
        min_records=args.min_records,
        min_checks=args.min_checks,
        key=args.key,
        expires_in_days=args.expires_in_days,
        threads=args.threads,
    )
    print(json.dumps(recalibrate_bundle(config), indent=2, default=str))
    return 0


def add_recalibrate_command(models: argparse._SubParsersAction) -> None:
    parser = models.add_parser(
        "recalibrate",
        help="refit only the triage calibration of an edge bundle on the cloud's escalation logs (escalations and "
        "shadow checks) and write it as the next version, weights unchanged",
    )
    parser.add_argument("logs", type=Path, nargs="+", metavar="LOG", help="escalation logs (JSONL) of the cloud")
    parser.add_argument(
        "--bundle", type=Path, default=Path("models/edge-student"),
        help="the edge bundle whose records these are (default: models/edge-student)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=Path("models/recalibrated"),
        help="output folder; the bundle goes to OUT/edge-student (default: models/recalibrated)",
    )  # fmt: skip
    parser.add_argument("--version", type=int, default=None, help="bundle version (default: the bundle's + 1)")
    parser.add_argument(
        "--shadow-share", type=float, default=0.02,
        help="the share of kept answers the devices had the cloud check: each check stands for 1/SHARE kept answers "
        "(default: 0.02, the daemon's; the fleet's effective share is checks / kept in GET /v1/quality)",
    )  # fmt: skip
    parser.add_argument(
        "--target-precision", type=float, default=None,
        help="precision the kept answers must reach (default: the bundle's own target)",
    )  # fmt: skip
    parser.add_argument(
        "--confidence-level", type=float, default=0.95,
        help="the target must hold for the kept answers' Wilson lower bound at this level (default: 0.95)",
    )  # fmt: skip
    parser.add_argument(
        "--min-records", type=int, default=200, help="fewer usable field records is no evidence (default: 200)"
    )
    parser.add_argument(
        "--min-checks", type=int, default=20,
        help="fewer shadow checks is no evidence about the answers kept (default: 20; 0 only where the devices "
        "kept almost nothing, so that their escalations are the whole traffic)",
    )  # fmt: skip
    parser.add_argument("--key", type=Path, default=None, help="sign the bundle with this Ed25519 private key (PEM)")
    parser.add_argument(
        "--expires-in-days", type=float, default=None, metavar="DAYS",
        help="with --key: a signed expiry this far ahead (default: none)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default: 2)")
    parser.set_defaults(func=_models_recalibrate)
