"""The Redis that carries the job queue restarts empty mid-job: nothing is lost, nothing goes silent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.stack import Stack, running_stack
from services.cli import load_conversation
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.faults.logs import assert_one_whole_log
from tests.faults.redis_server import RedisServer

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "conversation.json"
# Each job, from its request to its last event, with the restart in the middle of the first.
JOB_WITHIN_SECONDS = 45.0


@pytest.fixture
def stack(tmp_path: Path, redis_server: RedisServer) -> Iterator[Stack]:
    """The three services on this test's Redis, with a short job lease."""
    environment = {
        "REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
        "STILLPOINT_JOB_LEASE_SECONDS": "3",
    }
    with running_stack(tmp_path / "var", extra_environment=environment) as started:
        yield started


async def _generate(
    stub: gateway_grpc.GatewayServiceStub, conversation: str, *, until_narration: bool
) -> list[gateway_pb.GenerateMeditationResponse]:
    seen: list[gateway_pb.GenerateMeditationResponse] = []
    stream = stub.GenerateMeditation(
        gateway_pb.GenerateMeditationRequest(conversation=conversation), timeout=JOB_WITHIN_SECONDS
    )
    async for response in stream:
        seen.append(response)
        if (
            until_narration
            and response.HasField("stage")
            and response.stage.stage == gateway_pb.STAGE_NARRATION
        ):
            stream.cancel()
            break
    return seen


@pytest.mark.timeout(120)
async def test_redis_restarting_empty_mid_job_loses_no_job_and_the_outage_is_logged_once(
    stack: Stack, redis_server: RedisServer
) -> None:
    """Property: with the queue's Redis killed mid-job and started again empty (no persistence), the running
    job completes, a job accepted right after the restart completes too — each within 45 s, each log whole —
    and the gateway's log names the lost queue once and the outage at most once (not once per poll)."""
    async with stack.gateway_channel() as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        created = await stub.CreateConversation(load_conversation(EXAMPLE))
        conversation = created.conversation.name
        started = time.monotonic()
        first = await _generate(stub, conversation, until_narration=True)
        redis_server.kill()
        redis_server.start()
        second = await _generate(stub, conversation, until_narration=False)
        assert time.monotonic() - started < 2 * JOB_WITHIN_SECONDS
        watch = gateway_pb.WatchMeditationRequest(
            name=first[0].accepted.meditation, after_sequence=first[-1].sequence
        )
        rest = [response async for response in stub.WatchMeditation(watch, timeout=JOB_WITHIN_SECONDS)]
    assert_one_whole_log(first, rest)
    assert_one_whole_log(second)
    gateway_log = (stack.log_dir / "gateway.log").read_text(errors="replace")
    assert gateway_log.count("lost its entries") == 1, gateway_log[-3000:]
    assert gateway_log.count("is unreachable") <= 1, gateway_log[-3000:]
    assert gateway_log.count("is unreachable") == gateway_log.count("answers again"), gateway_log[-3000:]
