"""Configuration is read once and fails fast, naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.content.config import ContentConfig
from services.environment import ConfigError, Environment
from services.gateway.config import GatewayConfig


def test_defaults_are_the_embedded_offline_ones(tmp_path: Path) -> None:
    config = ContentConfig.from_environment(Environment({}), var_root=tmp_path)
    assert config.port == 50052
    assert config.database_url.startswith("sqlite+aiosqlite:///")
    assert config.cache_ttl_seconds == 3600
    gateway = GatewayConfig.from_environment(Environment({}))
    assert gateway.port == 50051
    assert gateway.media_address == "127.0.0.1:50053"
    assert (gateway.timeouts.transcript_seconds, gateway.timeouts.narration_seconds) == (300, 60)
    assert gateway.timeouts.video_seconds == 120


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STILLPOINT_GATEWAY_PORT", "seventy"),
        ("STILLPOINT_GATEWAY_PORT", "70000"),
        ("STILLPOINT_CONTENT_ADDRESS", "no-port"),
        ("STILLPOINT_VIDEO_TIMEOUT_SECONDS", "-1"),
        ("STILLPOINT_LOG_LEVEL", "loud"),
    ],
)
def test_a_bad_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        GatewayConfig.from_environment(Environment({variable: value}))


def test_flags_accept_the_usual_spellings() -> None:
    environment = Environment({"A": "yes", "B": "off", "C": "maybe"})
    assert environment.flag("A", False) is True
    assert environment.flag("B", True) is False
    with pytest.raises(ConfigError, match="C"):
        environment.flag("C", True)
