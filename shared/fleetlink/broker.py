"""The fleet's MQTT broker connection: one settings class and one client factory.

The device agent, the fleet manager and the command line all reach the same
broker the same way: host and port, credentials, TLS (a CA turns it on, a
client certificate and key go together), the protocol version and the
persistent session. :class:`BrokerSettings` holds and validates those once;
:func:`create_client` and :func:`connect_async` apply them to a paho client, so
a broker with TLS, client certificates and per-device passwords (see
``deploy/mosquitto/``) needs the same settings everywhere.

Both sides keep a persistent session, so QoS 1 commands and acks queued while
a client was away are delivered when it comes back: MQTT 5 asks for it with
``clean_start=False`` and a session expiry; 3.1.1 with ``clean_session=False``
(no expiry).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgecloud.shared.base.errors import ConfigError

__all__ = ["MQTT_VERSIONS", "BrokerSettings", "connect_async", "create_client", "publish_properties", "user_properties"]

MQTT_VERSIONS = ("5", "3.1.1")


@dataclass(frozen=True, kw_only=True)
class BrokerSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    """CA bundle of the broker's certificate; setting it turns TLS on (1.2+, certificate checked)."""
    tls_cert: Path | None = None
    """Client certificate, with ``tls_key``; needs ``tls_ca``."""
    tls_key: Path | None = None
    version: str = "5"
    """``5`` (persistent session with expiry) or ``3.1.1`` (persistent session without expiry)."""
    keepalive_s: int = 30
    session_expiry_s: int = 3600
    """How long the broker keeps the session (and queues QoS 1 messages) while the client is away (MQTT 5)."""

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError("the MQTT broker host must not be empty")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ConfigError(f"the MQTT broker port must be in 1..65535, got {self.port!r}")
        if self.password is not None and not self.username:
            raise ConfigError("an MQTT password was given without a username")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("the MQTT client certificate and key go together")
        if self.tls_cert is not None and self.tls_ca is None:
            raise ConfigError("an MQTT client certificate needs the CA (tls_ca) that turns TLS on")
        for name in ("tls_ca", "tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None:
                object.__setattr__(self, name, Path(path))
                if not Path(path).is_file():
                    raise ConfigError(f"MQTT {name} {path} is not a file")
        if self.version not in MQTT_VERSIONS:
            raise ConfigError(f"mqtt version must be 5 or 3.1.1, got {self.version!r}")
        if isinstance(self.keepalive_s, bool) or not isinstance(self.keepalive_s, int) or self.keepalive_s < 1:
            raise ConfigError(f"MQTT keepalive_s must be an integer >= 1, got {self.keepalive_s!r}")
        if (
            isinstance(self.session_expiry_s, bool)
            or not isinstance(self.session_expiry_s, int)
            or self.session_expiry_s < 0
        ):
            raise ConfigError(f"MQTT session_expiry_s must be an integer >= 0, got {self.session_expiry_s!r}")

    @classmethod
    def from_address(cls, address: str, **settings: object) -> BrokerSettings:
        """Settings for ``HOST:PORT`` (as the ``--broker`` flag takes it)."""
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"the broker address must be HOST:PORT, got {address!r}")
        return cls(host=host.strip("[]"), port=int(port), **settings)  # type: ignore[arg-type]

    @property
    def v5(self) -> bool:
        return self.version == "5"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def create_client(settings: BrokerSettings, client_id: str, *, max_reconnect_delay_s: int = 10) -> mqtt.Client:
    """A paho client (callback API 2) with the credentials, TLS and persistent session of ``settings``."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if settings.v5 else mqtt.MQTTv311,
        clean_session=None if settings.v5 else False,
    )
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls_ca is not None:
        client.tls_set(
            ca_certs=str(settings.tls_ca),
            certfile=str(settings.tls_cert) if settings.tls_cert else None,
            keyfile=str(settings.tls_key) if settings.tls_key else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    client.reconnect_delay_set(min_delay=1, max_delay=max_reconnect_delay_s)
    return client


def connect_async(client: mqtt.Client, settings: BrokerSettings) -> None:
    """Start connecting in the background (paho retries on its own once ``loop_start`` runs)."""
    if settings.v5:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = settings.session_expiry_s
        client.connect_async(
            settings.host, settings.port, keepalive=settings.keepalive_s, clean_start=False, properties=properties
        )
    else:  # the persistent session comes from clean_session=False on the client
        client.connect_async(settings.host, settings.port, keepalive=settings.keepalive_s)


def publish_properties(user: dict[str, str], *, v5: bool) -> Properties | None:
    """MQTT 5 user properties for a PUBLISH (a trace context, say); None when empty or on MQTT 3.1.1,
    which has no properties (the message goes without them)."""
    if not user or not v5:
        return None
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = list(user.items())
    return properties


def user_properties(message: mqtt.MQTTMessage) -> dict[str, str]:
    """A received message's MQTT 5 user properties ({} without them)."""
    pairs = getattr(getattr(message, "properties", None), "UserProperty", None) or []
    return {str(k): str(v) for k, v in pairs if isinstance(k, str) and isinstance(v, str)}
