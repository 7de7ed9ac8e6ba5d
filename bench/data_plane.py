"""A fresh PostgreSQL database per run (dropped afterwards) and the Redis Stillpoint shares caches through."""

from __future__ import annotations

import secrets
from collections.abc import Collection
from dataclasses import dataclass, field

import asyncpg
import redis.asyncio

from services.gateway.jobs.work_queue import GROUP, STREAM_KEY

DEFAULT_POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
# Not database 0, which the test suite uses: nothing this run caches can point a test at a deleted store.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/7"


class DataPlaneUnavailableError(RuntimeError):
    """PostgreSQL or Redis cannot be reached; the message says which and where."""


async def create_database(admin_dsn: str) -> str:
    """Creates an empty database and returns its SQLAlchemy async URL."""
    name = f"stillpoint_bench_{secrets.token_hex(6)}"
    try:
        connection = await asyncpg.connect(admin_dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as error:
        host = admin_dsn.rsplit("@", 1)[-1]
        raise DataPlaneUnavailableError(f"PostgreSQL at {host} is not reachable: {error}") from error
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    base = admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{name}"


async def drop_database(admin_dsn: str, url: str) -> None:
    """Drops a database made by create_database, closing what still uses it."""
    name = url.rsplit("/", 1)[1]
    connection = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def check_redis(url: str) -> None:
    """Raises DataPlaneUnavailableError unless Redis answers PING."""
    client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=3)
    try:
        await client.ping()
    except (OSError, redis.RedisError) as error:
        raise DataPlaneUnavailableError(f"Redis at {url} is not reachable: {error}") from error
    finally:
        await client.aclose()


async def live_job_consumers(url: str, idle_below_seconds: float = 30.0) -> list[str]:
    """Gateways of another stack reading the job queue in this Redis database right now.

    Stacks sharing one database share one job stream: each takes the others' jobs, whose streams then wait
    for a job their own gateway never sees. Consumers idle for longer are stopped gateways of earlier runs.
    """
    client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=3, decode_responses=True)
    try:
        consumers = await client.xinfo_consumers(STREAM_KEY, GROUP)
    except redis.ResponseError:  # no stream or no group yet: nobody reads it
        return []
    finally:
        await client.aclose()
    return [
        str(consumer["name"]) for consumer in consumers if int(consumer["idle"]) < idle_below_seconds * 1000
    ]


@dataclass
class JobQueueReaders:
    """Who reads the job queue in one Redis database: this run's own stacks, remembered as each stops (their
    gateways' names stay in the stream's group, idle, after a stack stops, and were taken for another stack's
    on the next replica set), and anyone else."""

    url: str
    stopped_own: set[str] = field(default_factory=set)

    async def others(self) -> list[str]:
        """Gateways reading the queue now that no stack of this run started."""
        return [name for name in await live_job_consumers(self.url) if name not in self.stopped_own]

    async def remember_own(self, others_at_start: Collection[str]) -> None:
        """Called while one of this run's stacks still runs: the readers live now that were not when it
        started (`others()` then) are its gateways."""
        self.stopped_own.update(set(await live_job_consumers(self.url)) - set(others_at_start))
