"""Configuration of the cloud service: typed, validated at construction.

Secrets (TLS keys, device tokens) are read from files named here, never from
the command line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from edgecloud.cloud.budget import BudgetConfig
from edgecloud.cloud.engine import EngineConfig
from edgecloud.cloud.sessions import SessionConfig
from edgecloud.cloud.stores import is_shared_store
from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.base.net import is_loopback

__all__ = ["AuthConfig", "CloudConfig", "RemoteEngineConfig", "TlsConfig", "load_tokens"]


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    cert: Path
    key: Path
    client_ca: Path | None = None
    """When set, clients must present a certificate signed by this CA (mTLS)."""

    def __post_init__(self) -> None:
        for name in ("cert", "key", "client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"tls.{name}: {path} is not a readable file")


@dataclass(frozen=True, kw_only=True)
class AuthConfig:
    tokens: dict[str, str] = field(default_factory=dict)
    """Bearer token -> the device id it belongs to."""
    required: bool | None = None
    """None: required when tokens are configured or the server listens off loopback."""

    def __post_init__(self) -> None:
        if self.required and not self.tokens:
            raise ConfigError("auth is required but no device tokens are configured (--tokens FILE)")


def load_tokens(path: Path) -> dict[str, str]:
    """A JSON object ``{"device-id": "token", ...}``; returns token -> device id."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read device tokens from {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ConfigError(f"{path}: expected a JSON object of device id -> token strings")
    short = [device for device, token in data.items() if len(token) < 16]
    if short:
        raise ConfigError(f"{path}: tokens must be at least 16 characters (devices {short})")
    return {token: device for device, token in data.items()}


@dataclass(frozen=True, kw_only=True)
class RemoteEngineConfig:
    """An OpenAI-compatible serving engine (``cloud serve --engine openai``,
    :class:`~edgecloud.cloud.openai_engine.OpenAIEngine`)."""

    url: str
    """The server's OpenAI API root, e.g. ``http://127.0.0.1:8080/v1``."""
    served_model: str = ""
    """The ``model`` field of each request; empty: the first model the server lists."""
    api_key_file: Path | None = None
    """A file holding the server's API key (never on the command line)."""
    allow_plaintext: bool = False
    """Send prompts over plain HTTP to a server that is not on loopback (a trusted cluster network)."""
    timeout_s: float = 600.0
    """Longest wait for one call, its stream included."""
    retries: int = 3
    """Calls tried again after the server dropped or refused one (a connection lost, a 5xx, a stream
    cut short); each goes on from the text the session had streamed, so readers see no gap."""
    retry_backoff_s: float = 0.5
    """The wait before the first retry, doubled for each next one."""

    def __post_init__(self) -> None:
        url = urlsplit(self.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"engine_url must be an http(s) URL of the server's /v1 root, got {self.url!r}")
        if url.scheme == "http" and not is_loopback(url.hostname) and not self.allow_plaintext:
            raise ConfigError(
                f"engine_url: plain HTTP to {url.hostname} (not loopback) carries every prompt unencrypted;"
                " use https://, or --engine-allow-plaintext on a trusted network"
            )
        if self.api_key_file is not None and not Path(self.api_key_file).is_file():
            raise ConfigError(f"engine_api_key_file: {self.api_key_file} is not a readable file")
        if self.timeout_s <= 0:
            raise ConfigError(f"engine timeout must be > 0, got {self.timeout_s}")
        if self.retries < 0 or self.retry_backoff_s < 0:
            raise ConfigError(
                f"engine retries and retry_backoff_s must be >= 0, got {self.retries}, {self.retry_backoff_s}"
            )


@dataclass(frozen=True, kw_only=True)
class CloudConfig:
    model: Path
    """A Hugging Face model directory with a <think> chat template (a cloud bundle or any Qwen3-style model)."""
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int | None = 9100
    """None disables the Prometheus endpoint; 0 picks a free port."""
    metrics_host: str = "127.0.0.1"
    store: Path | str = "cloud-sessions.sqlite3"
    """SQLite file of sessions (':memory:' keeps nothing across restarts), one per replica; or a
    ``redis://host:port/db`` (``rediss://`` for TLS) URL that replicas share."""
    store_lease_s: float = 5.0
    """Shared store only: how long a replica's sessions wait, after it stops renewing their leases,
    before another replica continues them."""
    store_password_file: Path | None = None
    """Shared store only: a file holding the Redis password (never on the command line); required
    for a Redis that is not on loopback."""
    max_message_bytes: int = 1 << 20
    grace_s: float = 10.0
    """How long a shutdown lets running RPCs finish."""
    verify_bundle: bool = True
    """Check manifest.json hashes when the model folder is a bundle."""
    tls: TlsConfig | None = None
    auth: AuthConfig = field(default_factory=AuthConfig)
    allow_plaintext_tokens: bool = False
    """Accept bearer tokens over plaintext gRPC off loopback (only where TLS ends in front of the server)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    remote_engine: RemoteEngineConfig | None = None
    """Set: an OpenAI-compatible server decodes, and ``model`` gives only the tokenizer and chat template."""
    sessions: SessionConfig = field(default_factory=SessionConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)

    def __post_init__(self) -> None:
        if not Path(self.model).is_dir():
            raise ConfigError(f"model: {self.model} is not a directory")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        if self.max_message_bytes < 1024:
            raise ConfigError("max_message_bytes must be >= 1024")
        if self.budget.maximum > self.engine.max_reasoning_tokens:
            raise ConfigError("budget.maximum exceeds engine.max_reasoning_tokens")
        self._check_store()
        plaintext = self.tls is None and not is_loopback(self.host)
        if self.auth_required and self.auth.tokens and plaintext and not self.allow_plaintext_tokens:
            raise ConfigError(
                f"bearer tokens over plaintext gRPC on {self.host} (not loopback) can be read off the network:"
                " serve TLS (--tls-cert, --tls-key), or pass --allow-plaintext-tokens where TLS ends in front"
                " of the server"
            )

    def _check_store(self) -> None:
        if not is_shared_store(self.store):
            return
        url = urlsplit(str(self.store))
        if url.password:
            raise ConfigError("store: put the Redis password in a file (--store-password-file), not in the URL")
        if self.store_lease_s <= 0:
            raise ConfigError(f"store_lease_s must be > 0, got {self.store_lease_s}")
        if self.store_password_file is not None and not Path(self.store_password_file).is_file():
            raise ConfigError(f"store_password_file: {self.store_password_file} is not a readable file")
        if url.scheme != "unix" and not is_loopback(url.hostname or "") and self.store_password_file is None:
            raise ConfigError(
                f"store: Redis on {url.hostname} (not loopback) needs a password (--store-password-file);"
                " use rediss:// where the network is not trusted"
            )

    @property
    def auth_required(self) -> bool:
        if self.auth.required is not None:
            return self.auth.required
        return bool(self.auth.tokens) or not is_loopback(self.host)
