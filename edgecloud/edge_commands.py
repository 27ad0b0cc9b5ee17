"""``edgecloud edge serve``: the device daemon's options (its service, the fleet agent) and how they
become its configuration."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgecloud.common_options import (
    add_mqtt_arguments,
    add_tracing_argument,
    broker_settings,
    device_labels,
    start_tracing,
)

__all__ = ["add_edge_commands"]


def _secret(path: Path | None) -> str | None:
    return path.read_text().strip() if path else None


def edge_config(args: argparse.Namespace):  # -> EdgeConfig (imported when the command runs)
    """The daemon's configuration from ``edge serve``'s flags (ConfigError for a bad value)."""
    from edgecloud.edge.config import EdgeConfig

    return EdgeConfig(
        bundle=args.bundle,
        device_id=args.device_id,
        host=args.host,
        port=args.port,
        cloud=args.cloud,
        cloud_token=_secret(args.cloud_token_file),
        cloud_tls=args.cloud_tls,
        cloud_ca=args.cloud_ca,
        cloud_timeout_s=args.cloud_timeout,
        cloud_wait_s=args.cloud_wait,
        api_keys=_api_keys(args.api_key_file),
        allow_unauthenticated=args.allow_unauthenticated,
        threshold=args.threshold,
        threads=args.threads,
        outbox=args.outbox,
        shadow_share=args.shadow_share,
        shadow_per_minute=args.shadow_per_minute,
    )


def _edge_serve(args: argparse.Namespace) -> int:
    from edgecloud.edge.daemon import serve

    config = edge_config(args)
    agent = None
    if args.broker:
        from edgecloud.edge.agent import AgentConfig

        agent = AgentConfig(
            device_id=args.device_id,
            fleet=args.fleet,
            broker=broker_settings(args),
            state_dir=args.agent_state,
            trusted_keys=tuple(args.trust),
            command_keys=tuple(args.trust_commands),
            fleet_origin=args.fleet_origin,
            artifact_token=_secret(args.artifact_token_file),
            telemetry_interval_s=args.telemetry_interval,
            labels=device_labels(args.label),
            watch_s=args.watch_s,
            watch_min_requests=args.watch_min_requests,
            watch_min_checks=args.watch_min_checks,
            watch_max_agreement_drop=args.watch_max_agreement_drop,
        )
    start_tracing("edgecloud-edge", args.otlp_endpoint)
    serve(config, agent)
    return 0


def _api_keys(path: Path | None) -> tuple[str, ...]:
    """The keys in ``path``, one a line (blank lines and ``#`` comments skipped): one per tenant."""
    if path is None:
        return ()
    lines = (line.strip() for line in path.read_text().splitlines())
    keys = tuple(line for line in lines if line and not line.startswith("#"))
    if not keys:
        from edgecloud.shared.base.errors import ConfigError

        raise ConfigError(f"--api-key-file {path} holds no key")
    return keys


def _add_edge_service_args(serve: argparse.ArgumentParser) -> None:
    """The edge service: its bundle, its HTTP API, the cloud it escalates to, triage and the outbox."""
    serve.add_argument("--bundle", type=Path, default=Path("models/edge-student"), help="edge bundle folder")
    serve.add_argument("--cloud", default=None, metavar="HOST:PORT", help="the Reasoner service; omit for edge-only")
    serve.add_argument("--port", type=int, default=8080, help="HTTP port (default: 8080)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    serve.add_argument(
        "--device-id", default="edge-0", help="this device's id: its cloud token and MQTT topics (default: edge-0)"
    )
    serve.add_argument("--cloud-token-file", type=Path, help="file holding this device's bearer token for the cloud")
    serve.add_argument("--cloud-tls", action="store_true", help="use TLS to the cloud")
    serve.add_argument("--cloud-ca", type=Path, help="CA bundle for the cloud's certificate")
    serve.add_argument("--cloud-timeout", type=float, default=60.0, help="seconds before an escalation falls back")
    serve.add_argument("--cloud-wait", type=float, default=10.0, help="seconds a chat completion only the cloud can "
                       "answer waits for a cloud that is down before a 503 (default: 10)")  # fmt: skip
    serve.add_argument("--api-key-file", type=Path, help="file of the API keys clients may send, one a line (each "
                       "a tenant); required off loopback")  # fmt: skip
    serve.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve /v1 without --api-key-file on a host other than loopback",
    )
    serve.add_argument("--threshold", type=float, default=None, help="triage threshold (default: the bundle's)")
    serve.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default: 1)")
    serve.add_argument("--outbox", default="edge-outbox.sqlite3", help="SQLite outbox file")
    serve.add_argument(
        "--shadow-share", type=float, default=0.02, metavar="F",
        help="share of kept answers the cloud verifies at low priority (shadow checks); 0 = off (default: 0.02)",
    )  # fmt: skip
    serve.add_argument("--shadow-per-minute", type=float, default=30.0, metavar="N",
                       help="at most N shadow checks a minute (default: 30)")  # fmt: skip


def _add_edge_agent_args(serve: argparse.ArgumentParser) -> None:
    """The fleet agent: the MQTT fleet, whom it trusts, where it downloads from, and how it watches a deploy."""
    serve.add_argument("--broker", metavar="HOST:PORT", help="MQTT broker of the fleet; omit to run without the agent")
    serve.add_argument("--fleet", default="default", help="fleet name in the MQTT topic tree")
    serve.add_argument(
        "--trust",
        type=Path,
        action="append",
        default=[],
        help="trusted bundle signing key (PEM) or trust policy (.json: key roles, rotations, revocations; repeatable)",
    )
    serve.add_argument(
        "--trust-commands",
        type=Path,
        action="append",
        default=[],
        metavar="KEY.pub",
        help="public half of the fleet manager's --command-key, or a trust policy (.json: rotations, revocations); "
        "the agent acts only on commands it signed (required with --broker; repeatable)",
    )
    serve.add_argument(
        "--fleet-origin",
        default=None,
        metavar="URL",
        help="the fleet manager's public URL; bundles are downloaded only from its scheme, host and port",
    )
    serve.add_argument(
        "--artifact-token-file", type=Path, default=None,
        help="file holding the fleet manager's --artifact-token-file secret, sent only to --fleet-origin "
        "(required with it)",
    )  # fmt: skip
    serve.add_argument(
        "--agent-state", type=Path, default=Path("edge-agent"), help="downloaded bundles and agent state"
    )
    serve.add_argument("--telemetry-interval", type=float, default=5.0, help="seconds between telemetry messages")
    serve.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                       help="device label rollouts can target (repeatable)")  # fmt: skip
    serve.add_argument("--watch-s", type=float, default=30.0,
                       help="seconds a newly deployed model is watched before it counts as ACTIVE (default: 30)")  # fmt: skip
    serve.add_argument("--watch-min-requests", type=int, default=20,
                       help="requests the watch needs before it judges error rate and latency (default: 20)")  # fmt: skip
    serve.add_argument("--watch-min-checks", type=int, default=20,
                       help="shadow checks each version needs before the watch compares their agreement (default: 20)")  # fmt: skip
    serve.add_argument("--watch-max-agreement-drop", type=float, default=2.0, metavar="POINTS",
                       help="roll back when the new model's agreement with the cloud is clearly more than this many "
                            "points below the old one's (default: 2)")  # fmt: skip


def add_edge_commands(commands: argparse._SubParsersAction) -> None:
    edge = commands.add_parser("edge", help="the edge daemon").add_subparsers(dest="action", required=True)
    serve = edge.add_parser("serve", help="serve the edge HTTP API (local answers, triage, escalation)")
    _add_edge_service_args(serve)
    _add_edge_agent_args(serve)
    add_mqtt_arguments(serve)
    add_tracing_argument(serve)
    serve.set_defaults(func=_edge_serve)
