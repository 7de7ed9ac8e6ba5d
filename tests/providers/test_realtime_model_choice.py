"""Which API speaks (the model's name decides, Realtime by default) and the start-up warning about the speech
endpoint's models, which shut down on 2027-01-06."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import openai
import pytest
from prometheus_client import REGISTRY

from services.environment import ConfigError, Environment
from services.media.config import DEFAULT_SPEECH_MODEL, MediaConfig, SpeechApi, speech_api_for
from services.openai_api import ConfiguredModel, OpenAISettings, check_models, make_client
from tests.servers.openai_compatible import DEFAULT_API_KEY, ModelSpec, OpenAICompatibleServer, ServerConfig

VARIABLE = "STILLPOINT_SPEECH_MODEL"


def media_config(tmp_path: Path, **variables: str) -> MediaConfig:
    return MediaConfig.from_environment(Environment(variables), var_root=tmp_path)


def test_the_default_speech_model_is_the_realtime_one(tmp_path: Path) -> None:
    config = media_config(tmp_path)
    assert config.speech_model == ConfiguredModel("gpt-realtime-2.1-mini", VARIABLE)
    assert DEFAULT_SPEECH_MODEL == "gpt-realtime-2.1-mini"
    assert config.speech_api is SpeechApi.REALTIME


@pytest.mark.parametrize(
    ("model", "api"),
    [
        ("tts-1", SpeechApi.SPEECH_ENDPOINT),
        ("tts-1-hd", SpeechApi.SPEECH_ENDPOINT),
        ("tts-1-hd-1106", SpeechApi.SPEECH_ENDPOINT),
        ("gpt-4o-mini-tts", SpeechApi.SPEECH_ENDPOINT),
        ("gpt-4o-mini-tts-2025-12-15", SpeechApi.SPEECH_ENDPOINT),
        ("gpt-realtime-2.1-mini", SpeechApi.REALTIME),
        ("gpt-realtime", SpeechApi.REALTIME),
        ("gpt-4o-mini-realtime-preview", SpeechApi.REALTIME),
    ],
)
def test_the_model_name_chooses_the_api(tmp_path: Path, model: str, api: SpeechApi) -> None:
    assert speech_api_for(ConfiguredModel(model, VARIABLE)) is api
    config = media_config(
        tmp_path, STILLPOINT_SPEECH_PROVIDER="openai", OPENAI_API_KEY="sk-test", STILLPOINT_SPEECH_MODEL=model
    )
    assert config.speech_api is api


@pytest.mark.parametrize("model", ["gpt-5.6-terra", "tts-2", "whisper-1"])
def test_a_model_of_neither_api_fails_the_start_naming_the_variable(tmp_path: Path, model: str) -> None:
    with pytest.raises(ConfigError, match=f"{VARIABLE}='{model}'"):
        media_config(tmp_path, STILLPOINT_SPEECH_MODEL=model)


@pytest.fixture
def undated_server() -> Iterator[OpenAICompatibleServer]:
    """A compatible server whose listing gives no model a shutdown date."""
    models = tuple(ModelSpec(name) for name in ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", DEFAULT_SPEECH_MODEL))
    with OpenAICompatibleServer(ServerConfig(models=models)) as server:
        yield server


@pytest.fixture
async def client(undated_server: OpenAICompatibleServer) -> AsyncIterator[openai.AsyncOpenAI]:
    made = make_client(OpenAISettings(DEFAULT_API_KEY, undated_server.base_url, max_retries=0))
    yield made
    await made.close()


@pytest.mark.parametrize("model", ["tts-1", "tts-1-hd", "gpt-4o-mini-tts"])
async def test_speech_endpoint_models_are_warned_about_with_their_announced_shutdown(
    client: openai.AsyncOpenAI, model: str
) -> None:
    speech = ConfiguredModel(model, VARIABLE)
    warnings = await check_models(client, [speech], today=date(2026, 12, 20))
    assert warnings == [f"{VARIABLE}={model} retires on 2027-01-06: choose a replacement"]
    # And the day is exported for the alert that fires before it (deploy/observability/alerts.yaml).
    shutdown = REGISTRY.get_sample_value(
        "stillpoint_model_shutdown_timestamp_seconds", {"model": model, "variable": VARIABLE}
    )
    assert shutdown == datetime(2027, 1, 6, tzinfo=UTC).timestamp()
    # Not yet within the window a month and more before.
    assert await check_models(client, [speech], today=date(2026, 11, 21)) == []
    assert await check_models(client, [speech], today=date(2027, 1, 7)) == [
        f"{VARIABLE}={model} was retired on 2027-01-06: choose a replacement"
    ]


async def test_the_realtime_model_draws_no_warning(client: openai.AsyncOpenAI) -> None:
    realtime = ConfiguredModel(DEFAULT_SPEECH_MODEL, VARIABLE)
    assert await check_models(client, [realtime], today=date(2026, 12, 20)) == []
