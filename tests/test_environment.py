"""Configuration is read once and fails fast, naming the variable."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from services.content.config import ContentConfig
from services.environment import ConfigError, Environment
from services.gateway.config import GatewayConfig
from services.media.config import MediaConfig
from services.serving import SecretRedactor


def test_defaults_are_the_embedded_offline_ones(tmp_path: Path) -> None:
    config = ContentConfig.from_environment(Environment({}), var_root=tmp_path)
    assert config.port == 50052
    assert config.database_url.startswith("sqlite+aiosqlite:///")
    assert config.cache_ttl_seconds == 3600
    # Only the gateway calls the internal services: they listen on loopback unless told otherwise.
    assert config.bind_host == "127.0.0.1"
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
        ("STILLPOINT_PAGE_TOKEN_SECRET", "too-short-to-be-a-key"),
    ],
)
def test_a_bad_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        GatewayConfig.from_environment(Environment({variable: value}))


@pytest.mark.parametrize("value", ["every interface", "10.0.0.1:50052", "http://0.0.0.0"])
def test_a_bad_bind_host_names_its_variable(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="STILLPOINT_CONTENT_BIND_HOST"):
        ContentConfig.from_environment(
            Environment({"STILLPOINT_CONTENT_BIND_HOST": value}), var_root=tmp_path
        )
    accepted = ContentConfig.from_environment(
        Environment({"STILLPOINT_CONTENT_BIND_HOST": "0.0.0.0"}), var_root=tmp_path
    )
    assert accepted.bind_host == "0.0.0.0"


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1:50053",
        "media:50053",
        "[::1]:50053",
        "dns:///media-pool:50053",
        "ipv4:127.0.0.1:50053",
        "ipv4:127.0.0.1:50053,127.0.0.1:50063",
        "ipv6:[::1]:50053,[::1]:50063",
    ],
)
def test_a_backend_address_may_name_one_server_or_every_replica(target: str) -> None:
    config = GatewayConfig.from_environment(Environment({"STILLPOINT_MEDIA_ADDRESS": target}))
    assert config.media_address == target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("127.0.0.1", "is not host:port"),
        ("127.0.0.1:0", "is not host:port"),
        ("127.0.0.1:70000", "is not host:port"),
        ("media:50053,media:50063", "or a list of replicas \\(such as ipv4:"),
        ("unix:/run/media.sock", "is not host:port"),
        ("ipv4:", "is not a list of ipv4 addresses with ports"),
        ("ipv4:127.0.0.1:50053,", "is not a list of ipv4 addresses with ports"),
        ("ipv4:127.0.0.1:50053,127.0.0.1", "is not a list of ipv4 addresses with ports"),
        ("ipv4:media:50053", "is not a list of ipv4 addresses with ports"),
        ("ipv4:300.0.0.1:50053", "is not a list of ipv4 addresses with ports"),
        ("ipv6:::1:50053", "is not a list of ipv6 addresses with ports, such as ipv6:\\[::1\\]"),
    ],
)
def test_a_malformed_backend_address_names_its_variable_and_the_forms_it_takes(
    target: str, expected: str
) -> None:
    with pytest.raises(ConfigError, match=f"^STILLPOINT_MEDIA_ADDRESS=.* {expected}"):
        GatewayConfig.from_environment(Environment({"STILLPOINT_MEDIA_ADDRESS": target}))


def test_flags_accept_the_usual_spellings() -> None:
    environment = Environment({"A": "yes", "B": "off", "C": "maybe"})
    assert environment.flag("A", False) is True
    assert environment.flag("B", True) is False
    with pytest.raises(ConfigError, match="C"):
        environment.flag("C", True)


def test_an_openai_provider_without_a_key_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        ContentConfig.from_environment(
            Environment({"STILLPOINT_TRANSCRIPT_PROVIDER": "openai"}), var_root=tmp_path
        )
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        MediaConfig.from_environment(Environment({"STILLPOINT_SPEECH_PROVIDER": "openai"}), var_root=tmp_path)


def test_openai_settings_never_show_the_key(tmp_path: Path) -> None:
    key = "sk-proj-NeverPrintMe0123456789"
    config = ContentConfig.from_environment(
        Environment({"STILLPOINT_IMAGE_PROVIDER": "openai", "OPENAI_API_KEY": key}), var_root=tmp_path
    )
    assert config.openai is not None
    assert config.openai.api_key == key
    assert key not in repr(config)
    assert config.image_model.name == "gpt-image-2.5-flare"
    assert config.transcript_provider == "offline"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STILLPOINT_SPEECH_FORMAT", "ogg"),
        ("STILLPOINT_SPEECH_PROVIDER", "elevenlabs"),
        ("STILLPOINT_SPEECH_VOICE", "sage; rm -rf"),
    ],
)
def test_bad_speech_settings_name_their_variable(tmp_path: Path, variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        MediaConfig.from_environment(Environment({variable: value}), var_root=tmp_path)


def test_secrets_are_redacted_from_every_log_record() -> None:
    key = "sk-proj-RedactMe0123456789"
    record = logging.LogRecord(
        "openai", logging.DEBUG, __file__, 1, "headers: %s", ({"Authorization": key},), None
    )
    assert SecretRedactor([key]).filter(record)
    assert key not in record.getMessage()
    assert "***" in record.getMessage()


def test_redis_url_is_checked_alike_by_every_service_that_reads_it(tmp_path: Path) -> None:
    """Property: content and gateway share REDIS_URL and reject the same malformed value, naming it."""
    assert Environment({}).redis_url("REDIS_URL") is None
    assert Environment({"REDIS_URL": "redis://r:6379/0"}).redis_url("REDIS_URL") == "redis://r:6379/0"
    malformed = Environment({"REDIS_URL": "http://r:6379"})
    with pytest.raises(ConfigError, match="REDIS_URL must start with redis://"):
        ContentConfig.from_environment(malformed, var_root=tmp_path)
    with pytest.raises(ConfigError, match="REDIS_URL must start with redis://"):
        GatewayConfig.from_environment(malformed)


def test_every_service_reads_the_log_format_alike_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    json_logs = Environment({"STILLPOINT_LOG_FORMAT": "JSON"})
    assert ContentConfig.from_environment(json_logs, var_root=tmp_path).log_format == "json"
    assert MediaConfig.from_environment(json_logs, var_root=tmp_path).log_format == "json"
    assert GatewayConfig.from_environment(json_logs).log_format == "json"
    assert GatewayConfig.from_environment(Environment({})).log_format == "text"
    with pytest.raises(ConfigError, match="STILLPOINT_LOG_FORMAT"):
        GatewayConfig.from_environment(Environment({"STILLPOINT_LOG_FORMAT": "xml"}))
