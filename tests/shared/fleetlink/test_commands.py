"""Signed fleet commands (``edgecloud.shared.fleetlink.commands``): what signing produces, and every way
:func:`open_command` refuses a payload, each with its reason code. Pure logic, real keys."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgecloud.shared.base.errors import ConfigError, InvalidInputError
from edgecloud.shared.bundles.signing import ALGORITHM, TrustStore, key_id
from edgecloud.shared.fleetlink.commands import (
    DEFAULT_TTL_S,
    MAX_CLOCK_SKEW_S,
    CommandRejectedError,
    CommandSigner,
    open_command,
    sign_command,
)
from edgecloud.shared.fleetlink.messages import BundleRef, Command, decode, encode

NOW = 1_700_000_000.0
KEY = Ed25519PrivateKey.generate()
ROGUE = Ed25519PrivateKey.generate()
TRUST = TrustStore([KEY.public_key()])
BUNDLE = BundleRef("edge-student", 5, "http://fleet:8090/artifacts/" + "a" * 64 + ".tar.gz", "a" * 64, 1234)
COMMAND = Command("ro1-dev-7-3", "deploy", 3, BUNDLE, rollout_id="ro1", device="dev-7")


def signed(command: Command = COMMAND, key: Ed25519PrivateKey = KEY, **kwargs: Any) -> bytes:
    return sign_command(command, key, now=kwargs.pop("now", NOW), **kwargs)


def opened(payload: bytes, *, device: str = "dev-7", now: float = NOW + 1, trust: TrustStore = TRUST) -> Command:
    return open_command(payload, trust, device=device, now=now)


def refused(payload: bytes, reason: str, **kwargs: Any) -> CommandRejectedError:
    with pytest.raises(CommandRejectedError) as caught:
        opened(payload, **kwargs)
    assert caught.value.reason == reason, caught.value
    assert isinstance(caught.value, InvalidInputError)  # every boundary that maps InvalidInputError maps it
    return caught.value


def envelope(payload: bytes) -> dict[str, Any]:
    return decode(payload)


def resealed(document: dict[str, Any]) -> bytes:
    return encode(document)


# -- signing and opening ---------------------------------------------------------------------------


def test_a_signed_command_opens_to_itself_with_issue_and_expiry() -> None:
    payload = signed(ttl_s=60)
    document = envelope(payload)
    assert sorted(document) == ["command", "signature"]
    assert document["signature"]["algorithm"] == ALGORITHM
    assert document["signature"]["key_id"] == key_id(KEY.public_key())
    assert len(base64.b64decode(document["signature"]["signature"])) == 64
    command = opened(payload)
    assert command == replace(COMMAND, issued_at=NOW, expires_at=NOW + 60)
    assert json.loads(document["command"])["device"] == "dev-7"  # the device is inside what is signed


def test_the_signer_writes_the_canonical_envelope_and_reuses_its_key() -> None:
    signer = CommandSigner(KEY, ttl_s=60)
    assert signer.key_id == key_id(KEY.public_key())
    payload = signer.sign(COMMAND, now=NOW)
    document = json.loads(payload)
    assert payload == encode(document)  # byte for byte what encode() makes of it: sorted keys, no spaces
    assert document["command"] == encode({**COMMAND.to_dict(), "issued_at": NOW, "expires_at": NOW + 60}).decode()
    assert opened(payload) == replace(COMMAND, issued_at=NOW, expires_at=NOW + 60)
    quoted = replace(COMMAND, rollout_id='a "quoted" rollout \\ id')  # escaped once, inside the string
    assert opened(signer.sign(quoted, now=NOW)).rollout_id == quoted.rollout_id
    assert signer.sign(COMMAND, now=NOW + 5) != payload  # issued again: a fresh expiry, a new signature


def test_signing_again_gives_a_fresh_expiry() -> None:
    later = NOW + 10 * DEFAULT_TTL_S
    command = opened(signed(now=later), now=later + 1)
    assert command.expires_at == later + DEFAULT_TTL_S


def test_any_trusted_key_opens_and_the_key_id_picks_it() -> None:
    both = TrustStore([ROGUE.public_key(), KEY.public_key()])
    assert opened(signed(key=ROGUE), trust=both).id == COMMAND.id
    assert opened(signed(), trust=both).id == COMMAND.id


@pytest.mark.parametrize("ttl", [0, -1, 30 * 24 * 3600 + 1])
def test_signing_refuses_a_ttl_outside_thirty_days(ttl: float) -> None:
    with pytest.raises(ConfigError, match="ttl must be in"):
        signed(ttl_s=ttl)


def test_signing_refuses_a_command_for_no_device() -> None:
    with pytest.raises(ConfigError, match="names no device"):
        signed(replace(COMMAND, device=""))


def test_opening_without_trusted_keys_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no trusted command keys"):
        opened(signed(), trust=TrustStore())


# -- refusals --------------------------------------------------------------------------------------


def test_an_unsigned_command_is_refused_naming_its_id() -> None:
    error = refused(encode(COMMAND.to_dict()), "unsigned")
    assert error.command_id == COMMAND.id


def test_a_command_signed_by_another_key_is_refused() -> None:
    error = refused(signed(key=ROGUE), "untrusted-key")
    assert key_id(ROGUE.public_key()) in str(error) and error.command_id == COMMAND.id


def test_a_forged_signature_under_the_trusted_key_id_is_refused() -> None:
    document = envelope(signed(key=ROGUE))
    document["signature"]["key_id"] = key_id(KEY.public_key())
    refused(resealed(document), "bad-signature")


@pytest.mark.parametrize(
    "change",
    [
        {"revision": 2**52},
        {"type": "rollback"},
        {"device": "dev-8"},
        {"expires_at": NOW + 10 * DEFAULT_TTL_S},
        {"bundle": {**BUNDLE.__dict__, "url": "http://evil.example/x.tar.gz"}},
    ],
    ids=["revision", "type", "device", "expiry", "url"],
)
def test_any_change_to_the_signed_command_is_refused(change: dict[str, Any]) -> None:
    document = envelope(signed())
    body = json.loads(document["command"])
    body.update(change)
    document["command"] = json.dumps(body, separators=(",", ":"), sort_keys=True)
    refused(resealed(document), "bad-signature")


def test_re_encoding_the_same_command_differently_breaks_the_signature() -> None:
    """The signature covers the string's bytes, not a re-serialised parse of them."""
    document = envelope(signed())
    document["command"] = json.dumps(json.loads(document["command"]), indent=1)
    refused(resealed(document), "bad-signature")


def test_a_command_for_another_device_is_refused() -> None:
    error = refused(signed(), "wrong-device", device="dev-8")
    assert "'dev-7', not 'dev-8'" in str(error)


def test_a_command_without_a_device_is_refused_even_when_signed() -> None:
    body = encode(COMMAND.to_dict() | {"device": "", "issued_at": NOW, "expires_at": NOW + 60}).decode()
    document = {"command": body, "signature": envelope(signed())["signature"]}
    document["signature"]["signature"] = base64.b64encode(KEY.sign(body.encode())).decode()
    refused(resealed(document), "wrong-device")


def test_an_expired_command_is_refused() -> None:
    payload = signed(ttl_s=60)
    assert opened(payload, now=NOW + 59.9).id == COMMAND.id
    refused(payload, "expired", now=NOW + 60)
    refused(payload, "expired", now=NOW + 10**9)


def test_a_command_issued_in_the_future_beyond_the_skew_is_refused() -> None:
    payload = signed(now=NOW + MAX_CLOCK_SKEW_S + 10)
    refused(payload, "not-yet-valid", now=NOW)
    assert opened(signed(now=NOW + MAX_CLOCK_SKEW_S - 1), now=NOW).id == COMMAND.id  # clocks drift a little


def test_a_signed_command_that_expires_before_it_is_issued_is_refused() -> None:
    body = encode(COMMAND.to_dict() | {"issued_at": NOW, "expires_at": NOW - 1}).decode()
    document = {"command": body, "signature": envelope(signed())["signature"]}
    document["signature"]["signature"] = base64.b64encode(KEY.sign(body.encode())).decode()
    refused(resealed(document), "expired", now=NOW - 2)


def _signed_body(body: str) -> bytes:
    signature = base64.b64encode(KEY.sign(body.encode())).decode()
    return encode({"command": body, "signature": {"algorithm": ALGORITHM, "key_id": key_id(KEY.public_key()),
                                                  "signature": signature}})  # fmt: skip


@pytest.mark.parametrize(
    "body",
    ["not json", "[1, 2]", '{"id": "x"}', '{"revision": ' + "9" * 5000 + "}", "[" * 5000],
    ids=["text", "array", "missing-fields", "5000-digit-int", "deep"],
)
def test_signed_garbage_is_refused_as_malformed(body: str) -> None:
    refused(_signed_body(body), "malformed")


SIG = {"algorithm": ALGORITHM, "key_id": "0" * 16, "signature": base64.b64encode(b"\0" * 64).decode()}


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"[]",
        b'{"revision": ' + b"9" * 5000 + b"}",
        b"[" * 60000,
        b"{" + b" " * (65 * 1024) + b"}",
        encode({"command": {"id": "x"}, "signature": SIG}),
        encode({"command": "{}", "signature": SIG, "extra": 1}),
        encode({"command": "{}", "signature": "sig"}),
        encode({"command": "{}", "signature": {**SIG, "algorithm": "rsa"}}),
        encode({"command": "{}", "signature": {**SIG, "key_id": "ZZ" * 8}}),
        encode({"command": "{}", "signature": {**SIG, "key_id": 7}}),
        encode({"command": "{}", "signature": {**SIG, "signature": "%%%"}}),
        encode({"command": "{}", "signature": {**SIG, "signature": base64.b64encode(b"x" * 63).decode()}}),
        encode({"command": "{}", "signature": {**SIG, "signature": "A" * 201}}),
        encode({"command": "{}", "signature": {**SIG, "extra": 1}}),
        b'{"command": "\\ud800", "signature": ' + encode(SIG) + b"}",
    ],
    ids=[
        "empty",
        "text",
        "array",
        "5000-digit-int",
        "deep",
        "oversized",
        "object-command",
        "extra-field",
        "string-signature",
        "algorithm",
        "key-id-not-hex",
        "key-id-int",
        "not-base64",
        "63-byte-signature",
        "long-signature",
        "extra-signature-field",
        "lone-surrogate",
    ],
)
def test_a_malformed_envelope_is_refused_before_any_key_is_tried(payload: bytes) -> None:
    refused(payload, "malformed")


def test_the_claimed_id_of_a_refused_command_is_read_only_when_well_formed() -> None:
    document = envelope(signed(key=ROGUE))
    body = json.loads(document["command"])
    body["id"] = "../../etc/passwd"
    document["command"] = json.dumps(body)
    assert refused(resealed(document), "untrusted-key").command_id == ""
    assert refused(b"not json", "malformed").command_id == ""
