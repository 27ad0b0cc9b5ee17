"""Configuration of the edge daemon: typed, validated at construction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.base.net import is_loopback

__all__ = ["EdgeConfig", "ShadowPolicy"]


@dataclass(frozen=True, kw_only=True)
class ShadowPolicy:
    """How many of the answers it keeps a daemon has the cloud check (:mod:`edgecloud.edge.field.shadow`)."""

    share: float = 0.02
    """The share of kept answers checked (0 turns checks off)."""
    per_minute: float = 30.0
    """At most this many checks a minute (a token bucket holding ten seconds' worth)."""
    max_in_flight: int = 4
    """Checks waiting for the cloud at once; an offer beyond it is skipped."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ConfigError(f"shadow_share must be in [0, 1], got {self.share}")
        if not self.per_minute > 0 or self.max_in_flight < 1:  # NaN is refused too
            raise ConfigError(
                f"shadow_per_minute must be > 0 and max_in_flight >= 1, got {self.per_minute}, {self.max_in_flight}"
            )


@dataclass(frozen=True, kw_only=True)
class EdgeConfig:
    bundle: Path
    """The edge bundle to serve (verified on load)."""
    device_id: str = "edge-0"
    host: str = "127.0.0.1"
    port: int = 8080
    cloud: str | None = None
    """``host:port`` of the Reasoner; None runs edge-only (everything degraded to local)."""
    cloud_token: str | None = None
    cloud_tls: bool = False
    cloud_ca: Path | None = None
    cloud_timeout_s: float = 60.0
    """Longest a synchronous escalation may take before the answer falls back to the edge: the cloud
    client's deadline, retries included (the escalation's one timer)."""
    api_keys: tuple[str, ...] = ()
    """When set, every /v1 call needs one of them as ``Authorization: Bearer <key>`` (or
    ``X-API-Key``); required off loopback unless ``allow_unauthenticated``. Each key is a tenant:
    a stored response is visible only to the key that created it."""
    allow_unauthenticated: bool = False
    """Serve /v1 without an API key on a host other than loopback (anyone who reaches it may query)."""
    threshold: float | None = None
    """Triage threshold; None uses the bundle's calibration."""
    max_difficulty: float = 1.0
    threads: int = 1
    """onnxruntime intra-op threads."""
    outbox: Path | str = "edge-outbox.sqlite3"
    max_query_chars: int = 2000
    max_conversation_chars: int = 32_768
    """All of a conversation's messages together (a longer one is a 400, never cut)."""
    cloud_wait_s: float = 10.0
    """How long a chat completion only the cloud can answer waits for a cloud that is down before a
    503 with Retry-After (queries that can be fetched later wait in the outbox instead)."""
    max_body_bytes: int = 64 * 1024
    max_reasoning_tokens: int = 4096
    reasoning_effort_tokens: tuple[int, int, int] = (64, 256, 1024)
    """The cloud's thinking budget for OpenAI's ``reasoning_effort`` low, medium and high."""
    health_interval_s: float = 5.0
    """How often the cloud's health is checked in the background."""
    shadow_share: float = 0.02
    """The share of kept answers the cloud verifies (shadow checks, :mod:`edgecloud.edge.field.shadow`);
    0 turns them off. They are verification sessions: the cloud sheds them first under load."""
    shadow_per_minute: float = 30.0
    """At most this many shadow checks a minute, whatever the traffic."""

    @property
    def shadow(self) -> ShadowPolicy:
        """The shadow-check policy these settings make (raises ConfigError for a bad one)."""
        return ShadowPolicy(share=self.shadow_share, per_minute=self.shadow_per_minute)

    def __post_init__(self) -> None:
        if not Path(self.bundle).is_dir():
            raise ConfigError(f"bundle: {self.bundle} is not a directory")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        if self.threads < 1 or self.max_query_chars < 1 or self.max_body_bytes < 1024:
            raise ConfigError("threads >= 1, max_query_chars >= 1 and max_body_bytes >= 1024 are required")
        if self.cloud_timeout_s <= 0 or self.health_interval_s <= 0:
            raise ConfigError("cloud_timeout_s and health_interval_s must be > 0")
        if self.cloud_wait_s < 0 or self.max_conversation_chars < self.max_query_chars:
            raise ConfigError("cloud_wait_s must be >= 0 and max_conversation_chars >= max_query_chars")
        efforts = tuple(self.reasoning_effort_tokens)
        if (
            len(efforts) != 3
            or not all(0 < e <= self.max_reasoning_tokens for e in efforts)
            or list(efforts) != sorted(efforts)
        ):
            raise ConfigError(
                "reasoning_effort_tokens must be three budgets, low <= medium <= high, each in "
                f"1..max_reasoning_tokens ({self.max_reasoning_tokens}), got {self.reasoning_effort_tokens!r}"
            )
        object.__setattr__(self, "reasoning_effort_tokens", efforts)
        self.shadow  # noqa: B018 - validated here, at construction
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ConfigError(f"threshold must be in [0, 1], got {self.threshold}")
        object.__setattr__(self, "api_keys", tuple(self.api_keys))
        if any(len(key) < 16 for key in self.api_keys):
            raise ConfigError("every API key must be at least 16 characters")
        if not self.api_keys and not self.allow_unauthenticated and not is_loopback(self.host):
            raise ConfigError(
                f"the edge API on {self.host} (not loopback) needs an API key: "
                "pass --api-key-file FILE, or --allow-unauthenticated"
            )
