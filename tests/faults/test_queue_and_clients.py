"""A full queue and a client that stops reading, against running services: a retry is never refused, the
job never waits on its reader, and the reader resumes with no gap."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from scripts.stack import Stack, running_stack
from services.cli import load_conversation
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.faults.logs import assert_one_whole_log

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "conversation.json"
JOB_WITHIN_SECONDS = 90.0

Responses = list[gateway_pb.GenerateMeditationResponse]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """One job runs at a time, and one more may wait."""
    environment = {"STILLPOINT_MAX_RUNNING_JOBS": "1", "STILLPOINT_MAX_QUEUED_JOBS": "1"}
    with running_stack(tmp_path / "var", extra_environment=environment) as started:
        yield started


def _request(conversation: str, request_id: str = "") -> gateway_pb.GenerateMeditationRequest:
    return gateway_pb.GenerateMeditationRequest(
        conversation=conversation,
        request_id=request_id,
        options=gateway_pb.MeditationOptions(skip_cache=True),
    )


async def _read_all(
    stub: gateway_grpc.GatewayServiceStub, request: gateway_pb.GenerateMeditationRequest
) -> Responses:
    return [response async for response in stub.GenerateMeditation(request, timeout=2 * JOB_WITHIN_SECONDS)]


async def _first(stub: gateway_grpc.GatewayServiceStub, request: gateway_pb.GenerateMeditationRequest) -> str:
    """Starts a job, reads its accepted event and lets the stream go (the job runs on)."""
    stream = stub.GenerateMeditation(request, timeout=JOB_WITHIN_SECONDS)
    async for response in stream:
        stream.cancel()
        return response.accepted.meditation
    raise AssertionError("the stream ended without an accepted event")


async def _finished(stub: gateway_grpc.GatewayServiceStub, name: str) -> float:
    """Waits for the job to reach a final state; returns when (monotonic)."""
    deadline = time.monotonic() + 2 * JOB_WITHIN_SECONDS
    while True:
        meditation = (await stub.GetMeditation(gateway_pb.GetMeditationRequest(name=name))).meditation
        if meditation.state not in (
            gateway_pb.MEDITATION_STATE_UNSPECIFIED,
            gateway_pb.MEDITATION_STATE_RUNNING,
        ):
            return time.monotonic()
        assert time.monotonic() < deadline, f"{name} did not finish"
        await asyncio.sleep(0.2)  # polling the job's state, with a deadline


async def _read_rest(
    stream: grpc.aio.UnaryStreamCall,  # type: ignore[type-arg]
    into: Responses,
) -> grpc.aio.AioRpcError | None:
    """Reads the stream to its end into `into`; returns the status it ended with if it was not OK."""
    try:
        while (response := await stream.read()) is not grpc.aio.EOF:
            assert isinstance(response, gateway_pb.GenerateMeditationResponse)
            into.append(response)
    except grpc.aio.AioRpcError as error:
        return error
    return None


@pytest.mark.timeout(300)
async def test_a_full_queue_refuses_new_work_but_never_a_retry_and_a_stalled_reader_holds_nothing_back(
    stack: Stack,
) -> None:
    """Property: with one job running and one waiting, a third is RESOURCE_EXHAUSTED while a retry of the
    waiting one's request_id gets that same job; the client of the running job stops reading after its
    first event, yet the job finishes while it is stalled, and what it then reads (resumed with
    WatchMeditation after the last event it holds, if the gateway dropped it) is one whole log."""
    async with stack.gateway_channel() as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        conversation = (await stub.CreateConversation(load_conversation(EXAMPLE))).conversation.name
        stalled = stub.GenerateMeditation(_request(conversation), timeout=2 * JOB_WITHIN_SECONDS)
        first = await stalled.read()
        assert isinstance(first, gateway_pb.GenerateMeditationResponse)
        held: Responses = [first]
        running = first.accepted.meditation
        waiting_id = str(uuid.uuid4())
        waiting = await _first(stub, _request(conversation, waiting_id))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _first(stub, _request(conversation))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await _first(stub, _request(conversation, waiting_id)) == waiting

        # The stalled client has read one event; the job does not wait for it.
        await _finished(stub, running)
        dropped = await _read_rest(stalled, held)
        rest: list[gateway_pb.WatchMeditationResponse] = []
        if dropped is not None:
            assert dropped.code() == grpc.StatusCode.ABORTED, dropped
            assert "after_sequence" in (dropped.details() or "")
            watch = gateway_pb.WatchMeditationRequest(name=running, after_sequence=held[-1].sequence)
            rest = [response async for response in stub.WatchMeditation(watch, timeout=JOB_WITHIN_SECONDS)]
        replay = gateway_pb.WatchMeditationRequest(name=waiting)
        waited = [response async for response in stub.WatchMeditation(replay, timeout=2 * JOB_WITHIN_SECONDS)]
    assert_one_whole_log(held, rest)
    assert_one_whole_log(waited)
