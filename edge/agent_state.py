"""The device agent's state: typed in memory (:class:`AgentState`), written durably, read back
whatever a crash or a disk left.

One JSON file (``agent-state.json``) holds what the agent must not forget across restarts: its MQTT
session counter and the commands it answered (until they expire), kept by the session
(:mod:`edgecloud.edge.agent`); the newest command revision it acted on (the floor below which
commands are ignored), the bundles installed, those proven by a watch window, the version floor per
bundle name (the newest proven), and the one it serves, kept by the deployer
(:mod:`edgecloud.edge.deployer`). The file's format is that of the untyped state before it: a file
either wrote reads back the same, and saves byte for byte as before; fields it does not know are kept.

What survives what:

- **Process crash**: every save completes or leaves the previous file; the state on disk is the
  last one saved.
- **Power loss**: the new file's data is fsync'd before it is renamed into place and the folder
  after, so the disk holds the old state or the new one, whole. The generation before it is kept
  as ``agent-state.prev.json``.
- **A corrupt or truncated file** (a disk error, a hand edit): the agent does not refuse to start.
  It reads the previous generation (one save behind: at most the last command's progress is lost),
  or, with neither readable, starts from an empty state. Either way it keeps the unreadable file
  beside the state (``agent-state.json.corrupt``) and reports the problem in every telemetry
  message (``state_problem``) for as long as the process runs; the daemon serves its last
  verified bundle meanwhile (:func:`edgecloud.edge.deployer.resume_bundle`). From an empty state the
  version floors restart from the bundle it serves, and the revision floor is lost: until the next command raises it, only a command's signature and expiry
  stand between the device and a replayed one (docs/security.md).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["AgentState", "StateStore", "read_state"]

log = logging.getLogger(__name__)

STATE_FILE = "agent-state.json"
PREVIOUS_FILE = "agent-state.prev.json"
CORRUPT_SUFFIX = ".corrupt"
_FIELDS = ("session", "newest_revision", "commands", "command_expiry", "installed", "proven", "floors", "active")


@dataclass(kw_only=True)
class AgentState:
    """What the agent must not forget across restarts; each field is the file's key of that name."""

    session: int = 0
    """Counts connect attempts: each birth and will carries it, so the fleet orders them."""
    newest_revision: int = 0
    """The newest deployment revision acted on (swapped in): an older command is IGNORED."""
    commands: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The final ack of each command answered, as published (JSON), by command id: a redelivery gets it again."""
    command_expiry: dict[str, float] = field(default_factory=dict)
    """Each recorded command's ``expires_at``: past it, the record is dropped (see :meth:`forget_expired`)."""
    installed: dict[int, str] = field(default_factory=dict)
    """The directory of each bundle version installed here (or served at start)."""
    proven: set[int] = field(default_factory=set)
    """The versions a rollback may go to: served at start, or passed a watch window here."""
    floors: dict[str, int] = field(default_factory=dict)
    """The version floor per bundle name: the newest proven; a deploy of that name must be newer."""
    active: str | None = None
    """The directory of the last bundle that passed its watch here: what a restarted daemon serves."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys of the file this version does not know, written back as they were read."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentState:
        """The state a file holds; a missing key takes its default (a file from an older agent).
        A value of the wrong type raises ``TypeError`` or ``ValueError``."""
        active = data.get("active")
        if active is not None and not isinstance(active, str):
            raise TypeError(f"active: expected a path, got {active!r}")
        return cls(
            session=int(data.get("session", 0)),
            newest_revision=int(data.get("newest_revision", 0)),
            commands={str(k): dict(v) for k, v in data.get("commands", {}).items()},
            command_expiry=dict(data.get("command_expiry", {})),
            installed={int(k): str(v) for k, v in data.get("installed", {}).items()},
            proven={int(v) for v in data.get("proven", [])},
            floors={str(k): int(v) for k, v in data.get("floors", {}).items()},
            active=active,
            extra={k: v for k, v in data.items() if k not in _FIELDS},
        )

    def to_json(self) -> dict[str, Any]:
        """The file's form: the same keys and values as the untyped state that came before."""
        data = {
            **self.extra,
            "session": self.session,
            "newest_revision": self.newest_revision,
            "commands": self.commands,
            "command_expiry": self.command_expiry,
            "installed": {str(version): directory for version, directory in self.installed.items()},
            "proven": sorted(self.proven),
            "floors": self.floors,
        }
        if self.active is not None:
            data["active"] = self.active
        return data

    def record(self, command_id: str, ack: dict[str, Any], expires_at: float, now: float) -> None:
        """Keep a command's final ``ack`` (as published) until ``expires_at``, and forget the
        records already past theirs."""
        self.commands[command_id] = ack
        self.command_expiry[command_id] = expires_at
        self.forget_expired(now)

    def forget_expired(self, now: float) -> None:
        """Drop the record of every command past its expiry: the broker may redeliver it, but an
        expired command is refused (open_command, by this same clock) before its record is looked
        up, so the record would answer nothing and the state would only grow."""
        for command_id, expires_at in list(self.command_expiry.items()):
            if expires_at and expires_at <= now:
                del self.command_expiry[command_id]
                self.commands.pop(command_id, None)


def _read(path: Path) -> AgentState:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, got {type(data).__name__}")
    return AgentState.from_json(data)


def read_state(folder: Path) -> tuple[AgentState | None, str]:
    """The newest readable state in ``folder`` (None: none saved yet, or none readable) and the
    problem met on the way ("" when the current file read cleanly, or neither exists)."""
    current, previous = folder / STATE_FILE, folder / PREVIOUS_FILE
    problem = ""
    try:
        return _read(current), ""
    except FileNotFoundError:
        if not previous.exists():
            return None, ""
        problem = f"{current.name} is missing but {previous.name} is not (a save was cut short)"
    except (OSError, ValueError, TypeError, AttributeError) as exc:  # JSONDecodeError is a ValueError
        problem = f"{current.name} is unreadable ({exc})"
    try:
        return _read(previous), f"{problem}; recovered the previous generation, one save behind"
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        return None, f"{problem}; {previous.name} is unreadable too ({exc}): started from an empty state"


class StateStore:
    """The agent's state, loaded at construction (see the module docstring) and saved by
    :meth:`save` (from any thread). ``problem`` says what was wrong with the files at start ("" when nothing)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.file = self.folder / STATE_FILE
        state, self.problem = read_state(self.folder)
        if self.problem:
            log.error("agent state: %s", self.problem)
            if self.file.exists():  # kept for inspection, and out of the next start's way
                os.replace(self.file, self.file.with_name(self.file.name + CORRUPT_SUFFIX))
        self.state = state if state is not None else AgentState()
        self._lock = threading.Lock()  # the session saves on paho's thread, the deployer on its worker

    def save(self) -> None:
        """Write the state so that a crash or a power cut leaves the old file or the new one, whole:
        the data reaches the disk before the rename, and the rename before this returns."""
        with self._lock:
            tmp = self.file.with_suffix(".tmp")
            with tmp.open("w") as out:
                out.write(json.dumps(self.state.to_json(), indent=1, sort_keys=True))
                out.flush()
                os.fsync(out.fileno())
            if self.file.exists():
                os.replace(self.file, self.folder / PREVIOUS_FILE)
            os.replace(tmp, self.file)
            folder = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
