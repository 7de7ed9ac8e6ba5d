"""Typed readers for configuration variables that fail fast, naming the variable and what it expects."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from pathlib import Path

# A DNS name or an IPv4 address: letters, digits, dots, hyphens and underscores; no leading dot or hyphen,
# no trailing dot.
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9._-]*[A-Za-z0-9_-])?")
_PORT = re.compile(r"[0-9]{1,5}")


class ConfigError(ValueError):
    """A configuration variable is missing or malformed; the message names it and what to set."""


class Environment:
    """Reads values from one snapshot of the process environment, taken once at start-up."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    def text(self, name: str, default: str) -> str:
        """Returns the variable's value, or `default` when it is unset or blank."""
        value = self._values.get(name, "").strip()
        return value or default

    def redis_url(self, name: str) -> str | None:
        """Returns a Redis URL (redis://, rediss:// or unix://), or None when the variable is unset."""
        url = self.text(name, "")
        if url and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"{name} must start with redis://, rediss:// or unix://")
        return url or None

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        """Returns an integer within [minimum, maximum]."""
        raw = self._values.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer") from None
        if not minimum <= value <= maximum:
            raise ConfigError(f"{name}={value} is out of range: use {minimum}..{maximum}")
        return value

    def seconds(
        self, name: str, default: float, *, minimum: float = 0.001, maximum: float = 86_400.0
    ) -> float:
        """Returns a positive duration in seconds."""
        raw = self._values.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
        if not minimum <= value <= maximum:
            raise ConfigError(f"{name}={value:g} is out of range: use {minimum:g}..{maximum:g} seconds")
        return value

    def port(self, name: str, default: int) -> int:
        """Returns a TCP port; 0 asks the system for a free one."""
        return self.integer(name, default, minimum=0, maximum=65_535)

    def bind_host(self, name: str, default: str) -> str:
        """Returns the interface a server listens on: an IPv4 address, a bracketed IPv6 address, or a host
        name (0.0.0.0 listens on every interface)."""
        value = self.text(name, default)
        if not (_is_ipv4(value) or _is_host_name(value)):
            raise ConfigError(
                f"{name}={value!r} is not an interface to listen on, such as 127.0.0.1 or 0.0.0.0"
            )
        return value

    def address(self, name: str, default: str) -> str:
        """Returns a gRPC target: `host:port`; `dns:///host:port`, which resolves to every replica behind
        the name; or the replicas listed, as in `ipv4:10.0.0.1:50053,10.0.0.2:50053` or
        `ipv6:[::1]:50053,[::1]:50063`."""
        value = self.text(name, default)
        scheme, _, listed = value.partition(":")
        if scheme in _ADDRESS_LISTS:
            is_host, example = _ADDRESS_LISTS[scheme]
            if not all(_is_host_port(entry, is_host) for entry in listed.split(",")):
                raise ConfigError(
                    f"{name}={value!r} is not a list of {scheme} addresses with ports, such as {example}"
                )
            return value
        if not _is_host_port(value.removeprefix("dns:///"), _is_host_name):
            raise ConfigError(
                f"{name}={value!r} is not host:port (such as 127.0.0.1:50052), dns:///host:port, or a list "
                "of replicas (such as ipv4:127.0.0.1:50052,127.0.0.1:50062)"
            )
        return value

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        """Returns one of `allowed`, case-insensitively."""
        value = self.text(name, default).lower()
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} is not one of: {', '.join(allowed)}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        """Returns a boolean written as 1/0, true/false, yes/no or on/off."""
        raw = self._values.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={raw!r} is not a boolean: use true or false")

    def directory(self, name: str, default: Path) -> Path:
        """Returns a directory path, created if missing."""
        path = Path(self.text(name, str(default))).expanduser().resolve()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"{name}={str(path)!r} cannot be created: {error.strerror}") from None
        return path


def _is_host_port(value: str, is_host: Callable[[str], bool]) -> bool:
    host, separator, port = value.rpartition(":")
    return bool(separator) and is_host(host) and _PORT.fullmatch(port) is not None and 0 < int(port) < 65_536


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _is_bracketed_ipv6(host: str) -> bool:
    if not (host.startswith("[") and host.endswith("]")):
        return False
    try:
        ipaddress.IPv6Address(host[1:-1])
    except ValueError:
        return False
    return True


def _is_host_name(host: str) -> bool:
    return _HOST_NAME.fullmatch(host) is not None or _is_bracketed_ipv6(host)


# gRPC's target schemes that list the replicas themselves; a round-robin channel spreads calls over them.
_ADDRESS_LISTS: dict[str, tuple[Callable[[str], bool], str]] = {
    "ipv4": (_is_ipv4, "ipv4:127.0.0.1:50053,127.0.0.1:50063"),
    "ipv6": (_is_bracketed_ipv6, "ipv6:[::1]:50053,[::1]:50063"),
}
