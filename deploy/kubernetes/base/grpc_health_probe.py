"""A Kubernetes exec probe: grpc.health.v1.Health/Check of this container's own gRPC port.

Usage: python grpc_health_probe.py PORT SERVICE [TLS_NAME]. With TLS_NAME (content and media) it speaks
mutual TLS with the container's own certificate, the files its STILLPOINT_INTERNAL_* variables name: those
ports require a client certificate from the internal CA, which the kubelet's native `grpc:` probe cannot
present. Health answers any certificate the CA signed (services/peer_identity.py). Exits 0 when SERVING.
The same probe as docker-compose.yml's, kept in a file because a Kubernetes manifest cannot share it.
"""

import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Below the probes' timeoutSeconds (5 s), so that a hung server fails here with a message.
TIMEOUT_SECONDS = 3.0


def open_channel(target: str, tls_name: str | None) -> grpc.Channel:
    if tls_name is None:
        return grpc.insecure_channel(target)

    def read(name: str) -> bytes:
        return Path(os.environ[name]).read_bytes()

    credentials = grpc.ssl_channel_credentials(
        read("STILLPOINT_INTERNAL_CA_FILE"),
        read("STILLPOINT_INTERNAL_KEY_FILE"),
        read("STILLPOINT_INTERNAL_CERT_FILE"),
    )
    # The certificates name their service (`content`, `media`), not 127.0.0.1's host name.
    return grpc.secure_channel(target, credentials, [("grpc.ssl_target_name_override", tls_name)])


def main(arguments: list[str]) -> int:
    port, service = arguments[0], arguments[1]
    tls_name = arguments[2] if len(arguments) > 2 else None
    try:
        with open_channel(f"127.0.0.1:{port}", tls_name) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_SECONDS
            )
    except grpc.RpcError as error:
        print(f"health check of {service!r} failed: {error.code().name}", file=sys.stderr)
        return 1
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(
            f"{service!r} is {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
