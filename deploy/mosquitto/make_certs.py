"""Make a private CA, the broker's certificate and optional client certificates for the fleet's MQTT.

    python deploy/mosquitto/make_certs.py OUT [--san broker.example.com --san 10.0.0.5] [--client dev-001 ...]

Writes ``ca.crt``/``ca.key``, ``broker.crt``/``broker.key`` and ``{name}.crt``/``{name}.key`` per client
into OUT. An existing ``ca.key`` in OUT is reused, so running it again with ``--client NAME`` adds a
device to the same CA without re-issuing the others' certificates. A client certificate's common
name is its name, which ``use_identity_as_username`` turns into the MQTT user name: name it after
the device id so the ACL patterns (``%u``) apply.

Private keys are written with mode 0600. Keep ``ca.key`` off the broker: only the broker needs
``ca.crt``, ``broker.crt`` and ``broker.key``.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["issue", "load_or_make_ca", "main"]

DEFAULT_SANS = ("localhost", "127.0.0.1")

PrivateKey = ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgecloud"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key: PrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Created 0600 rather than chmod-ed afterwards, so the key is never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(subject: x509.Name, issuer: x509.Name, key: PrivateKey, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def load_or_make_ca(out: Path, days: int = 3650) -> tuple[x509.Certificate, PrivateKey]:
    """The CA in ``out`` (``ca.crt`` + ``ca.key``), made first if ``ca.key`` is missing."""
    cert_path, key_path = out / "ca.crt", out / "ca.key"
    if key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, PrivateKey), f"{key_path} is not an EC key"
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("edgecloud fleet CA")
    cert = (
        _builder(name, name, key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert, key


def _san(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def issue(
    out: Path, name: str, ca: tuple[x509.Certificate, PrivateKey], *, server_sans: Sequence[str] = (), days: int = 825
) -> Path:
    """``{name}.crt``/``{name}.key`` signed by the CA: a server certificate when ``server_sans``
    is given, a client certificate otherwise. Returns the certificate's path."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_sans else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(_name(name), ca_cert.subject, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server_sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(s) for s in server_sans]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_key(out / f"{name}.key", key)
    _write_cert(out / f"{name}.crt", cert)
    return out / f"{name}.crt"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the certificates and keys")
    parser.add_argument(
        "--san",
        action="append",
        default=[],
        help=f"broker host name or IP (repeatable; default: {' '.join(DEFAULT_SANS)})",
    )
    parser.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="NAME",
        help="also issue a client certificate with this common name (repeatable)",
    )
    parser.add_argument("--no-broker", action="store_true", help="only issue the --client certificates")
    parser.add_argument("--days", type=int, default=825, help="validity of issued certificates")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    ca = load_or_make_ca(args.out)
    if not args.no_broker:
        issue(args.out, "broker", ca, server_sans=args.san or DEFAULT_SANS, days=args.days)
    for name in args.client:
        if name in ("ca", "broker"):
            parser.error(f"client name {name!r} would overwrite the {name} files")
        issue(args.out, name, ca, days=args.days)
    print(f"wrote certificates to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
