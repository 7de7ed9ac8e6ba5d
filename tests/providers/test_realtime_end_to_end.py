"""Speech on the OpenAI Realtime API, as the three real service processes run it, against the Realtime
WebSocket of the OpenAI-compatible test server: the default speech model is a Realtime one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.stack import running_stack
from services.media.config import DEFAULT_SPEECH_MODEL
from services.script_marks import speakable_text
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.media.v2 import media_service_pb2 as media_pb
from stillpoint.media.v2 import media_service_pb2_grpc as media_grpc
from tests.providers.test_openai_end_to_end import SECRET_KEY, first, generate, logs_of
from tests.servers.openai_compatible import FaultSpec, OpenAICompatibleServer, ServerConfig

pytestmark = pytest.mark.e2e


def realtime_environment(server: OpenAICompatibleServer, *, fallback: bool) -> dict[str, str]:
    """Speech on `openai` with the default model; the transcript and image stay offline."""
    return {
        "STILLPOINT_SPEECH_PROVIDER": "openai",
        "OPENAI_API_KEY": SECRET_KEY,
        "OPENAI_BASE_URL": server.base_url,
        "STILLPOINT_FALLBACK_TO_OFFLINE": "true" if fallback else "false",
        # Everything the processes and the SDK log, so the searches below see it all.
        "STILLPOINT_LOG_LEVEL": "debug",
    }


@pytest.fixture(scope="module")
def provider_server() -> Iterator[OpenAICompatibleServer]:
    with OpenAICompatibleServer(ServerConfig(api_key=SECRET_KEY)) as server:
        yield server


async def test_the_services_narrate_through_the_realtime_api_surviving_a_drop_and_counting_a_misreading(
    provider_server: OpenAICompatibleServer, tmp_path: Path
) -> None:
    # The third response loses its socket halfway; the one after the next is reworded by the "model".
    faults = (FaultSpec("drop", after=2), FaultSpec("reword", after=1))
    provider_server.configure(ServerConfig(api_key=SECRET_KEY, faults={"realtime": faults}))
    provider_server.clear_requests()
    with running_stack(
        tmp_path / "var", extra_environment=realtime_environment(provider_server, fallback=False)
    ) as stack:
        responses, error = await generate(stack)
        async with stack.internal_channel("media") as channel:
            status = await media_grpc.MediaServiceStub(channel).GetProviderStatus(
                media_pb.GetProviderStatusRequest()
            )
    assert error is None, error
    completed = responses[-1].completed
    assert completed.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
    narration = first(responses, "narration_ready").narration_ready
    assert (narration.provider, narration.fallback_reason) == ("openai", "")
    assert completed.misread_sentence_count == 1
    details = [r.stage.detail for r in responses if r.HasField("stage") and r.stage.detail]
    assert any("(1 read differently) by openai" in detail for detail in details)
    speech = status.providers[0]
    assert (speech.provider, speech.model, list(speech.warnings)) == ("openai", DEFAULT_SPEECH_MODEL, [])

    # Every sentence was asked for once, the one cut by the drop twice, over a few reused sockets.
    # (A sentence of pause marks alone is silence, made without asking.)
    sentences = [text for sentence in narration.sentences if (text := speakable_text(sentence.text))]
    reads = [read for event in provider_server.realtime_events() if (read := event.read_text) is not None]
    assert sorted(reads) == sorted([*sentences, next(text for text in reads if reads.count(text) == 2)])
    connections = [r for r in provider_server.received_requests() if r.path == "/v1/realtime"]
    assert all(request.model == DEFAULT_SPEECH_MODEL for request in connections)
    assert 2 <= len(connections) < len(sentences)
    assert "/v1/audio/speech" not in {r.path for r in provider_server.received_requests()}

    logs = logs_of(stack)
    assert "reconnecting to read it again" in logs
    assert "was read differently (similarity 0." in logs
    assert SECRET_KEY not in logs
    # The script's words never reach a log, not even at debug level with the SDK and websockets logging.
    for sentence in sentences:
        assert sentence not in logs


async def test_an_error_from_the_realtime_api_falls_back_to_the_offline_voice_and_says_so(
    provider_server: OpenAICompatibleServer, tmp_path: Path
) -> None:
    provider_server.configure(
        ServerConfig(api_key=SECRET_KEY, faults={"realtime": (FaultSpec("error", count=500),)})
    )
    with running_stack(
        tmp_path / "var", extra_environment=realtime_environment(provider_server, fallback=True)
    ) as stack:
        responses, error = await generate(stack)
    assert error is None, error
    assert responses[-1].completed.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
    assert responses[-1].completed.misread_sentence_count == 0
    narration = first(responses, "narration_ready").narration_ready
    assert narration.provider == "piper"
    assert "failing" in narration.fallback_reason
