"""Jobs outlive their streams and their gateway: real processes, killed and restarted mid-job."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.stack import Stack, running_stack
from services.cli import load_conversation
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.faults.logs import assert_one_whole_log, stored_videos

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "conversation.json"


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
    async with stack.gateway_channel() as channel:
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
    async with stack.gateway_channel() as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        request = gateway_pb.WatchMeditationRequest(name=name, after_sequence=after)
        return [response async for response in stub.WatchMeditation(request, timeout=120)]


async def test_a_dropped_client_leaves_the_job_running_and_watch_resumes_with_no_gap(stack: Stack) -> None:
    """Property: the job does not depend on the stream that started it."""
    name, seen = await _start_and_read_until_narration(stack)
    rest = await _watch(stack, name, after=seen[-1].sequence)
    assert_one_whole_log(seen, rest)


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
    assert_one_whole_log(seen, rest)


async def test_a_media_replica_killed_mid_narration_is_replaced_and_the_job_completes_once(
    stack: Stack,
) -> None:
    """Property: work on a media replica that dies is done again on the next one that answers; the job
    completes once, with one set of videos."""
    name, seen = await _start_and_read_until_narration(stack)
    await asyncio.to_thread(stack.stop, "media", signal.SIGKILL)
    await asyncio.to_thread(stack.start, "media")
    rest = await _watch(stack, name, after=seen[-1].sequence)
    assert_one_whole_log(seen, rest)
    videos = [r.video_ready for r in rest if r.HasField("video_ready")]
    assert [v.quality for v in videos] == [gateway_pb.VIDEO_QUALITY_QUICK, gateway_pb.VIDEO_QUALITY_ENHANCED]
    assert len(stored_videos(stack.var_root, name)) == 2
