"""The real data plane end to end: PostgreSQL, Redis and Supabase-compatible storage behind real processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import av
import pytest
import redis.asyncio

from scripts.stack import Stack, running_stack
from services.cache.base import VALUE_KEY_PREFIX
from services.cli import load_conversation
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.data_plane import create_postgres_database, drop_postgres_database, unavailable
from tests.servers.supabase_storage import SupabaseStorageServer

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
SERVICE_KEY = "service-role-e2e-key-do-not-log"
REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_reachable() -> None:
    async def ping() -> None:
        client = redis.asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
        try:
            await client.ping()
        finally:
            await client.aclose()

    try:
        asyncio.run(ping())
    except (OSError, redis.RedisError) as error:
        unavailable(f"Redis at {REDIS_URL}", error)


class MovableClock:
    """The wall clock, plus however far the test has moved it on: signed URLs expire without waiting."""

    def __init__(self) -> None:
        self.moved_seconds = 0.0

    def __call__(self) -> float:
        return time.time() + self.moved_seconds


@pytest.fixture
def storage_clock() -> MovableClock:
    """The clock the storage server signs URLs by and checks them against."""
    return MovableClock()


@pytest.fixture
def storage_server(tmp_path: Path, storage_clock: MovableClock) -> Iterator[SupabaseStorageServer]:
    """A Supabase-compatible storage server on 127.0.0.1."""
    with SupabaseStorageServer(tmp_path / "supabase", service_key=SERVICE_KEY, clock=storage_clock) as server:
        yield server


@pytest.fixture
def production_environment(storage_server: SupabaseStorageServer) -> Iterator[dict[str, str]]:
    """PostgreSQL (a fresh database), Redis and a Supabase-compatible server, as production wires them."""
    _redis_reachable()
    database_url = create_postgres_database()
    try:
        yield {
            "DATABASE_URL": database_url,
            "REDIS_URL": REDIS_URL,
            "STILLPOINT_STORAGE": "supabase",
            "SUPABASE_URL": storage_server.url,
            "SUPABASE_KEY": SERVICE_KEY,
            "STILLPOINT_SUPABASE_BUCKET": "stillpoint-e2e",
            # Distinct cache keys per run: a value cached by an earlier run would point at a deleted store.
            "STILLPOINT_CACHE_TTL_SECONDS": "60",
        }
    finally:
        drop_postgres_database(database_url)


async def _generate(stack: Stack) -> list[gateway_pb.GenerateMeditationResponse]:
    async with stack.gateway_channel() as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        created = await stub.CreateConversation(load_conversation(ROOT / "examples" / "conversation.json"))
        request = gateway_pb.GenerateMeditationRequest(
            conversation=created.conversation.name, options=gateway_pb.MeditationOptions(skip_cache=True)
        )
        return [response async for response in stub.GenerateMeditation(request, timeout=300)]


async def _delete(stack: Stack, conversation: str) -> gateway_pb.DeleteConversationResponse:
    async with stack.gateway_channel() as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        return await stub.DeleteConversation(gateway_pb.DeleteConversationRequest(name=conversation))


# Every table of both services that holds anything of a conversation, with the column naming it.
_TABLES_OF_A_CONVERSATION = {
    "conversations": "id",
    "messages": "conversation_id",
    "conversation_artifacts": "conversation_id",
    "meditation_jobs": "conversation",
}


async def _rows_of(database_url: str, conversation: str) -> dict[str, int]:
    """How many rows of each table hold something of `conversation`, and how many events the database has."""
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        counts = {}
        for table, column in _TABLES_OF_A_CONVERSATION.items():
            value = conversation if column == "conversation" else conversation.split("/")[1]
            counts[table] = await connection.fetchval(
                f"SELECT count(*) FROM {table} WHERE {column} = $1", value
            )
        # This database holds only this run's conversation: every event left would be one of it.
        counts["meditation_job_events"] = await connection.fetchval(
            "SELECT count(*) FROM meditation_job_events"
        )
        return counts
    finally:
        await connection.close()


async def _cache_keys_of(database_url: str, conversation: str) -> list[str]:
    """The Redis keys of what the content service recorded as made from `conversation`."""
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        rows = await connection.fetch(
            "SELECT kind, cache_key FROM conversation_artifacts WHERE conversation_id = $1",
            conversation.split("/")[1],
        )
    finally:
        await connection.close()
    caches = {"transcript": "transcripts", "image": "images"}
    return [f"{VALUE_KEY_PREFIX}{caches[row['kind']]}:value:{row['cache_key']}" for row in rows]


async def _existing(keys: list[str]) -> int:
    client = redis.asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        return int(await client.exists(*keys))
    finally:
        await client.aclose()


def _cli(stack: Stack, *arguments: str) -> str:
    command = [sys.executable, "-m", "services.cli", *arguments]
    environment = stack.client_environment()
    return subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=60, check=True
    ).stdout


def _download(uri: str, target: Path) -> Path:
    with urllib.request.urlopen(uri, timeout=30) as response:
        target.write_bytes(response.read())
    return target


def _status_of(uri: str) -> int:
    try:
        with urllib.request.urlopen(uri, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


async def _watch(stack: Stack, meditation: str) -> list[gateway_pb.WatchMeditationResponse]:
    async with stack.gateway_channel() as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        request = gateway_pb.WatchMeditationRequest(name=meditation)
        return [response async for response in stub.WatchMeditation(request, timeout=60)]


async def _stored_text(database_url: str) -> str:
    """Every event payload and asset column the gateway stored, as one text."""
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        payloads = await connection.fetch("SELECT payload FROM meditation_job_events")
        assets = await connection.fetch(
            "SELECT image_storage_key, narration_storage_key, quick_video_storage_key,"
            " enhanced_video_storage_key FROM meditation_jobs"
        )
    finally:
        await connection.close()
    return " ".join(
        [bytes(row["payload"]).decode() for row in payloads] + [str(value) for row in assets for value in row]
    )


async def test_a_meditation_on_postgresql_redis_and_supabase_storage_then_its_erasure(
    production_environment: dict[str, str],
    storage_server: SupabaseStorageServer,
    storage_clock: MovableClock,
    tmp_path: Path,
) -> None:
    database_url, bucket = (
        production_environment["DATABASE_URL"],
        production_environment["STILLPOINT_SUPABASE_BUCKET"],
    )
    with running_stack(tmp_path / "var", extra_environment=production_environment) as stack:
        responses = await _generate(stack)
        stats = await asyncio.to_thread(_cli, stack, "stats", "--content", stack.content_address)
        assert responses[-1].completed.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
        videos = [r.video_ready for r in responses if r.HasField("video_ready")]
        assert len(videos) == 2
        for index, video in enumerate(videos):
            # Clients get signed HTTP URLs from Supabase Storage, fetchable without credentials.
            assert video.uri.startswith(production_environment["SUPABASE_URL"])
            assert "token=" in video.uri
            path = await asyncio.to_thread(_download, video.uri, tmp_path / f"{index}.mp4")
            assert path.stat().st_size == video.size_bytes
            with av.open(str(path)) as container:
                assert {stream.type for stream in container.streams} >= {"video", "audio"}

        # URIs are made for the reader, never stored: the database holds keys alone...
        stored = await _stored_text(database_url)
        assert "videos/" in stored
        assert "://" not in stored and "token=" not in stored
        # ...so a stream resumed after every URI it was given expired gets fresh ones that work.
        storage_clock.moved_seconds = 2 * 3600
        assert await asyncio.to_thread(_status_of, videos[-1].uri) == 400  # expired
        replayed = [r.video_ready for r in await _watch(stack, responses[0].accepted.meditation)]
        fresh = [video for video in replayed if video.uri]
        assert [video.quality for video in fresh] == [video.quality for video in videos]
        for video in fresh:
            assert video.uri not in {old.uri for old in videos}
            assert await asyncio.to_thread(_status_of, video.uri) == 200

        conversation = responses[0].accepted.conversation
        cache_keys = await _cache_keys_of(database_url, conversation)
        # What the erasure must take away is there: rows, the transcript and image in Redis, the files.
        assert len(cache_keys) == 2 and await _existing(cache_keys) == 2
        assert all((await _rows_of(database_url, conversation)).values())
        assert storage_server.stored_names(bucket)
        deleted = await _delete(stack, conversation)
        assert deleted.deleted_meditation_count == 1
        assert await _rows_of(database_url, conversation) == dict.fromkeys(
            [*_TABLES_OF_A_CONVERSATION, "meditation_job_events"], 0
        )
        assert await _existing(cache_keys) == 0
        assert storage_server.stored_names(bucket) == []
        logs = "".join(path.read_text(errors="replace") for path in stack.log_dir.glob("*.log"))
    assert "redis" in stats
    assert "transcripts" in stats
    assert SERVICE_KEY not in logs


def test_content_refuses_an_unmigrated_database_and_says_what_to_run(tmp_path: Path) -> None:
    database_url = create_postgres_database()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "services.content"],
            env={
                **os.environ,
                "DATABASE_URL": database_url,
                "STILLPOINT_VAR_DIR": str(tmp_path),
                "STILLPOINT_CONTENT_PORT": "0",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        drop_postgres_database(database_url)
    assert result.returncode != 0
    assert "make migrate" in result.stderr
