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
from PIL import Image

from services.content.script_composer import compose_meditation
from services.media.speech import EspeakNarrator
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
        faults={"images": (FaultSpec("status", 503, count=2), FaultSpec("hang"))},
        chat_text="Breathe.",
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
