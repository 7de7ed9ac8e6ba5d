"""The media scratch disk fills up under running services: the job that cannot encode fails naming the disk,
leaves no scratch files, health says NOT_SERVING, and the next job after space returns completes."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scripts.stack import Stack, running_stack
from services.cli import load_conversation
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from stillpoint.media.v2 import media_service_pb2 as media_pb
from tests.faults.logs import assert_one_whole_log

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "conversation.json"
MEDIA_SERVICE = media_pb.DESCRIPTOR.services_by_name["MediaService"].full_name
MEBIBYTE = 1 << 20
# The floor sits this far under the disk's free space at the start: room for a job, not for the ballast.
HEADROOM_MEBIBYTES = 400
BALLAST_MEBIBYTES = 2 * HEADROOM_MEBIBYTES
JOB_WITHIN_SECONDS = 90.0


def _free_mebibytes(path: Path) -> int:
    return shutil.disk_usage(path).free // MEBIBYTE


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """The three services, media's free-space floor just under what the disk has now."""
    (tmp_path / "var").mkdir()
    floor = _free_mebibytes(tmp_path) - HEADROOM_MEBIBYTES
    environment = {"STILLPOINT_MEDIA_MIN_FREE_MEGABYTES": str(floor), "STILLPOINT_JOB_LEASE_SECONDS": "3"}
    with running_stack(tmp_path / "var", extra_environment=environment) as started:
        yield started


async def _generate(
    stub: gateway_grpc.GatewayServiceStub, conversation: str
) -> tuple[list[gateway_pb.GenerateMeditationResponse], grpc.aio.AioRpcError | None, float]:
    seen: list[gateway_pb.GenerateMeditationResponse] = []
    started = time.monotonic()
    request = gateway_pb.GenerateMeditationRequest(
        conversation=conversation, options=gateway_pb.MeditationOptions(skip_cache=True)
    )
    try:
        async for response in stub.GenerateMeditation(request, timeout=JOB_WITHIN_SECONDS):
            seen.append(response)
    except grpc.aio.AioRpcError as error:
        return seen, error, time.monotonic() - started
    return seen, None, time.monotonic() - started


async def _media_health(stack: Stack) -> int:
    async with stack.internal_channel("media") as channel:
        request = health_pb2.HealthCheckRequest(service=MEDIA_SERVICE)
        return int((await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)).status)


async def _wait_for_health(stack: Stack, status: int) -> None:
    deadline = time.monotonic() + 30
    while await _media_health(stack) != status:
        assert time.monotonic() < deadline, f"media health never became {status}"
        await asyncio.sleep(0.2)  # polling health, with a deadline


def _fill(ballast: Path, mebibytes: int) -> None:
    """Takes real space on the disk (allocated blocks, not a sparse file)."""
    with open(ballast, "wb") as file:
        os.posix_fallocate(file.fileno(), 0, mebibytes * MEBIBYTE)


def _scratch_files(var_root: Path) -> list[Path]:
    return [path for path in (var_root / "work" / "media").rglob("*") if path.is_file()]


@pytest.mark.timeout(240)
async def test_a_full_scratch_disk_fails_the_job_naming_it_and_the_next_completes_once_space_returns(
    stack: Stack, tmp_path: Path
) -> None:
    """Property: with the scratch disk filled under media's floor (a real file taking real space), media's
    health says NOT_SERVING and a job fails UNAVAILABLE naming the scratch disk, leaving no scratch files;
    once the space is freed, health says SERVING and a job completes with one whole log."""
    ballast = tmp_path / "ballast"
    async with stack.gateway_channel() as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        conversation = (await stub.CreateConversation(load_conversation(EXAMPLE))).conversation.name
        await asyncio.to_thread(_fill, ballast, BALLAST_MEBIBYTES)
        try:
            await _wait_for_health(stack, health_pb2.HealthCheckResponse.NOT_SERVING)
            refused, status, refused_seconds = await _generate(stub, conversation)
        finally:
            ballast.unlink()
        await _wait_for_health(stack, health_pb2.HealthCheckResponse.SERVING)
        recovered, recovered_status, seconds = await _generate(stub, conversation)
    assert status is not None and status.code() == grpc.StatusCode.UNAVAILABLE, status
    assert "scratch disk" in (status.details() or ""), status.details()
    assert refused[-1].completed.state == gateway_pb.MEDITATION_STATE_FAILED
    assert _scratch_files(stack.var_root) == []
    assert recovered_status is None, recovered_status
    assert_one_whole_log(recovered)
    print(
        f"\nfault cost: scratch disk under its floor: FAILED after {refused_seconds:.1f} s; "
        f"next job after space returned {seconds:.1f} s"
    )
