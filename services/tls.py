"""Which certificates a process uses: mutual TLS between the services, and TLS on the gateway's public port.

Only paths and checks here; `serving` and the gateway's clients turn them into gRPC credentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.environment import ConfigError, Environment

_INTERNAL = ("STILLPOINT_INTERNAL_CA_FILE", "STILLPOINT_INTERNAL_CERT_FILE", "STILLPOINT_INTERNAL_KEY_FILE")
_PUBLIC = ("STILLPOINT_TLS_CERT_FILE", "STILLPOINT_TLS_KEY_FILE")


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
