"""The OpenAI-compatible test server, driven by the real openai SDK over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import av
import openai
import pytest
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.realtime import (
    RealtimeErrorEvent,
    RealtimeServerEvent,
    RealtimeSessionCreateRequest,
    ResponseAudioDeltaEvent,
    ResponseAudioTranscriptDoneEvent,
    ResponseCreateEventParam,
    ResponseDoneEvent,
    SessionCreatedEvent,
    SessionUpdatedEvent,
)
from PIL import Image
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from services.content.script_composer import compose_meditation
from services.media.speech import EspeakNarrator, Narration
from services.script_marks import PAUSE_MARK_PATTERN, count_spoken_words
from tests.servers.openai_compatible import (
    DEFAULT_API_KEY,
    ConfigError,
    FaultSpec,
    LatencySpec,
    ModelSpec,
    OpenAICompatibleServer,
    ServerConfig,
    SpeechFormat,
)

CHAT_MODEL = "gpt-5.6-terra"
IMAGE_MODEL = "gpt-image-2.5-flare"
SPEECH_MODEL = "gpt-4o-mini-tts"
REALTIME_MODEL = "gpt-realtime-2.1-mini"
CONVERSATION = "Work has been overwhelming lately and I can't sleep. I miss walking by the sea."
# About four seconds of narration: long enough to prove real audio, short enough to keep the file fast.
SPOKEN_TEXT = "Welcome. Let yourself arrive here, just as you are. Breathe in slowly, and let it go."
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server() -> Iterator[OpenAICompatibleServer]:
    with OpenAICompatibleServer() as server:
        yield server


def client_for(
    server: OpenAICompatibleServer,
    api_key: str = DEFAULT_API_KEY,
    max_retries: int = 0,
    timeout_seconds: float = 10.0,
) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=api_key, base_url=server.base_url, max_retries=max_retries, timeout=timeout_seconds
    )


def http(method: str, url: str, body: object = None, api_key: str | None = None) -> tuple[int, bytes]:
    """A plain urllib call, as another process would make it."""
    request = urllib.request.Request(url, method=method)
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if api_key is not None:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, data, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def decoded_seconds(audio: bytes) -> float:
    with av.open(io.BytesIO(audio), mode="r") as container:
        assert container.streams.audio, "no audio stream"
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.rate


async def test_models_list_reports_each_models_shutdown_date(server: OpenAICompatibleServer) -> None:
    client = client_for(server)
    try:
        page = await client.models.list()
    finally:
        await client.close()

    shutdown_dates = {
        model.id: getattr(model, "shutdown_date", None) or (model.model_extra or {}).get("shutdown_date")
        for model in page.data
    }
    assert shutdown_dates == {
        CHAT_MODEL: None,
        IMAGE_MODEL: None,
        SPEECH_MODEL: "2027-01-06",
        "tts-1": "2027-01-06",
        "tts-1-hd": "2027-01-06",
        REALTIME_MODEL: None,
        "gpt-image-1": "2026-10-23",
    }
    assert {model.owned_by for model in page.data} == {"stillpoint-test"}


async def test_streamed_chat_arrives_in_pieces_that_form_a_meditation(server: OpenAICompatibleServer) -> None:
    client = client_for(server)
    try:
        stream = await client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[
                {"role": "system", "content": "You write guided meditations."},
                {"role": "user", "content": CONVERSATION},
            ],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    finally:
        await client.close()

    with_choices = [chunk for chunk in chunks if chunk.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert with_choices[-1].choices[0].finish_reason == "stop"
    pieces = [chunk.choices[0].delta.content for chunk in with_choices if chunk.choices[0].delta.content]
    assert len(pieces) > 50
    text = "".join(pieces)
    assert text == compose_meditation(CONVERSATION)
    assert 400 <= count_spoken_words(text) <= 500
    assert PAUSE_MARK_PATTERN.search(text)
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None and usage_chunk.usage.completion_tokens > 0
    assert [(r.path, r.is_stream) for r in server.received_requests()] == [("/v1/chat/completions", True)]


async def test_chat_without_stream_returns_the_whole_meditation(server: OpenAICompatibleServer) -> None:
    client = client_for(server)
    try:
        completion = await client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": CONVERSATION}]
        )
    finally:
        await client.close()

    assert completion.choices[0].message.content == compose_meditation(CONVERSATION)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0


async def test_chat_text_replaces_the_meditation(server: OpenAICompatibleServer) -> None:
    server.configure(ServerConfig(chat_text="Breathe in. [pause 2s] Breathe out."))
    client = client_for(server)
    try:
        completion = await client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": CONVERSATION}]
        )
    finally:
        await client.close()

    assert completion.choices[0].message.content == "Breathe in. [pause 2s] Breathe out."


async def test_gpt_image_model_returns_a_base64_png_at_the_requested_size(
    server: OpenAICompatibleServer,
) -> None:
    client = client_for(server)
    try:
        result = await client.images.generate(
            model=IMAGE_MODEL, prompt="a quiet lake at dawn", size="1792x1024", output_format="png"
        )
    finally:
        await client.close()

    assert result.data is not None and result.data[0].b64_json is not None
    assert result.data[0].url is None
    with Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))) as image:
        assert (image.format, image.size) == ("PNG", (1792, 1024))
    assert (result.output_format, result.size) == ("png", "1792x1024")


@pytest.mark.parametrize("paints_once_per_size", [False, True], ids=["per-prompt", "once-per-size"])
async def test_images_are_painted_per_prompt_unless_once_per_size(
    server: OpenAICompatibleServer, paints_once_per_size: bool
) -> None:
    server.configure(ServerConfig(paints_once_per_size=paints_once_per_size))
    client = client_for(server)
    try:
        images = [
            (
                await client.images.generate(
                    model=IMAGE_MODEL, prompt=prompt, size="1024x1024", output_format="png"
                )
            ).data
            for prompt in ("a quiet lake at dawn", "a pine forest after rain")
        ]
    finally:
        await client.close()

    lake, forest = (data[0].b64_json if data else None for data in images)
    assert lake is not None and forest is not None
    assert (lake == forest) is paints_once_per_size


async def test_gpt_image_model_rejects_response_format(server: OpenAICompatibleServer) -> None:
    client = client_for(server)
    try:
        with pytest.raises(openai.BadRequestError) as raised:
            await client.images.generate(model=IMAGE_MODEL, prompt="a quiet lake", response_format="url")
    finally:
        await client.close()

    assert raised.value.code == "unknown_parameter"
    assert raised.value.param == "response_format"


async def test_compatible_image_model_returns_a_url_that_serves_the_png(
    server: OpenAICompatibleServer,
) -> None:
    server.configure(ServerConfig(models=(ModelSpec("compat-image"),)))
    client = client_for(server)
    try:
        result = await client.images.generate(model="compat-image", prompt="a forest path", size="1536x1024")
    finally:
        await client.close()

    assert result.data is not None and result.data[0].url is not None
    assert result.data[0].url.startswith(server.origin + "/files/")
    status, png = await asyncio.to_thread(http, "GET", result.data[0].url)
    assert status == 200
    with Image.open(io.BytesIO(png)) as image:
        assert (image.format, image.size) == ("PNG", (1536, 1024))


@pytest.mark.parametrize("audio_format", ["wav", "mp3", "aac", "opus", "flac"])
async def test_speech_streams_decodable_audio(
    server: OpenAICompatibleServer, audio_format: SpeechFormat
) -> None:
    client = client_for(server)
    try:
        async with client.audio.speech.with_streaming_response.create(
            model=SPEECH_MODEL, voice="coral", input=SPOKEN_TEXT, response_format=audio_format
        ) as response:
            audio = b"".join([piece async for piece in response.iter_bytes()])
    finally:
        await client.close()

    assert response.headers["content-type"].startswith("audio/")
    assert decoded_seconds(audio) > 1.0


async def test_speech_as_pcm_is_raw_24khz_16_bit_mono(server: OpenAICompatibleServer) -> None:
    narrator = EspeakNarrator()
    try:
        narrated_seconds = (await narrator.narrate(SPOKEN_TEXT)).duration_seconds
    finally:
        narrator.close()
    client = client_for(server)
    try:
        async with client.audio.speech.with_streaming_response.create(
            model=SPEECH_MODEL, voice="coral", input=SPOKEN_TEXT, response_format="pcm"
        ) as response:
            pcm = b"".join([piece async for piece in response.iter_bytes()])
    finally:
        await client.close()

    assert len(pcm) % 2 == 0
    assert len(pcm) == pytest.approx(24_000 * 2 * narrated_seconds, rel=0.01)


async def test_speech_speaks_each_sentence_once_however_requests_cut_a_script(
    server: OpenAICompatibleServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # make bench's jobs speak one script, cut into requests at different places: each sentence is
    # synthesised once, and a request's speech is its sentences' speech, joined.
    synthesised: list[str] = []
    narrate = EspeakNarrator.narrate

    async def counted(self: EspeakNarrator, text: str) -> Narration:
        synthesised.append(text)
        return await narrate(self, text)

    monkeypatch.setattr(EspeakNarrator, "narrate", counted)
    first, second, third = "Breathe in slowly.", "Let the day go.", "Rest here a while."
    client = client_for(server)

    async def spoken(text: str) -> bytes:
        async with client.audio.speech.with_streaming_response.create(
            model=SPEECH_MODEL, voice="coral", input=text, response_format="pcm"
        ) as response:
            return b"".join([piece async for piece in response.iter_bytes()])

    try:
        opening = await spoken(f"{first} {second}")
        closing = await spoken(f"{second} {third}")
        alone = [await spoken(sentence) for sentence in (first, second, third)]
    finally:
        await client.close()

    assert sorted(synthesised) == sorted([first, second, third])
    assert opening == alone[0] + alone[1]
    assert closing == alone[1] + alone[2]


async def test_speech_speed_shortens_the_audio(server: OpenAICompatibleServer) -> None:
    client = client_for(server)
    seconds = []
    try:
        for speed in (1.0, 2.0):
            async with client.audio.speech.with_streaming_response.create(
                model=SPEECH_MODEL, voice="coral", input=SPOKEN_TEXT, response_format="wav", speed=speed
            ) as response:
                seconds.append(decoded_seconds(b"".join([piece async for piece in response.iter_bytes()])))
    finally:
        await client.close()

    assert seconds[1] == pytest.approx(seconds[0] / 2, rel=0.05)


async def test_speech_latency_is_spread_over_several_chunks(server: OpenAICompatibleServer) -> None:
    server.configure(ServerConfig(latency={"speech": LatencySpec(fixed_seconds=0.4)}))
    client = client_for(server)
    started = time.monotonic()
    try:
        async with client.audio.speech.with_streaming_response.create(
            model=SPEECH_MODEL, voice="coral", input=SPOKEN_TEXT, response_format="wav"
        ) as response:
            pieces = [piece async for piece in response.iter_bytes()]
    finally:
        await client.close()

    assert time.monotonic() - started >= 0.4
    assert len(pieces) > 1


async def test_speech_input_over_4096_characters_is_rejected(server: OpenAICompatibleServer) -> None:
    client = client_for(server)
    try:
        with pytest.raises(openai.BadRequestError) as raised:
            await client.audio.speech.create(model=SPEECH_MODEL, voice="coral", input="Breathe. " * 500)
    finally:
        await client.close()

    assert raised.value.param == "input"
    assert "4096" in raised.value.message


async def test_wrong_api_key_is_refused_with_the_key_masked(server: OpenAICompatibleServer) -> None:
    client = client_for(server, api_key="sk-wrong-stillpoint")
    try:
        with pytest.raises(openai.AuthenticationError) as raised:
            await client.models.list()
    finally:
        await client.close()

    assert raised.value.code == "invalid_api_key"
    assert "sk-wr****oint" in raised.value.message
    assert "sk-wrong-stillpoint" not in raised.value.message


async def test_unknown_model_is_not_found(server: OpenAICompatibleServer) -> None:
    client = client_for(server)
    try:
        with pytest.raises(openai.NotFoundError) as raised:
            await client.chat.completions.create(
                model="gpt-nonexistent", messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        await client.close()

    assert isinstance(raised.value.body, dict)
    assert raised.value.body["code"] == "model_not_found"
    assert "`gpt-nonexistent`" in raised.value.message


async def test_retired_model_is_not_found(server: OpenAICompatibleServer) -> None:
    client = client_for(server)
    try:
        with pytest.raises(openai.NotFoundError) as raised:
            await client.images.generate(model="gpt-image-1", prompt="a quiet lake")
    finally:
        await client.close()

    assert raised.value.code == "model_not_found"


async def test_rate_limit_fault_raises_without_retries(server: OpenAICompatibleServer) -> None:
    server.configure(ServerConfig(faults={"models": (FaultSpec("status", 429),)}))
    client = client_for(server)
    try:
        with pytest.raises(openai.RateLimitError) as raised:
            await client.models.list()
    finally:
        await client.close()

    assert raised.value.code == "rate_limit_exceeded"
    assert raised.value.response.headers["retry-after-ms"] == "10"


async def test_rate_limit_fault_is_retried_by_the_sdk(server: OpenAICompatibleServer) -> None:
    server.configure(ServerConfig(faults={"chat": (FaultSpec("status", 429, count=1),)}))
    client = client_for(server, max_retries=2)
    try:
        completion = await client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": CONVERSATION}]
        )
    finally:
        await client.close()

    assert completion.choices[0].message.content
    assert [request.status for request in server.received_requests()] == [429, 200]


@pytest.mark.parametrize("status", [500, 503])
async def test_server_error_fault_raises_internal_server_error(
    server: OpenAICompatibleServer, status: int
) -> None:
    server.configure(ServerConfig(faults={"models": (FaultSpec("status", status),)}))
    client = client_for(server)
    try:
        with pytest.raises(openai.InternalServerError) as raised:
            await client.models.list()
    finally:
        await client.close()

    assert raised.value.status_code == status
    assert isinstance(raised.value.body, dict) and raised.value.body["type"] == "server_error"


async def test_faults_are_consumed_in_order_then_requests_succeed(server: OpenAICompatibleServer) -> None:
    faults = (FaultSpec("status", 500), FaultSpec("status", 401, count=2))
    server.configure(ServerConfig(faults={"models": faults}))
    client = client_for(server)
    try:
        with pytest.raises(openai.InternalServerError):
            await client.models.list()
        for _ in range(2):
            with pytest.raises(openai.AuthenticationError):
                await client.models.list()
        await client.models.list()
    finally:
        await client.close()

    assert [request.status for request in server.received_requests()] == [500, 401, 401, 200]


async def test_hang_fault_times_out_and_stop_does_not_wait_for_it(server: OpenAICompatibleServer) -> None:
    server.configure(ServerConfig(faults={"images": (FaultSpec("hang"),)}))
    client = client_for(server, timeout_seconds=0.5)
    try:
        with pytest.raises(openai.APITimeoutError):
            await client.images.generate(model=IMAGE_MODEL, prompt="a quiet lake")
    finally:
        await client.close()

    started = time.monotonic()
    await asyncio.to_thread(server.stop)
    assert time.monotonic() - started < 5.0
    assert [request.status for request in server.received_requests()] == [None]


async def test_fixed_latency_delays_the_answer(server: OpenAICompatibleServer) -> None:
    server.configure(ServerConfig(latency={"models": LatencySpec(fixed_seconds=0.3)}))
    client = client_for(server)
    started = time.monotonic()
    try:
        await client.models.list()
    finally:
        await client.close()

    assert time.monotonic() - started >= 0.3


async def test_control_endpoint_reconfigures_the_server_from_another_client(
    server: OpenAICompatibleServer,
) -> None:
    config = {"api_key": "sk-other-key-0000", "chat_text": "Rest here. [pause 3s]"}
    status, _ = await asyncio.to_thread(http, "POST", server.origin + "/_control/config", config)
    assert status == 200

    old_client = client_for(server)
    new_client = client_for(server, api_key="sk-other-key-0000")
    try:
        with pytest.raises(openai.AuthenticationError):
            await old_client.models.list()
        completion = await new_client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": CONVERSATION}]
        )
    finally:
        await old_client.close()
        await new_client.close()

    assert completion.choices[0].message.content == "Rest here. [pause 3s]"
    status, body = await asyncio.to_thread(http, "GET", server.origin + "/_control/requests")
    assert status == 200
    assert json.loads(body) == [
        {"method": "GET", "path": "/v1/models", "model": None, "status": 401},
        {
            "method": "POST",
            "path": "/v1/chat/completions",
            "model": CHAT_MODEL,
            "stream": False,
            "status": 200,
        },
    ]
    assert b"sk-other-key" not in body


async def test_control_endpoint_refuses_an_invalid_config(server: OpenAICompatibleServer) -> None:
    bad = {"faults": {"chat": [{"kind": "status", "status": 418}]}}
    status, body = await asyncio.to_thread(http, "POST", server.origin + "/_control/config", bad)

    assert status == 400
    assert "418" in json.loads(body)["error"]["message"]
    assert server.config == ServerConfig()


def test_config_round_trips_through_json() -> None:
    config = ServerConfig(
        api_key="sk-round-trip",
        models=(ModelSpec("compat-image"), ModelSpec("old-model", date(2026, 1, 31))),
        latency={
            "chat": LatencySpec(min_seconds=0.1, max_seconds=0.2, seed=7),
            "speech": LatencySpec(fixed_seconds=30.0, scale_by_characters=2600),
        },
        faults={
            "images": (FaultSpec("status", 503, count=2), FaultSpec("hang")),
            "realtime": (FaultSpec("drop", after=2), FaultSpec("reword", count=3)),
        },
        chat_text="Breathe.",
        paints_once_per_size=True,
    )

    assert ServerConfig.from_json(config.to_json()) == config
    assert ServerConfig.from_json("{}") == ServerConfig()


@pytest.mark.parametrize(
    "text",
    [
        '{"latencies": {}}',
        '{"latency": {"chat": {"fixed_seconds": 1, "min_seconds": 0, "max_seconds": 1}}}',
        '{"latency": {"video": {"fixed_seconds": 1}}}',
        '{"faults": {"chat": [{"kind": "explode"}]}}',
        '{"models": [{"id": "m", "shutdown_date": "next week"}]}',
        # A Realtime response's fault on an endpoint without responses.
        '{"faults": {"speech": [{"kind": "drop"}]}}',
        '{"faults": {"realtime": [{"kind": "reword", "after": -1}]}}',
        '{"paints_once_per_size": "yes"}',
    ],
)
def test_config_with_a_mistake_is_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        ServerConfig.from_json(text)


def test_process_mode_prints_its_address_and_serves() -> None:
    config = json.dumps({"api_key": "sk-process-key"})
    command = [sys.executable, "-m", "tests.servers.openai_compatible", "--host", "127.0.0.1", "--port", "0"]
    process = subprocess.Popen(
        [*command, "--config", config],
        cwd=REPOSITORY_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    # A process that never prints must not hang the test run.
    watchdog = threading.Timer(20.0, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        origin = line.removeprefix("listening on ")
        status, body = http("GET", origin + "/v1/models", api_key="sk-process-key")
        assert status == 200
        assert CHAT_MODEL in {model["id"] for model in json.loads(body)["data"]}
    finally:
        watchdog.cancel()
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    assert process.returncode == 0


# The Realtime WebSocket -------------------------------------------------------------------------------------


def spoken_sentence(text: str) -> ResponseCreateEventParam:
    """An out-of-band response that reads `text`, as the Realtime narrator asks for one."""
    return {
        "type": "response.create",
        "response": {
            "conversation": "none",
            "output_modalities": ["audio"],
            "metadata": {"sentence": "1"},
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}],
        },
    }


async def events_until_done(connection: AsyncRealtimeConnection) -> list[RealtimeServerEvent]:
    """Every event up to and including `response.done` (or an `error`)."""
    events: list[RealtimeServerEvent] = []
    async with asyncio.timeout(30):
        while not events or events[-1].type not in ("response.done", "error"):
            events.append(await connection.recv())
    return events


async def read_forever(connection: AsyncRealtimeConnection, into: list[RealtimeServerEvent]) -> None:
    async with asyncio.timeout(30):
        while True:
            into.append(await connection.recv())


def audio_of(events: list[RealtimeServerEvent]) -> bytes:
    return b"".join(base64.b64decode(e.delta) for e in events if isinstance(e, ResponseAudioDeltaEvent))


async def test_realtime_reads_an_out_of_band_sentence_as_real_speech_with_its_transcript(
    server: OpenAICompatibleServer,
) -> None:
    client = client_for(server)
    try:
        async with client.realtime.connect(model=REALTIME_MODEL) as connection:
            created = await connection.recv()
            await connection.session.update(
                session={
                    "type": "realtime",
                    "output_modalities": ["audio"],
                    "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24_000}, "voice": "sage"}},
                }
            )
            updated = await connection.recv()
            await connection.send(spoken_sentence(SPOKEN_TEXT))
            events = await events_until_done(connection)
    finally:
        await client.close()

    assert isinstance(created, SessionCreatedEvent)
    assert isinstance(updated, SessionUpdatedEvent)
    assert isinstance(updated.session, RealtimeSessionCreateRequest)
    assert (
        updated.session.audio
        and updated.session.audio.output
        and updated.session.audio.output.voice == "sage"
    )
    done = events[-1]
    assert isinstance(done, ResponseDoneEvent) and done.response.status == "completed"
    assert done.response.metadata == {"sentence": "1"}
    assert done.response.conversation_id is None  # out of band
    transcripts = [e.transcript for e in events if isinstance(e, ResponseAudioTranscriptDoneEvent)]
    assert transcripts == [SPOKEN_TEXT]
    pcm = audio_of(events)
    # Real speech at 24 kHz: about as long as espeak-ng says the words, and not silence.
    expected = await asyncio.to_thread(_espeak_seconds, SPOKEN_TEXT)
    assert abs(len(pcm) / 2 / 24_000 - expected) < 0.1
    assert max(abs(sample) for sample in memoryview(pcm).cast("h")) > 3000
    assert len([e for e in events if isinstance(e, ResponseAudioDeltaEvent)]) > 10
    assert [(e.connection, e.type) for e in server.realtime_events()] == [
        (1, "session.update"),
        (1, "response.create"),
    ]
    assert [request.path for request in server.received_requests()] == ["/v1/realtime"]
    assert server.received_requests()[0].model == REALTIME_MODEL


def _espeak_seconds(text: str) -> float:
    narrator = EspeakNarrator()
    try:
        return asyncio.run(narrator.narrate(text)).duration_seconds
    finally:
        narrator.close()


async def test_realtime_answers_from_the_conversation_when_no_input_is_given(
    server: OpenAICompatibleServer,
) -> None:
    client = client_for(server)
    try:
        async with client.realtime.connect(model=REALTIME_MODEL) as connection:
            await connection.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Rest now."}],
                }
            )
            await connection.response.create()
            events = await events_until_done(connection)
    finally:
        await client.close()

    kinds = [event.type for event in events]
    assert kinds[:3] == ["session.created", "conversation.item.added", "conversation.item.done"]
    assert [e.transcript for e in events if isinstance(e, ResponseAudioTranscriptDoneEvent)] == ["Rest now."]
    done = events[-1]
    assert isinstance(done, ResponseDoneEvent) and done.response.conversation_id  # in the conversation


async def test_realtime_latency_spreads_the_audio_over_the_configured_time(
    server: OpenAICompatibleServer,
) -> None:
    server.configure(ServerConfig(latency={"realtime": LatencySpec(fixed_seconds=0.6)}))
    client = client_for(server)
    try:
        async with client.realtime.connect(model=REALTIME_MODEL) as connection:
            await connection.recv()
            # Timed from before the send: the server's clock starts when the request reaches it, which under
            # load can be before `send` returns here (CI measured 0.5898 s when timed from after it).
            started = time.monotonic()
            await connection.send(spoken_sentence("Breathe in slowly."))
            first_audio: float | None = None
            while (event := await connection.recv()).type != "response.done":
                if first_audio is None and isinstance(event, ResponseAudioDeltaEvent):
                    first_audio = time.monotonic() - started
            finished = time.monotonic() - started
    finally:
        await client.close()

    assert first_audio is not None and first_audio < 0.3
    # asyncio's timers may fire up to a clock tick early (CI measured 0.5995 s): 10 ms of slack, no more.
    assert 0.59 <= finished < 2.0


async def test_realtime_faults_drop_the_socket_send_an_error_rate_limit_and_reword(
    server: OpenAICompatibleServer,
) -> None:
    faults = (FaultSpec("error"), FaultSpec("rate_limit"), FaultSpec("reword"), FaultSpec("drop"))
    server.configure(ServerConfig(faults={"realtime": faults}))
    client = client_for(server)
    try:
        async with client.realtime.connect(model=REALTIME_MODEL) as connection:
            await connection.recv()
            await connection.send(spoken_sentence(SPOKEN_TEXT))
            errored = await events_until_done(connection)
            await connection.send(spoken_sentence(SPOKEN_TEXT))
            limited = await events_until_done(connection)
            await connection.send(spoken_sentence(SPOKEN_TEXT))
            reworded = await events_until_done(connection)
            await connection.send(spoken_sentence(SPOKEN_TEXT))
            cut: list[RealtimeServerEvent] = []
            # An `error` never raises in the SDK; a socket that drops without a closing handshake does.
            with pytest.raises(ConnectionClosedError):
                await read_forever(connection, cut)
    finally:
        await client.close()

    error = errored[-1]
    assert isinstance(error, RealtimeErrorEvent) and error.error.type == "server_error"
    assert len(errored) == 1  # no response was made
    done = limited[-1]
    assert isinstance(done, ResponseDoneEvent) and done.response.status == "failed"
    assert done.response.status_details and done.response.status_details.error
    assert done.response.status_details.error.code == "rate_limit_exceeded"
    transcript = next(e.transcript for e in reworded if isinstance(e, ResponseAudioTranscriptDoneEvent))
    assert transcript != SPOKEN_TEXT and transcript.startswith("Now, ")
    assert audio_of(reworded)
    # Part of the audio came, the response never finished.
    assert audio_of(cut) and not any(e.type == "response.done" for e in cut)


async def test_realtime_fault_after_lets_earlier_responses_through(server: OpenAICompatibleServer) -> None:
    server.configure(ServerConfig(faults={"realtime": (FaultSpec("reword", after=1),)}))
    client = client_for(server)
    transcripts = []
    try:
        async with client.realtime.connect(model=REALTIME_MODEL) as connection:
            for _ in range(3):
                await connection.send(spoken_sentence("Rest now."))
                events = await events_until_done(connection)
                transcripts += [
                    e.transcript for e in events if isinstance(e, ResponseAudioTranscriptDoneEvent)
                ]
    finally:
        await client.close()

    assert transcripts == ["Rest now.", "Now, Rest.", "Rest now."]


@pytest.mark.parametrize("status", [401, 429, 503])
async def test_realtime_handshake_faults_answer_with_their_http_status(
    server: OpenAICompatibleServer, status: int
) -> None:
    server.configure(ServerConfig(faults={"realtime": (FaultSpec("status", status),)}))
    client = client_for(server)
    try:
        with pytest.raises(InvalidStatus) as raised:
            await client.realtime.connect(model=REALTIME_MODEL).enter()
    finally:
        await client.close()

    assert raised.value.response.status_code == status


async def test_realtime_refuses_a_wrong_key_at_the_handshake(server: OpenAICompatibleServer) -> None:
    client = client_for(server, api_key="sk-wrong-stillpoint")
    try:
        with pytest.raises(InvalidStatus) as raised:
            await client.realtime.connect(model=REALTIME_MODEL).enter()
    finally:
        await client.close()

    assert raised.value.response.status_code == 401
    assert json.loads(raised.value.response.body)["error"]["code"] == "invalid_api_key"


async def test_realtime_refuses_an_unknown_model_with_an_error_event(server: OpenAICompatibleServer) -> None:
    client = client_for(server)
    try:
        async with client.realtime.connect(model="gpt-realtime-nonexistent") as connection:
            event = await connection.recv()
            with pytest.raises(ConnectionClosed):
                await connection.recv()
    finally:
        await client.close()

    assert isinstance(event, RealtimeErrorEvent)
    assert event.error.code == "model_not_found"


async def test_realtime_refuses_a_voice_it_does_not_have(server: OpenAICompatibleServer) -> None:
    client = client_for(server)
    try:
        async with client.realtime.connect(model=REALTIME_MODEL) as connection:
            await connection.recv()
            await connection.session.update(
                session={"type": "realtime", "audio": {"output": {"voice": "fable"}}}
            )
            event = await connection.recv()
    finally:
        await client.close()

    assert isinstance(event, RealtimeErrorEvent)
    assert event.error.param == "session.audio.output.voice"
