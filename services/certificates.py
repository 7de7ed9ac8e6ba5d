"""Throw-away certificates for a local stack: one internal CA, and a certificate per service it signs.

Production brings its own CA and certificates (the STILLPOINT_INTERNAL_* files); `make demo`, `make run` and
the tests make a fresh set with the `cryptography` package, so the services always talk mutual TLS.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# A service's certificate names it, and the internal services check that the caller is the gateway.
SERVICES = ("gateway", "content", "media")
_VALID_DAYS = 30


@dataclass(frozen=True)
class IssuedCertificate:
    """Where one service's certificate and key were written (PEM)."""

    certificate_file: Path
    key_file: Path


@dataclass(frozen=True)
class InternalCertificates:
    """The CA every service trusts, and each service's own certificate."""

    ca_file: Path
    issued: dict[str, IssuedCertificate]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def make_internal_certificates(
    folder: Path, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
) -> InternalCertificates:
    """Makes a CA and a server-and-client certificate for each service (named `stillpoint-<service>`, valid
    for `hosts`) in `folder`; keys are readable by their owner only."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("stillpoint-internal-ca"))
        .issuer_name(_name("stillpoint-internal-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
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
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = folder / "internal-ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    issued = {}
    for service in SERVICES:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(f"stillpoint-{service}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName([*names, x509.DNSName(service)]), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        certificate_file = folder / f"{service}.pem"
        certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_file = folder / f"{service}-key.pem"
        _write_key(key_file, key)
        issued[service] = IssuedCertificate(certificate_file, key_file)
    return InternalCertificates(ca_file=ca_file, issued=issued)


def main(argv: list[str] | None = None) -> int:
    """`python -m services.certificates DIR`: makes the internal CA and certificates in DIR unless they are
    there already (docker-compose runs it once, before the services start)."""
    parser = argparse.ArgumentParser(prog="python -m services.certificates", description=main.__doc__)
    parser.add_argument("folder", type=Path)
    arguments = parser.parse_args(argv)
    if (arguments.folder / "internal-ca.pem").is_file():
        print(f"internal certificates already in {arguments.folder}")
        return 0
    made = make_internal_certificates(arguments.folder)
    print(f"made an internal CA ({made.ca_file}) and certificates for {', '.join(made.issued)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
