"""The device's deployment pipeline: from a verified command to a model proven in service, or the
old model serving again. The MQTT session (:mod:`edgecloud.edge.agent`) hands it each signed,
verified command and publishes the acks it reports; what it must remember across restarts is
typed in :class:`~edgecloud.edge.agent_state.AgentState`.

A deployment: download the archive (resumable, size-capped) -> unpack safely
-> verify the Ed25519 signature against the configured keys, every file's
hash, and that the version is newer than the serving one (or an explicit
rollback to a version this device had) -> load it and run its golden
self-test -> swap the model slot (in-flight requests finish on the old
model) -> VERIFYING ("serving; watching") -> watch: if the error rate or the p99
latency of local answers breaks the configured limits relative to the previous
model, swap back and report ROLLED_BACK; else ACTIVE. ACTIVE comes only after
the watch, so a staged rollout counts a device a success (and sends the next
wave) only once its new model has proven itself. Any failure leaves the old
model serving and reports FAILED with the reason.

A command with a deployment revision older than the newest acted on is IGNORED. The revision
floor moves only once a command is acted on (its model is swapped in): a command that fails leaves
the device exactly as it was. A rollback goes only to a *proven* version: the one the daemon
started serving, or one that passed its watch window here. With ``fleet_origin`` set, bundles are
downloaded only from that origin, the only place the artifact token is ever sent.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgecloud.edge.agent_state import AgentState, StateStore, read_state
from edgecloud.edge.field.quality import field_regression
from edgecloud.edge.runtime import EdgeBundle
from edgecloud.edge.service import EdgeService
from edgecloud.shared.base.errors import EdgecloudError
from edgecloud.shared.base.tracing import tracer
from edgecloud.shared.fleetlink.messages import AckStatus, BundleRef, Command

if TYPE_CHECKING:  # the session's config; the session imports this module
    from edgecloud.edge.agent import AgentConfig

__all__ = ["Deployer", "Report", "origin_of", "resume_bundle"]

log = logging.getLogger(__name__)

Report = Callable[[Command, AckStatus, str], None]
"""Says a command's new status (and why) to the fleet: the session's ack."""


def origin_of(url: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an http(s) URL, the port made explicit; None when it has none.

    Compared as a whole, like a browser's same-origin check: ``http://fleet@evil`` is evil's."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:  # an unparsable or out-of-range port
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


def resume_bundle(config: AgentConfig, fallback: Path) -> Path:
    """The bundle a (re)starting daemon should serve: the last one the fleet deployed and
    watched on this device, re-verified against the trusted keys, else ``fallback``.

    Without this a reboot would silently undo a rollout. A deployed bundle that no longer
    verifies (tampered, or its key no longer trusted) is not served: the daemon starts on
    ``fallback`` and says why."""
    from edgecloud.shared.bundles.signing import verify_signed_bundle
    from edgecloud.shared.bundles.trust import load_trust

    state, problem = read_state(Path(config.state_dir))
    if problem:
        log.error("agent state in %s: %s", config.state_dir, problem)
    active = state.active if state is not None else None
    if not active or Path(active).resolve() == Path(fallback).resolve():
        return fallback
    try:
        # Its expiry and key were checked when it was installed: a device that reboots after the
        # bundle expired or its key was rotated keeps serving what it had, rather than its factory
        # model. A revoked key is another matter: nothing it signed is served.
        trust = load_trust(config.trusted_keys)
        manifest = verify_signed_bundle(active, trust, check_expiry=False, accept_retired=True)
    except (EdgecloudError, OSError) as exc:
        log.error("the fleet-deployed bundle %s does not verify (%s); serving %s instead", active, exc, fallback)
        return fallback
    log.info("resuming the fleet-deployed bundle %s v%d from %s", manifest.name, manifest.version, active)
    return Path(active)


class _Failed(Exception):
    """A deployment step failed; the message is the reason reported in the ack."""


class Deployer:
    """Acts on one command at a time (:meth:`deploy`), on the session's command worker.

    It reports each status transition through ``report`` and keeps the deployment's part of the
    agent's state (revision floor, installed, proven, version floors, active) in ``store``.
    ``stopping`` cuts a watch window short when the agent stops."""

    def __init__(
        self,
        config: AgentConfig,
        service: EdgeService,
        store: StateStore,
        report: Report,
        stopping: threading.Event,
    ) -> None:
        from edgecloud.shared.bundles.trust import load_trust

        self.config = config
        self.service = service
        self.store = store
        self._report = report
        self._stopping = stopping
        self.trust = load_trust(config.trusted_keys)
        self._fleet_origin = origin_of(config.fleet_origin) if config.fleet_origin else None
        self.state_dir = Path(config.state_dir)
        (self.state_dir / "bundles").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "downloads").mkdir(parents=True, exist_ok=True)
        current = service.slot.current
        self.state.installed[current.version] = str(current.directory)
        # what a rollback may go to: the model this daemon starts on (its --bundle, or the last
        # one that passed its watch here, see resume_bundle) and every one that passed a watch
        self.state.proven.add(current.version)
        # the version floor, per bundle name: the newest of that name that passed a watch here (or
        # that this daemon starts on). A deploy of that name must be newer; a rollback may go to a
        # proven version below it. Another name starts from its own floor.
        self._raise_floor(current.manifest.name, current.version)

    @property
    def state(self) -> AgentState:
        return self.store.state

    def deploy(self, command: Command) -> AckStatus:
        """Act on a verified command the session has not answered yet; its final status. Traced
        as ``agent.download``, ``agent.verify``, ``agent.swap`` and ``agent.watch`` under the
        caller's span."""
        if command.revision < self.state.newest_revision:
            reason = f"revision {command.revision} is older than {self.state.newest_revision}"
            self._report(command, AckStatus.IGNORED, reason)
            return AckStatus.IGNORED
        try:
            bundle = self._install(command)
        except (_Failed, EdgecloudError, OSError) as exc:  # the device is as it was, revision floor included
            self._report(command, AckStatus.FAILED, str(exc))
            return AckStatus.FAILED
        baseline = self.service.stats.summary(route="edge")  # the model's own latency, not the cloud's
        with tracer().start_as_current_span("agent.swap", attributes={"edgecloud.bundle.version": bundle.version}):
            swapped_at = time.monotonic()
            old = self.service.swap(bundle)
            # acted on: from now on an older revision is stale, whatever the watch decides
            self.state.newest_revision = max(self.state.newest_revision, command.revision)
            self.state.installed[bundle.version] = str(bundle.directory)
            self.store.save()
        if self.config.watch_s > 0:  # serving, still on probation: a rollout must not count it a success yet
            watching = f"serving v{bundle.version}; watching it for {self.config.watch_s:g} s"
            self._report(command, AckStatus.VERIFYING, watching)
        with tracer().start_as_current_span("agent.watch"):
            reason = self._watch(swapped_at, baseline.p99_ms, bundle, old)
        if reason:
            self.service.swap(old)
            self._report(command, AckStatus.ROLLED_BACK, reason)
            return AckStatus.ROLLED_BACK
        self.service.slot.wait_idle(old, timeout=30)  # then the old model is released
        self._promote(bundle)
        self._report(command, AckStatus.ACTIVE, "watch window passed" if self.config.watch_s > 0 else "")
        return AckStatus.ACTIVE

    def _promote(self, bundle: EdgeBundle) -> None:
        """``bundle`` passed its watch: what a restarted daemon serves (see resume_bundle), a
        version a rollback may go back to, and its name's new version floor."""
        self.state.active = str(bundle.directory)
        self.state.proven.add(bundle.version)
        self._raise_floor(bundle.manifest.name, bundle.version)
        self.store.save()

    def _raise_floor(self, name: str, version: int) -> None:
        self.state.floors[name] = max(self.state.floors.get(name, 0), version)

    def _install(self, command: Command) -> EdgeBundle:
        ref = command.bundle
        if command.type == "rollback" and ref.version not in self.state.proven:
            if ref.version in self.state.installed:
                raise _Failed(f"rollback to v{ref.version}, which never passed its watch window on this device")
            raise _Failed(f"rollback to v{ref.version}, which this device never had")
        if self._fleet_origin is not None and origin_of(ref.url) != self._fleet_origin:
            raise _Failed(
                f"bundle url {ref.url[:120]!r} is not on the fleet origin {self.config.fleet_origin}; "
                "refusing to download from it"
            )
        self._report(command, AckStatus.DOWNLOADING, "")
        if ref.size > self.config.max_bundle_bytes:
            raise _Failed(f"bundle of {ref.size} bytes exceeds the limit of {self.config.max_bundle_bytes}")
        archive = self.state_dir / "downloads" / f"{ref.sha256}.tar.gz"
        headers = {"Authorization": f"Bearer {self.config.artifact_token}"} if self.config.artifact_token else None
        with tracer().start_as_current_span("agent.download", attributes={"edgecloud.bytes": ref.size}):
            self._download(ref, archive, headers)
        with tracer().start_as_current_span("agent.verify"):
            bundle = self._verify(command, ref, archive)
            self._self_test(bundle)
            return bundle

    def _download(self, ref: BundleRef, archive: Path, headers: dict[str, str] | None) -> None:
        from edgecloud.shared.bundles.download import download

        download(
            ref.url,
            archive,
            expected_sha256=ref.sha256,
            max_bytes=self.config.max_bundle_bytes,
            timeout_s=self.config.download_timeout_s,
            headers=headers,
            deadline_s=self.config.download_deadline_s,
            min_rate_bps=self.config.download_min_rate_bps,
        )

    def _verify(self, command: Command, ref: BundleRef, archive: Path) -> EdgeBundle:
        """Unpack ``archive``, check its signature, hashes and version against the command, move
        it into ``bundles/`` and load it; the archive and the staging folder are gone after."""
        from edgecloud.shared.bundles.artifacts import unpack_bundle
        from edgecloud.shared.bundles.signing import verify_signed_bundle

        self._report(command, AckStatus.VERIFYING, "")
        staging = self.state_dir / "bundles" / f".incoming-{command.id}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            directory = unpack_bundle(archive, staging, max_total_bytes=4 * self.config.max_bundle_bytes)
            manifest = verify_signed_bundle(
                directory,
                self.trust,
                installed_version=self.state.floors.get(ref.name, 0),
                allow_rollback_to=frozenset(self.state.proven) if command.type == "rollback" else frozenset(),
            )
            if (manifest.kind, manifest.name, manifest.version) != ("edge", ref.name, ref.version):
                raise _Failed(
                    f"the archive holds {manifest.kind} bundle {manifest.name} v{manifest.version}, "
                    f"not edge {ref.name} v{ref.version}"
                )
            final = self.state_dir / "bundles" / f"{manifest.name}-v{manifest.version}-{ref.sha256[:12]}"
            if not final.exists():
                os.replace(directory, final)
            return EdgeBundle.load(final, threads=self.service.config.threads)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            archive.unlink(missing_ok=True)

    @staticmethod
    def _self_test(bundle: EdgeBundle) -> None:
        for case in bundle.manifest.golden:
            got = bundle.model.answer(case.query).text
            if got != case.expected:
                raise _Failed(f"self-test failed: {case.query!r} gave {got!r}, expected {case.expected!r}")

    def _watch(self, since: float, previous_p99_ms: float, new: EdgeBundle, old: EdgeBundle) -> str:
        """A reason to roll back, or '' when the new model behaved through the watch window: errors,
        local latency, and the cloud's shadow checks of its kept answers against the old model's."""
        c = self.config
        deadline = since + c.watch_s
        before = self.service.quality.of(old.name, old.version)
        while not self._stopping.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
            now = self.service.quality.of(new.name, new.version)
            field = field_regression(
                now, before, min_checks=c.watch_min_checks, max_agreement_drop=c.watch_max_agreement_drop
            )
            if field:
                return field
            window = self.service.stats.summary(since=since)
            if window.requests >= c.watch_min_requests and window.error_rate > c.max_error_rate:
                return (
                    f"error rate {window.error_rate:.1%} over {window.requests} requests exceeds {c.max_error_rate:.1%}"
                )
            # latency of the answers the model gave itself: escalations wait on the cloud, not on it
            local = self.service.stats.summary(since=since, route="edge")
            limit = c.max_p99_ratio * previous_p99_ms + c.p99_allowance_ms
            if local.requests >= c.watch_min_requests and previous_p99_ms and local.p99_ms > limit:
                return (
                    f"p99 latency of local answers {local.p99_ms:.1f} ms exceeds {limit:.1f} ms "
                    f"(previous model {previous_p99_ms:.1f} ms)"
                )
            if time.monotonic() >= deadline:
                return ""
        return ""
