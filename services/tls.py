"""Which certificates a process uses: mutual TLS between the services, and TLS on the gateway's public port.

Only paths, names and checks here; `serving` and the gateway's clients turn them into gRPC credentials, and
`peer_identity` checks callers against the names.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from services.environment import ConfigError, Environment

_INTERNAL = ("STILLPOINT_INTERNAL_CA_FILE", "STILLPOINT_INTERNAL_CERT_FILE", "STILLPOINT_INTERNAL_KEY_FILE")
_PUBLIC = ("STILLPOINT_TLS_CERT_FILE", "STILLPOINT_TLS_KEY_FILE")
_ALLOWED_CALLERS = "STILLPOINT_INTERNAL_ALLOWED_CALLERS"

# The common name `services.certificates` gives the gateway's certificate. By default it is the only caller
# content and media answer: operators' tools (`stillpoint stats`, grpcurl, the test stack) present it too.
DEFAULT_INTERNAL_CALLERS = frozenset({"stillpoint-gateway"})
# Names every certificate of a local stack carries in its subjectAltName: listing one would let any
# certificate the CA signed through, so they are refused as caller names.
_SHARED_NAMES = frozenset({"localhost"})


@dataclass(frozen=True)
class InternalTls:
    """The internal CA every service trusts (and only it), and this process's own certificate and key."""

    ca_file: Path
    certificate_file: Path
    key_file: Path


@dataclass(frozen=True)
class PublicTls:
    """The gateway's certificate and key for its public port."""

    certificate_file: Path
    key_file: Path


def _files(environment: Environment, names: tuple[str, ...]) -> list[Path] | None:
    values = [environment.text(name, "") for name in names]
    if not any(values):
        return None
    missing = [name for name, value in zip(names, values, strict=True) if not value]
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be set too: {', '.join(names)} go together")
    paths = [Path(value).expanduser() for value in values]
    for name, path in zip(names, paths, strict=True):
        if not path.is_file():
            raise ConfigError(f"{name}={str(path)!r} is not a readable file")
    return paths


def read_internal_tls(environment: Environment) -> InternalTls | None:
    """STILLPOINT_INTERNAL_CA_FILE, _CERT_FILE and _KEY_FILE: all three, or none (plaintext on loopback)."""
    paths = _files(environment, _INTERNAL)
    return None if paths is None else InternalTls(*paths)


def read_public_tls(environment: Environment) -> PublicTls | None:
    """STILLPOINT_TLS_CERT_FILE and STILLPOINT_TLS_KEY_FILE: both, or none (a plaintext public port)."""
    paths = _files(environment, _PUBLIC)
    return None if paths is None else PublicTls(*paths)


def read_internal_callers(environment: Environment, internal_tls: InternalTls | None) -> frozenset[str]:
    """STILLPOINT_INTERNAL_ALLOWED_CALLERS: the comma-separated certificate names (a common name or a
    subjectAltName) whose holders may call this internal service; the gateway's by default. It means
    something only with mutual TLS, so setting it without the STILLPOINT_INTERNAL_* files is an error."""
    value = environment.text(_ALLOWED_CALLERS, "")
    if not value:
        return DEFAULT_INTERNAL_CALLERS
    if internal_tls is None:
        raise ConfigError(
            f"{_ALLOWED_CALLERS} needs mutual TLS: set {', '.join(_INTERNAL)} too (without them the port is "
            "plaintext on loopback and no caller has a certificate to check)"
        )
    names = frozenset(name.strip() for name in value.split(",") if name.strip())
    for name in sorted(names):
        if "*" in name or not name.isprintable():
            raise ConfigError(f"{_ALLOWED_CALLERS} has {name!r}: list each caller's exact name, no wildcards")
        if name.lower() in _SHARED_NAMES or _is_ip_address(name):
            raise ConfigError(
                f"{_ALLOWED_CALLERS} has {name!r}, a host rather than a caller: list names only the "
                "caller's own certificate carries, such as stillpoint-gateway"
            )
    if not names:
        raise ConfigError(
            f"{_ALLOWED_CALLERS} names no caller: list at least one, such as stillpoint-gateway"
        )
    return names


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
