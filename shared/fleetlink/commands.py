"""Signed fleet commands: what the fleet manager publishes on a device's ``.../cmd`` topic.

Anyone who can publish on the broker can put bytes on that topic, so a device acts only on a
command the fleet manager signed (Ed25519) for it, that has not expired. The wire form is one
JSON object::

    {"command": "<the command as canonical JSON, in a string>",
     "signature": {"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64>"}}

The signature covers the UTF-8 bytes of the ``command`` string exactly as received, so nothing
is re-encoded before it is checked. The command names its device and carries ``issued_at`` and
``expires_at``: a captured command replays neither to another device nor after it expires, and a
replay before then has the same id, which the device answers from its record without acting
twice. :func:`open_command` checks, cheapest first, and refuses with
:class:`CommandRejectedError` (an :class:`~edgecloud.shared.base.errors.InvalidInputError`) whose
``reason`` names the check: ``malformed``, ``unsigned``, ``untrusted-key``, ``bad-signature``,
``wrong-device``, ``expired``, ``not-yet-valid``. Its ``command_id`` is the id the payload
claims, when one can be read (unverified: good for a log line or a refusal ack, never for state).
"""

from __future__ import annotations

import base64
import json
import re
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgecloud.shared.base.errors import ConfigError, InvalidInputError
from edgecloud.shared.bundles.signing import (
    ALGORITHM,
    SIGNATURE_FIELDS,
    EnvelopeFault,
    TrustStore,
    UntrustedKeyError,
    key_id,
    read_envelope,
)
from edgecloud.shared.fleetlink.messages import Command, decode, encode

__all__ = [
    "DEFAULT_TTL_S",
    "MAX_CLOCK_SKEW_S",
    "CommandRejectedError",
    "CommandSigner",
    "open_command",
    "sign_command",
]

DEFAULT_TTL_S = 24 * 3600.0
"""How long a signed command stays valid; the manager signs again every time it re-publishes."""
MAX_CLOCK_SKEW_S = 300.0
"""How far in the future ``issued_at`` may be before a device calls its clock or the command wrong."""
_ENVELOPE_FIELDS = ("command", "signature")
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class CommandRejectedError(InvalidInputError):
    """A command the device must not act on; ``reason`` is a short code for logs and metrics."""

    def __init__(self, reason: str, message: str, command_id: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.command_id = command_id
        """The id the payload claims, if it has a well-formed one; not verified."""


class CommandSigner:
    """Signs commands with one key, for ``ttl_s`` seconds from each signing. The key id and the
    envelope's fixed parts are worked out once: a rollout signs one command per device."""

    def __init__(self, key: Ed25519PrivateKey, *, ttl_s: float = DEFAULT_TTL_S) -> None:
        if not 0 < ttl_s <= 30 * 24 * 3600:
            raise ConfigError(f"command ttl must be in (0, 30 days], got {ttl_s!r}")
        self._key, self.ttl_s = key, ttl_s
        self.key_id = key_id(key.public_key())
        # encode(envelope) would give these bytes too (sorted keys, no spaces); written out, the body
        # string is JSON-escaped once and nothing else is encoded per command.
        self._middle = f',"signature":{{"algorithm":"{ALGORITHM}","key_id":"{self.key_id}","signature":"'.encode()

    def sign(self, command: Command, *, now: float | None = None) -> bytes:
        """The wire payload for ``command``, issued ``now`` (default: the clock)."""
        if not command.device:
            raise ConfigError(f"command {command.id} names no device; a signed command is for one device")
        issued = time.time() if now is None else now
        data = command.to_dict()
        data["issued_at"], data["expires_at"] = issued, issued + self.ttl_s
        body = encode(data)
        signature = base64.b64encode(self._key.sign(body)).decode("ascii")
        return b'{"command":' + json.dumps(body.decode("utf-8")).encode() + self._middle + signature.encode() + b'"}}'


def sign_command(
    command: Command, key: Ed25519PrivateKey, *, ttl_s: float = DEFAULT_TTL_S, now: float | None = None
) -> bytes:
    """The wire payload for ``command``, issued now and valid for ``ttl_s`` seconds (one command;
    :class:`CommandSigner` signs many with the same key)."""
    return CommandSigner(key, ttl_s=ttl_s).sign(command, now=now)


def _signature(document: object) -> tuple[str, bytes]:
    return read_envelope(document, _malformed, max_encoded=200)


def _malformed(fault: EnvelopeFault, value: object) -> CommandRejectedError:
    """The refusal of a command whose signature envelope fails a check (:func:`read_envelope`)."""
    match fault:
        case "fields":
            message = f"signature must be an object with exactly {', '.join(SIGNATURE_FIELDS)}"
        case "algorithm":
            message = f"signature algorithm {str(value)[:40]!r} is not {ALGORITHM!r}"
        case "key_id" | "signature":
            message = "signature key_id must be 16 hex digits and signature base64"
        case "base64":
            message = "signature is not base64"
        case "length":
            message = f"an ed25519 signature is 64 bytes, got {value}"
    return CommandRejectedError("malformed", message)


def _claimed_id(envelope: dict) -> str:
    """The command id a payload claims (signed envelope or bare command), or "": read only to
    say which command was refused. Parsing the string again is bounded: it came from a payload
    decode() already capped at 64 KiB."""
    inner: object = envelope
    if isinstance(envelope.get("command"), str):
        try:
            inner = json.loads(envelope["command"])
        except (ValueError, RecursionError):
            return ""
    claimed = inner.get("id") if isinstance(inner, dict) else None
    return claimed if isinstance(claimed, str) and _ID.fullmatch(claimed) else ""


def open_command(
    payload: bytes,
    trust: TrustStore,
    *,
    device: str,
    now: float | None = None,
    max_clock_skew_s: float = MAX_CLOCK_SKEW_S,
) -> Command:
    """The verified command in ``payload`` for ``device``; CommandRejectedError otherwise.

    Nothing in the payload is parsed as a command before its signature checks out (except the
    claimed id of a refused one, for the error's ``command_id``)."""
    if not len(trust):
        raise ConfigError("no trusted command keys configured; a device never acts on an unsigned command")
    try:
        envelope = decode(payload)
    except InvalidInputError as exc:
        raise CommandRejectedError("malformed", str(exc)) from None
    try:
        return _open(envelope, trust, device, time.time() if now is None else now, max_clock_skew_s)
    except CommandRejectedError as exc:
        exc.command_id = _claimed_id(envelope)
        raise


def _open(envelope: dict, trust: TrustStore, device: str, at: float, max_clock_skew_s: float) -> Command:
    if "signature" not in envelope:
        raise CommandRejectedError("unsigned", "unsigned command (no signature); refusing it")
    if sorted(envelope) != sorted(_ENVELOPE_FIELDS) or not isinstance(envelope["command"], str):
        raise CommandRejectedError("malformed", "a signed command is exactly {command: string, signature: object}")
    kid, signature = _signature(envelope["signature"])
    try:
        public_key = trust.signer(kid)  # says why not: unknown, revoked, or retired by a rotation
    except UntrustedKeyError as exc:
        raise CommandRejectedError("untrusted-key", f"command signed by {exc}; not trusted for commands") from None
    try:
        body = envelope["command"].encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\\ud800") decodes from JSON but has no UTF-8 form
        raise CommandRejectedError("malformed", "signed command is not valid Unicode") from None
    try:
        public_key.verify(signature, body)
    except InvalidSignature:
        raise CommandRejectedError("bad-signature", f"bad command signature by key {kid}: forged or altered") from None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # signed garbage: the manager's bug, still never acted on
        raise CommandRejectedError("malformed", f"signed command is not JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise CommandRejectedError("malformed", "signed command must be a JSON object")
    try:
        command = Command.from_dict(data)
    except InvalidInputError as exc:
        raise CommandRejectedError("malformed", str(exc)) from None
    if command.device != device:
        raise CommandRejectedError(
            "wrong-device", f"command {command.id} is for device {command.device!r}, not {device!r}"
        )
    if command.expires_at <= command.issued_at or at >= command.expires_at:
        raise CommandRejectedError(
            "expired", f"command {command.id} expired at {command.expires_at:.0f} (now {at:.0f})"
        )
    if command.issued_at > at + max_clock_skew_s:
        raise CommandRejectedError(
            "not-yet-valid",
            f"command {command.id} is issued {command.issued_at - at:.0f} s in the future; check the clocks",
        )
    return command
