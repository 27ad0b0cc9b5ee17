"""Broker credentials and TLS for the fleet's MQTT clients (device agent and fleet manager).

Both sides take the same five settings; this module validates them once and
applies them to a paho client, so a broker with TLS, client certificates and
per-device passwords (see ``deploy/mosquitto/``) needs the same flags everywhere.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import paho.mqtt.client as mqtt

from shared.errors import ConfigError

__all__ = ["apply_security", "validate_security"]


def validate_security(username: str | None, password: str | None, tls_ca: Path | None, tls_cert: Path | None,
                      tls_key: Path | None) -> None:
    """Raise :class:`ConfigError` for combinations that cannot work, and for files that are missing."""
    if password is not None and not username:
        raise ConfigError("an MQTT password was given without a username")
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("the MQTT client certificate and key go together")
    if tls_cert is not None and tls_ca is None:
        raise ConfigError("an MQTT client certificate needs the CA (tls_ca) that turns TLS on")
    for name, path in (("tls_ca", tls_ca), ("tls_cert", tls_cert), ("tls_key", tls_key)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"MQTT {name} {path} is not a file")


def apply_security(client: mqtt.Client, username: str | None, password: str | None, tls_ca: Path | None,
                   tls_cert: Path | None, tls_key: Path | None) -> None:
    """Credentials and, when ``tls_ca`` is set, TLS 1.2+ with the broker's certificate checked."""
    if username:
        client.username_pw_set(username, password)
    if tls_ca is not None:
        client.tls_set(ca_certs=str(tls_ca), certfile=str(tls_cert) if tls_cert else None,
                       keyfile=str(tls_key) if tls_key else None, cert_reqs=ssl.CERT_REQUIRED,
                       tls_version=ssl.PROTOCOL_TLS_CLIENT)
