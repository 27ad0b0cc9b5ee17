"""``python -m edgecloud.demo``: the whole of edgecloud on one machine, on the shipped demo models."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edgecloud.demo.scenario import DemoConfig, run_demo
from edgecloud.demo.stack import StackConfig
from edgecloud.demo.workloads import TASKS, demo_task
from edgecloud.shared.base.errors import EdgecloudError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument(
        "--out", type=Path, default=Path("out/demo"), help="report, plots and run folder (default: out/demo)"
    )
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=12, help="client threads sending queries (default: 12)")
    parser.add_argument("--edges", type=int, default=3, help="edge daemons (default: 3)")
    parser.add_argument(
        "--task",
        choices=sorted(TASKS),
        default="arithmetic",
        help="the built-in task the traffic draws from (default: arithmetic; smarthome: commands to JSON actions)",
    )
    parser.add_argument(
        "--models",
        type=Path,
        default=None,
        help="folder with cloud-teacher and edge-student built for --task (default: models/, models/smarthome/)",
    )
    parser.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "embedded"),
        default="auto",
        help="mosquitto when installed (auto), or the embedded amqtt broker",
    )
    parser.add_argument("--outage-s", type=float, default=8.0, help="seconds the cloud stays down (default: 8)")
    parser.add_argument(
        "--improve-steps",
        type=int,
        default=40,
        help="fine-tuning steps of the models improve run that builds the version rolled out midway (default: 40)",
    )
    parser.add_argument(
        "--gate-checks",
        type=int,
        default=10,
        help="shadow checks of the new version a rollout wave needs before its quality gate judges it (default: 10)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        task = demo_task(args.task, args.models)
        config = DemoConfig(
            out=args.out,
            task=task,
            queries=args.queries,
            concurrency=args.concurrency,
            outage_s=args.outage_s,
            improve_steps=args.improve_steps,
            quality={**DemoConfig.QUALITY, "min_shadow_checks": args.gate_checks},
            stack=StackConfig(work=args.out / "run", models=task.models, edges=args.edges, broker=args.broker),
        )
        return run_demo(config)
    except EdgecloudError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
