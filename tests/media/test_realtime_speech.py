"""The Realtime speech provider, through the real openai SDK against the test server's Realtime WebSocket: the
narrator alone, and behind the media service's NarrateLive over gRPC."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import imageio_ffmpeg
import openai
import pytest

from services import serving
from services.media.encoders import EncoderSelection
from services.media.openai_realtime import READING_INSTRUCTIONS, RealtimeSpeechNarrator, reading_similarity
from services.media.servicer import MediaServicer
from services.media.speech import EspeakNarrator
from services.media.studio import MediaStudio
from services.openai_api import (
    ConfiguredModel,
    OpenAISettings,
    ProviderCallError,
    ProviderFailureKind,
    make_client,
)
from services.proto_time import seconds_of
from services.storage.local import LocalAssetStorage
from stillpoint.media.v2 import media_service_pb2 as media_pb
from stillpoint.media.v2 import media_service_pb2_grpc as media_grpc
from tests.conftest import MEDIA_SERVICE
from tests.servers.openai_compatible import (
    DEFAULT_API_KEY,
    FaultSpec,
    LatencySpec,
    OpenAICompatibleServer,
    ServerConfig,
)

MODEL = ConfiguredModel("gpt-realtime-2.1-mini", "STILLPOINT_SPEECH_MODEL")
SENTENCES = ["Breathe in slowly.", "Hold it gently, here.", "And let it go."]
SCRIPT = f"{SENTENCES[0]} {SENTENCES[1]} [pause 2s] {SENTENCES[2]}"
STYLE = "Speak softly, like the last light of the evening."
MEDITATION = "meditations/0123456789abcdef"


@pytest.fixture
def provider_server() -> Iterator[OpenAICompatibleServer]:
    with OpenAICompatibleServer() as server:
        yield server


@pytest.fixture
async def client(provider_server: OpenAICompatibleServer) -> AsyncIterator[openai.AsyncOpenAI]:
    made = make_client(OpenAISettings(DEFAULT_API_KEY, provider_server.base_url, max_retries=0))
    yield made
    await made.close()


@pytest.fixture
async def narrator(client: openai.AsyncOpenAI) -> AsyncIterator[RealtimeSpeechNarrator]:
    speaker = RealtimeSpeechNarrator(client, MODEL, voice="sage", instructions=STYLE, timeout_seconds=30)
    yield speaker
    await speaker.close()


def configure(
    server: OpenAICompatibleServer, *faults: FaultSpec, latency_seconds: float | None = None
) -> None:
    latency = {} if latency_seconds is None else {"realtime": LatencySpec(fixed_seconds=latency_seconds)}
    server.configure(ServerConfig(faults={"realtime": faults}, latency=latency))  # type: ignore[arg-type]


def silence(seconds: float) -> bytes:
    return bytes(2 * round(seconds * 24_000))


def reads(server: OpenAICompatibleServer) -> list[tuple[int, str | None]]:
    """Each sentence the server was asked to read, with the connection that asked."""
    return [(e.connection, e.read_text) for e in server.realtime_events() if e.type == "response.create"]


def words_in_logs(records: list[logging.LogRecord]) -> str:
    """What the project's own modules logged (services/serving.py keeps the libraries that log message
    contents, websockets among them, at INFO)."""
    return " ".join(record.getMessage() for record in records if record.name.startswith("services."))


async def test_each_sentence_is_read_on_one_reused_socket_between_exact_silences(
    narrator: RealtimeSpeechNarrator, provider_server: OpenAICompatibleServer
) -> None:
    configure(provider_server, latency_seconds=0.3)
    started = time.monotonic()
    narration = await narrator.narrate(SCRIPT)
    elapsed = time.monotonic() - started
    again = await narrator.narrate(SENTENCES[0])

    spoken = [provider_server.spoken_pcm(sentence) for sentence in SENTENCES]
    # The audio is the three readings in order, nothing lost and nothing twice, the pause exact silence.
    assert narration.pcm_s16le == spoken[0] + spoken[1] + silence(2) + spoken[2]
    assert narration.sample_rate_hertz == 24_000
    assert narration.misread_sentence_count == 0
    assert again.pcm_s16le == spoken[0]
    # One response per sentence, one after another on the same socket, which the next narration reuses.
    assert 0.9 <= elapsed < 0.9 + 5.0
    assert reads(provider_server) == [
        (1, SENTENCES[0]),
        (1, SENTENCES[1]),
        (1, SENTENCES[2]),
        (1, SENTENCES[0]),
    ]
    assert [r.path for r in provider_server.received_requests()] == ["/v1/realtime"]
    events = provider_server.realtime_events()
    assert [e.type for e in events].count("session.update") == 1
    session = events[0].body["session"]
    assert isinstance(session, dict)
    assert session["output_modalities"] == ["audio"]
    assert session["audio"] == {"output": {"format": {"type": "audio/pcm", "rate": 24_000}, "voice": "sage"}}
    assert session["instructions"] == f"{READING_INSTRUCTIONS} {STYLE}"
    response = events[1].body["response"]
    assert isinstance(response, dict)
    assert (response["conversation"], response["output_modalities"]) == ("none", ["audio"])


async def test_a_socket_dropped_mid_sentence_is_replaced_and_the_cut_sentence_read_again_once(
    narrator: RealtimeSpeechNarrator,
    provider_server: OpenAICompatibleServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    configure(provider_server, FaultSpec("drop", after=1))
    with caplog.at_level(logging.WARNING):
        narration = await narrator.narrate(SCRIPT)

    spoken = [provider_server.spoken_pcm(sentence) for sentence in SENTENCES]
    # Half of the second sentence came before the drop: none of it is kept, so nothing repeats.
    assert narration.pcm_s16le == spoken[0] + spoken[1] + silence(2) + spoken[2]
    assert reads(provider_server) == [
        (1, SENTENCES[0]),
        (1, SENTENCES[1]),
        (2, SENTENCES[1]),
        (2, SENTENCES[2]),
    ]
    assert "dropped during sentence 2 of 3" in words_in_logs(caplog.records)


async def test_sockets_that_keep_dropping_fail_as_unavailable(
    narrator: RealtimeSpeechNarrator, provider_server: OpenAICompatibleServer
) -> None:
    configure(provider_server, FaultSpec("drop", count=3))
    with pytest.raises(ProviderCallError) as raised:
        await narrator.narrate(SCRIPT)
    assert raised.value.kind is ProviderFailureKind.UNAVAILABLE
    assert "dropped 3 times" in raised.value.message
    assert len(reads(provider_server)) == 3


async def test_an_error_event_fails_the_sentence_rather_than_waiting(
    narrator: RealtimeSpeechNarrator, provider_server: OpenAICompatibleServer
) -> None:
    configure(provider_server, FaultSpec("error", after=1))
    started = time.monotonic()
    with pytest.raises(ProviderCallError) as raised:
        await narrator.narrate(SCRIPT)
    assert time.monotonic() - started < 10  # not the 30 s budget: the error ended it
    assert raised.value.kind is ProviderFailureKind.UNAVAILABLE
    assert "failing" in raised.value.message
    # The session that failed is not reused: the next narration opens another.
    configure(provider_server)
    await narrator.narrate(SENTENCES[0])
    assert reads(provider_server)[-1] == (2, SENTENCES[0])


async def test_a_rate_limited_response_fails_as_unavailable_and_says_so(
    narrator: RealtimeSpeechNarrator, provider_server: OpenAICompatibleServer
) -> None:
    configure(provider_server, FaultSpec("rate_limit"))
    with pytest.raises(ProviderCallError) as raised:
        await narrator.narrate(SCRIPT)
    assert raised.value.kind is ProviderFailureKind.UNAVAILABLE
    assert "rate limiting" in raised.value.message


@pytest.mark.parametrize(
    ("status", "kind", "names"),
    [
        (401, ProviderFailureKind.CREDENTIALS, "OPENAI_API_KEY"),
        (429, ProviderFailureKind.UNAVAILABLE, "rate limiting"),
        (503, ProviderFailureKind.UNAVAILABLE, "failing"),
    ],
)
async def test_a_handshake_refused_with_a_status_fails_with_its_kind(
    narrator: RealtimeSpeechNarrator,
    provider_server: OpenAICompatibleServer,
    status: int,
    kind: ProviderFailureKind,
    names: str,
) -> None:
    configure(provider_server, FaultSpec("status", status))
    with pytest.raises(ProviderCallError) as raised:
        await narrator.narrate(SCRIPT)
    assert raised.value.kind is kind
    assert names in raised.value.message


async def test_an_unknown_model_fails_naming_the_variable(
    client: openai.AsyncOpenAI, provider_server: OpenAICompatibleServer
) -> None:
    model = ConfiguredModel("gpt-realtime-nonexistent", "STILLPOINT_SPEECH_MODEL")
    narrator = RealtimeSpeechNarrator(client, model, voice="sage", instructions="", timeout_seconds=30)
    try:
        with pytest.raises(ProviderCallError) as raised:
            await narrator.narrate(SCRIPT)
    finally:
        await narrator.close()
    assert raised.value.kind is ProviderFailureKind.MODEL
    assert "STILLPOINT_SPEECH_MODEL" in raised.value.message


async def test_the_server_unreachable_fails_as_unavailable(provider_server: OpenAICompatibleServer) -> None:
    base_url = provider_server.base_url
    provider_server.stop()
    client = make_client(OpenAISettings(DEFAULT_API_KEY, base_url, max_retries=0))
    narrator = RealtimeSpeechNarrator(client, MODEL, voice="sage", instructions="", timeout_seconds=30)
    try:
        with pytest.raises(ProviderCallError) as raised:
            await narrator.narrate(SCRIPT)
    finally:
        await narrator.close()
        await client.close()
    assert raised.value.kind is ProviderFailureKind.UNAVAILABLE


async def test_a_response_slower_than_the_budget_times_out(
    client: openai.AsyncOpenAI, provider_server: OpenAICompatibleServer
) -> None:
    configure(provider_server, latency_seconds=5.0)
    narrator = RealtimeSpeechNarrator(client, MODEL, voice="sage", instructions="", timeout_seconds=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(ProviderCallError) as raised:
            await narrator.narrate(SCRIPT)
        assert time.monotonic() - started < 2
    finally:
        await narrator.close()
    assert raised.value.kind is ProviderFailureKind.TIMEOUT


async def test_a_reworded_sentence_is_counted_and_logged_by_place_never_by_its_words(
    narrator: RealtimeSpeechNarrator,
    provider_server: OpenAICompatibleServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    configure(provider_server, FaultSpec("reword", after=1))
    with caplog.at_level(logging.DEBUG):
        narration = await narrator.narrate(SCRIPT)

    assert narration.misread_sentence_count == 1
    logged = words_in_logs(caplog.records)
    assert "sentence 2 of 3 was read differently (similarity 0." in logged
    for sentence in SENTENCES:
        assert sentence not in logged
    assert "gently" not in logged
    # What the model said is what the listener hears: the reworded reading, not a silence.
    reworded = provider_server.spoken_pcm("Now, Hold it gently,.")
    assert reworded in narration.pcm_s16le


async def test_a_script_without_words_is_refused_before_any_connection(
    narrator: RealtimeSpeechNarrator, provider_server: OpenAICompatibleServer
) -> None:
    with pytest.raises(Exception, match="no words"):
        await narrator.narrate("[pause 2s] [soft music]")
    assert provider_server.received_requests() == []


@pytest.mark.parametrize(
    ("heard", "is_word_for_word"),
    [
        ("breathe in slowly", True),
        ("Breathe  in, slowly!", True),
        ("Breathe in... slowly.", True),
        ("Breathe in slowly now.", False),
        ("Breathe slowly.", False),
        ("", False),
    ],
)
def test_a_reading_is_word_for_word_whatever_its_case_and_punctuation(
    heard: str, is_word_for_word: bool
) -> None:
    similarity = reading_similarity("Breathe in slowly.", heard)
    assert (similarity == 1.0) is is_word_for_word
    assert 0.0 <= similarity <= 1.0


# Behind the media service -----------------------------------------------------------------------------------


@pytest.fixture
async def realtime_media_stub(
    tmp_path: Path, narrator: RealtimeSpeechNarrator
) -> AsyncIterator[media_grpc.MediaServiceStub]:
    """A real media server whose narrator is the Realtime provider, falling back to espeak-ng."""
    espeak = EspeakNarrator()
    (tmp_path / "work").mkdir()
    studio = MediaStudio(
        narrator=narrator,
        narrator_name="openai",
        fallback_narrator=espeak,
        storage=LocalAssetStorage(tmp_path / "storage"),
        ffmpeg_path=imageio_ffmpeg.get_ffmpeg_exe(),
        encoders=EncoderSelection(selected="libx264", probes=("probing skipped in tests",)),
        work_root=tmp_path / "work",
        video_timeout_seconds=120,
        # One sentence at a time, so that the server's faults befall a known sentence.
        sentences_in_flight_per_job=1,
    )
    running = await serving.start_server(
        service_names=[MEDIA_SERVICE],
        register=lambda server: media_grpc.add_MediaServiceServicer_to_server(MediaServicer(studio), server),
        address="127.0.0.1:0",
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield media_grpc.MediaServiceStub(channel)
    finally:
        await running.stop(0)
        espeak.close()


async def narrate_live(stub: media_grpc.MediaServiceStub, script: str) -> media_pb.LiveNarrationCompleted:
    async def requests() -> AsyncIterator[media_pb.NarrateLiveRequest]:
        yield media_pb.NarrateLiveRequest(start=media_pb.NarrateLiveStart(meditation=MEDITATION))
        for word in script.split(" "):
            yield media_pb.NarrateLiveRequest(text=media_pb.NarrateLiveText(text=word + " "))
        yield media_pb.NarrateLiveRequest(end=media_pb.NarrateLiveEnd())

    responses = [response async for response in stub.NarrateLive(requests(), timeout=60)]
    assert [r.WhichOneof("event") for r in responses] == ["playlist_ready", "completed"]
    return responses[-1].completed


async def test_live_narration_through_realtime_times_each_sentence_and_counts_misreadings(
    realtime_media_stub: media_grpc.MediaServiceStub, provider_server: OpenAICompatibleServer
) -> None:
    configure(provider_server, FaultSpec("reword", after=2), latency_seconds=0.2)
    completed = await narrate_live(realtime_media_stub, SCRIPT)

    assert (completed.provider, completed.fallback_reason) == ("openai", "")
    assert completed.sample_rate_hertz == 24_000
    assert completed.misread_sentence_count == 1
    lengths = [
        len(provider_server.spoken_pcm(SENTENCES[0])) / 48_000,
        len(provider_server.spoken_pcm(SENTENCES[1])) / 48_000 + 2.0,
        len(provider_server.spoken_pcm("Now, And let it.")) / 48_000,
    ]
    assert [s.text for s in completed.sentences] == [SENTENCES[0], f"{SENTENCES[1]} [pause 2s]", SENTENCES[2]]
    for sentence, length in zip(completed.sentences, lengths, strict=True):
        spoken = seconds_of(sentence.end_offset) - seconds_of(sentence.start_offset)
        assert spoken == pytest.approx(length, abs=0.001)
    # One socket for the whole job.
    assert [r.path for r in provider_server.received_requests()] == ["/v1/realtime"]


async def test_live_narration_falls_back_to_espeak_when_the_realtime_api_errs(
    realtime_media_stub: media_grpc.MediaServiceStub, provider_server: OpenAICompatibleServer
) -> None:
    configure(provider_server, FaultSpec("error", count=10))
    completed = await narrate_live(realtime_media_stub, SCRIPT)

    assert completed.provider == "espeak-ng"
    assert "failing" in completed.fallback_reason
    assert completed.misread_sentence_count == 0
    assert seconds_of(completed.duration) > 2.0
