"""TLS settings: all or nothing, and a public port that speaks TLS refuses plain text."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services import serving
from services.certificates import make_internal_certificates
from services.environment import ConfigError, Environment
from services.tls import PublicTls, read_internal_tls, read_public_tls


def test_internal_tls_is_all_three_files_or_none(tmp_path: Path) -> None:
    made = make_internal_certificates(tmp_path / "certs")
    gateway = made.issued["gateway"]
    assert read_internal_tls(Environment({})) is None
    with pytest.raises(ConfigError, match="STILLPOINT_INTERNAL_KEY_FILE"):
        read_internal_tls(
            Environment(
                {
                    "STILLPOINT_INTERNAL_CA_FILE": str(made.ca_file),
                    "STILLPOINT_INTERNAL_CERT_FILE": str(gateway.certificate_file),
                }
            )
        )
    with pytest.raises(ConfigError, match="STILLPOINT_TLS_KEY_FILE"):
        read_public_tls(Environment({"STILLPOINT_TLS_CERT_FILE": str(gateway.certificate_file)}))
    with pytest.raises(ConfigError, match="is not a readable file"):
        read_public_tls(
            Environment(
                {"STILLPOINT_TLS_CERT_FILE": str(tmp_path / "nope.pem"), "STILLPOINT_TLS_KEY_FILE": "x"}
            )
        )
    assert (gateway.key_file.stat().st_mode & 0o077) == 0  # private keys are the owner's alone


async def test_a_public_port_with_tls_answers_tls_and_refuses_plain_text(tmp_path: Path) -> None:
    made = make_internal_certificates(tmp_path / "certs")
    issued = made.issued["gateway"]
    running = await serving.start_server(
        service_names=[],
        register=lambda server: None,
        address="127.0.0.1:0",
        credentials=serving.public_server_credentials(PublicTls(issued.certificate_file, issued.key_file)),
    )
    try:
        trust = grpc.ssl_channel_credentials(root_certificates=made.ca_file.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{running.port}", trust) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.stop(0)
