"""The smart-home task: commands in English to JSON actions.

``turn on the kitchen lights`` -> ``{"actions":[{"action":"on","device":"light","room":"kitchen"}]}``.
The answer is canonical JSON (sorted keys, no spaces) and answers match as JSON. Four groups::

    group          e.g.                                                   answer beyond "actions"
    simple         set the bedroom thermostat to 21 degrees               ("value": 21 in the action)
    multi          turn on the kitchen lights and then close the blinds   two or three actions, in order
                   in the office
    conditional    if the temperature is above 25, turn on the fan        "condition": {"op": ">",
                   in the office                                          "sensor": "temperature", "value": 25}
    relative_time  in an hour and a half turn off the hall lights         "delay_s": 5400 in each action

``simple`` is the edge's job; the other three need reasoning. The vocabulary is small (8 rooms,
6 kinds of device) and the wording varies (synonyms, word order, lead-ins such as ``could you``,
casing). A row's ``reasoning`` is a short scratchpad listing the commands, the condition and the
delay. Row ``i`` of a split is drawn from its own stream, seeded by ``(split, seed, i)``, so splits
never share a stream and ``generate_rows(n, ...)`` is a prefix of ``generate_rows(n + 1, ...)``.

:func:`parse` is the task's reference reader: it turns any generated query back into its
:class:`Plan`, which proves the wording unambiguous (the tests run it on every group).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edgecloud.modelkit.data.datasets import Dataset, Row
from edgecloud.tasks.common import check_mix, check_split, write_task

__all__ = [
    "ANSWER_MATCH",
    "DEFAULT_MIX",
    "DEVICES",
    "GROUPS",
    "NAME",
    "ROOMS",
    "Action",
    "Condition",
    "Plan",
    "generate_rows",
    "make_row",
    "parse",
    "write",
]

NAME = "smarthome"
ANSWER_MATCH = "json"
GROUPS = ("simple", "multi", "conditional", "relative_time")
DEFAULT_MIX: dict[str, float] = {"simple": 0.4, "multi": 0.2, "conditional": 0.2, "relative_time": 0.2}
DESCRIPTION = "Smart-home commands in English to JSON actions; simple is one command, the rest need reasoning."

#: Room key -> the words a user calls it.
ROOMS: dict[str, tuple[str, ...]] = {
    "kitchen": ("kitchen",),
    "bedroom": ("bedroom",),
    "living_room": ("living room", "lounge"),
    "bathroom": ("bathroom",),
    "office": ("office", "study"),
    "hall": ("hall", "hallway"),
    "garage": ("garage",),
    "dining_room": ("dining room",),
}


@dataclass(frozen=True, slots=True)
class _Device:
    words: tuple[str, ...]
    actions: tuple[str, ...]
    values: range = range(0)
    """What ``set`` takes (empty when the device has no ``set``)."""
    set_phrases: tuple[str, ...] = ()


#: Device key -> its words, its actions and how ``set`` is said.
DEVICES: dict[str, _Device] = {
    "light": _Device(("lights", "light", "lamp"), ("on", "off", "set"), range(10, 100, 10),
                     ("dim {t} to {v} percent", "set {t} to {v} percent", "set {t} to {v}%",
                      "bring {t} to {v} percent")),
    "thermostat": _Device(("thermostat", "heating"), ("set",), range(16, 29),
                          ("set {t} to {v} degrees", "set {t} to {v}", "change {t} to {v} degrees",
                           "put {t} on {v} degrees")),
    "fan": _Device(("fan", "ceiling fan"), ("on", "off")),
    "blinds": _Device(("blinds", "shades"), ("open", "close")),
    "tv": _Device(("tv", "television"), ("on", "off")),
    "speaker": _Device(("speaker", "stereo"), ("on", "off", "set"), range(10, 100, 10),
                       ("set the volume of {t} to {v}", "change the volume of {t} to {v}", "set {t} to volume {v}")),
}  # fmt: skip
_PHRASES = {
    "on": ("turn on {t}", "switch on {t}", "power on {t}", "turn {t} on", "switch {t} on"),
    "off": ("turn off {t}", "switch off {t}", "power off {t}", "turn {t} off", "shut off {t}"),
    "open": ("open {t}", "raise {t}", "pull up {t}"),
    "close": ("close {t}", "lower {t}", "shut {t}"),
}
_TARGETS = ("the {room} {device}", "the {device} in the {room}", "{room} {device}")
_SENSORS = {"temperature": (range(15, 33), ("", " degrees")), "humidity": (range(30, 85, 5), ("", " percent", "%"))}
_OPS = {">": ("above", "over", "higher than", "more than"), "<": ("below", "under", "lower than", "less than")}
_JOINERS = (" and ", " then ", ", then ", " and then ", ", and ")
_NAMED_DELAYS = {"a minute": 60, "a quarter of an hour": 900, "half an hour": 1800, "an hour": 3600,
                 "an hour and a half": 5400}  # fmt: skip
_LEADS = ("", "", "", "please ", "could you ", "can you ", "hey, ")


@dataclass(frozen=True, slots=True)
class Action:
    device: str
    room: str
    action: str
    value: int | None = None


@dataclass(frozen=True, slots=True)
class Condition:
    sensor: str
    op: str
    value: int


@dataclass(frozen=True, slots=True)
class Plan:
    """What a command asks for: its actions in order, an optional condition and an optional delay."""

    actions: tuple[Action, ...]
    condition: Condition | None = None
    delay_s: int | None = None

    def answer(self) -> str:
        """The canonical JSON answer (sorted keys, compact separators)."""
        actions = []
        for a in self.actions:
            item: dict[str, object] = {"action": a.action, "device": a.device, "room": a.room}
            if a.value is not None:
                item["value"] = a.value
            if self.delay_s is not None:
                item["delay_s"] = self.delay_s
            actions.append(item)
        out: dict[str, object] = {"actions": actions}
        if self.condition is not None:
            c = self.condition
            out["condition"] = {"op": c.op, "sensor": c.sensor, "value": c.value}
        return json.dumps(out, sort_keys=True, separators=(",", ":"))

    def reasoning(self) -> str:
        """The scratchpad: one line per command, then the condition and the delay in seconds."""
        lines = [f"commands: {len(self.actions)}"]
        for i, a in enumerate(self.actions, start=1):
            lines.append(f"{i}: {a.device} {a.room} {a.action}" + ("" if a.value is None else f" {a.value}"))
        c = self.condition
        lines.append("condition: none" if c is None else f"condition: {c.sensor} {c.op} {c.value}")
        if self.delay_s is None:
            lines.append("delay: none")
        else:
            h, m, s = self.delay_s // 3600, self.delay_s % 3600 // 60, self.delay_s % 60
            parts = [f"{n} {unit}" for n, unit in ((h, "h"), (m, "min"), (s, "s")) if n]
            lines.append(f"delay: {' '.join(parts)} = {self.delay_s} s")
        return "\n".join(lines) + "\n"


# --- generating ---------------------------------------------------------------------------------


def _action(rng: random.Random) -> Action:
    device = rng.choice(sorted(DEVICES))
    action = rng.choice(DEVICES[device].actions)
    value = rng.choice(DEVICES[device].values) if action == "set" else None
    return Action(device=device, room=rng.choice(sorted(ROOMS)), action=action, value=value)


def _say(a: Action, rng: random.Random) -> str:
    spec = DEVICES[a.device]
    target = rng.choice(_TARGETS).format(room=rng.choice(ROOMS[a.room]), device=rng.choice(spec.words))
    phrases = spec.set_phrases if a.action == "set" else _PHRASES[a.action]
    return rng.choice(phrases).format(t=target, v=a.value)


def _delay(rng: random.Random) -> tuple[str, int]:
    kind = rng.randrange(6)
    if kind == 0:
        minutes = rng.randint(2, 59)
        return f"{minutes} minutes", minutes * 60
    if kind == 1:
        seconds = rng.randrange(10, 60, 5)
        return f"{seconds} seconds", seconds
    if kind == 2:
        text = rng.choice(sorted(_NAMED_DELAYS))
        return text, _NAMED_DELAYS[text]
    if kind == 3:
        hours = rng.randint(2, 5)
        return f"{hours} hours", hours * 3600
    if kind == 4:
        hours, minutes = rng.randint(1, 3), rng.randrange(5, 60, 5)
        return f"{hours} hour{'s' if hours > 1 else ''} and {minutes} minutes", hours * 3600 + minutes * 60
    hours = rng.randint(2, 4)
    return f"{hours} and a half hours", hours * 3600 + 1800


def _multi(rng: random.Random) -> tuple[Plan, str]:
    actions: list[Action] = []
    count = rng.choice((2, 2, 3))
    while len(actions) < count:
        candidate = _action(rng)
        if all((candidate.device, candidate.room) != (a.device, a.room) for a in actions):
            actions.append(candidate)
    text = _say(actions[0], rng)
    for i, a in enumerate(actions[1:], start=1):
        joiner = ", " if i < len(actions) - 1 and rng.random() < 0.3 else rng.choice(_JOINERS)
        text += joiner + _say(a, rng)
    return Plan(actions=tuple(actions)), text


def _conditional(rng: random.Random) -> tuple[Plan, str]:
    action, sensor, op = _action(rng), rng.choice(sorted(_SENSORS)), rng.choice(sorted(_OPS))
    values, units = _SENSORS[sensor]
    condition = Condition(sensor=sensor, op=op, value=rng.choice(values))
    clause = f"{rng.choice(('if', 'when'))} the {sensor} is {rng.choice(_OPS[op])} {condition.value}{rng.choice(units)}"
    command = _say(action, rng)
    text = f"{clause}, {command}" if rng.random() < 0.6 else f"{command} {clause}"
    return Plan(actions=(action,), condition=condition), text


def _relative_time(rng: random.Random) -> tuple[Plan, str]:
    action, (delay, seconds) = _action(rng), _delay(rng)
    command = _say(action, rng)
    text = rng.choice((f"in {delay}, {command}", f"in {delay} {command}", f"{command} in {delay}"))
    return Plan(actions=(action,), delay_s=seconds), text


def _cased(text: str, rng: random.Random) -> str:
    style = rng.random()
    if style < 0.7:
        return text
    if style < 0.8:
        return text.upper()
    if style < 0.95:
        return text[:1].upper() + text[1:]
    return "".join(c.upper() if rng.random() < 0.5 else c for c in text)


def make_row(group: str, rng: random.Random) -> Row:
    """One row of ``group`` drawn from ``rng``."""
    if group == "simple":
        action = _action(rng)
        plan, text = Plan(actions=(action,)), _say(action, rng)
    else:
        plan, text = {"multi": _multi, "conditional": _conditional, "relative_time": _relative_time}[group](rng)
    lead = rng.choice(_LEADS)
    question = lead in ("could you ", "can you ")
    trail = rng.choice(("", "?", " please?") if question else ("", ".", "!") if lead else ("", ".", "!", " please"))
    query = _cased(lead + text + trail, rng)
    return Row(query=query, answer=plan.answer(), reasoning=plan.reasoning(), group=group)


def generate_rows(n: int, seed: int, split: str, mix: Mapping[str, float] | None = None) -> list[Row]:
    """``n`` rows of ``split`` (``train``, ``validation`` or ``test``), groups drawn from ``mix``
    (group -> weight, default :data:`DEFAULT_MIX`); reproducible from ``(seed, split)``."""
    weights = check_mix(DEFAULT_MIX if mix is None else mix, GROUPS)
    check_split(split)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    groups = list(weights)
    rows = []
    for index in range(n):
        rng = random.Random(f"edgecloud-smarthome/{split}/{seed}/{index}")
        rows.append(make_row(rng.choices(groups, weights=[weights[g] for g in groups])[0], rng))
    return rows


def write(
    out_dir: Path | str, *, train: int = 20_000, validation: int = 2_000, test: int = 2_000, seed: int = 0
) -> Dataset:
    """Write the smart-home dataset folder to ``out_dir`` and return it as read back."""
    sizes = {"train": train, "validation": validation, "test": test}
    return write_task(
        out_dir, generate_rows, name=NAME, answer_match=ANSWER_MATCH, description=DESCRIPTION, sizes=sizes, seed=seed
    )


# --- reading back -------------------------------------------------------------------------------


def _words(words: list[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_ROOM_RE = re.compile(rf"\b({_words([w for ws in ROOMS.values() for w in ws])})\b")
_DEVICE_RE = re.compile(rf"\b({_words([w for d in DEVICES.values() for w in d.words])})\b")
_ROOM_OF = {w: key for key, ws in ROOMS.items() for w in ws}
_DEVICE_OF = {w: key for key, d in DEVICES.items() for w in d.words}
_OP_OF = {w: op for op, ws in _OPS.items() for w in ws}
_CONDITION = rf"(?:if|when) the ({'|'.join(_SENSORS)}) is ({_words(list(_OP_OF))}) (\d+)(?: degrees| percent|%)?"
_DURATION = (
    rf"(?:(\d+) hours? and (\d+) minutes|(\d+) and a half hours|(\d+) hours|(\d+) minutes|(\d+) seconds"
    rf"|({_words(list(_NAMED_DELAYS))}))"
)
_SPLIT_RE = re.compile(r",? and then |,? then |,? and |, ")


def _seconds(groups: tuple[str | None, ...]) -> int:
    hm_h, hm_m, half, hours, minutes, seconds, named = groups
    if named:
        return _NAMED_DELAYS[named]
    if hm_h:
        return int(hm_h) * 3600 + int(hm_m or 0) * 60
    if half:
        return int(half) * 3600 + 1800
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + int(seconds or 0)


def _parse_command(text: str) -> Action:
    room, device = _ROOM_RE.findall(text), _DEVICE_RE.findall(text)
    if len(room) != 1 or len(device) != 1:
        raise ValueError(f"not one room and one device: {text!r}")
    tokens = re.findall(r"[a-z]+|\d+", text)
    numbers = [int(t) for t in tokens if t.isdigit()]
    if len(numbers) == 1:
        return Action(device=_DEVICE_OF[device[0]], room=_ROOM_OF[room[0]], action="set", value=numbers[0])
    verbs = [v for v, words in (("off", {"off"}), ("on", {"on"}), ("open", {"open", "raise", "up"}),
                                ("close", {"close", "lower", "shut"})) if words & set(tokens)]  # fmt: skip
    if numbers or not verbs:
        raise ValueError(f"no action in {text!r}")
    return Action(device=_DEVICE_OF[device[0]], room=_ROOM_OF[room[0]], action=verbs[0])


def parse(query: str) -> Plan:
    """The plan a query of this task asks for; raises ValueError for text outside the task's language."""
    text = " ".join(query.casefold().split())
    text = re.sub(r"^(?:please|could you|can you|hey,) ", "", text)
    text = re.sub(r"(?: please)?[.!?]?$", "", text)
    condition = delay = None
    if match := re.fullmatch(rf"{_CONDITION},? (.+)", text):
        sensor, op, value, text = match.groups()
        condition = Condition(sensor=sensor, op=_OP_OF[op], value=int(value))
    elif match := re.fullmatch(rf"(.+?),? {_CONDITION}", text):
        text, sensor, op, value = match.groups()
        condition = Condition(sensor=sensor, op=_OP_OF[op], value=int(value))
    elif match := re.fullmatch(rf"in {_DURATION},? (.+)", text):
        delay, text = _seconds(match.groups()[:-1]), match.groups()[-1]
    elif match := re.fullmatch(rf"(.+) in {_DURATION}", text):
        delay, text = _seconds(match.groups()[1:]), match.group(1)
    actions = tuple(_parse_command(part) for part in _SPLIT_RE.split(text))
    return Plan(actions=actions, condition=condition, delay_s=delay)
