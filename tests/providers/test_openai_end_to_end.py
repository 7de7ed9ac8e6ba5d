"""All three providers on `openai`, as real service processes, against the OpenAI-compatible test server."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from scripts.stack import Stack, running_stack
from services.cli import load_conversation
from stillpoint.content.v2 import content_service_pb2 as content_pb
from stillpoint.content.v2 import content_service_pb2_grpc as content_grpc
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from stillpoint.media.v2 import media_service_pb2 as media_pb
from stillpoint.media.v2 import media_service_pb2_grpc as media_grpc
from tests.servers.openai_compatible import DEFAULT_MODELS, ModelSpec, OpenAICompatibleServer, ServerConfig

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "conversation.json"
# A key shaped like a real one, so that a leak would be found by the search below.
# Made-up keys in OpenAI's format, built here so that no key-like text is committed.
SECRET_KEY = "sk-" + "proj-StillpointTestKey0123456789abcdefXYZ"
WRONG_KEY = "sk-" + "proj-WrongKeyThatMustNeverBeLogged987654321"


def openai_environment(base_url: str, key: str, *, fallback: bool) -> dict[str, str]:
    return {
        "STILLPOINT_TRANSCRIPT_PROVIDER": "openai",
        "STILLPOINT_IMAGE_PROVIDER": "openai",
        "STILLPOINT_SPEECH_PROVIDER": "openai",
        # The speech endpoint, served until it shuts down (test_realtime_end_to_end.py: the Realtime API).
        "STILLPOINT_SPEECH_MODEL": "gpt-4o-mini-tts",
        "STILLPOINT_TRANSCRIPT_MODEL": "gpt-5.6-terra",
        "STILLPOINT_IMAGE_SIZE_LANDSCAPE": "1792x1024",
        "OPENAI_API_KEY": key,
        "OPENAI_BASE_URL": base_url,
        "STILLPOINT_FALLBACK_TO_OFFLINE": "true" if fallback else "false",
        "STILLPOINT_OPENAI_MAX_RETRIES": "1",
        # Everything the processes and the SDK log, so the key search below sees it all, as a log collector
        # would get it.
        "STILLPOINT_LOG_LEVEL": "debug",
        "STILLPOINT_LOG_FORMAT": "json",
    }


@pytest.fixture(scope="module")
def provider_server() -> Iterator[OpenAICompatibleServer]:
    """The server, with the speech model retiring within the warning window."""
    soon = (datetime.now(UTC) + timedelta(days=10)).date()
    models = tuple(
        ModelSpec(model.id, soon) if model.id == "gpt-4o-mini-tts" else model for model in DEFAULT_MODELS
    )
    with OpenAICompatibleServer(ServerConfig(api_key=SECRET_KEY, models=models)) as server:
        yield server


async def generate(
    stack: Stack,
) -> tuple[list[gateway_pb.GenerateMeditationResponse], grpc.aio.AioRpcError | None]:
    responses: list[gateway_pb.GenerateMeditationResponse] = []
    async with stack.gateway_channel() as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        conversation = (await stub.CreateConversation(load_conversation(EXAMPLE), timeout=30)).conversation
        request = gateway_pb.GenerateMeditationRequest(conversation=conversation.name)
        try:
            async for response in stub.GenerateMeditation(request, timeout=300):
                responses.append(response)
        except grpc.aio.AioRpcError as error:
            return responses, error
    return responses, None


def first(
    responses: list[gateway_pb.GenerateMeditationResponse], kind: str
) -> gateway_pb.GenerateMeditationResponse:
    return next(response for response in responses if response.WhichOneof("event") == kind)


# A line in the text format (`2026-12-04 10:00:00,000 INFO services.gateway: ...`), which json replaces.
_TEXT_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


def logs_of(stack: Stack) -> str:
    return "".join(path.read_text(errors="replace") for path in sorted(stack.log_dir.glob("*.log")))


async def test_all_three_providers_on_openai_produce_both_videos_and_never_log_the_key(
    provider_server: OpenAICompatibleServer, tmp_path: Path
) -> None:
    provider_server.clear_requests()
    environment = openai_environment(provider_server.base_url, SECRET_KEY, fallback=False)
    with running_stack(tmp_path / "var", extra_environment=environment) as stack:
        responses, error = await generate(stack)
        async with (
            stack.internal_channel("content") as content_channel,
            stack.internal_channel("media") as media_channel,
        ):
            content_status = await content_grpc.ContentServiceStub(content_channel).GetProviderStatus(
                content_pb.GetProviderStatusRequest()
            )
            media_status = await media_grpc.MediaServiceStub(media_channel).GetProviderStatus(
                media_pb.GetProviderStatusRequest()
            )
    assert error is None, error
    assert responses[-1].completed.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
    transcript = first(responses, "transcript_ready").transcript_ready
    image = first(responses, "image_ready").image_ready
    narration = first(responses, "narration_ready").narration_ready
    assert (transcript.provider, image.provider, narration.provider) == ("openai", "openai", "openai")
    assert not (transcript.fallback_reason or image.fallback_reason or narration.fallback_reason)
    assert (image.width_pixels, image.height_pixels) == (1792, 1024)
    videos = [r.video_ready for r in responses if r.HasField("video_ready")]
    assert [v.quality for v in videos] == [gateway_pb.VIDEO_QUALITY_QUICK, gateway_pb.VIDEO_QUALITY_ENHANCED]
    assert all(v.size_bytes > 0 for v in videos)
    paths = {request.path for request in provider_server.received_requests()}
    assert {"/v1/models", "/v1/chat/completions", "/v1/images/generations", "/v1/audio/speech"} <= paths
    assert {(p.capability, p.provider) for p in content_status.providers} == {
        ("transcript", "openai"),
        ("image", "openai"),
    }
    speech = media_status.providers[0]
    assert (speech.provider, speech.model) == ("openai", "gpt-4o-mini-tts")
    assert any("retires on" in warning for warning in speech.warnings)
    logs = logs_of(stack)
    assert "retires on" in logs  # the model check also warns in the log
    assert SECRET_KEY not in logs
    assert SECRET_KEY not in str(responses)
    # Nor the person's words, even at debug level with every SDK logging.
    for message in load_conversation(EXAMPLE).messages:
        assert message.text not in logs
    assert "haven't told anyone at work how scared I am" not in logs
    # Every record the services' Python wrote is one JSON object naming its service (other lines are the
    # gRPC core's own, which writes outside Python's logging).
    records = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert {record["service"] for record in records} == {"content", "media", "gateway"}
    assert not [line for line in logs.splitlines() if _TEXT_LOG_LINE.match(line)]


async def test_a_rejected_key_falls_back_to_offline_and_says_so_in_the_stream(
    provider_server: OpenAICompatibleServer, tmp_path: Path
) -> None:
    environment = openai_environment(provider_server.base_url, WRONG_KEY, fallback=True)
    with running_stack(tmp_path / "var", extra_environment=environment) as stack:
        responses, error = await generate(stack)
    assert error is None, error
    assert responses[-1].completed.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
    for kind in ("transcript_ready", "image_ready", "narration_ready"):
        ready = getattr(first(responses, kind), kind)
        assert "OPENAI_API_KEY" in ready.fallback_reason, kind
    details = [r.stage.detail for r in responses if r.HasField("stage")]
    assert sum("fell back to offline" in detail for detail in details) == 3
    assert WRONG_KEY not in logs_of(stack)
    assert WRONG_KEY not in str(responses)


async def test_a_rejected_key_without_fallback_fails_naming_the_variable(
    provider_server: OpenAICompatibleServer, tmp_path: Path
) -> None:
    environment = openai_environment(provider_server.base_url, WRONG_KEY, fallback=False)
    with running_stack(tmp_path / "var", extra_environment=environment) as stack:
        responses, error = await generate(stack)
    assert error is not None
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "OPENAI_API_KEY" in (error.details() or "")
    assert responses[-1].completed.state == gateway_pb.MEDITATION_STATE_FAILED
    assert WRONG_KEY not in logs_of(stack)
