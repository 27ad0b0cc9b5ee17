"""The device's MQTT session: birth and will, telemetry, command intake and acks.

On every connect the agent publishes a retained birth on ``.../state``
(online, model, session counter) and registers a will that marks it offline;
it publishes telemetry on ``.../telemetry`` every few seconds and executes
commands from ``.../cmd``, reporting each status transition on
``.../cmd/ack`` (QoS 1).

Each verified command goes to the deployer (:mod:`edgecloud.edge.deployer`: download, verify,
self-test, swap, watch, roll back), one at a time on a worker thread; the session publishes every
status it reports. The state both keep across restarts is typed in
:class:`~edgecloud.edge.agent_state.AgentState`, saved by one
:class:`~edgecloud.edge.agent_state.StateStore`.

Commands are idempotent by id (a repeat gets its last status again) and a
command with a deployment revision older than the newest acted on is ignored.
This bookkeeping is persisted, so it holds across restarts.

Only signed commands are acted on (:mod:`edgecloud.shared.fleetlink.commands`): signed by a key in
``command_keys``, for this device, not expired. Anything else the broker delivers (unsigned,
forged, another device's, expired, malformed, any payload at all) changes no state: it is logged
with its reason and answered with a FAILED ack that names no rollout and revision 0, so a forger
cannot fail a real delivery through the device; the fleet manager logs it. No payload can stop
the MQTT loop.
"""

from __future__ import annotations

import logging
import os
import queue
import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from opentelemetry.context import Context

from edgecloud.edge.agent_state import AgentState, StateStore
from edgecloud.edge.deployer import Deployer, origin_of, resume_bundle
from edgecloud.edge.service import EdgeService
from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.base.tracing import context_from_metadata, tracer
from edgecloud.shared.fleetlink.broker import BrokerSettings, connect_async, create_client, user_properties
from edgecloud.shared.fleetlink.commands import CommandRejectedError, open_command
from edgecloud.shared.fleetlink.messages import AckStatus, Birth, Command, CommandAck, Telemetry, Topics, encode

__all__ = ["AgentConfig", "DeviceAgent", "resume_bundle"]  # resume_bundle: the deployer's, for the daemon

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    device_id: str
    state_dir: Path
    """Holds downloaded archives, installed bundles and the agent's bookkeeping."""
    trusted_keys: tuple[Path, ...]
    """Ed25519 public keys (PEM), each trusted for any bundle, or trust policies (JSON: key roles,
    rotations, revocations; :mod:`edgecloud.shared.bundles.trust`); only bundles they accept are installed.
    Read at start: a changed policy takes effect at the next restart."""
    command_keys: tuple[Path, ...] = ()
    """Ed25519 public keys (PEM) of the fleet manager's command key, or trust policies (their
    rotations and revocations apply; roles do not); only commands signed by a key they accept are
    acted on. Required, and kept apart from ``trusted_keys``: the key that signs commands on a
    server is not the key that vouches for models."""
    fleet_origin: str | None = None
    """The fleet manager's public URL (only its scheme, host and port count). When set, bundles
    are downloaded only from there; required with ``artifact_token``, which goes nowhere else."""
    fleet: str = "default"
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    telemetry_interval_s: float = 5.0
    labels: dict[str, str] = field(default_factory=dict)
    max_bundle_bytes: int = 256 << 20
    download_timeout_s: float = 60.0
    """Per connect and per read."""
    download_deadline_s: float = 900.0
    """The whole download, retries included: a slow artifact server cannot hold the command worker
    (which handles one command at a time) for longer; the partial file is kept and resumed."""
    download_min_rate_bps: float = 8192.0
    """An attempt averaging less than this after its first 10 s is cut and resumed (0: no floor)."""
    artifact_token: str | None = None
    """Bearer token for the fleet's artifact downloads; sent only to ``fleet_origin``."""
    watch_s: float = 30.0
    """How long after a swap the new model is watched."""
    watch_min_requests: int = 20
    watch_min_checks: int = 20
    """Shadow checks each version needs before the watch compares their agreement with the cloud."""
    watch_max_agreement_drop: float = 2.0
    """Points of agreement the new version may clearly lose (:func:`edgecloud.edge.field.quality.field_regression`)."""
    max_error_rate: float = 0.05
    max_p99_ratio: float = 3.0
    p99_allowance_ms: float = 20.0
    """Absolute slack added to ``max_p99_ratio * previous p99`` (tiny models have sub-ms jitter)."""

    def __post_init__(self) -> None:
        Topics(self.fleet, self.device_id)  # validates the names
        if not self.trusted_keys:
            raise ConfigError("the agent needs at least one trusted bundle signing key (--trust KEY.pem)")
        object.__setattr__(self, "command_keys", tuple(Path(k) for k in self.command_keys))
        if not self.command_keys:
            raise ConfigError(
                "the agent needs at least one trusted command key (--trust-commands KEY.pub): "
                "it acts only on commands signed by the fleet manager"
            )
        if self.fleet_origin is not None and origin_of(self.fleet_origin) is None:
            raise ConfigError(f"fleet_origin must be an http(s) URL with a host, got {self.fleet_origin!r}")
        if self.artifact_token and self.fleet_origin is None:
            raise ConfigError("artifact_token needs fleet_origin: the token must go only to the fleet manager")
        if not isinstance(self.broker, BrokerSettings):
            raise ConfigError(f"broker must be BrokerSettings, got {type(self.broker).__name__}")
        if self.telemetry_interval_s <= 0 or self.watch_s < 0 or self.max_bundle_bytes < 1:
            raise ConfigError("telemetry_interval_s > 0, watch_s >= 0, max_bundle_bytes >= 1 required")
        if self.watch_min_checks < 1 or not 0 <= self.watch_max_agreement_drop <= 100:
            raise ConfigError("watch_min_checks >= 1 and watch_max_agreement_drop in [0, 100] required")
        if self.download_timeout_s <= 0 or self.download_deadline_s <= 0 or self.download_min_rate_bps < 0:
            raise ConfigError("download_timeout_s > 0, download_deadline_s > 0, download_min_rate_bps >= 0 required")


class _RefusalBudget:
    """A token bucket for refusals: whoever can publish on a device's command topic must not turn
    it into an amplifier (an ack and a log line per forged message). ``burst`` refusals at once,
    then ``rate_per_s``; the rest are only counted."""

    def __init__(self, rate_per_s: float = 2.0, burst: int = 32) -> None:
        self.rate_per_s, self.burst = rate_per_s, burst
        self.tokens, self.at, self.suppressed = float(burst), None, 0

    def take(self, now: float) -> bool:
        if self.at is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate_per_s)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.suppressed += 1
        return False


class DeviceAgent:
    """The device's side of the fleet link: one MQTT session, its telemetry, and the commands it
    takes in, verifies, hands to its :class:`~edgecloud.edge.deployer.Deployer` and acknowledges."""

    def __init__(self, config: AgentConfig, service: EdgeService) -> None:
        from edgecloud.shared.bundles.trust import load_trust

        self.config = config
        self.service = service
        self.topics = Topics(config.fleet, config.device_id)
        self.command_trust = load_trust(config.command_keys)
        if not len(self.command_trust):
            raise ConfigError("every trusted command key is revoked or retired: this device could act on no command")
        self.store = StateStore(Path(config.state_dir))
        self._stop = threading.Event()
        self.deployer = Deployer(config, service, self.store, report=self._ack, stopping=self._stop)
        self._commands: queue.Queue[tuple[Command, Context | None] | None] = queue.Queue()
        self._refusals = _RefusalBudget()
        self._threads: list[threading.Thread] = []
        self._connected = threading.Event()
        self._cpu_mark = (time.monotonic(), sum(os.times()[:2]))
        self.client = self._make_client()

    @property
    def state(self) -> AgentState:
        """The agent's durable state (the session's part and the deployer's), saved by ``store``."""
        return self.store.state

    # -- MQTT --------------------------------------------------------------------------

    def _birth(self, online: bool) -> bytes:
        bundle = self.service.slot.current
        return encode(
            Birth(
                online=online,
                device=self.config.device_id,
                model_name=bundle.name,
                model_version=bundle.version,
                session=self.state.session,
                capabilities=["deploy", "rollback", "telemetry"],
                labels=dict(self.config.labels),
                at=time.time(),
            ).to_dict()
        )

    def _make_client(self) -> mqtt.Client:
        c = self.config
        client = create_client(c.broker, f"edgecloud-{c.fleet}-{c.device_id}", max_reconnect_delay_s=10)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_pre_connect(self, client: mqtt.Client, _userdata: object) -> None:
        """Before every connect attempt: a new session number, and a will (the death
        certificate) that carries it and the model now served, like the birth will."""
        self.state.session += 1
        self.store.save()
        client.will_set(self.topics.state, self._birth(False), qos=1, retain=True)

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        client.subscribe(self.topics.cmd, qos=1)
        client.publish(self.topics.state, self._birth(True), qos=1, retain=True)
        self._connected.set()
        log.info(
            "connected to %s as %s (session %d)",
            self.config.broker.address,
            self.config.device_id,
            self.state.session,
        )

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:  # type: ignore[no-untyped-def]
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_message(self, _client, _userdata, message: mqtt.MQTTMessage) -> None:
        """Runs on paho's network thread, which dies with any exception raised here (and the
        broker redelivers the message after every reconnect), so nothing escapes."""
        try:
            command = open_command(message.payload, self.command_trust, device=self.config.device_id)
        except CommandRejectedError as exc:
            self._refuse(exc.reason, str(exc), exc.command_id)
            return
        except Exception as exc:  # a bug in parsing must not become a dead agent
            log.exception("opening a command on %s failed", message.topic[:200])
            self._refuse("error", f"{type(exc).__name__}: {exc}", "")
            return
        headers = user_properties(message)  # a trace context, when the fleet manager traces
        self._commands.put((command, context_from_metadata(headers) if headers else None))

    def _refuse(self, reason: str, message: str, claimed_id: str) -> None:
        """Log a refused command and say so on the ack topic (at most ``_RefusalBudget`` allows);
        change nothing else.

        The ack names no rollout and revision 0, and is not recorded: a forged payload that
        borrows a real command's id must neither fail that delivery at the manager nor make
        the device answer the real command later from a record of the forgery."""
        if not self._refusals.take(time.monotonic()):
            return  # a flood: counted, said in the next refusal that is logged
        suppressed, self._refusals.suppressed = self._refusals.suppressed, 0
        more = f" ({suppressed} more refused since the last one logged, without an ack)" if suppressed else ""
        log.warning(
            "refused a command (%s) %s: %s%s", reason, claimed_id or "without a readable id", message[:300], more
        )
        try:
            ack = CommandAck(
                command_id=claimed_id,
                device=self.config.device_id,
                status=AckStatus.FAILED,
                revision=0,
                reason=f"refused ({reason}): {message}"[:500],
                version=self.service.slot.current.version,
                at=time.time(),
            )
            self.client.publish(self.topics.ack, encode(ack.to_dict()), qos=1)
        except Exception:  # still on paho's thread
            log.exception("could not publish the refusal ack")

    def start(self) -> None:
        connect_async(self.client, self.config.broker)
        self.client.loop_start()
        for target, name in ((self._work, "agent-commands"), (self._telemetry_loop, "agent-telemetry")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Say offline (retained), then disconnect cleanly."""
        self._stop.set()
        self._commands.put(None)
        if self._connected.is_set():
            self.client.publish(self.topics.state, self._birth(False), qos=1, retain=True).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()
        for thread in self._threads:
            thread.join(10)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # -- telemetry ---------------------------------------------------------------------

    def telemetry(self) -> Telemetry:
        stats = self.service.stats
        totals = dict(stats.totals)
        answered = sum(v for k, v in totals.items() if k != "error")
        now, cpu = time.monotonic(), sum(os.times()[:2])
        (then, cpu_then), self._cpu_mark = self._cpu_mark, (now, cpu)
        bundle = self.service.slot.current
        return Telemetry(
            device=self.config.device_id,
            at=time.time(),
            model_name=bundle.name,
            model_version=bundle.version,
            requests=totals,
            latency_ms=stats.by_route(),
            escalation_rate=totals.get("cloud", 0) / answered if answered else 0.0,
            degraded=stats.degraded,
            errors=stats.errors,
            outbox_depth=self.service.outbox.depth(),
            cpu_percent=100.0 * (cpu - cpu_then) / max(now - then, 1e-6),
            memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            state_problem=self.store.problem,
            quality=self.service.quality.snapshot(),
        )

    def _telemetry_loop(self) -> None:
        while not self._stop.wait(self.config.telemetry_interval_s):
            if self._connected.is_set():
                self.client.publish(self.topics.telemetry, encode(self.telemetry().to_dict()), qos=0)

    # -- commands ----------------------------------------------------------------------

    def _ack(self, command: Command, status: AckStatus, reason: str = "") -> None:
        ack = CommandAck(
            command_id=command.id,
            device=self.config.device_id,
            status=status,
            revision=command.revision,
            reason=reason,
            version=self.service.slot.current.version,
            rollout_id=command.rollout_id,
            at=time.time(),
        )
        if status.final:  # what a redelivery is answered with, until the command expires
            self.state.record(command.id, ack.to_dict(), command.expires_at, time.time())
            self.store.save()
        self.client.publish(self.topics.ack, encode(ack.to_dict()), qos=1)
        log.info("command %s (%s v%d): %s %s", command.id, command.type, command.bundle.version, status.value, reason)

    def _work(self) -> None:
        while True:
            item = self._commands.get()
            if item is None:
                return
            command, parent = item
            try:
                self.handle(command, parent=parent)
            except Exception:
                log.exception("command %s crashed the handler", command.id)

    def handle(self, command: Command, *, parent: Context | None = None) -> AckStatus:
        """Act on a verified command once; its ack status. Traced as ``agent.command`` (with
        ``agent.download``, ``agent.verify``, ``agent.swap`` and ``agent.watch`` beneath) when
        tracing is on, under ``parent``: the fleet manager's ``fleet.command`` span, when it sent
        its trace context with the command."""
        attributes = {"edgecloud.command_id": command.id, "edgecloud.command": command.type,
                      "edgecloud.revision": command.revision, "edgecloud.rollout_id": command.rollout_id or "",
                      "edgecloud.bundle.version": command.bundle.version}  # fmt: skip
        with tracer().start_as_current_span("agent.command", context=parent, attributes=attributes) as span:
            status = self._handle(command)
            span.set_attribute("edgecloud.status", status.value)
            return status

    def _handle(self, command: Command) -> AckStatus:
        done = self.state.commands.get(command.id)
        if done is not None:  # a redelivery: say again how it ended, do nothing twice
            self.client.publish(self.topics.ack, encode(done), qos=1)
            return AckStatus(done["status"])
        return self.deployer.deploy(command)
