"""Limits answer RESOURCE_EXHAUSTED at once — never a crash, never a silent queue."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services import serving
from tests.waiting import wait_until


async def test_an_oversized_request_is_resource_exhausted() -> None:
    """Property: a request over the message limit every server shares is refused whole, before any work."""
    running = await serving.start_server(
        service_names=["example.v1.ExampleService"], register=lambda _: None, address="127.0.0.1:0"
    )
    options = [("grpc.max_send_message_length", 4 * serving.MAX_MESSAGE_BYTES)]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}", options=options) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            huge = health_pb2.HealthCheckRequest(service="a" * (serving.MAX_MESSAGE_BYTES + 1024))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await health.Check(huge, timeout=10)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await running.stop(0)


async def test_more_concurrent_rpcs_than_allowed_are_resource_exhausted() -> None:
    """Property: past maximum_concurrent_rpcs a call is refused at once, and the server keeps serving."""
    running = await serving.start_server(
        service_names=["example.v1.ExampleService"],
        register=lambda _: None,
        address="127.0.0.1:0",
        maximum_concurrent_rpcs=2,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            # Health watches stay open: two of them fill the server.
            watches = [health.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(2)]
            for watch in watches:
                await anext(aiter(watch))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for watch in watches:
                watch.cancel()

            # The server frees a cancelled watch's slot on its own loop: poll until a call is admitted.
            async def is_admitted() -> bool:
                try:
                    answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                except grpc.aio.AioRpcError as error:
                    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        return False
                    raise
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
                return True

            await wait_until(is_admitted, what="a call to be admitted once the watches ended")
    finally:
        await running.stop(0)
