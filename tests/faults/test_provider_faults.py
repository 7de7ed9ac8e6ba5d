"""A slow or retired model at the provider: real service processes against the OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scripts.stack import Stack, running_stack
from services.cli import load_conversation
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.servers.openai_compatible import (
    DEFAULT_MODELS,
    LatencySpec,
    ModelSpec,
    OpenAICompatibleServer,
    ServerConfig,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "conversation.json"
API_KEY = "sk-test-stillpoint-faults"
TRANSCRIPT_MODEL = "gpt-5.6-terra"
IMAGE_MODEL = "gpt-image-2.5-flare"
# Short, so a deadline surfaces within seconds; the content service gives its provider 4/5 of it (4 s).
TRANSCRIPT_TIMEOUT_SECONDS = 5.0
PROVIDER_BUDGET_SECONDS = 0.8 * TRANSCRIPT_TIMEOUT_SECONDS
# Far past the stage's budget: the provider never answers in time.
SLOW_CHAT_SECONDS = 120.0
# Health must answer at once; this only leaves room for a machine shared with other test runs.
HEALTH_ANSWER_SECONDS = 2.0
# Every stream the tests read is bounded: a job that hangs fails the test instead of hanging it.
STREAM_TIMEOUT_SECONDS = 120.0
Responses = list[gateway_pb.GenerateMeditationResponse] | list[gateway_pb.WatchMeditationResponse]


@pytest.fixture(scope="module")
def provider_server() -> Iterator[OpenAICompatibleServer]:
    """One server for the module; each test configures its own behaviour."""
    with OpenAICompatibleServer(ServerConfig(api_key=API_KEY)) as server:
        yield server


def _provider_environment(
    server: OpenAICompatibleServer, *, image_provider: str, fallback: bool
) -> dict[str, str]:
    return {
        "STILLPOINT_TRANSCRIPT_PROVIDER": "openai",
        "STILLPOINT_IMAGE_PROVIDER": image_provider,
        "STILLPOINT_TRANSCRIPT_MODEL": TRANSCRIPT_MODEL,
        "STILLPOINT_IMAGE_MODEL": IMAGE_MODEL,
        "STILLPOINT_IMAGE_SIZE_LANDSCAPE": "1792x1024",
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": server.base_url,
        "STILLPOINT_FALLBACK_TO_OFFLINE": "true" if fallback else "false",
        "STILLPOINT_OPENAI_MAX_RETRIES": "0",
        # Read by the gateway (the stage's deadline) and by the content service (the provider's budget).
        "STILLPOINT_TRANSCRIPT_TIMEOUT_SECONDS": f"{TRANSCRIPT_TIMEOUT_SECONDS:g}",
    }


def _retired(*model_ids: str) -> ServerConfig:
    """The default models, with the given ones past their shutdown date (the server answers 404 for them)."""
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date()
    models = tuple(ModelSpec(m.id, yesterday) if m.id in model_ids else m for m in DEFAULT_MODELS)
    return ServerConfig(api_key=API_KEY, models=models)


async def _generate(
    stack: Stack, received: list[tuple[float, gateway_pb.GenerateMeditationResponse]]
) -> grpc.aio.AioRpcError | None:
    """Streams one meditation of the example conversation into `received` (with arrival times); returns
    the status the stream ended with, or None when it ended OK."""
    async with stack.gateway_channel() as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        conversation = (await stub.CreateConversation(load_conversation(EXAMPLE), timeout=30)).conversation
        request = gateway_pb.GenerateMeditationRequest(conversation=conversation.name)
        try:
            async for response in stub.GenerateMeditation(request, timeout=STREAM_TIMEOUT_SECONDS):
                received.append((time.monotonic(), response))
        except grpc.aio.AioRpcError as error:
            return error
    return None


async def _watch_from_start(
    stack: Stack, name: str
) -> tuple[list[gateway_pb.WatchMeditationResponse], grpc.aio.AioRpcError | None]:
    responses: list[gateway_pb.WatchMeditationResponse] = []
    async with stack.gateway_channel() as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        request = gateway_pb.WatchMeditationRequest(name=name, after_sequence=0)
        try:
            async for response in stub.WatchMeditation(request, timeout=STREAM_TIMEOUT_SECONDS):
                responses.append(response)
        except grpc.aio.AioRpcError as error:
            return responses, error
    return responses, None


async def _wait_for_request(server: OpenAICompatibleServer, path: str) -> None:
    """Returns once the provider has received `POST path`."""
    await wait_until(
        lambda: any(r.method == "POST" and r.path == path for r in server.received_requests()),
        what=f"the provider to receive POST {path}",
        timeout_seconds=60,
        interval_seconds=0.05,
    )


async def _check_health(channel: grpc.aio.Channel, service: str) -> float:
    """Asks grpc.health.v1 whether the server is SERVING; returns when the answer came."""
    async with channel:
        started = time.monotonic()
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        answered = time.monotonic()
    assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
    assert answered - started < HEALTH_ANSWER_SECONDS, f"{service} took {answered - started:.2f} s"
    return answered


def _stage_events(responses: Responses, state: int) -> list[gateway_pb.StageChanged]:
    return [r.stage for r in responses if r.HasField("stage") and r.stage.state == state]


def _ready(responses: Responses, kind: str) -> gateway_pb.TranscriptReady | gateway_pb.ImageReady:
    found: gateway_pb.TranscriptReady | gateway_pb.ImageReady = next(
        getattr(r, kind) for r in responses if r.WhichOneof("event") == kind
    )
    return found


async def test_a_provider_slower_than_its_stage_ends_the_job_with_deadline_exceeded_while_health_answers(
    provider_server: OpenAICompatibleServer, tmp_path: Path
) -> None:
    """Property: a provider slower than its stage's budget ends the job with DEADLINE_EXCEEDED — a FAILED
    transcript stage event, then `completed` with state FAILED, then the status — within the budget, not
    the provider's latency; and while the slow call is in flight, grpc.health.v1 Check on the gateway and
    on the content service (which makes the call) answers SERVING at once.

    The fallback is switched off (STILLPOINT_FALLBACK_TO_OFFLINE=false). With it on (the default), the
    content service gives the provider 4/5 of the stage's budget and then lets the offline composer write
    the script in the fifth that is left, so the job succeeds with `fallback_reason` "did not finish
    within 4 s": the fallback masks the deadline by design, and no other provider setting avoids it (every
    provider has the same fallback). The slow stage is the transcript, the first provider call of a job.
    """
    provider_server.configure(
        ServerConfig(api_key=API_KEY, latency={"chat": LatencySpec(fixed_seconds=SLOW_CHAT_SECONDS)})
    )
    provider_server.clear_requests()
    environment = _provider_environment(provider_server, image_provider="offline", fallback=False)
    received: list[tuple[float, gateway_pb.GenerateMeditationResponse]] = []
    with running_stack(tmp_path / "var", extra_environment=environment) as stack:
        started = time.monotonic()
        streaming = asyncio.create_task(_generate(stack, received))
        await _wait_for_request(provider_server, "/v1/chat/completions")
        health_answered = [
            await _check_health(stack.gateway_channel(), "gateway"),
            await _check_health(stack.internal_channel("content"), "content"),
        ]
        error = await asyncio.wait_for(streaming, STREAM_TIMEOUT_SECONDS)
    failed_at = next(
        at
        for at, r in received
        if r.HasField("stage")
        and r.stage.stage == gateway_pb.STAGE_TRANSCRIPT
        and r.stage.state == gateway_pb.STAGE_STATE_FAILED
    )
    assert max(health_answered) < failed_at, "health was not asked while the slow call was in flight"
    responses = [r for _, r in received]
    assert error is not None
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server's status, not this client's own deadline: it says which budget ran out.
    message = f"did not finish within {PROVIDER_BUDGET_SECONDS:g} s"
    assert message in (error.details() or ""), error.details()
    assert PROVIDER_BUDGET_SECONDS - 0.5 < failed_at - started < SLOW_CHAT_SECONDS / 2
    [failed_stage] = _stage_events(responses, gateway_pb.STAGE_STATE_FAILED)
    assert failed_stage.stage == gateway_pb.STAGE_TRANSCRIPT
    assert message in failed_stage.detail
    assert responses[-1].WhichOneof("event") == "completed"
    assert responses[-1].completed.state == gateway_pb.MEDITATION_STATE_FAILED
    assert not any(r.HasField("transcript_ready") for r in responses)


async def test_a_retired_model_falls_back_to_offline_and_the_stream_says_why(
    provider_server: OpenAICompatibleServer, tmp_path: Path
) -> None:
    """Property: with the fallback on, a model the provider has retired (404) makes the offline provider
    do the work; `transcript_ready` and `image_ready` name it and carry a `fallback_reason` naming the
    model and its variable, the stages' details say "fell back to offline", and the job completes."""
    provider_server.configure(_retired(TRANSCRIPT_MODEL, IMAGE_MODEL))
    provider_server.clear_requests()
    environment = _provider_environment(provider_server, image_provider="openai", fallback=True)
    received: list[tuple[float, gateway_pb.GenerateMeditationResponse]] = []
    with running_stack(tmp_path / "var", extra_environment=environment) as stack:
        error = await _generate(stack, received)
    responses = [r for _, r in received]
    assert error is None, error
    assert responses[-1].completed.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
    for kind, model, variable in (
        ("transcript_ready", TRANSCRIPT_MODEL, "STILLPOINT_TRANSCRIPT_MODEL"),
        ("image_ready", IMAGE_MODEL, "STILLPOINT_IMAGE_MODEL"),
    ):
        ready = _ready(responses, kind)
        assert ready.provider == "offline", kind
        assert model in ready.fallback_reason and variable in ready.fallback_reason, ready.fallback_reason
    details = [stage.detail for stage in _stage_events(responses, gateway_pb.STAGE_STATE_SUCCEEDED)]
    assert sum("fell back to offline" in detail for detail in details) == 2, details
    # The provider was asked, and answered that the models are gone.
    answered = {(r.path, r.status) for r in provider_server.received_requests() if r.method == "POST"}
    assert {("/v1/chat/completions", 404), ("/v1/images/generations", 404)} <= answered


async def test_a_retired_model_without_fallback_fails_at_once_naming_the_model_and_its_variable(
    provider_server: OpenAICompatibleServer, tmp_path: Path
) -> None:
    """Property: with the fallback off, a retired model ends the job promptly with FAILED_PRECONDITION
    naming the model and the variable to change, after a `completed` event with state FAILED; watching the
    finished job replays the same end and the same status rather than waiting for more."""
    provider_server.configure(_retired(TRANSCRIPT_MODEL))
    environment = _provider_environment(provider_server, image_provider="offline", fallback=False)
    received: list[tuple[float, gateway_pb.GenerateMeditationResponse]] = []
    with running_stack(tmp_path / "var", extra_environment=environment) as stack:
        error = await _generate(stack, received)
        name = received[0][1].accepted.meditation
        watched, watch_error = await _watch_from_start(stack, name)
    responses = [r for _, r in received]
    for ended, stream in ((error, responses), (watch_error, watched)):
        assert ended is not None
        assert ended.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = ended.details() or ""
        assert TRANSCRIPT_MODEL in details and "STILLPOINT_TRANSCRIPT_MODEL" in details, details
        assert stream[-1].completed.state == gateway_pb.MEDITATION_STATE_FAILED
        [failed_stage] = _stage_events(stream, gateway_pb.STAGE_STATE_FAILED)
        assert failed_stage.stage == gateway_pb.STAGE_TRANSCRIPT
    assert [r.sequence for r in watched] == [r.sequence for r in responses]
