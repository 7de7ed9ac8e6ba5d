"""Tests for the content service's crisis help text setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.content.config import ContentConfig
from services.content.spoken_safety import DEFAULT_CRISIS_RESOURCE_TEXT
from services.environment import ConfigError, Environment


def test_the_help_text_defaults_to_one_that_names_no_country(tmp_path: Path) -> None:
    config = ContentConfig.from_environment(Environment({}), var_root=tmp_path)

    assert config.crisis_resource_text == DEFAULT_CRISIS_RESOURCE_TEXT


def test_the_configured_help_text_is_used_with_its_spaces_collapsed(tmp_path: Path) -> None:
    text = "Call the Samaritans free on 116 123,\n  day or night."

    config = ContentConfig.from_environment(
        Environment({"STILLPOINT_CRISIS_RESOURCE_TEXT": text}), var_root=tmp_path
    )

    assert config.crisis_resource_text == "Call the Samaritans free on 116 123, day or night."


def test_help_text_with_markup_fails_at_start_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"STILLPOINT_CRISIS_RESOURCE_TEXT .*markup"):
        ContentConfig.from_environment(
            Environment({"STILLPOINT_CRISIS_RESOURCE_TEXT": "<a href=x>help</a>"}), var_root=tmp_path
        )
