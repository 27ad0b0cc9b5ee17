"""The fleet's MQTT contract (``edgecloud.shared.fleetlink.messages``): the topic tree, the message schemas and their
validation, and the payload codec. A device must never act on a malformed command, so every
malformed payload is an InvalidInputError that names the field."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest

from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.fleetlink.messages import (
    MAX_PAYLOAD_BYTES,
    MAX_REVISION,
    ROOT,
    AckStatus,
    Birth,
    BundleRef,
    Command,
    CommandAck,
    Telemetry,
    Topics,
    decode,
    encode,
)
from edgecloud.shared.fleetlink.quality import FieldQuality

SHA = "0123456789abcdef" * 4
BUNDLE = {"name": "edge-student", "version": 5, "url": "https://models.example/edge-student-5.tar", "sha256": SHA,
          "size": 123_456}  # fmt: skip
COMMAND = {"id": "r1-dev-7-deploy", "type": "deploy", "revision": 3, "bundle": BUNDLE, "rollout_id": "r1",
           "issued_at": 1700000000.5, "device": "dev-7", "expires_at": 1700086400.5}  # fmt: skip


def wire(data: dict[str, Any]) -> dict[str, Any]:
    """What the other side gets: the dict encoded to an MQTT payload and decoded again."""
    return decode(encode(data))


def with_(data: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    out.update(changes)
    return out


def without(data: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != name}


# -- topics ----------------------------------------------------------------------------------------


def test_topics_of_a_device() -> None:
    t = Topics("plant-1", "dev_07.a")
    assert ROOT == "edgecloud/v1"
    assert t.base == "edgecloud/v1/plant-1/dev_07.a"
    assert (t.state, t.telemetry, t.cmd, t.ack) == (
        "edgecloud/v1/plant-1/dev_07.a/state",
        "edgecloud/v1/plant-1/dev_07.a/telemetry",
        "edgecloud/v1/plant-1/dev_07.a/cmd",
        "edgecloud/v1/plant-1/dev_07.a/cmd/ack",
    )
    assert Topics.fleet_wildcard("plant-1", "telemetry") == "edgecloud/v1/plant-1/+/telemetry"
    assert Topics.fleet_wildcard("plant-1", "cmd/ack") == "edgecloud/v1/plant-1/+/cmd/ack"


@pytest.mark.parametrize("leaf", ["state", "telemetry", "cmd", "ack"])
def test_parse_inverts_the_topic_names(leaf: str) -> None:
    t = Topics("f", "d" * 64)
    expected = "cmd/ack" if leaf == "ack" else leaf
    assert Topics.parse(getattr(t, leaf)) == ("f", "d" * 64, expected)


@pytest.mark.parametrize(
    "segment",
    ["", "a/b", "+", "#", "a b", "x" * 65, "dév", "a\x00", "dev$"],
    ids=["empty", "slash", "plus", "hash", "space", "too-long", "non-ascii", "nul", "dollar"],
)
@pytest.mark.parametrize("field", ["fleet", "device"])
def test_topics_refuse_a_segment_outside_the_tree(field: str, segment: str) -> None:
    fields = {"fleet": "f", "device": "d", field: segment}
    with pytest.raises(InvalidInputError, match=rf"^{field} must match \[A-Za-z0-9\._-\]\{{1,64\}}, got "):
        Topics(**fields)


def test_topics_accept_the_longest_segment() -> None:
    assert Topics("f" * 64, "d" * 64).base == f"edgecloud/v1/{'f' * 64}/{'d' * 64}"


@pytest.mark.parametrize(
    "topic",
    ["edgecloud/v1/f/d", "edgecloud/v2/f/d/state", "other/v1/f/d/state", "edgecloud", "", "/edgecloud/v1/f/d/state"],
)
def test_parse_refuses_topics_outside_the_tree(topic: str) -> None:
    with pytest.raises(InvalidInputError, match="not an edgecloud/v1 topic"):
        Topics.parse(topic)


# -- ack statuses ---------------------------------------------------------------------------------


def test_final_ack_statuses() -> None:
    final = {s for s in AckStatus if s.final}
    assert final == {AckStatus.ACTIVE, AckStatus.FAILED, AckStatus.ROLLED_BACK, AckStatus.IGNORED}
    assert all(s.value == s.name for s in AckStatus)  # the wire value is the name
    assert AckStatus("DOWNLOADING") is AckStatus.DOWNLOADING


# -- bundle references ------------------------------------------------------------------------------


def test_bundle_ref_from_a_dict() -> None:
    assert BundleRef.from_dict(BUNDLE) == BundleRef("edge-student", 5, BUNDLE["url"], SHA, 123_456)
    assert BundleRef.from_dict(with_(BUNDLE, url="http://10.0.0.2:8080/b.tar")).url == "http://10.0.0.2:8080/b.tar"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (without(BUNDLE, "sha256"), r"^bundle\.sha256: missing$"),
        (with_(BUNDLE, version="5"), r"^bundle\.version: expected an integer, got '5'$"),
        (with_(BUNDLE, version=True), r"^bundle\.version: expected an integer, got True$"),
        (with_(BUNDLE, size=1.5), r"^bundle\.size: expected an integer, got 1\.5$"),
        (with_(BUNDLE, name=None), r"^bundle\.name: expected a string, got None$"),
        (with_(BUNDLE, version=0), r"^bundle\.version: must be >= 1, got 0$"),
        (with_(BUNDLE, size=0), r"^bundle\.size: must be >= 1, got 0$"),
        (with_(BUNDLE, sha256=SHA.upper()), r"^bundle\.sha256: must match \[0-9a-f\]\{64\}, got "),
        (with_(BUNDLE, sha256=SHA[:-1]), r"^bundle\.sha256: must match \[0-9a-f\]\{64\}, got "),
        (with_(BUNDLE, url="file:///etc/passwd"), r"^bundle\.url: must be http\(s\), got 'file:///etc/passwd'$"),
        (with_(BUNDLE, url="ftp://models.example/b.tar"), r"^bundle\.url: must be http\(s\)"),
        (with_(BUNDLE, version=MAX_REVISION + 1), r"^bundle\.version: must be <= 9007199254740992, got "),
        (with_(BUNDLE, size=2**64), r"^bundle\.size: must be <= 9007199254740992, got "),
        (
            with_(BUNDLE, name="../../etc"),
            r"^bundle\.name: must match \[A-Za-z0-9\._-\]\{1,128\}, got '\.\./\.\./etc'$",
        ),
        (with_(BUNDLE, name=""), r"^bundle\.name: must match .*, got ''$"),
        (
            with_(BUNDLE, url="https://x/" + "a" * 2048),
            r"^bundle\.url: must have at most 2048 characters, got 'https://x/aaa",
        ),
    ],
    ids=[
        "missing",
        "str-int",
        "bool-int",
        "float-int",
        "none-str",
        "version-0",
        "size-0",
        "upper-sha",
        "short-sha",
        "file-url",
        "ftp-url",
        "huge-version",
        "huge-size",
        "path-name",
        "empty-name",
        "long-url",
    ],
)
def test_a_bad_bundle_ref_is_refused_naming_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        BundleRef.from_dict(data)


# -- commands ---------------------------------------------------------------------------------------


def test_command_round_trips_through_the_wire() -> None:
    command = Command.from_dict(COMMAND)
    assert command == Command(
        "r1-dev-7-deploy", "deploy", 3, BundleRef.from_dict(BUNDLE), "r1", 1700000000.5, "dev-7", 1700086400.5
    )
    assert command.to_dict() == COMMAND == dataclasses.asdict(command)  # written out: no field left behind
    assert command.bundle.to_dict() == dataclasses.asdict(command.bundle)
    assert Command.from_dict(wire(command.to_dict())) == command
    rollback = Command.from_dict(with_(COMMAND, type="rollback"))
    assert Command.from_dict(wire(rollback.to_dict())) == rollback


def test_command_optional_fields_default() -> None:
    bare = {k: v for k, v in COMMAND.items() if k not in ("rollout_id", "issued_at", "device", "expires_at")}
    command = Command.from_dict(bare)
    assert (command.rollout_id, command.issued_at, command.device, command.expires_at) == ("", 0.0, "", 0.0)
    assert Command.from_dict(with_(COMMAND, revision=MAX_REVISION)).revision == MAX_REVISION


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (without(COMMAND, "id"), r"^cmd\.id: missing$"),
        (without(COMMAND, "bundle"), r"^cmd\.bundle: missing$"),
        (with_(COMMAND, revision="3"), r"^cmd\.revision: expected an integer, got '3'$"),
        (with_(COMMAND, revision=False), r"^cmd\.revision: expected an integer, got False$"),
        (with_(COMMAND, bundle=[BUNDLE]), r"^cmd\.bundle: expected an object, got list$"),
        (with_(COMMAND, bundle=without(BUNDLE, "url")), r"^cmd\.bundle\.url: missing$"),
        (with_(COMMAND, type="format-disk"), r"^cmd\.type: must be 'deploy' or 'rollback', got 'format-disk'$"),
        (with_(COMMAND, id="a/b"), r"^cmd\.id: must match \[A-Za-z0-9\._-\]\{1,64\}, got 'a/b'$"),
        (with_(COMMAND, id=""), r"^cmd\.id: must match \[A-Za-z0-9\._-\]\{1,64\}, got ''$"),
        (with_(COMMAND, revision=0), r"^cmd\.revision: must be >= 1, got 0$"),
        (with_(COMMAND, revision=2**62), r"^cmd\.revision: must be <= 9007199254740992, got 4611686018427387904$"),
        (with_(COMMAND, device="dev/7"), r"^cmd\.device: must match \(\[A-Za-z0-9\._-\]\{1,64\}\)\?, got 'dev/7'$"),
        (with_(COMMAND, device=7), r"^cmd\.device: expected a string, got 7$"),
        (with_(COMMAND, rollout_id=["r1"]), r"^cmd\.rollout_id: expected a string, got a list of 1$"),
        (with_(COMMAND, rollout_id="r" * 201), r"^cmd\.rollout_id: must have at most 200 characters, got 'rrr"),
        (with_(COMMAND, expires_at="tomorrow"), r"^cmd\.expires_at: expected a number, got 'tomorrow'$"),
        (with_(COMMAND, issued_at=True), r"^cmd\.issued_at: expected a number, got True$"),
        (with_(COMMAND, issued_at=float("inf")), r"^cmd\.issued_at: expected a finite number, got inf$"),
    ],
    ids=[
        "no-id",
        "no-bundle",
        "str-revision",
        "bool-revision",
        "list-bundle",
        "bundle-field",
        "type",
        "id-slash",
        "id-empty",
        "revision-0",
        "revision-2**62",
        "device-slash",
        "device-int",
        "rollout-id-list",
        "rollout-id-long",
        "expires-at-str",
        "issued-at-bool",
        "issued-at-inf",
    ],
)
def test_a_malformed_command_is_refused_naming_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Command.from_dict(data)


@pytest.mark.parametrize("issued_at", ["soon", None, [1]])
def test_a_malformed_issued_at_is_an_invalid_input(issued_at: Any) -> None:
    with pytest.raises(InvalidInputError, match="issued_at"):
        Command.from_dict(with_(COMMAND, issued_at=issued_at))


# -- acks -------------------------------------------------------------------------------------------


def test_ack_round_trips_through_the_wire() -> None:
    ack = CommandAck("r1-dev-7-deploy", "dev-7", AckStatus.ACTIVE, 3, reason="", version=5, rollout_id="r1", at=1.5)
    data = ack.to_dict()
    assert data == {"command_id": "r1-dev-7-deploy", "device": "dev-7", "status": "ACTIVE", "revision": 3,
                    "reason": "", "version": 5, "rollout_id": "r1", "at": 1.5}  # fmt: skip
    assert type(data["status"]) is str
    assert set(data) == {f.name for f in dataclasses.fields(CommandAck)}
    assert CommandAck.from_dict(wire(data)) == ack
    for status in AckStatus:
        other = CommandAck("c", "d", status, 1, reason="why")
        assert CommandAck.from_dict(wire(other.to_dict())) == other


def test_ack_optional_fields_default() -> None:
    ack = CommandAck.from_dict({"command_id": "c", "device": "d", "status": "RECEIVED", "revision": 2})
    assert ack == CommandAck("c", "d", AckStatus.RECEIVED, 2, reason="", version=0, rollout_id="", at=0.0)


ACK = {"command_id": "c", "device": "d", "status": "FAILED", "revision": 2}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (with_(ACK, status="DONE"), r"^ack\.status: must be 'QUEUED', 'SENT', .* or 'IGNORED', got 'DONE'$"),
        (with_(ACK, status="active"), r"^ack\.status: must be 'QUEUED', .*, got 'active'$"),
        (without(ACK, "status"), r"^ack\.status: missing$"),
        (with_(ACK, status=3), r"^ack\.status: must be 'QUEUED', .*, got 3$"),
        (without(ACK, "device"), r"^ack\.device: missing$"),
        (with_(ACK, revision="2"), r"^ack\.revision: expected an integer, got '2'$"),
        (with_(ACK, command_id=7), r"^ack\.command_id: expected a string, got 7$"),
    ],
    ids=["unknown-status", "lower-case-status", "no-status", "int-status", "no-device", "str-revision", "int-id"],
)
def test_a_malformed_ack_is_refused_naming_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        CommandAck.from_dict(data)


@pytest.mark.parametrize(
    ("field", "value"),
    [("version", "five"), ("version", None), ("at", "noon"), ("version", 2**64), ("version", -1), ("at", float("nan")),
     ("reason", 5), ("rollout_id", "r" * 201), ("revision", 2**63)],
)  # fmt: skip
def test_a_malformed_optional_ack_field_is_an_invalid_input(field: str, value: Any) -> None:
    with pytest.raises(InvalidInputError, match=field):
        CommandAck.from_dict(with_(ACK, **{field: value}))


# -- births ----------------------------------------------------------------------------------------


def test_birth_round_trips_through_the_wire() -> None:
    birth = Birth(
        online=True,
        device="dev-7",
        model_name="edge-student",
        model_version=5,
        session=12,
        capabilities=["deploy", "rollback", "telemetry"],
        labels={"site": "lab", "rack": "3"},
        at=2.5,
    )
    assert Birth.from_dict(wire(birth.to_dict())) == birth
    assert wire(birth.to_dict())["labels"] == {"site": "lab", "rack": "3"}


def test_the_will_is_a_minimal_birth() -> None:
    offline = Birth.from_dict({"online": False, "device": "dev-7"})
    assert offline == Birth(online=False, device="dev-7")
    assert (offline.model_name, offline.model_version, offline.session, offline.capabilities, offline.labels) == (
        "", 0, 0, [], {},
    )  # fmt: skip


def test_birth_defaults_are_not_shared() -> None:
    a, b = Birth(online=True, device="a"), Birth(online=True, device="b")
    a.labels["x"] = "1"
    a.capabilities.append("deploy")
    assert (b.labels, b.capabilities) == ({}, [])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"device": "d"}, r"^state\.online: missing$"),
        ({"online": "yes", "device": "d"}, r"^state\.online: expected true or false, got 'yes'$"),
        ({"online": 1, "device": "d"}, r"^state\.online: expected true or false, got 1$"),
        ({"online": True}, r"^state\.device: missing$"),
        ({"online": True, "device": 7}, r"^state\.device: expected a string, got 7$"),
        (
            {"online": True, "device": "d", "model_version": 2**64},
            r"^state\.model_version: must be <= 9007199254740992, got ",
        ),
        ({"online": True, "device": "d", "session": "1"}, r"^state\.session: expected an integer, got '1'$"),
        ({"online": True, "device": "d", "labels": ["a"]}, r"^state\.labels: expected an object, got list$"),
        ({"online": True, "device": "d", "capabilities": "deploy"}, r"^state\.capabilities: expected a list, got str$"),
        ({"online": True, "device": "d", "at": "noon"}, r"^state\.at: expected a number, got 'noon'$"),
    ],
    ids=[
        "no-online",
        "str-online",
        "int-online",
        "no-device",
        "int-device",
        "huge-version",
        "str-session",
        "list-labels",
        "str-capabilities",
        "str-at",
    ],
)
def test_a_malformed_birth_is_refused_naming_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Birth.from_dict(data)


# -- telemetry -------------------------------------------------------------------------------------

TELEMETRY = Telemetry(
    device="dev-7", at=1700000000.25, model_name="edge-student", model_version=5,
    requests={"edge": 90, "cloud": 10}, latency_ms={"edge": {"p50": 1.25, "p99": 3.5}}, escalation_rate=0.1,
    degraded=1, errors=2, outbox_depth=3, cpu_percent=12.5, memory_mb=256.0,
    quality=[FieldQuality("edge-student", 5, read=100, kept=90, escalated=10, abstained=2, checks=4, agreed=3, shed=1)],
)  # fmt: skip


def test_telemetry_round_trips_through_the_wire() -> None:
    data = TELEMETRY.to_dict()
    assert set(data) == set(Telemetry.__dataclass_fields__) and data == dataclasses.asdict(TELEMETRY)
    assert Telemetry.from_dict(wire(data)) == TELEMETRY
    assert Telemetry.from_dict(with_(data, extra="ignored")) == TELEMETRY  # newer devices may say more


@pytest.mark.parametrize("field", sorted(set(Telemetry.__dataclass_fields__) - {"state_problem", "quality"}))
def test_telemetry_missing_a_field_is_refused_naming_it(field: str) -> None:
    with pytest.raises(InvalidInputError, match=rf"^telemetry\.{field}: missing$"):
        Telemetry.from_dict(without(TELEMETRY.to_dict(), field))


def test_telemetry_from_an_older_device_has_no_state_problem_and_a_bad_one_is_refused() -> None:
    assert Telemetry.from_dict(without(TELEMETRY.to_dict(), "state_problem")).state_problem == ""
    assert Telemetry.from_dict(without(TELEMETRY.to_dict(), "quality")).quality == []
    for bad in (3, "x" * 1025):
        with pytest.raises(InvalidInputError, match=r"^telemetry\.state_problem"):
            Telemetry.from_dict(with_(TELEMETRY.to_dict(), state_problem=bad))


@pytest.mark.parametrize(
    ("field", "value"),
    [("at", "noon"), ("requests", "lots"), ("errors", None), ("model_version", 2**64), ("degraded", True),
     ("cpu_percent", float("inf")), ("device", 7)],
)  # fmt: skip
def test_telemetry_of_the_wrong_type_is_refused(field: str, value: Any) -> None:
    with pytest.raises(InvalidInputError, match=field):
        Telemetry.from_dict(with_(TELEMETRY.to_dict(), **{field: value}))


# -- the payload codec -----------------------------------------------------------------------------


def test_encode_is_compact_sorted_json() -> None:
    payload = encode({"b": 1, "a": [1, 2], "c": {"z": 0, "y": "é"}})
    assert isinstance(payload, bytes)
    assert payload == b'{"a":[1,2],"b":1,"c":{"y":"\\u00e9","z":0}}'
    assert decode(payload) == {"a": [1, 2], "b": 1, "c": {"y": "é", "z": 0}}


def test_decode_keeps_escaped_unicode_that_is_valid() -> None:
    assert decode(b'{"a": "\\u00e9\\ud83d\\ude00"}') == {"a": "\u00e9\U0001f600"}


def test_decode_accepts_a_payload_of_exactly_the_limit() -> None:
    filler = MAX_PAYLOAD_BYTES - len(b'{"x":""}')
    payload = json.dumps({"x": "a" * filler}, separators=(",", ":")).encode()
    assert len(payload) == MAX_PAYLOAD_BYTES == 64 * 1024
    assert decode(payload) == {"x": "a" * filler}


def test_decode_refuses_a_payload_over_the_limit() -> None:
    payload = b'{"x":"' + b"a" * MAX_PAYLOAD_BYTES + b'"}'
    with pytest.raises(InvalidInputError, match=f"payload of {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}"):
        decode(payload)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "payload is not UTF-8 JSON"),
        (b"not json", "payload is not UTF-8 JSON"),
        (b'{"a": 1', "payload is not UTF-8 JSON"),
        (b'{"a": "\xff"}', "payload is not UTF-8 JSON"),
        (b"[1, 2]", "payload must be a JSON object"),
        (b'"text"', "payload must be a JSON object"),
        (b"null", "payload must be a JSON object"),
        (b"42", "payload must be a JSON object"),
        (b'{"revision": ' + b"9" * 5000 + b"}", "payload is not UTF-8 JSON: Exceeds the limit"),
        (b"[" * 60000, "payload is not UTF-8 JSON: maximum recursion depth"),
        (b'{"model_name": "\\ud800"}', "payload holds a lone UTF-16 surrogate"),
    ],
    ids=[
        "empty",
        "text",
        "truncated",
        "latin-1",
        "array",
        "string",
        "null",
        "number",
        "5000-digit-int",
        "deep",
        "lone-surrogate",
    ],
)
def test_decode_refuses_what_is_not_a_json_object(payload: bytes, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        decode(payload)
