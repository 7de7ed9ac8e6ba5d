"""services/metrics.py: /metrics is off unless asked for, refuses a bad port, and the helpers count what the
services record."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from scripts.stack import metrics_ports_from
from services import metrics, rpc_metrics
from services.cache.in_process import InProcessCache
from services.content.config import ContentConfig
from services.environment import ConfigError, Environment
from services.gateway.config import GatewayConfig
from services.media.config import MediaConfig
from services.openai_api import ConfiguredModel, ProviderCallError, ProviderFailureKind, classify_status


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_are_off_when_the_port_is_unset(tmp_path: Path) -> None:
    settings = metrics.read_metrics_settings(Environment({}), default_bind_host="127.0.0.1")
    assert not settings.is_enabled
    assert not ContentConfig.from_environment(Environment({}), var_root=tmp_path).metrics.is_enabled
    assert not MediaConfig.from_environment(Environment({}), var_root=tmp_path).metrics.is_enabled
    assert not GatewayConfig.from_environment(
        Environment({"STILLPOINT_VAR_DIR": str(tmp_path)})
    ).metrics.is_enabled


def test_each_service_reads_the_port_and_listens_where_its_own_port_does(tmp_path: Path) -> None:
    values = {"STILLPOINT_METRICS_PORT": "9100", "STILLPOINT_CONTENT_BIND_HOST": "0.0.0.0"}
    content = ContentConfig.from_environment(Environment(values), var_root=tmp_path).metrics
    assert (content.port, content.bind_host, content.is_enabled) == (9100, "0.0.0.0", True)
    media = MediaConfig.from_environment(Environment(values), var_root=tmp_path).metrics
    assert (media.port, media.bind_host) == (9100, "127.0.0.1")
    gateway = GatewayConfig.from_environment(Environment({**values, "STILLPOINT_VAR_DIR": str(tmp_path)}))
    assert (gateway.metrics.port, gateway.metrics.bind_host) == (9100, "0.0.0.0")
    chosen = metrics.read_metrics_settings(
        Environment({**values, "STILLPOINT_METRICS_BIND_HOST": "127.0.0.1"}), default_bind_host="0.0.0.0"
    )
    assert chosen.bind_host == "127.0.0.1"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STILLPOINT_METRICS_PORT", "ninety-one hundred"),
        ("STILLPOINT_METRICS_PORT", "70000"),
        ("STILLPOINT_METRICS_PORT", "-1"),
        ("STILLPOINT_METRICS_BIND_HOST", "http://0.0.0.0"),
    ],
)
def test_a_bad_setting_is_refused_naming_the_variable(variable: str, value: str) -> None:
    environment = Environment({"STILLPOINT_METRICS_PORT": "9100", variable: value})
    with pytest.raises(ConfigError, match=variable):
        metrics.read_metrics_settings(environment, default_bind_host="127.0.0.1")


def test_off_serves_nothing() -> None:
    with rpc_metrics.serving_metrics(metrics.METRICS_OFF) as port:
        assert port is None


def test_a_port_in_use_is_a_configuration_error_naming_the_variable() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = metrics.MetricsSettings(port=taken.getsockname()[1], bind_host="127.0.0.1")
        with (
            pytest.raises(ConfigError, match="STILLPOINT_METRICS_PORT"),
            rpc_metrics.serving_metrics(settings),
        ):
            pass


def test_the_demo_gives_each_service_its_own_port() -> None:
    assert metrics_ports_from({}) == {}
    assert metrics_ports_from({"STILLPOINT_METRICS_PORT": "9100"}) == {
        "gateway-metrics": 9100,
        "content-metrics": 9101,
        "media-metrics": 9102,
    }


async def test_a_provider_call_counts_its_outcome_and_only_a_provider_failure() -> None:
    labels = {"provider": "unit-test", "capability": "image"}
    with metrics.provider_call("unit-test", "image"):
        pass
    with pytest.raises(ProviderCallError), metrics.provider_call("unit-test", "image"):
        raise ProviderCallError(ProviderFailureKind.TIMEOUT, "slow")
    with pytest.raises(ValueError, match="a bug"), metrics.provider_call("unit-test", "image"):
        raise ValueError("a bug")
    assert _sample("stillpoint_provider_calls_total", **labels, outcome="ok") == 1
    assert _sample("stillpoint_provider_calls_total", **labels, outcome="timeout") == 1
    assert _sample("stillpoint_provider_calls_total", **labels, outcome="error") == 0


def test_an_encoder_process_that_ends_unasked_is_counted_by_how() -> None:
    before = _sample("stillpoint_media_encoder_process_ends_total", how="unanswered")
    metrics.record_encoder_process_end("unanswered")
    assert _sample("stillpoint_media_encoder_process_ends_total", how="unanswered") == before + 1


def test_a_rate_limited_call_is_told_apart_from_other_unavailability() -> None:
    labels = {"provider": "unit-test", "capability": "speech"}
    model = ConfiguredModel("a-model", "STILLPOINT_SPEECH_MODEL")
    for failure in (classify_status(429, model), classify_status(503, model), classify_status(404, model)):
        with pytest.raises(ProviderCallError), metrics.provider_call("unit-test", "speech"):
            raise failure
    assert _sample("stillpoint_provider_calls_total", **labels, outcome="rate_limited") == 1
    assert _sample("stillpoint_provider_calls_total", **labels, outcome="unavailable") == 1
    assert _sample("stillpoint_provider_calls_total", **labels, outcome="model") == 1


async def test_a_cache_counts_its_hits_and_misses_by_name() -> None:
    cache = InProcessCache(ttl_seconds=60, name="unit-test-cache")

    async def compute() -> bytes:
        return b"value"

    await cache.get_or_compute("key", compute)
    await cache.get_or_compute("key", compute)
    await cache.get_or_compute("key", compute)
    assert _sample("stillpoint_cache_requests_total", cache="unit-test-cache", result="miss") == 1
    assert _sample("stillpoint_cache_requests_total", cache="unit-test-cache", result="hit") == 2


def test_asset_labels_are_bounded() -> None:
    assert metrics.asset_kind("videos/meditations/abc/quick.mp4") == "videos"
    assert metrics.asset_kind("images/0123.png") == "images"
    # Never a value from the key's later segments, or an unknown first one.
    assert metrics.asset_kind("meditations/abc/x.mp4") == "other"
    assert metrics.asset_kind("") == "other"
