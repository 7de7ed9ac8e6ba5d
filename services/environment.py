"""Typed readers for configuration variables that fail fast, naming the variable and what it expects."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


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

    def address(self, name: str, default: str) -> str:
        """Returns a `host:port` address."""
        value = self.text(name, default)
        # gRPC target names such as dns:///media:50053 resolve to every replica behind one name.
        host, separator, port = value.removeprefix("dns:///").rpartition(":")
        if not separator or not host or not port.isdigit():
            raise ConfigError(f"{name}={value!r} is not host:port, such as 127.0.0.1:50052")
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
