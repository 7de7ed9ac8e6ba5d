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
