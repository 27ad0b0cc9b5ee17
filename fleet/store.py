"""The fleet manager's durable state in SQLite: what lets a restart lose no rollout.

Four tables: registered bundles (immutable once registered), devices (the
latest birth and telemetry of each), rollouts (spec and rollout-level state
from :meth:`~edgecloud.fleet.rollout.Rollout.to_dict`) and one row per device of
each rollout. The caller saves a rollout after every call that changed it;
a save writes the rollout row and only the device rows that changed, so an
ack costs the same in a fleet of ten or ten thousand. On start the manager
loads the rollouts and goes on ticking the unfinished ones.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

from edgecloud.fleet.rollout import Rollout, RolloutSpec, RolloutStatus
from edgecloud.shared.base.errors import InvalidInputError, NotFoundError
from edgecloud.shared.base.sqlite import open_store

__all__ = ["BundleRecord", "DeviceRecord", "FleetStorage", "FleetStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bundles (
    name          TEXT NOT NULL,
    version       INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    size          INTEGER NOT NULL,
    path          TEXT NOT NULL,
    key_id        TEXT NOT NULL,
    registered_at REAL NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS devices (
    id            TEXT PRIMARY KEY,
    labels        TEXT NOT NULL,
    online        INTEGER NOT NULL,
    model_name    TEXT NOT NULL,
    model_version INTEGER NOT NULL,
    session       INTEGER NOT NULL,
    last_seen     REAL NOT NULL,
    telemetry     TEXT
);
CREATE TABLE IF NOT EXISTS rollouts (
    id         TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,
    state      TEXT NOT NULL,
    status     TEXT NOT NULL,
    updated_at REAL
);
CREATE INDEX IF NOT EXISTS rollouts_status ON rollouts(status);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout_id TEXT NOT NULL,
    device     TEXT NOT NULL,
    state      TEXT NOT NULL,
    PRIMARY KEY (rollout_id, device)
);
"""


@dataclass(frozen=True, kw_only=True)
class BundleRecord:
    """A registered bundle archive: content-addressed, never changed once registered."""

    name: str
    version: int
    sha256: str
    size: int
    path: str
    """Where the artifact store keeps the archive."""
    key_id: str
    """Id of the key that signed it."""
    registered_at: float


@dataclass(frozen=True, kw_only=True)
class DeviceRecord:
    id: str
    labels: dict[str, str] = field(default_factory=dict)
    online: bool = False
    model_name: str = ""
    model_version: int = 0
    session: int = 0
    """The device's connect counter from its birth."""
    last_seen: float = 0.0
    telemetry: dict[str, Any] | None = None
    """The last telemetry payload, as received."""


@runtime_checkable
class FleetStorage(Protocol):
    """What the fleet manager and its bundle registry need from durable storage.

    :class:`FleetStore` (SQLite, one manager) is the shipped one; a shared database (PostgreSQL)
    behind several managers is the expected second. Every method may be called from any thread
    and is durable when it returns. ``load_*`` raise NotFoundError for an unknown key; ``save_*``
    raise InvalidInputError for a record that contradicts one already stored.
    """

    def save_bundle(self, record: BundleRecord) -> None:
        """Register a bundle; the same name and version again must carry the same sha256."""

    def load_bundle(self, name: str, version: int) -> BundleRecord:
        """The bundle registered under that name and version."""

    def list_bundles(self, name: str | None = None) -> list[BundleRecord]:
        """Every bundle (or every version of ``name``), by name, then version."""

    def save_device(self, record: DeviceRecord) -> None:
        """Insert or replace a device's latest birth and telemetry."""

    def load_device(self, device_id: str) -> DeviceRecord:
        """The device's record."""

    def list_devices(self) -> list[DeviceRecord]:
        """Every device, by id."""

    def save_rollout(self, rollout: Rollout) -> None:
        """The rollout's state and the device rows changed since its last save, in one transaction."""

    def load_rollout(self, rollout_id: str) -> Rollout:
        """The rollout as last saved."""

    def list_rollouts(self, statuses: Sequence[RolloutStatus] | None = None) -> list[Rollout]:
        """Every rollout, or those in ``statuses``, oldest change first."""

    def next_revision(self, at_least: int = 0) -> int:
        """A command revision higher than every one handed out before (and than ``at_least``),
        stored before it is returned: devices ignore a command not newer than the last they acted
        on, so a revision must never be handed out twice, whatever happens to the rollouts."""

    def close(self) -> None:
        """Release the storage; no method may be called afterwards."""


class FleetStore:
    """Thread-safe; one connection guarded by a lock (writes are small and rare)."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = open_store(self.path, _SCHEMA, what="fleet store")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def next_revision(self, at_least: int = 0) -> int:
        with self._lock:
            # This commit waits until it is on disk (the others, telemetry above all, need not): a
            # power cut must not let a revision be handed out twice.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT value FROM counters WHERE name = 'revision'").fetchone()
                revision = max(row[0] if row else 0, at_least) + 1
                self._db.execute(
                    "INSERT INTO counters (name, value) VALUES ('revision', ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (revision,),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._db.execute("PRAGMA synchronous=NORMAL")
        return revision

    # -- bundles -----------------------------------------------------------------------

    def save_bundle(self, record: BundleRecord) -> None:
        """Register a bundle; the same name and version again must have the same sha256."""
        with self._lock:
            row = self._db.execute(
                "SELECT sha256 FROM bundles WHERE name = ? AND version = ?", (record.name, record.version)
            ).fetchone()
            if row is not None:
                if row[0] != record.sha256:
                    raise InvalidInputError(
                        f"bundle {record.name} v{record.version} is already registered "
                        f"with another sha256 ({row[0][:12]}..)"
                    )
                return
            self._db.execute(
                "INSERT INTO bundles (name, version, sha256, size, path, key_id, registered_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.name,
                    record.version,
                    record.sha256,
                    record.size,
                    record.path,
                    record.key_id,
                    record.registered_at,
                ),
            )

    _BUNDLE = "SELECT name, version, sha256, size, path, key_id, registered_at FROM bundles"

    @staticmethod
    def _bundle(row: tuple[Any, ...]) -> BundleRecord:
        name, version, sha256, size, path, key_id, registered_at = row
        return BundleRecord(
            name=name, version=version, sha256=sha256, size=size, path=path, key_id=key_id, registered_at=registered_at
        )

    def load_bundle(self, name: str, version: int) -> BundleRecord:
        rows = self._all(f"{self._BUNDLE} WHERE name = ? AND version = ?", (name, version))
        if not rows:
            raise NotFoundError(f"no bundle {name} v{version}")
        return self._bundle(rows[0])

    def list_bundles(self, name: str | None = None) -> list[BundleRecord]:
        """By name, then version."""
        if name is None:
            rows = self._all(f"{self._BUNDLE} ORDER BY name, version")
        else:
            rows = self._all(f"{self._BUNDLE} WHERE name = ? ORDER BY version", (name,))
        return [self._bundle(r) for r in rows]

    # -- devices -----------------------------------------------------------------------

    def save_device(self, record: DeviceRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO devices"
                " (id, labels, online, model_name, model_version, session, last_seen, telemetry)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    json.dumps(record.labels, sort_keys=True),
                    int(record.online),
                    record.model_name,
                    record.model_version,
                    record.session,
                    record.last_seen,
                    json.dumps(record.telemetry, sort_keys=True) if record.telemetry is not None else None,
                ),
            )

    _DEVICE = "SELECT id, labels, online, model_name, model_version, session, last_seen, telemetry FROM devices"

    @staticmethod
    def _device(row: tuple[Any, ...]) -> DeviceRecord:
        id_, labels, online, model_name, model_version, session, last_seen, telemetry = row
        return DeviceRecord(
            id=id_,
            labels=json.loads(labels),
            online=bool(online),
            model_name=model_name,
            model_version=model_version,
            session=session,
            last_seen=last_seen,
            telemetry=json.loads(telemetry) if telemetry is not None else None,
        )

    def load_device(self, device_id: str) -> DeviceRecord:
        rows = self._all(f"{self._DEVICE} WHERE id = ?", (device_id,))
        if not rows:
            raise NotFoundError(f"no device {device_id!r}")
        return self._device(rows[0])

    def list_devices(self) -> list[DeviceRecord]:
        return [self._device(r) for r in self._all(f"{self._DEVICE} ORDER BY id")]

    # -- rollouts ----------------------------------------------------------------------

    def save_rollout(self, rollout: Rollout) -> None:
        """Write the rollout row and the device rows changed since the last save, in one transaction."""
        state = rollout.header_dict()
        changed = rollout.take_changed()
        with self._lock:
            try:
                self._db.execute("BEGIN")
                known = self._db.execute("SELECT 1 FROM rollouts WHERE id = ?", (rollout.id,)).fetchone()
                if known is None:  # first save, or a rollout rebuilt elsewhere: every device
                    changed = list(rollout.devices.values())
                    self._db.execute(
                        "INSERT INTO rollouts (id, spec, state, status, updated_at) VALUES (?, ?, ?, ?, ?)",
                        (
                            rollout.id,
                            json.dumps(rollout.spec.to_dict(), sort_keys=True),
                            json.dumps(state, sort_keys=True),
                            rollout.status.value,
                            rollout.updated_at,
                        ),
                    )
                else:  # the spec never changes
                    self._db.execute(
                        "UPDATE rollouts SET state = ?, status = ?, updated_at = ? WHERE id = ?",
                        (json.dumps(state, sort_keys=True), rollout.status.value, rollout.updated_at, rollout.id),
                    )
                self._db.executemany(
                    "INSERT OR REPLACE INTO rollout_devices (rollout_id, device, state) VALUES (?, ?, ?)",
                    [(rollout.id, d.device, json.dumps(d.to_dict(), sort_keys=True)) for d in changed],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                rollout.mark_changed(d.device for d in changed)
                raise

    def _rollout(self, rollout_id: str, spec_json: str, state_json: str) -> Rollout:
        """Called with the lock held."""
        spec = json.loads(spec_json)
        state = json.loads(state_json)
        rows = dict(
            self._db.execute("SELECT device, state FROM rollout_devices WHERE rollout_id = ?", (rollout_id,)).fetchall()
        )
        order = [d for wave in RolloutSpec.from_dict(spec).waves() for d in wave]
        missing = [d for d in order if d not in rows]
        if missing:
            raise InvalidInputError(
                f"rollout {rollout_id}: no saved state for {len(missing)} device(s), e.g. {missing[0]!r}"
            )
        state["devices"] = [json.loads(rows[d]) for d in order]
        rollout = Rollout.from_dict({"spec": spec, "state": state})
        rollout.take_changed()  # what was just read is what is stored
        return rollout

    def load_rollout(self, rollout_id: str) -> Rollout:
        with self._lock:
            row = self._db.execute("SELECT id, spec, state FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no rollout {rollout_id!r}")
            return self._rollout(*row)

    def list_rollouts(self, statuses: Sequence[RolloutStatus] | None = None) -> list[Rollout]:
        """All rollouts, or those in ``statuses`` (e.g. the live ones after a restart), oldest change first."""
        with self._lock:
            if statuses is None:
                rows = self._db.execute("SELECT id, spec, state FROM rollouts ORDER BY updated_at, id").fetchall()
            else:
                marks = ", ".join("?" * len(statuses))
                rows = self._db.execute(
                    f"SELECT id, spec, state FROM rollouts WHERE status IN ({marks}) ORDER BY updated_at, id",
                    [RolloutStatus(s).value for s in statuses],
                ).fetchall()
            return [self._rollout(*r) for r in rows]
