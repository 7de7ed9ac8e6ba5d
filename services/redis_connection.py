"""The process's one Redis client: checked at start-up, its credentials redacted, cancellation kept; and
how its users report an outage (once when it starts, once when it ends)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.exceptions import RedisError


class RedisUnavailableError(Exception):
    """Redis cannot be reached; `address` is its host and port (or socket path), never its credentials."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"Redis at {address} is unavailable: {reason}")
        self.address = address
        self.reason = reason


# How long a command's answer may take before redis-py gives up on it (its own default, stated so that its
# users see it: a blocking read, XREADGROUP BLOCK, must end sooner). A URL's `socket_timeout` overrides it.
COMMAND_TIMEOUT_SECONDS = 5.0


async def connect_redis(url: str, *, timeout_seconds: float = 3.0) -> Redis:
    """Makes the process's one Redis client (bytes in, bytes out) and checks it answers PING in time.

    Every command sent through it honours the caller's cancellation (see `_send_keeping_cancellation`).
    Raises RedisUnavailableError naming the host and port, never the password, instead of hanging.
    """
    redacted_url = redact_redis_url(url)
    address = _address_of_url(url)
    try:
        pool = ConnectionPool.from_url(
            url,
            socket_connect_timeout=timeout_seconds,
            socket_timeout=COMMAND_TIMEOUT_SECONDS,
            decode_responses=False,
        )
    except ValueError as error:
        raise RedisUnavailableError(address, f"{redacted_url} is not a valid Redis URL: {error}") from None
    # The URL chose the transport (TCP, TLS or a Unix socket); keep it, with the guard added. The pool makes
    # its connections lazily, so none was made with the unguarded class.
    pool.connection_class = _CANCELLATION_KEEPING[pool.connection_class]
    client = Redis.from_pool(pool)
    try:
        async with asyncio.timeout(timeout_seconds):
            await client.ping()
    except (RedisError, OSError, TimeoutError) as error:
        await client.aclose()
        reason = str(error) or type(error).__name__
        password = urlsplit(url).password
        if password:
            reason = reason.replace(password, "***")
        raise RedisUnavailableError(
            address, f"no answer to PING from {redacted_url} within {timeout_seconds:g} s: {reason}"
        ) from None
    return client


def redact_redis_url(url: str) -> str:
    """The URL without its credentials: `redis://:secret@host:6379/0` becomes `redis://***@host:6379/0`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a malformed Redis URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = "&".join(
        f"{pair.partition('=')[0]}=***" if pair.partition("=")[0].lower() == "password" else pair
        for pair in parts.query.split("&")
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def command_timeout_seconds(client: Redis) -> float | None:
    """How long the client waits for a command's answer before it raises TimeoutError (None: for ever)."""
    timeout = client.connection_pool.connection_kwargs.get("socket_timeout", COMMAND_TIMEOUT_SECONDS)
    return None if timeout is None else float(timeout)


def redis_address(client: Redis) -> str:
    """The client's host and port (or socket path), for messages: never its credentials."""
    settings = client.connection_pool.connection_kwargs
    if "path" in settings:
        return str(settings["path"])
    return f"{settings.get('host', 'localhost')}:{settings.get('port', 6379)}"


def _address_of_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return parts.path
        host = parts.hostname or "localhost"
        port = parts.port or 6379
    except ValueError:
        return "<a malformed Redis URL>"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _send_keeping_cancellation(connection: AbstractConnection, send: Awaitable[None]) -> None:
    """Sends a command and re-raises a cancellation of the current task that the send swallowed.

    With a socket timeout (redis-py's default is 5 s) redis-py sends each command inside `asyncio.wait_for`,
    and on Python 3.11 `wait_for` drops a cancellation that lands as the send completes (fixed in 3.12). A
    cancelled caller would then carry on (a cache computing, a queue taking a job), and `asyncio.timeout`
    deadlines would silently pass. The reply to the command is never read, so the connection is dropped,
    as redis-py itself does when a send is interrupted.
    """
    task = asyncio.current_task()
    cancel_requests = 0 if task is None else task.cancelling()
    await send
    if task is not None and task.cancelling() > cancel_requests:
        await connection.disconnect(nowait=True)
        raise asyncio.CancelledError


class _CancellationKeepingConnection(Connection):
    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        await _send_keeping_cancellation(self, super().send_packed_command(command, check_health))


class _CancellationKeepingSSLConnection(SSLConnection):
    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        await _send_keeping_cancellation(self, super().send_packed_command(command, check_health))


class _CancellationKeepingUnixDomainSocketConnection(UnixDomainSocketConnection):
    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        await _send_keeping_cancellation(self, super().send_packed_command(command, check_health))


_CANCELLATION_KEEPING: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _CancellationKeepingConnection,
    SSLConnection: _CancellationKeepingSSLConnection,
    UnixDomainSocketConnection: _CancellationKeepingUnixDomainSocketConnection,
}


class RedisOutage:
    """One process's view of whether a Redis-backed capability is down: the first failure of an outage is
    logged, and so is the first success after it, and nothing in between; while down, callers back off.

    Without it every poll of a loop (and every cache lookup) would log the same refused connection.
    """

    def __init__(
        self,
        what: str,
        address: str,
        *,
        logger: logging.Logger,
        consequence: str,
        first_backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 10.0,
        settle_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._what = what
        self._address = address
        self._logger = logger
        self._consequence = consequence
        self._first_backoff_seconds = first_backoff_seconds
        self._max_backoff_seconds = max_backoff_seconds
        self._settle_seconds = settle_seconds
        self._clock = clock
        self._started: float | None = None
        # After a restart each pooled connection fails once as it is next used: failures this soon after
        # the end of an outage belong to it, and are not announced again.
        self._ended_at = -settle_seconds
        self._last_started = 0.0
        self._is_relapse = False
        self._backoff_seconds = first_backoff_seconds
        self._retry_at = 0.0

    @property
    def is_down(self) -> bool:
        """Whether the last call failed and none has succeeded since."""
        return self._started is not None

    @property
    def is_backing_off(self) -> bool:
        """Whether a caller that may skip Redis should, for now: it is down and the next retry is not due."""
        return self._started is not None and self._clock() < self._retry_at

    def failed(self, error: BaseException) -> float:
        """Records a failed call; logs it when it starts an outage. Returns how long to wait before retrying
        (doubling each failure up to the maximum)."""
        now = self._clock()
        if self._started is None and now - self._ended_at < self._settle_seconds:
            self._started, self._is_relapse = self._last_started, True
            self._backoff_seconds = self._first_backoff_seconds
        elif self._started is None:
            self._started, self._last_started, self._is_relapse = now, now, False
            self._backoff_seconds = self._first_backoff_seconds
            self._logger.warning(
                "%s: Redis at %s is unreachable (%s); %s; retrying with back-off until it answers",
                self._what,
                self._address,
                type(error).__name__,
                self._consequence,
            )
        else:
            self._backoff_seconds = min(self._backoff_seconds * 2, self._max_backoff_seconds)
        self._retry_at = now + self._backoff_seconds
        return self._backoff_seconds

    def succeeded(self) -> None:
        """Records a call that worked; logs the end of an outage."""
        if self._started is None:
            return
        self._ended_at = self._clock()
        lasted = self._ended_at - self._started
        self._started = None
        if self._is_relapse:
            return
        self._logger.warning("%s: Redis at %s answers again, after %.1f s", self._what, self._address, lasted)
