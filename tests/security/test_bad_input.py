"""Bad text and values are INVALID_ARGUMENT before anything is stored, on SQLite and on PostgreSQL alike."""

from __future__ import annotations

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
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway_stub.CreateConversation(
            gateway_pb.CreateConversationRequest(messages=[message], request_id=f"bad-{field}")
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (raised.value.details() or "")
    # The request id was never used: a good request under it is stored as a new conversation.
    good = gateway_pb.CreateConversationRequest(
        messages=[gateway_pb.Message(role=USER, text="A calm evening.")], request_id=f"bad-{field}"
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
