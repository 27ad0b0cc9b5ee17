"""The ``edgecloud`` command line: the top of the dependency graph.

Every subcommand lives here (``models``, ``cloud``, ``edge``, ``fleet``), and
nothing imports this module. Subcommands import what they need when they run,
so ``edgecloud --help`` works on an edge device without torch installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from edgecloud.common_options import (
    add_mqtt_arguments,
    add_tracing_argument,
    broker_settings,
    start_tracing,
)
from edgecloud.edge_commands import add_edge_commands
from edgecloud.engine_options import add_engine_arguments, add_gguf_command, remote_engine_config
from edgecloud.shared.reasoner.thinking import THINK_START

__all__ = ["main"]

log = logging.getLogger("edgecloud")


def _models_build(args: argparse.Namespace) -> int:
    from edgecloud.databuild_command import build_from_data_command, refuse_data_flags

    if args.data is not None:
        return build_from_data_command(args)
    refuse_data_flags(args)
    from edgecloud.modelkit.arithmetic.build import BuildConfig, build_models

    config = BuildConfig(
        out=args.out,
        quick=args.quick,
        seed=args.seed,
        version=args.version,
        threads=args.threads,
        reuse_teacher=args.reuse_teacher,
        refine_teacher=args.refine_teacher,
        reuse_student=args.reuse_student,
        label_cache=args.label_cache,
    )
    summary = build_models(config)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _print_report(report: dict[str, object]) -> None:
    print(f"Evaluation on {report['n']} fresh {report['split']} queries (seed {report['seed']})")
    print(f"{'model':<28}{'k1':>8}{'k2':>8}{'k3':>8}{'k4':>8}{'k2-4':>8}{'all':>8}")
    for key in (
        "teacher_thinking",
        "teacher_no_thinking",
        "student_fp32_torch",
        "student_fp32_onnx",
        "student_int8_onnx",
    ):
        acc = report[key]
        assert isinstance(acc, dict)
        row = "".join(f"{100 * acc.get(k, float('nan')):>7.1f}%" for k in ("k1", "k2", "k3", "k4", "k2-4", "all"))
        print(f"{key:<28}{row}")
    for key in ("triage", "latency_single_thread_k1", "sizes_bytes", "params"):
        if key in report:
            print(f"{key}: " + json.dumps(report[key], default=_fmt))
    print("plots: " + ", ".join(report.get("plots", [])))  # type: ignore[arg-type]


def _models_eval(args: argparse.Namespace) -> int:
    from edgecloud.modelkit.arithmetic.evaluate import evaluate_all

    report = evaluate_all(args.models, args.out, n=args.n, seed=args.seed, threads=args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
        print(f"report: {args.out / 'eval.json'}")
    return 0


def _cloud_serve(args: argparse.Namespace) -> int:
    import asyncio

    from edgecloud.cloud.budget import BudgetConfig
    from edgecloud.cloud.config import AuthConfig, CloudConfig, TlsConfig, load_tokens
    from edgecloud.cloud.engine import EngineConfig
    from edgecloud.cloud.server import serve
    from edgecloud.cloud.sessions import SessionConfig

    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SystemExit("error: --tls-cert and --tls-key go together")
        tls = TlsConfig(cert=args.tls_cert, key=args.tls_key, client_ca=args.tls_client_ca)
    tokens = load_tokens(args.tokens) if args.tokens else {}
    config = CloudConfig(
        model=args.model,
        remote_engine=remote_engine_config(args),
        host=args.host,
        port=args.port,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        metrics_host=args.metrics_host,
        store=args.store,
        store_lease_s=args.store_lease,
        store_password_file=args.store_password_file,
        grace_s=args.grace,
        tls=tls,
        auth=AuthConfig(tokens=tokens, required=False if args.no_auth else (True if tokens else None)),
        allow_plaintext_tokens=args.allow_plaintext_tokens,
        engine=EngineConfig(
            max_batch=args.max_batch, max_queue=args.max_queue, device=args.device, threads=args.threads
        ),
        sessions=SessionConfig(
            ttl_s=args.session_ttl,
            finished_in_memory=args.finished_in_memory,
            escalation_log=args.escalation_log,
            max_open_per_device=args.max_sessions_per_device,
            verification_max_waiting=args.verification_max_waiting,
        ),
        budget=BudgetConfig(default=args.default_budget),
    )
    start_tracing("edgecloud-cloud", args.otlp_endpoint)
    asyncio.run(serve(config))
    return 0


def _add_session_store_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--store",
        default="cloud-sessions.sqlite3",
        help="SQLite file of sessions (:memory: keeps none), or redis://HOST:PORT/DB shared by replicas",
    )
    serve.add_argument(
        "--store-lease",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="Redis store: how long a dead replica's sessions wait before another continues them (default: 5)",
    )
    serve.add_argument(
        "--store-password-file", type=Path, help="Redis store: file holding its password (required off loopback)"
    )
    serve.add_argument("--session-ttl", type=float, default=3600.0, help="seconds finished sessions stay retrievable")
    serve.add_argument(
        "--finished-in-memory",
        type=int,
        default=1000,
        help="finished sessions kept in memory (the newest); older ones are read back from the store",
    )


def _add_cloud_commands(commands: argparse._SubParsersAction) -> None:
    cloud = commands.add_parser("cloud", help="the cloud reasoning service").add_subparsers(
        dest="action", required=True
    )
    serve = cloud.add_parser("serve", help="serve the Reasoner gRPC service")
    serve.add_argument(
        "--model",
        type=Path,
        default=Path("models/cloud-teacher"),
        help=f"HF model folder with a {THINK_START} template",
    )
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=50051, help="gRPC port (default: 50051)")
    serve.add_argument("--metrics-port", type=int, default=9100, help="Prometheus port; -1 disables (default: 9100)")
    serve.add_argument("--metrics-host", default="127.0.0.1", help="Prometheus bind address (default: 127.0.0.1)")
    _add_session_store_arguments(serve)
    serve.add_argument("--tokens", type=Path, help='JSON {"device-id": "token"}; required when not on loopback')
    serve.add_argument("--no-auth", action="store_true", help="accept requests without a token even off loopback")
    serve.add_argument("--tls-cert", type=Path, help="PEM server certificate; with --tls-key, serves TLS")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA (mTLS)")
    serve.add_argument(
        "--allow-plaintext-tokens",
        action="store_true",
        help="accept device tokens over plaintext gRPC off loopback (only where TLS ends in front of the server)",
    )
    serve.add_argument("--max-batch", type=int, default=16, help="sessions decoded together (default: 16)")
    serve.add_argument("--max-queue", type=int, default=256, help="waiting sessions before RESOURCE_EXHAUSTED")
    serve.add_argument(
        "--max-sessions-per-device",
        type=int,
        default=64,
        help="unfinished sessions one device may hold before RESOURCE_EXHAUSTED; 0 = no limit (default: 64)",
    )
    serve.add_argument(
        "--verification-max-waiting",
        type=int,
        default=0,
        metavar="N",
        help="devices' shadow checks are refused while more than N sessions wait for an engine slot (default: 0)",
    )
    serve.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    serve.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    add_engine_arguments(serve)
    serve.add_argument("--default-budget", type=int, default=256, help="thinking budget when nothing else decides")
    serve.add_argument("--escalation-log", type=Path, help="JSONL file collecting escalations with features")
    serve.add_argument("--grace", type=float, default=10.0, help="seconds to drain on SIGTERM")
    add_tracing_argument(serve)
    serve.set_defaults(func=_cloud_serve)


def _fleet_serve(args: argparse.Namespace) -> int:
    from edgecloud.fleet.api import create_app, require_authentication
    from edgecloud.fleet.manager import SESSION_EXPIRY_S, FleetManager, FleetManagerConfig
    from edgecloud.shared.base.asgi import serve_until_signal
    from edgecloud.shared.base.net import is_loopback

    if args.command_key is None:
        raise SystemExit(
            "error: fleet serve needs --command-key KEY.pem, the Ed25519 private key commands are signed with "
            "(edgecloud models keygen makes one; devices trust its public half with --trust-commands)"
        )
    if not args.trust:
        log.warning("no --trust key: bundles are registered unchecked (devices still verify signatures)")
    if args.public_url is None and args.host in ("0.0.0.0", "::"):
        raise SystemExit(
            f"error: --host {args.host} needs --public-url: devices cannot download from http://{args.host}:{args.port}"
        )
    config = FleetManagerConfig(
        fleet=args.fleet,
        broker=broker_settings(args, session_expiry_s=SESSION_EXPIRY_S),
        store_path=args.store,
        artifact_dir=args.artifacts,
        public_base_url=args.public_url or f"http://{args.host}:{args.port}",
        trusted_keys=tuple(args.trust),
        command_key=args.command_key,
    )
    api_key = args.api_key_file.read_text().strip() if args.api_key_file else None
    artifact_token = args.artifact_token_file.read_text().strip() if args.artifact_token_file else None
    require_authentication(args.host, api_key, allow_unauthenticated=args.allow_unauthenticated)  # ConfigError
    if artifact_token is None and not is_loopback(args.host):
        log.warning(
            "GET /artifacts is open to anyone who reaches %s:%d (archives are signed, but a reader learns the "
            "models); pass --artifact-token-file to require a token devices send",
            args.host,
            args.port,
        )
    start_tracing("edgecloud-fleet", args.otlp_endpoint)
    manager = FleetManager(config)
    manager.start()
    try:
        app = create_app(manager, api_key=api_key, artifact_token=artifact_token)
        serve_until_signal(app, host=args.host, port=args.port)
    finally:
        manager.close()
    return 0


def _add_fleet_commands(commands: argparse._SubParsersAction) -> None:
    fleet = commands.add_parser("fleet", help="the fleet manager").add_subparsers(dest="action", required=True)
    serve = fleet.add_parser("serve", help="serve the fleet manager (REST API, dashboard, artifacts, MQTT bridge)")
    serve.add_argument("--broker", default="127.0.0.1:1883", metavar="HOST:PORT", help="MQTT broker")
    serve.add_argument("--fleet", default="default", help="fleet name in the MQTT topic tree")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8090, help="HTTP port (default: 8090)")
    serve.add_argument("--store", default="fleet.sqlite3", help="SQLite file of bundles, devices and rollouts")
    serve.add_argument("--artifacts", type=Path, default=Path("fleet-artifacts"), help="where bundle archives are kept")
    serve.add_argument("--public-url", default=None, help="base URL devices download artifacts from")
    serve.add_argument(
        "--trust", type=Path, action="append", default=[],
        help="key bundles must be signed by (PEM), or a trust policy (.json); repeatable",
    )  # fmt: skip
    serve.add_argument(
        "--command-key",
        type=Path,
        default=None,
        help="Ed25519 private key (PEM) every command to devices is signed with (required)",
    )
    serve.add_argument("--api-key-file", type=Path, help="file holding the API key for /v1; required off loopback")
    serve.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve /v1 without --api-key-file on a host other than loopback (anyone who reaches it "
        "may register bundles and start rollouts)",
    )
    serve.add_argument(
        "--artifact-token-file", type=Path, default=None,
        help="file holding the bearer token GET /artifacts requires (devices: edge serve --artifact-token-file); "
        "default: archives are served to anyone who reaches the port",
    )  # fmt: skip
    add_mqtt_arguments(serve)
    add_tracing_argument(serve)
    serve.set_defaults(func=_fleet_serve)
    from edgecloud.fleet_commands import add_fleet_client_commands

    add_fleet_client_commands(fleet)


def _add_loop_commands(models: argparse._SubParsersAction) -> None:
    """The learning loop's commands: ``models improve`` and ``models recalibrate``."""
    from edgecloud.improve_command import add_improve_command
    from edgecloud.recalibrate_command import add_recalibrate_command

    add_improve_command(models)
    add_recalibrate_command(models)


def _add_models_commands(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser("models", help="build and evaluate the demo models").add_subparsers(
        dest="action", required=True
    )
    build = models.add_parser("build", help="train the teacher, distil the student, export, quantise, bundle")
    build.add_argument("--out", type=Path, default=Path("models"), help="output folder (default: models)")
    build.add_argument("--quick", action="store_true", help="tiny low-accuracy models in a few minutes (for tests)")
    build.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    build.add_argument("--version", type=int, default=None, help="bundle version (default: previous + 1)")
    build.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    build.add_argument(
        "--reuse-teacher",
        type=Path,
        default=None,
        metavar="DIR",
        help="distil from this trained teacher instead of training one",
    )
    build.add_argument(
        "--refine-teacher",
        action="store_true",
        help="run the teacher recipe's second (refine) stage on the --reuse-teacher model first "
        "(for a teacher trained by the first stage alone, as up to v3)",
    )
    build.add_argument(
        "--label-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="cache of the teacher's labels; a rebuild labels only queries it has not seen (default: OUT/.cache)",
    )
    build.add_argument(
        "--reuse-student",
        type=Path,
        default=None,
        metavar="DIR",
        help="export, quantise and calibrate this trained student (a student-reference folder) instead of distilling one",
    )
    from edgecloud.databuild_command import add_data_build_arguments

    add_data_build_arguments(build)
    build.set_defaults(func=_models_build)

    _add_loop_commands(models)

    evaluate = models.add_parser("eval", help="evaluate built models on fresh queries")
    evaluate.add_argument("--models", type=Path, default=Path("models"), help="built models (default: models)")
    evaluate.add_argument("--out", type=Path, default=Path("out/eval"), help="where to write eval.json and plots")
    evaluate.add_argument("--n", type=int, default=2000, help="number of test queries (default: 2000)")
    evaluate.add_argument("--seed", type=int, default=0, help="test seed (default: 0)")
    evaluate.add_argument("--threads", type=int, default=2, help="threads for the batched teacher runs (default: 2)")
    evaluate.add_argument("--json", action="store_true", help="print the full report as JSON")
    evaluate.set_defaults(func=_models_eval)

    from edgecloud.signing_commands import add_signing_commands

    add_signing_commands(models)
    add_gguf_command(models)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgecloud", description="Edge/cloud collaborative LLM inference.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_models_commands(commands)
    _add_cloud_commands(commands)
    add_edge_commands(commands)
    _add_fleet_commands(commands)
    from edgecloud.data_commands import add_data_commands

    add_data_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from edgecloud.shared.base.errors import EdgecloudError

    try:
        return int(args.func(args))
    except EdgecloudError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
