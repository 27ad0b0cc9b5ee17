"""The device agent's state on disk: written durably, read back whatever a crash or a disk left.

One JSON file (``agent-state.json``) holds what the agent must not forget across restarts: the
newest command revision it acted on (the floor below which commands are ignored), the commands it
answered (until they expire), the bundles installed, those proven by a watch window, the version floor per bundle name
(the newest proven), and the one it serves.

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
  verified bundle meanwhile (:func:`edgecloud.edge.agent.resume_bundle`). From an empty state the
  version floors restart from the bundle it serves, and the revision floor is lost: until the next command raises it, only a command's signature and expiry
  stand between the device and a replayed one (docs/security.md).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

__all__ = ["StateStore", "empty_state", "read_state"]

log = logging.getLogger(__name__)

STATE_FILE = "agent-state.json"
PREVIOUS_FILE = "agent-state.prev.json"
CORRUPT_SUFFIX = ".corrupt"


def empty_state() -> dict:
    return {
        "session": 0,
        "newest_revision": 0,
        "commands": {},
        "installed": {},
        "proven": [],
        "floors": {},
        "command_expiry": {},
    }


def _read(path: Path) -> dict:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, got {type(data).__name__}")
    return data


def read_state(folder: Path) -> tuple[dict | None, str]:
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
    except (OSError, ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
        problem = f"{current.name} is unreadable ({exc})"
    try:
        return _read(previous), f"{problem}; recovered the previous generation, one save behind"
    except (OSError, ValueError, TypeError) as exc:
        return None, f"{problem}; {previous.name} is unreadable too ({exc}): started from an empty state"


class StateStore:
    """The agent's state, loaded at construction (see the module docstring) and saved by
    :meth:`save`. ``problem`` says what was wrong with the files at start ("" when nothing)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.file = self.folder / STATE_FILE
        state, self.problem = read_state(self.folder)
        if self.problem:
            log.error("agent state: %s", self.problem)
            if self.file.exists():  # kept for inspection, and out of the next start's way
                os.replace(self.file, self.file.with_name(self.file.name + CORRUPT_SUFFIX))
        self.state = state if state is not None else empty_state()
        for key, value in empty_state().items():
            self.state.setdefault(key, value)

    def save(self) -> None:
        """Write the state so that a crash or a power cut leaves the old file or the new one, whole:
        the data reaches the disk before the rename, and the rename before this returns."""
        tmp = self.file.with_suffix(".tmp")
        with tmp.open("w") as out:
            out.write(json.dumps(self.state, indent=1, sort_keys=True))
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
