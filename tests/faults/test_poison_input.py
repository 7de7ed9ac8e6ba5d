"""A poison input — a stored image FFmpeg cannot decode — fails its job after N attempts, and only its job:
real processes, the image replaced in storage, behind the content service's cache, by one only FFmpeg
cannot read."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image
from redis.asyncio import Redis
from redis.exceptions import RedisError

from scripts.stack import Stack, running_stack
from services.cli import load_conversation
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.asset_fetch import stored_path
from tests.data_plane import create_postgres_database, drop_postgres_database, unavailable
from tests.faults.logs import Response, assert_one_whole_log, stored_videos

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "conversation.json"
MAX_ATTEMPTS = 2
RETRY_DELAY_SECONDS = 0.2
RETRY_ENVIRONMENT = {
    "STILLPOINT_MAX_JOB_ATTEMPTS": str(MAX_ATTEMPTS),
    "STILLPOINT_JOB_RETRY_DELAY_SECONDS": f"{RETRY_DELAY_SECONDS:g}",
    "STILLPOINT_JOB_LEASE_SECONDS": "3",
}
# A Redis database of its own (test_scale_out has 5): the keys are the production ones, flushed around a run.
REDIS_URL = "redis://127.0.0.1:6379/6"
STREAM_KEY = "stillpoint:jobs"
DEAD_LETTER_KEY = "stillpoint:jobs:dead"
# Every stream the tests read is bounded: a job that hangs fails the test instead of hanging it.
STREAM_TIMEOUT_SECONDS = 120.0


def _image_ffmpeg_cannot_read() -> bytes:
    """A picture Pillow decodes (so the content service's check of a cached image passes it) in a format
    FFmpeg does not know (SPIDER): poison only the encode finds. Undecodable bytes would not do: content now
    evicts a cached image that does not decode and paints it again."""
    picture = io.BytesIO()
    Image.new("F", (64, 64), 0.5).save(picture, format="SPIDER")
    return picture.getvalue()


# What media's EncodingError says, passed on by the gateway ("the media service failed: FFmpeg could not
# render the quick video (exit status 69)").
ENCODE_FAILURE = "FFmpeg could not render"
# Conversation A (the example) is about night shifts and the sea; B is about somewhere else entirely, so
# its image prompt, and so its cached image, differs.
HIKE = gateway_pb.CreateConversationRequest(
    title="A mountain hike and gratitude",
    messages=[
        gateway_pb.Message(
            role=gateway_pb.MESSAGE_ROLE_USER,
            text="Yesterday I hiked up to the ridge above the valley with my brother. We left before "
            "sunrise and watched the first light touch the mountain peaks while the pines were still dark.",
        ),
        gateway_pb.Message(
            role=gateway_pb.MESSAGE_ROLE_ASSISTANT,
            text="That sounds like a morning to remember. What stayed with you from the summit?",
        ),
        gateway_pb.Message(
            role=gateway_pb.MESSAGE_ROLE_USER,
            text="Gratitude, mostly. For my legs carrying me up the trail, for my brother walking beside "
            "me after a hard year, for the clear cold air at the top. I want to keep that thankful feeling.",
        ),
    ],
)


async def _flush_redis() -> None:
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        await client.flushdb()
    except (OSError, RedisError) as error:
        unavailable(f"Redis at {REDIS_URL}", error)
    finally:
        await client.aclose()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """The three services retrying a failed job once, 0.2 s later, with the Redis stream queue (a database
    of its own, flushed) on a fresh PostgreSQL database. (The in-process queue's retries and dead letters
    share the contract tests in tests/test_work_queue.py and the gateway's tests/gateway/test_failures.py.)"""
    asyncio.run(_flush_redis())
    database_url = create_postgres_database()
    environment = {**RETRY_ENVIRONMENT, "REDIS_URL": REDIS_URL, "DATABASE_URL": database_url}
    try:
        with running_stack(tmp_path / "var", extra_environment=environment) as started:
            yield started
    finally:
        drop_postgres_database(database_url)
        asyncio.run(_flush_redis())


async def _create(
    stub: gateway_grpc.GatewayServiceStub, request: gateway_pb.CreateConversationRequest
) -> str:
    return (await stub.CreateConversation(request)).conversation.name


async def _generate(
    stub: gateway_grpc.GatewayServiceStub, conversation: str
) -> tuple[list[gateway_pb.GenerateMeditationResponse], grpc.aio.AioRpcError | None]:
    """A whole stream (the cache used, never skipped), and the error status it ended with, if any."""
    request = gateway_pb.GenerateMeditationRequest(
        conversation=conversation, options=gateway_pb.MeditationOptions(skip_cache=False)
    )
    responses: list[gateway_pb.GenerateMeditationResponse] = []
    try:
        async for response in stub.GenerateMeditation(request, timeout=STREAM_TIMEOUT_SECONDS):
            responses.append(response)
    except grpc.aio.AioRpcError as error:
        return responses, error
    return responses, None


def _image_uris(responses: list[gateway_pb.GenerateMeditationResponse]) -> list[str]:
    return [response.image_ready.uri for response in responses if response.HasField("image_ready")]


def _kinds(responses: Sequence[Response]) -> list[str | None]:
    return [response.WhichOneof("event") for response in responses]


async def _dead_letters() -> tuple[int, list[dict[bytes, bytes]]]:
    """How many entries the job stream still holds, and the dead letters, oldest first."""
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        waiting = await client.xlen(STREAM_KEY)
        # redis-py's annotations leave the reply's shape open.
        entries: Any = await client.xrange(DEAD_LETTER_KEY)
    finally:
        await client.aclose()
    return waiting, [fields for _, fields in entries]


async def test_a_poison_image_fails_its_job_after_n_attempts_with_the_reason_and_spares_the_others(
    stack: Stack,
) -> None:
    """Property: a job whose cached image FFmpeg cannot decode is attempted STILLPOINT_MAX_JOB_ATTEMPTS (2)
    times — its log says so with one `attempt_failed` per retry, numbered, with the encode failure as the
    reason — then ends FAILED (status INTERNAL, `completed` FAILED, "gave up after 2 attempts: ..." in
    GetMeditation, and with Redis a dead letter naming it); its log has no gap or duplicate. A job on
    another conversation running at the same time succeeds with both videos, untouched."""
    images = stack.var_root / "storage" / "images"
    async with stack.gateway_channel() as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        sea, hike = await _create(stub, load_conversation(EXAMPLE)), await _create(stub, HIKE)

        # A first job on A makes, caches and stores A's image.
        first, first_error = await _generate(stub, sea)
        assert first_error is None, first_error
        assert_one_whole_log(first)
        [poisoned_uri] = _image_uris(first)
        poisoned = stored_path(poisoned_uri, stack.var_root / "storage").resolve()
        assert [image.resolve() for image in images.rglob("*.png")] == [poisoned], (
            "A's job should have stored exactly one image"
        )
        # The cache still points at it, and the file exists, so content hands it out again as it is.
        poisoned.write_bytes(_image_ffmpeg_cannot_read())

        (poison, poison_error), (healthy, healthy_error) = await asyncio.gather(
            _generate(stub, sea), _generate(stub, hike)
        )
        poison_name = poison[0].accepted.meditation
        meditation = (await stub.GetMeditation(gateway_pb.GetMeditationRequest(name=poison_name))).meditation

    # The poison job: attempted twice, then FAILED with the reason.
    assert poison_error is not None, "the poison job's stream ended OK"
    assert poison_error.code() == grpc.StatusCode.INTERNAL, poison_error
    assert (poison_error.details() or "").startswith(f"gave up after {MAX_ATTEMPTS} attempts: ")
    assert ENCODE_FAILURE in (poison_error.details() or "")
    assert [response.sequence for response in poison] == list(range(1, len(poison) + 1)), (
        "a gap or a duplicate in the poison job's log"
    )
    kinds = _kinds(poison)
    assert kinds[0] == "accepted" and kinds.count("accepted") == 1
    assert kinds[-1] == "completed" and kinds.count("completed") == 1
    assert poison[-1].completed.state == gateway_pb.MEDITATION_STATE_FAILED
    retries = [response.attempt_failed for response in poison if response.HasField("attempt_failed")]
    assert [retry.attempt for retry in retries] == list(range(1, MAX_ATTEMPTS))
    assert {retry.max_attempts for retry in retries} == {MAX_ATTEMPTS}
    assert all(ENCODE_FAILURE in retry.reason for retry in retries), [retry.reason for retry in retries]
    assert [retry.retry_delay.ToTimedelta().total_seconds() for retry in retries] == pytest.approx(
        [RETRY_DELAY_SECONDS * attempt for attempt in range(1, MAX_ATTEMPTS)]
    )
    # Every attempt used the cached (poisoned) image, and every attempt failed rendering a video from it.
    # (Links are minted as each event is read, each with its own expiry: compare the files they name.)
    assert [stored_path(uri, stack.var_root / "storage").resolve() for uri in _image_uris(poison)] == [
        poisoned
    ] * MAX_ATTEMPTS
    failed_stages = [
        response.stage.stage
        for response in poison
        if response.HasField("stage") and response.stage.state == gateway_pb.STAGE_STATE_FAILED
    ]
    assert len(failed_stages) == MAX_ATTEMPTS, failed_stages
    assert set(failed_stages) <= {gateway_pb.STAGE_QUICK_VIDEO, gateway_pb.STAGE_ENHANCED_VIDEO}
    qualities = [response.video_ready.quality for response in poison if response.HasField("video_ready")]
    assert gateway_pb.VIDEO_QUALITY_ENHANCED not in qualities
    assert meditation.state == gateway_pb.MEDITATION_STATE_FAILED
    assert meditation.failure_message == poison_error.details()

    # The job beside it: its own image, both videos, one whole log, no retry.
    assert healthy_error is None, healthy_error
    assert_one_whole_log(healthy)
    assert "attempt_failed" not in _kinds(healthy)
    [healthy_uri] = _image_uris(healthy)
    assert stored_path(healthy_uri, stack.var_root / "storage").resolve() != poisoned, (
        "B used A's (poisoned) image: choose a conversation with another prompt"
    )
    healthy_name = healthy[0].accepted.meditation
    healthy_videos = [response.video_ready for response in healthy if response.HasField("video_ready")]
    assert [video.quality for video in healthy_videos] == [
        gateway_pb.VIDEO_QUALITY_QUICK,
        gateway_pb.VIDEO_QUALITY_ENHANCED,
    ]
    assert len(stored_videos(stack.var_root, healthy_name)) == 2

    waiting, letters = await _dead_letters()
    assert waiting == 0, "the job stream still holds entries: a job neither acknowledged nor dead-lettered"
    assert letters == [
        {
            b"job": poison_name.encode(),
            b"reason": meditation.failure_message.encode(),
            b"delivery_count": str(MAX_ATTEMPTS).encode(),
        }
    ]
