"""Command-line options and helpers more than one ``edgecloud`` command shares: tracing, the MQTT
broker's security flags and device labels."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

__all__ = ["add_mqtt_arguments", "add_tracing_argument", "broker_settings", "device_labels", "start_tracing"]

log = logging.getLogger("edgecloud")


def start_tracing(service_name: str, endpoint: str | None) -> None:
    from edgecloud.shared.base.tracing import configure_tracing

    configure_tracing(service_name, endpoint=endpoint)
    if endpoint:
        log.info("tracing: spans go to %s as %s", endpoint, service_name)


def add_tracing_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--otlp-endpoint", default=None, metavar="URL",
        help="export OpenTelemetry spans over OTLP/HTTP to this collector URL (e.g. http://collector:4318/v1/traces); "
        "default: no tracing",
    )  # fmt: skip


def add_mqtt_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("MQTT broker security (see deploy/mosquitto/)")
    group.add_argument("--mqtt-username", help="broker user name")
    group.add_argument("--mqtt-password-file", type=Path, help="file holding the broker password")
    group.add_argument("--mqtt-ca", type=Path, help="CA bundle of the broker's certificate; turns TLS on")
    group.add_argument("--mqtt-cert", type=Path, help="client certificate (with --mqtt-key)")
    group.add_argument("--mqtt-key", type=Path, help="client certificate's private key")
    group.add_argument(
        "--mqtt-version",
        choices=("5", "3.1.1"),
        default="5",
        help="MQTT 5 (persistent sessions with expiry; default) or 3.1.1 for older brokers",
    )


def broker_settings(args: argparse.Namespace, **defaults: object):  # -> BrokerSettings
    """The broker settings of AgentConfig / FleetManagerConfig from the flags above."""
    from edgecloud.shared.base.errors import ConfigError
    from edgecloud.shared.fleetlink.broker import BrokerSettings

    password = args.mqtt_password_file.read_text().strip() if args.mqtt_password_file else None
    try:
        return BrokerSettings.from_address(
            args.broker,
            username=args.mqtt_username,
            password=password,
            tls_ca=args.mqtt_ca,
            tls_cert=args.mqtt_cert,
            tls_key=args.mqtt_key,
            version=args.mqtt_version,
            **defaults,
        )
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None


def device_labels(pairs: list[str]) -> dict[str, str]:
    from edgecloud.fleet_commands import parse_labels

    try:
        return parse_labels(pairs)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
