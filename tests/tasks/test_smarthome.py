"""The smart-home task: English commands to canonical JSON actions, every wording read back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecloud.modelkit.data.datasets import read_dataset
from edgecloud.shared.bundles.answers import answers_match
from edgecloud.tasks import smarthome
from edgecloud.tasks.smarthome import Action, Condition, Plan, parse

HAND_WRITTEN = [
    ("turn on the kitchen lights", '{"actions":[{"action":"on","device":"light","room":"kitchen"}]}'),
    ("set the bedroom thermostat to 21 degrees",
     '{"actions":[{"action":"set","device":"thermostat","room":"bedroom","value":21}]}'),
    ("Could you switch the TV in the lounge off?",
     '{"actions":[{"action":"off","device":"tv","room":"living_room"}]}'),
    ("please dim the hallway lamp to 30 percent.",
     '{"actions":[{"action":"set","device":"light","room":"hall","value":30}]}'),
    ("open the office blinds and then set the volume of the study speaker to 40, then turn off the garage fan",
     ('{"actions":[{"action":"open","device":"blinds","room":"office"},'
      '{"action":"set","device":"speaker","room":"office","value":40},'
      '{"action":"off","device":"fan","room":"garage"}]}')),
    ("if the temperature is above 25, turn on the fan in the office",
     ('{"actions":[{"action":"on","device":"fan","room":"office"}],'
      '"condition":{"op":">","sensor":"temperature","value":25}}')),
    ("LOWER THE BATHROOM SHADES WHEN THE HUMIDITY IS LESS THAN 40%",
     ('{"actions":[{"action":"close","device":"blinds","room":"bathroom"}],'
      '"condition":{"op":"<","sensor":"humidity","value":40}}')),
    ("in 20 minutes turn off the hall lights",
     '{"actions":[{"action":"off","delay_s":1200,"device":"light","room":"hall"}]}'),
    ("in an hour and a half, switch on the dining room tv",
     '{"actions":[{"action":"on","delay_s":5400,"device":"tv","room":"dining_room"}]}'),
    ("set the kitchen heating to 19 in 2 hours and 15 minutes",
     '{"actions":[{"action":"set","delay_s":8100,"device":"thermostat","room":"kitchen","value":19}]}'),
]  # fmt: skip


@pytest.mark.parametrize(("query", "answer"), HAND_WRITTEN)
def test_hand_written_commands_have_their_answer(query: str, answer: str) -> None:
    assert parse(query).answer() == answer


def test_the_scratchpad_lists_commands_condition_and_delay() -> None:
    plan = Plan(actions=(Action("light", "kitchen", "on"), Action("thermostat", "bedroom", "set", 21)), delay_s=5400)
    assert plan.reasoning() == (
        "commands: 2\n1: light kitchen on\n2: thermostat bedroom set 21\ncondition: none\ndelay: 1 h 30 min = 5400 s\n"
    )
    conditional = Plan(actions=(Action("fan", "office", "on"),), condition=Condition("temperature", ">", 25))
    assert conditional.reasoning().splitlines()[-2:] == ["condition: temperature > 25", "delay: none"]


@pytest.mark.parametrize("query", ["make me a sandwich", "turn on the lights", "turn on the kitchen", "kitchen fan"])
def test_text_outside_the_language_is_refused(query: str) -> None:
    with pytest.raises(ValueError):
        parse(query)


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_every_generated_row_reads_back_to_its_answer_and_reasoning(split: str) -> None:
    rows = smarthome.generate_rows(1500, 7, split)
    for row in rows:
        plan = parse(row.query)
        assert (plan.answer(), plan.reasoning()) == (row.answer, row.reasoning), row.query
    assert {r.group for r in rows} == set(smarthome.GROUPS)


def test_answers_are_canonical_json() -> None:
    for row in smarthome.generate_rows(500, 0, "train"):
        value = json.loads(row.answer)
        assert json.dumps(value, sort_keys=True, separators=(",", ":")) == row.answer
        assert value["actions"] and all(set(a) >= {"action", "device", "room"} for a in value["actions"])
        assert ("condition" in value) == (row.group == "conditional")
        assert any("delay_s" in a for a in value["actions"]) == (row.group == "relative_time")
        assert (len(value["actions"]) > 1) == (row.group == "multi")
        assert answers_match("json", json.dumps(value, indent=1), row.answer)


def test_rows_are_deterministic_and_each_index_has_its_own_stream() -> None:
    rows = smarthome.generate_rows(300, 1, "train")
    assert rows == smarthome.generate_rows(300, 1, "train")
    assert smarthome.generate_rows(100, 1, "train") == rows[:100]
    assert smarthome.generate_rows(300, 2, "train") != rows


def test_splits_never_share_a_stream() -> None:
    splits = {split: smarthome.generate_rows(2000, 0, split) for split in ("train", "validation", "test")}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert all(x != y for x, y in zip(splits[a], splits[b], strict=True))
        # A short simple command may recur by chance; a command that needs reasoning practically never does.
        reasoned = [{r.query.casefold() for r in splits[s] if r.group != "simple"} for s in (a, b)]
        assert len(reasoned[0] & reasoned[1]) <= 2


def test_wording_varies() -> None:
    queries = [r.query for r in smarthome.generate_rows(1000, 0, "train", mix={"simple": 1.0})]
    assert {r.group for r in smarthome.generate_rows(50, 0, "train", mix={"simple": 1.0})} == {"simple"}
    assert any(q.isupper() for q in queries) and any(q.islower() for q in queries)
    for phrase in ("switch on", "turn on", "power on", "could you", "please", " in the ", "?"):
        assert any(phrase in q.casefold() for q in queries), phrase
    assert len(smarthome.ROOMS) == 8 and len(smarthome.DEVICES) == 6


def test_write_round_trips_through_the_dataset_contract(tmp_path: Path) -> None:
    written = smarthome.write(tmp_path / "home", train=50, validation=20, test=20, seed=4)
    data = read_dataset(tmp_path / "home")
    assert data == written
    assert (data.name, data.answer_match) == ("smarthome", "json")
    assert list(data.validation) == smarthome.generate_rows(20, 4, "validation")
    with pytest.raises(ValueError, match="unknown group 'complex'"):
        smarthome.generate_rows(5, 0, "train", mix={"complex": 1.0})
