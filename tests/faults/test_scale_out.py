"""Two gateway replicas share jobs through a Redis stream, on PostgreSQL: real processes, real data plane."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from redis.asyncio import Redis

from scripts.stack import Stack, running_stack
from services.cli import load_conversation
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.data_plane import create_postgres_database, drop_postgres_database, unavailable
from tests.faults.logs import assert_one_whole_log, stored_videos
from tests.servers.openai_compatible import LatencySpec, OpenAICompatibleServer, ServerConfig

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "conversation.json"
# A Redis database of their own: the stream keys are the production ones, and no other test uses it.
REDIS_URL = "redis://127.0.0.1:6379/5"
LEASE_SECONDS = 3.0
# The queue takes a silent replica's job over after the lease plus a margin (jobs.claim_timeout_seconds).
CLAIM_TIMEOUT_SECONDS = LEASE_SECONDS + 1.0
API_KEY = "sk-test-stillpoint-scale-out"
STREAM_TIMEOUT_SECONDS = 120.0


async def _fresh_redis() -> None:
    client = Redis.from_url(REDIS_URL)
    try:
        await client.flushdb()
    except OSError as error:
        unavailable("Redis at 127.0.0.1:6379", error)
    finally:
        await client.aclose()


@pytest.fixture
def database_url() -> Iterator[str]:
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


def _scaled_stack(tmp_path: Path, database_url: str, **extra: str) -> Iterator[Stack]:
    asyncio.run(_fresh_redis())
    environment = {
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "STILLPOINT_JOB_LEASE_SECONDS": f"{LEASE_SECONDS:g}",
        **extra,
    }
    with running_stack(tmp_path / "var", replicas={"gateway": 2}, extra_environment=environment) as stack:
        yield stack
    asyncio.run(_fresh_redis())


@pytest.fixture
def stack(tmp_path: Path, database_url: str) -> Iterator[Stack]:
    """Content, media and two gateways on PostgreSQL, sharing jobs through Redis."""
    yield from _scaled_stack(tmp_path, database_url)


@pytest.fixture
def slow_image_server() -> Iterator[OpenAICompatibleServer]:
    """An OpenAI-compatible server whose image endpoint takes three claim timeouts to answer."""
    config = ServerConfig(
        api_key=API_KEY, latency={"images": LatencySpec(fixed_seconds=3 * CLAIM_TIMEOUT_SECONDS)}
    )
    with OpenAICompatibleServer(config) as server:
        yield server


@pytest.fixture
def slow_stack(
    tmp_path: Path, database_url: str, slow_image_server: OpenAICompatibleServer
) -> Iterator[Stack]:
    """The scaled stack, painting its images through the slow server."""
    yield from _scaled_stack(
        tmp_path,
        database_url,
        STILLPOINT_IMAGE_PROVIDER="openai",
        STILLPOINT_IMAGE_SIZE_LANDSCAPE="1792x1024",
        OPENAI_API_KEY=API_KEY,
        OPENAI_BASE_URL=slow_image_server.base_url,
        STILLPOINT_OPENAI_MAX_RETRIES="0",
    )


async def _conversation(stack: Stack, replica: str) -> str:
    async with stack.gateway_channel(replica) as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        created = await stub.CreateConversation(load_conversation(EXAMPLE))
        return created.conversation.name


async def _generate(
    stack: Stack, replica: str, conversation: str, request_id: str, *, until_stage: int | None = None
) -> list[gateway_pb.GenerateMeditationResponse]:
    """Streams a meditation; with `until_stage`, drops the stream once that stage starts."""
    seen: list[gateway_pb.GenerateMeditationResponse] = []
    async with stack.gateway_channel(replica) as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        request = gateway_pb.GenerateMeditationRequest(conversation=conversation, request_id=request_id)
        stream = stub.GenerateMeditation(request, timeout=STREAM_TIMEOUT_SECONDS)
        async for response in stream:
            seen.append(response)
            if until_stage is not None and response.HasField("stage") and response.stage.stage == until_stage:
                stream.cancel()
                break
    return seen


async def _watch(
    stack: Stack, replica: str, name: str, after: int
) -> list[gateway_pb.WatchMeditationResponse]:
    async with stack.gateway_channel(replica) as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        request = gateway_pb.WatchMeditationRequest(name=name, after_sequence=after)
        return [response async for response in stub.WatchMeditation(request, timeout=STREAM_TIMEOUT_SECONDS)]


async def test_the_same_request_id_at_two_replicas_at_once_makes_one_job(stack: Stack) -> None:
    """Property: a request repeated at both gateway replicas at the same moment (AIP-155 request_id) makes
    one meditation, run once: both streams carry the same job's one whole log and one set of videos."""
    first, second = stack.replicas("gateway")
    conversation = await _conversation(stack, first)
    request_id = str(uuid.uuid4())
    streams = await asyncio.gather(
        _generate(stack, first, conversation, request_id),
        _generate(stack, second, conversation, request_id),
    )
    names = {stream[0].accepted.meditation for stream in streams}
    assert len(names) == 1
    for stream in streams:
        assert_one_whole_log(stream)
    assert [r.sequence for r in streams[0]] == [r.sequence for r in streams[1]]
    assert len(stored_videos(stack.var_root, names.pop())) == 2


async def test_a_client_retry_after_unavailable_continues_the_same_job_on_the_other_replica(
    stack: Stack,
) -> None:
    """Property: when the gateway a client streams from dies (the client sees UNAVAILABLE), the client's
    retry with the same request_id at the other replica gets the same job, which that replica takes over
    from the queue and completes once: one whole log, one set of videos."""
    first_key, second_key = stack.replicas("gateway")
    conversation = await _conversation(stack, first_key)

    seen: list[gateway_pb.GenerateMeditationResponse] = []
    request_id = str(uuid.uuid4())

    async def stream_until_the_gateway_dies() -> None:
        async with stack.gateway_channel(first_key) as channel:
            stub = gateway_grpc.GatewayServiceStub(channel)
            request = gateway_pb.GenerateMeditationRequest(conversation=conversation, request_id=request_id)
            async for response in stub.GenerateMeditation(request, timeout=STREAM_TIMEOUT_SECONDS):
                seen.append(response)
                if response.HasField("stage") and response.stage.stage == gateway_pb.STAGE_NARRATION:
                    await asyncio.to_thread(stack.stop, first_key, signal.SIGKILL)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stream_until_the_gateway_dies()
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    before = seen
    retried = await _generate(stack, second_key, conversation, request_id)
    assert retried[0].accepted.meditation == before[0].accepted.meditation
    assert [r.sequence for r in retried[: len(before)]] == [r.sequence for r in before]
    assert_one_whole_log(retried)
    assert len(stored_videos(stack.var_root, retried[0].accepted.meditation)) == 2


async def test_a_stage_longer_than_the_claim_timeout_is_not_run_twice(
    slow_stack: Stack, slow_image_server: OpenAICompatibleServer
) -> None:
    """Property: a job whose image stage runs three claim timeouts stays with the replica running it (its
    heartbeat keeps the queue entry and the lease fresh): the other replica never takes it over, so the
    image is asked for once and the job completes once."""
    first, second = slow_stack.replicas("gateway")
    conversation = await _conversation(slow_stack, first)
    seen = await _generate(slow_stack, first, conversation, str(uuid.uuid4()))
    assert_one_whole_log(seen)
    image_stages = [r.stage for r in seen if r.HasField("stage") and r.stage.stage == gateway_pb.STAGE_IMAGE]
    assert [stage.state for stage in image_stages] == [
        gateway_pb.STAGE_STATE_STARTED,
        gateway_pb.STAGE_STATE_SUCCEEDED,
    ]
    assert image_stages[1].stage_elapsed.seconds >= 3 * CLAIM_TIMEOUT_SECONDS - 1
    image_calls = [
        r for r in slow_image_server.received_requests() if r.method == "POST" and "images" in r.path
    ]
    assert len(image_calls) == 1
    assert not any(r.HasField("attempt_failed") for r in seen)
    # The other replica watched the same job and saw the same log.
    watched = await _watch(slow_stack, second, seen[0].accepted.meditation, after=0)
    assert [r.sequence for r in watched] == [r.sequence for r in seen]
