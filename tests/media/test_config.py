"""The media service's speech settings: the offline voices by name, Piper's settings checked at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.environment import ConfigError, Environment
from services.media.config import MediaConfig


def config_of(tmp_path: Path, **variables: str) -> MediaConfig:
    return MediaConfig.from_environment(Environment(variables), var_root=tmp_path)


def test_the_default_offline_voice_is_the_packaged_piper_voice_read_calmly(tmp_path: Path) -> None:
    config = config_of(tmp_path)

    assert config.speech_provider == "offline"
    assert config.piper_model_path is None
    assert config.piper_length_scale == 1.25
    assert config.piper_sentence_silence_seconds == 0.7
    assert config.piper_concurrent_syntheses == 2


@pytest.mark.parametrize("provider", ["offline", "piper", "espeak", "PIPER"])
def test_each_offline_voice_can_be_named(tmp_path: Path, provider: str) -> None:
    assert config_of(tmp_path, STILLPOINT_SPEECH_PROVIDER=provider).speech_provider == provider.lower()


def test_a_piper_voice_of_ones_own_is_read_from_its_model_and_configuration(tmp_path: Path) -> None:
    model = tmp_path / "calm.onnx"
    model.write_bytes(b"model")
    (tmp_path / "calm.onnx.json").write_text("{}")

    assert config_of(tmp_path, STILLPOINT_PIPER_MODEL=str(model)).piper_model_path == model.resolve()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STILLPOINT_PIPER_LENGTH_SCALE", "slow"),
        ("STILLPOINT_PIPER_LENGTH_SCALE", "3"),
        ("STILLPOINT_PIPER_SENTENCE_SILENCE_SECONDS", "9"),
        ("STILLPOINT_PIPER_CONCURRENT_SYNTHESES", "0"),
        ("STILLPOINT_PIPER_MODEL", "/nowhere/voice.onnx"),
    ],
)
def test_bad_piper_settings_name_their_variable(tmp_path: Path, variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        config_of(tmp_path, **{variable: value})


def test_a_model_without_its_configuration_beside_it_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "lonely.onnx"
    model.write_bytes(b"model")
    with pytest.raises(ConfigError, match="STILLPOINT_PIPER_MODEL"):
        config_of(tmp_path, STILLPOINT_PIPER_MODEL=str(model))


def test_local_storage_is_served_through_the_media_endpoint_with_a_secret_made_on_first_run(
    tmp_path: Path,
) -> None:
    endpoint = config_of(tmp_path).media_endpoint

    assert endpoint is not None
    assert (endpoint.port, endpoint.public_url, endpoint.secret) == (0, "", None)
    assert endpoint.secret_file == tmp_path / "secrets" / "media-url-secret"
    assert endpoint.link_seconds == 3600


def test_the_media_endpoint_is_told_where_clients_reach_it(tmp_path: Path) -> None:
    endpoint = config_of(
        tmp_path,
        STILLPOINT_MEDIA_HTTP_PORT="8081",
        STILLPOINT_PUBLIC_MEDIA_URL="https://stillpoint.example.com/media/",
        STILLPOINT_MEDIA_URL_SECRET="s" * 40,
        STILLPOINT_MEDIA_LINK_SECONDS="120",
    ).media_endpoint

    assert endpoint is not None
    assert endpoint.port == 8081
    assert endpoint.public_url == "https://stillpoint.example.com/media"
    assert endpoint.secret == b"s" * 40
    assert endpoint.link_seconds == 120


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"STILLPOINT_PUBLIC_MEDIA_URL": "ftp://example.com/media"}, "STILLPOINT_PUBLIC_MEDIA_URL"),
        ({"STILLPOINT_PUBLIC_MEDIA_URL": "https://example.com/media?x=1"}, "STILLPOINT_PUBLIC_MEDIA_URL"),
        ({"STILLPOINT_PUBLIC_MEDIA_URL": "/media"}, "STILLPOINT_PUBLIC_MEDIA_URL"),
        ({"STILLPOINT_MEDIA_URL_SECRET": "short"}, "STILLPOINT_MEDIA_URL_SECRET"),
        ({"STILLPOINT_MEDIA_LINK_SECONDS": "5"}, "STILLPOINT_MEDIA_LINK_SECONDS"),
        ({"STILLPOINT_MEDIA_HTTP_PORT": "70000"}, "STILLPOINT_MEDIA_HTTP_PORT"),
    ],
)
def test_a_bad_media_endpoint_setting_fails_the_start_naming_it(
    tmp_path: Path, variables: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        config_of(tmp_path, **variables)


def test_supabase_storage_signs_its_own_links_and_needs_no_endpoint(tmp_path: Path) -> None:
    config = config_of(
        tmp_path, STILLPOINT_STORAGE="supabase", SUPABASE_URL="https://x.supabase.co", SUPABASE_KEY="k"
    )

    assert config.media_endpoint is None
