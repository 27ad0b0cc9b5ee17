"""The fleet manager: rollouts driven over MQTT, with every change persisted.

This module composes the fleet's parts and owns their lifecycle (connect, re-publish, tick, close); each
role lives in a module of its own, over the pure pieces beneath them (the MQTT contract
:mod:`edgecloud.shared.fleetlink.messages`, the rollout state machine :mod:`edgecloud.fleet.rollout`, the
SQLite store :mod:`edgecloud.fleet.store`, the bundle registry :mod:`edgecloud.fleet.registry`):

* :mod:`edgecloud.fleet.link`: the MQTT connection. One paho client (MQTT 5, persistent session,
  auto-reconnect) subscribes at QoS 1 to every device's ``state``, ``telemetry`` and ``cmd/ack``, and
  signs and publishes commands.
* :mod:`edgecloud.fleet.service`: the use cases. Registering a bundle, planning, starting, pausing,
  resuming, aborting and rolling back a rollout; recording what devices report.
* :mod:`edgecloud.fleet.views`: the JSON views the REST API (:mod:`edgecloud.fleet.api`) serves.
* :mod:`edgecloud.fleet.state`: the devices and rollouts in memory, under the one lock the others share.

A tick thread here times devices out and sends the next wave.

Delivery guarantees, in order of the steps that could lose something:

* A rollout is saved *before* the commands its change produced are published, so a crash in between
  leaves deliveries marked SENT whose command never left. On start every in-flight delivery of a live
  rollout is published again, with its original command id.
* Commands are QoS 1 on a device's persistent session, so the broker queues
  them while the device is away; the manager's own session is persistent too,
  so acks sent while it is down are delivered when it comes back.
* When a device re-announces with a new birth session (it reconnected, e.g.
  after a broker restart), every delivery of it still waiting for a final ack
  is published again. Devices dedupe by command id and answer a repeat with
  the final status they reached, so nothing is applied twice.

Every command is signed (:mod:`edgecloud.shared.fleetlink.commands`) with the configured command key for
the one device it addresses, at the moment it is published: a re-publish carries a fresh expiry,
so a device that was away longer than the expiry still gets a command it accepts.

No message from the broker stops the MQTT loop: a malformed or hostile state, telemetry or ack
payload is counted (``malformed``), logged with its reason and dropped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from edgecloud.fleet.link import FleetLink
from edgecloud.fleet.metrics import FleetMetrics
from edgecloud.fleet.registry import BundleRegistry
from edgecloud.fleet.rollout import Rollout
from edgecloud.fleet.rollout_spec import ID_SEGMENT
from edgecloud.fleet.service import FleetService
from edgecloud.fleet.state import FleetState
from edgecloud.fleet.store import FleetStorage, FleetStore
from edgecloud.fleet.views import FleetViews
from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.bundles.signing import load_private_key
from edgecloud.shared.fleetlink.broker import BrokerSettings
from edgecloud.shared.fleetlink.commands import DEFAULT_TTL_S, CommandSigner
from edgecloud.shared.fleetlink.messages import Telemetry

__all__ = ["SESSION_EXPIRY_S", "FleetManager", "FleetManagerConfig"]

log = logging.getLogger(__name__)


SESSION_EXPIRY_S = 24 * 3600
"""How long the broker keeps the manager's persistent session by default."""


@dataclass(frozen=True, kw_only=True)
class FleetManagerConfig:
    fleet: str = "default"
    """The fleet's segment of the topic tree."""
    broker: BrokerSettings = field(default_factory=lambda: BrokerSettings(session_expiry_s=SESSION_EXPIRY_S))
    """The broker and the manager's persistent session on it (kept a day by default, so acks
    queue while the manager is away)."""
    store_path: Path | str = ":memory:"
    """The SQLite file of bundles, devices and rollouts (``:memory:`` loses all on exit)."""
    artifact_dir: Path
    """Where registered archives are kept, named ``{sha256}.tar.gz``."""
    command_key: Path | None = None
    """Ed25519 private key (PEM) every command is signed with; required (devices act only on
    commands signed by a key they trust for commands). Create one with ``edgecloud models keygen``."""
    command_ttl_s: float = DEFAULT_TTL_S
    """How long a published command stays valid; it is signed afresh on every re-publish."""
    public_base_url: str = "http://127.0.0.1:8080"
    """How devices reach the API; artifact URLs are ``{public_base_url}/artifacts/{sha256}.tar.gz``."""
    tick_interval_s: float = 2.0
    """How often running rollouts are ticked (timeouts, next wave)."""
    client_id: str = ""
    """MQTT client id; keep it stable so the persistent session survives restarts. Default
    ``edgecloud-fleet-{fleet}``."""
    trusted_keys: tuple[Path, ...] = ()
    """Ed25519 public keys (PEM). When set, a bundle is registered only if its signature verifies
    against one of them and every file matches its manifest; when empty, bundles are registered
    unchecked (the devices still verify) and a warning is logged."""
    max_bundle_bytes: int = 1 << 30
    """Largest archive accepted; unpacking for verification may use four times that."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "artifact_dir", Path(self.artifact_dir))
        object.__setattr__(self, "trusted_keys", tuple(Path(k) for k in self.trusted_keys))
        if self.command_key is None:
            raise ConfigError(
                "the fleet manager needs a command signing key (command_key, --command-key KEY.pem): "
                "devices refuse unsigned commands"
            )
        object.__setattr__(self, "command_key", Path(self.command_key))
        ttl = self.command_ttl_s
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 60 <= ttl <= 30 * 24 * 3600:
            raise ConfigError(f"command_ttl_s must be in [60 s, 30 days], got {ttl!r}")
        if not isinstance(self.fleet, str) or not ID_SEGMENT.fullmatch(self.fleet):
            raise ConfigError(f"fleet must match [A-Za-z0-9._-]{{1,64}}, got {self.fleet!r}")
        if not isinstance(self.broker, BrokerSettings):
            raise ConfigError(f"broker must be BrokerSettings, got {type(self.broker).__name__}")
        if not self.public_base_url.startswith(("http://", "https://")):
            raise ConfigError(f"public_base_url must be http(s), got {self.public_base_url!r}")
        object.__setattr__(self, "public_base_url", self.public_base_url.rstrip("/"))
        if not isinstance(self.tick_interval_s, (int, float)) or not 0 < self.tick_interval_s <= 3600:
            raise ConfigError(f"tick_interval_s must be in (0, 3600], got {self.tick_interval_s!r}")
        if self.client_id and not 1 <= len(self.client_id) <= 128:
            raise ConfigError("client_id must be 1..128 characters")
        if not isinstance(self.max_bundle_bytes, int) or self.max_bundle_bytes < 1:
            raise ConfigError(f"max_bundle_bytes must be an integer >= 1, got {self.max_bundle_bytes!r}")

    @property
    def mqtt_client_id(self) -> str:
        return self.client_id or f"edgecloud-fleet-{self.fleet}"

    def artifact_url(self, sha256: str) -> str:
        return f"{self.public_base_url}/artifacts/{sha256}.tar.gz"


# -- the manager -----------------------------------------------------------------------


class FleetManager:
    """The fleet manager as one object: the link, the use cases and the views over one state, and the
    tick thread. Thread-safe: MQTT callbacks, the tick thread and API calls share the state's lock.

    Its methods are the use cases' and the views' (``service`` and ``views`` hold them); ``store``,
    ``registry``, ``metrics`` and ``link`` are the parts, for tools and tests."""

    def __init__(self, config: FleetManagerConfig, store: FleetStorage | None = None) -> None:
        self.config = config
        assert config.command_key is not None  # the config refuses None
        # before anything opens: fail fast
        signer = CommandSigner(load_private_key(config.command_key), ttl_s=config.command_ttl_s)
        log.info("signing commands with key %s", signer.key_id)
        self.store = store if store is not None else FleetStore(config.store_path)
        self._owns_store = store is None
        self.registry = BundleRegistry(
            self.store,
            config.artifact_dir,
            trusted_keys=config.trusted_keys,
            max_bundle_bytes=config.max_bundle_bytes,
            artifact_url=config.artifact_url,
        )
        self.state = FleetState.load(self.store)
        self.metrics = FleetMetrics()
        self.metrics.bind(
            online=self.state.online_count, known=lambda: len(self.state.devices), live_rollouts=self.state.live_count
        )
        self.link = FleetLink(
            fleet=config.fleet,
            broker=config.broker,
            client_id=config.mqtt_client_id,
            signer=signer,
            metrics=self.metrics,
        )
        self.service = FleetService(self.state, self.store, self.registry, publish=self.link.publish)
        self.views = FleetViews(self.state)
        # The facade's use cases and views are the parts' own methods, not copies of their signatures.
        service, views = self.service, self.views
        self.register_bundle, self.bundles, self.artifact_path = (
            service.register_bundle, service.bundles, service.artifact_path
        )  # fmt: skip
        self.resolve_targets, self.create_rollout = service.resolve_targets, service.create_rollout
        self.start_rollout, self.pause_rollout, self.resume_rollout = (
            service.start_rollout, service.pause_rollout, service.resume_rollout
        )  # fmt: skip
        self.abort_rollout, self.rollback_rollout = service.abort_rollout, service.rollback_rollout
        self.rollouts, self.rollout, self.devices = views.rollouts, views.rollout, views.devices
        self.quality = views.quality
        self._stop = threading.Event()
        self._tick_thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Connect (in the background, retrying), re-publish what was in flight, start ticking."""
        self.link.start(self.service)
        self.service.republish_in_flight()  # a crash between save and publish left these unsent; devices dedupe
        self._tick_thread = threading.Thread(target=self._tick_loop, name="fleet-tick", daemon=True)
        self._tick_thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._tick_thread is not None:
            self._tick_thread.join(10)
        self.link.close()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def wait_connected(self, timeout: float) -> bool:
        return self.link.wait_connected(timeout)

    @property
    def connected(self) -> bool:
        return self.link.connected

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.config.tick_interval_s):
            try:
                self.service.tick()
            except Exception:
                log.exception("rollout tick failed")

    def tick(self, now: float | None = None) -> None:
        """Time out devices and advance every live rollout (the tick thread calls this)."""
        self.service.tick(now)

    @property
    def _on_telemetry(self) -> Callable[[str, Telemetry, dict[str, Any]], None]:
        """The handler the link calls with each telemetry message; benchmarks/fleet_scale.py wraps it
        (through this name) to time each message."""
        return self.service.on_telemetry

    @_on_telemetry.setter
    def _on_telemetry(self, handler: Callable[[str, Telemetry, dict[str, Any]], None]) -> None:
        self.service.on_telemetry = handler  # type: ignore[method-assign]

    def get_rollout(self, rollout_id: str) -> Rollout:
        """The live object (tests and tools; mutate only through the manager's methods)."""
        return self.state.rollout(rollout_id)
