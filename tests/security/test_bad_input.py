"""Bad text and values are INVALID_ARGUMENT before anything is stored, on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc

USER = gateway_pb.MESSAGE_ROLE_USER


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (gateway_pb.Message(role=USER, text="before\x00after"), "messages[0].text"),
        (gateway_pb.Message(role=USER, text="pay \u202eredivorp\u202c now"), "messages[0].text"),
        (gateway_pb.Message(role=USER, text="isolate \u2066hidden\u2069"), "messages[0].text"),
        (gateway_pb.Message(role=USER, text="bell \x07"), "messages[0].text"),
        (gateway_pb.Message(role=USER, text="\u200b\u200d \ufeff"), "messages[0].text"),
        (gateway_pb.Message(role=99, text="an unknown role"), "messages[0].role"),  # type: ignore[arg-type]
        (
            gateway_pb.Message(role=USER, text="far future", create_time=Timestamp(seconds=10**12)),
            "create_time",
        ),
    ],
    ids=["nul", "bidi override", "bidi isolate", "control", "zero-width only", "unknown role", "timestamp"],
)
async def test_bad_message_text_or_values_are_invalid_argument_and_nothing_is_stored(
    gateway_stub: gateway_grpc.GatewayServiceStub, message: gateway_pb.Message, field: str
) -> None:
    request_id = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway_stub.CreateConversation(
            gateway_pb.CreateConversationRequest(messages=[message], request_id=request_id)
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (raised.value.details() or "")
    # The request id was never used: a good request under it is stored as a new conversation.
    good = gateway_pb.CreateConversationRequest(
        messages=[gateway_pb.Message(role=USER, text="A calm evening.")], request_id=request_id
    )
    assert (await gateway_stub.CreateConversation(good)).conversation.name


async def test_tabs_newlines_and_ordinary_unicode_are_kept_as_sent(
    gateway_stub: gateway_grpc.GatewayServiceStub,
) -> None:
    text = "Line one,\tindented.\nLine two — naïve café, 日本語, emoji 🌊, right-to-left עברית."
    created = await gateway_stub.CreateConversation(
        gateway_pb.CreateConversationRequest(messages=[gateway_pb.Message(role=USER, text=text)])
    )
    assert created.conversation.messages[0].text == text


async def test_an_unknown_image_aspect_is_invalid_argument(
    gateway_stub: gateway_grpc.GatewayServiceStub,
) -> None:
    created = await gateway_stub.CreateConversation(
        gateway_pb.CreateConversationRequest(
            messages=[gateway_pb.Message(role=USER, text="The sea at dusk.")]
        )
    )
    request = gateway_pb.GenerateMeditationRequest(
        conversation=created.conversation.name,
        options=gateway_pb.MeditationOptions(image_aspect=99),  # type: ignore[arg-type]
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in gateway_stub.GenerateMeditation(request):
            pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "options.image_aspect" in (raised.value.details() or "")


NOT_UUIDS = [
    "retry-1",
    "123e4567e89b42d3a456426614174000",  # the hex digits without the hyphens
    "{123e4567-e89b-42d3-a456-426614174000}",
    "urn:uuid:123e4567-e89b-42d3-a456-426614174000",
    "123e4567-e89b-42d3-a456-426614174000\n",
    "123e4567-e89b-42d3-a456-42661417400g",
    "a" * 10_000,
]


@pytest.mark.parametrize("request_id", NOT_UUIDS, ids=lambda value: repr(value[:40]))
async def test_a_request_id_that_is_not_a_uuid_is_invalid_argument_and_nothing_is_made(
    gateway_stub: gateway_grpc.GatewayServiceStub, request_id: str
) -> None:
    """Property (AIP-155): CreateConversation and GenerateMeditation refuse a request_id that is not a UUID,
    saying what to send, before they store a conversation or start a meditation."""
    message = gateway_pb.Message(role=USER, text="A quiet morning by the harbour.")
    with pytest.raises(grpc.aio.AioRpcError) as created:
        await gateway_stub.CreateConversation(
            gateway_pb.CreateConversationRequest(messages=[message], request_id=request_id)
        )
    listed = await gateway_stub.ListConversations(gateway_pb.ListConversationsRequest())
    assert list(listed.conversations) == []
    conversation = (
        await gateway_stub.CreateConversation(gateway_pb.CreateConversationRequest(messages=[message]))
    ).conversation.name
    with pytest.raises(grpc.aio.AioRpcError) as generated:
        async for _ in gateway_stub.GenerateMeditation(
            gateway_pb.GenerateMeditationRequest(conversation=conversation, request_id=request_id)
        ):
            pass
    assert list((await gateway_stub.ListMeditations(gateway_pb.ListMeditationsRequest())).meditations) == []
    for raised in (created, generated):
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = raised.value.details() or ""
        assert details.startswith("request_id: must be a UUID such as ")
        assert request_id not in details  # never echoed: it could be megabytes


async def test_a_uuid_request_id_in_either_case_is_accepted_and_makes_retries_idempotent(
    gateway_stub: gateway_grpc.GatewayServiceStub,
) -> None:
    message = gateway_pb.Message(role=USER, text="A quiet morning by the harbour.")
    for request_id in (str(uuid.uuid4()), str(uuid.uuid4()).upper()):
        request = gateway_pb.CreateConversationRequest(messages=[message], request_id=request_id)
        first = await gateway_stub.CreateConversation(request)
        assert (await gateway_stub.CreateConversation(request)).conversation.name == first.conversation.name
