"""Jobs outlive their streams and their gateway: real processes, killed and restarted mid-job."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from scripts.stack import Stack, running_stack
from services.client import load_conversation
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "conversation.json"
Responses = list[gateway_pb.GenerateMeditationResponse] | list[gateway_pb.WatchMeditationResponse]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """The three services, with a short job lease so a crashed gateway's jobs are taken over quickly."""
    with running_stack(tmp_path / "var", extra_environment={"STILLPOINT_JOB_LEASE_SECONDS": "3"}) as started:
        yield started


async def _start_and_read_until_narration(
    stack: Stack,
) -> tuple[str, list[gateway_pb.GenerateMeditationResponse]]:
    """Starts a meditation and reads its stream until the narration starts, then drops the stream."""
    seen: list[gateway_pb.GenerateMeditationResponse] = []
    async with grpc.aio.insecure_channel(stack.gateway_address) as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        created = await stub.CreateConversation(load_conversation(EXAMPLE))
        stream = stub.GenerateMeditation(
            gateway_pb.GenerateMeditationRequest(conversation=created.conversation.name)
        )
        async for response in stream:
            seen.append(response)
            if response.HasField("stage") and response.stage.stage == gateway_pb.STAGE_NARRATION:
                break
        stream.cancel()
    return seen[0].accepted.meditation, seen


async def _watch(stack: Stack, name: str, after: int) -> list[gateway_pb.WatchMeditationResponse]:
    async with grpc.aio.insecure_channel(stack.gateway_address) as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        request = gateway_pb.WatchMeditationRequest(name=name, after_sequence=after)
        return [response async for response in stub.WatchMeditation(request, timeout=120)]


def _assert_one_whole_log(before: Responses, after: Responses) -> None:
    sequences = [r.sequence for r in before] + [r.sequence for r in after]
    assert sequences == list(range(1, len(sequences) + 1)), "a gap or a duplicate in the event log"
    kinds = [r.WhichOneof("event") for r in before] + [r.WhichOneof("event") for r in after]
    assert kinds.count("accepted") == 1
    assert kinds.count("completed") == 1
    assert kinds[-1] == "completed"
    assert after[-1].completed.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
    qualities = [r.video_ready.quality for r in [*before, *after] if r.HasField("video_ready")]
    assert gateway_pb.VIDEO_QUALITY_ENHANCED in qualities


async def test_a_dropped_client_leaves_the_job_running_and_watch_resumes_with_no_gap(stack: Stack) -> None:
    """Property: the job does not depend on the stream that started it."""
    name, seen = await _start_and_read_until_narration(stack)
    rest = await _watch(stack, name, after=seen[-1].sequence)
    _assert_one_whole_log(seen, rest)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_a_gateway_restarted_mid_job_completes_it_and_the_stream_resumes(
    stack: Stack, signum: signal.Signals
) -> None:
    """Property: stopping (or killing) the gateway mid-job loses nothing; the restarted gateway (after the
    lease lapses, for a crash) carries the job on, and WatchMeditation continues the same log."""
    name, seen = await _start_and_read_until_narration(stack)
    await asyncio.to_thread(stack.stop, "gateway", signum)
    await asyncio.to_thread(stack.start, "gateway")
    rest = await _watch(stack, name, after=seen[-1].sequence)
    _assert_one_whole_log(seen, rest)


async def test_a_media_replica_killed_mid_narration_is_replaced_and_the_job_completes_once(
    stack: Stack,
) -> None:
    """Property: work on a media replica that dies is done again on the next one that answers; the job
    completes once, with one set of videos."""
    name, seen = await _start_and_read_until_narration(stack)
    await asyncio.to_thread(stack.stop, "media", signal.SIGKILL)
    await asyncio.to_thread(stack.start, "media")
    rest = await _watch(stack, name, after=seen[-1].sequence)
    _assert_one_whole_log(seen, rest)
    videos = [r.video_ready for r in rest if r.HasField("video_ready")]
    assert [v.quality for v in videos] == [gateway_pb.VIDEO_QUALITY_QUICK, gateway_pb.VIDEO_QUALITY_ENHANCED]
    meditation_id = name.rsplit("/", 1)[1]
    stored_videos = list((stack.var_root / "storage" / "videos" / meditation_id).glob("*.mp4"))
    assert len(stored_videos) == 2
