"""Internal calls carry the client's deadline: content hears how long the client is willing to wait."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from scripts.stack import free_port
from services import serving
from services.cli import gateway_channel
from services.gateway.api_keys import ApiKeyStore
from services.gateway.authentication import Authenticator
from services.gateway.backends import BOOKKEEPING_TIMEOUT_SECONDS, ContentClient, MediaClient
from services.gateway.jobs import MeditationJobs
from services.gateway.jobs.store import JobStore
from services.gateway.pipeline import MeditationPipeline, StageTimeouts
from services.gateway.servicer import AuthenticationInterceptor, GatewayServicer
from stillpoint.content.v2 import content_service_pb2 as content_pb
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.conftest import GATEWAY_SERVICE

CONTENT_SERVICE = content_pb.DESCRIPTOR.services_by_name["ContentService"].full_name


class _RecordingContent:
    """GetConversation alone: answers, and remembers how much time the caller gave it."""

    def __init__(self) -> None:
        self.remaining_seconds: list[float | None] = []

    async def get_conversation(
        self, request: content_pb.GetConversationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> content_pb.GetConversationResponse:
        self.remaining_seconds.append(context.time_remaining())
        return content_pb.GetConversationResponse(conversation=content_pb.Conversation(name=request.name))

    def register(self, server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            self.get_conversation,
            request_deserializer=content_pb.GetConversationRequest.FromString,
            response_serializer=content_pb.GetConversationResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(CONTENT_SERVICE, {"GetConversation": handler}),)
        )


@pytest.fixture
async def recording(
    job_store: JobStore, api_keys: ApiKeyStore
) -> AsyncIterator[tuple[_RecordingContent, gateway_grpc.GatewayServiceStub]]:
    content_servicer = _RecordingContent()
    content_server = await serving.start_server(
        service_names=[CONTENT_SERVICE],
        register=content_servicer.register,
        address="127.0.0.1:0",
    )
    timeouts = StageTimeouts()
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{content_server.port}") as content_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as media_channel,
    ):
        content = ContentClient(content_channel, timeouts)
        jobs = MeditationJobs(
            job_store, content, MeditationPipeline(content, MediaClient(media_channel, timeouts), timeouts)
        )
        gateway_server = await serving.start_server(
            service_names=[GATEWAY_SERVICE],
            register=lambda server: gateway_grpc.add_GatewayServiceServicer_to_server(
                GatewayServicer(content, jobs), server
            ),
            address="127.0.0.1:0",
            interceptors=[AuthenticationInterceptor(Authenticator(api_keys=api_keys))],
        )
        key = (await api_keys.create("tester")).key
        async with gateway_channel(f"127.0.0.1:{gateway_server.port}", key) as channel:
            yield content_servicer, gateway_grpc.GatewayServiceStub(channel)
        await gateway_server.stop(0)
        await jobs.close()
    await content_server.stop(0)


async def test_an_internal_call_takes_the_clients_deadline_when_it_is_shorter(
    recording: tuple[_RecordingContent, gateway_grpc.GatewayServiceStub],
) -> None:
    """Property: the content call made for a client that waits 2 s is given at most 2 s, not the gateway's
    own 10 s budget; without a client deadline it gets the budget."""
    content, gateway = recording
    request = gateway_pb.GetConversationRequest(name="conversations/0123456789abcdef")
    await gateway.GetConversation(request, timeout=2)
    await gateway.GetConversation(request)
    with_deadline, without_deadline = content.remaining_seconds
    assert with_deadline is not None
    # gRPC rounds the timeout it sends up a little: allow for that, not for the gap between 2 s and 10 s.
    assert 0 < with_deadline <= 2.2
    assert without_deadline is not None
    assert 5 < without_deadline <= BOOKKEEPING_TIMEOUT_SECONDS + 0.5
