"""GatewayService through a real in-process server wired to real content and media servers."""

from __future__ import annotations

import uuid

import grpc
import pytest

from services import serving
from services.cli import bearer_interceptors
from services.storage.local import LocalAssetStorage
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc

SAMPLE_MESSAGES = [
    gateway_pb.Message(
        role=gateway_pb.MESSAGE_ROLE_USER,
        text="Work has been relentless: the product launch slipped again and I keep waking at four a.m. "
        "thinking about the deadline. I miss the garden and my evening walks.",
    ),
    gateway_pb.Message(
        role=gateway_pb.MESSAGE_ROLE_ASSISTANT,
        text="That sounds draining. When did you last have an evening walk?",
    ),
    gateway_pb.Message(
        role=gateway_pb.MESSAGE_ROLE_USER,
        text="Weeks ago. I want to sleep properly again and stop carrying the launch deadline into the night",
    ),
]


async def create_conversation(
    stub: gateway_grpc.GatewayServiceStub, messages: list[gateway_pb.Message] | None = None
) -> str:
    response = await stub.CreateConversation(
        gateway_pb.CreateConversationRequest(
            title="Launch week", messages=SAMPLE_MESSAGES if messages is None else messages
        )
    )
    return response.conversation.name


async def collect(
    stream: grpc.aio.UnaryStreamCall,  # type: ignore[type-arg]
) -> list[gateway_pb.GenerateMeditationResponse]:
    return [response async for response in stream]


async def _read_into(
    stream: grpc.aio.UnaryStreamCall,  # type: ignore[type-arg]
    into: list[gateway_pb.GenerateMeditationResponse],
) -> None:
    async for response in stream:
        into.append(response)


async def test_create_then_get_conversation_round_trips_messages(
    gateway_stub: gateway_grpc.GatewayServiceStub,
) -> None:
    name = await create_conversation(gateway_stub)
    assert name.startswith("conversations/")
    fetched = await gateway_stub.GetConversation(gateway_pb.GetConversationRequest(name=name))
    assert [m.text for m in fetched.conversation.messages] == [m.text for m in SAMPLE_MESSAGES]
    assert fetched.conversation.messages[1].role == gateway_pb.MESSAGE_ROLE_ASSISTANT
    assert fetched.conversation.title == "Launch week"


async def test_append_messages_counts_every_message(gateway_stub: gateway_grpc.GatewayServiceStub) -> None:
    name = await create_conversation(gateway_stub)
    response = await gateway_stub.AppendMessages(
        gateway_pb.AppendMessagesRequest(
            conversation=name,
            messages=[gateway_pb.Message(role=gateway_pb.MESSAGE_ROLE_USER, text="One more thing.")],
        )
    )
    assert response.message_count == len(SAMPLE_MESSAGES) + 1


async def test_generate_meditation_streams_every_stage_then_both_videos(
    gateway_stub: gateway_grpc.GatewayServiceStub,
) -> None:
    name = await create_conversation(gateway_stub)
    responses = await collect(
        gateway_stub.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=name))
    )
    kinds = [r.WhichOneof("event") for r in responses]
    assert kinds[0] == "accepted"
    assert kinds[-1] == "completed"
    assert [r.sequence for r in responses] == list(range(1, len(responses) + 1))
    qualities = [r.video_ready.quality for r in responses if r.HasField("video_ready")]
    assert qualities == [gateway_pb.VIDEO_QUALITY_QUICK, gateway_pb.VIDEO_QUALITY_ENHANCED]
    assert kinds.index("transcript_ready") < kinds.index("narration_ready") < kinds.index("video_ready")
    assert responses[-1].completed.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
    succeeded = {
        r.stage.stage
        for r in responses
        if r.HasField("stage") and r.stage.state == gateway_pb.STAGE_STATE_SUCCEEDED
    }
    assert succeeded == {
        gateway_pb.STAGE_SOURCE,
        gateway_pb.STAGE_TRANSCRIPT,
        gateway_pb.STAGE_IMAGE,
        gateway_pb.STAGE_NARRATION,
        gateway_pb.STAGE_QUICK_VIDEO,
        gateway_pb.STAGE_ENHANCED_VIDEO,
        gateway_pb.STAGE_UPLOAD,
    }
    meditation = responses[0].accepted.meditation
    fetched = await gateway_stub.GetMeditation(gateway_pb.GetMeditationRequest(name=meditation))
    assert fetched.meditation.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
    assert fetched.meditation.enhanced_video_uri.endswith(".mp4")
    assert fetched.meditation.last_sequence == responses[-1].sequence


async def test_watch_meditation_replays_exactly_the_events_after_a_sequence(
    gateway_stub: gateway_grpc.GatewayServiceStub,
) -> None:
    name = await create_conversation(gateway_stub)
    original = await collect(
        gateway_stub.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=name))
    )
    meditation = original[0].accepted.meditation
    replay = await collect(
        gateway_stub.WatchMeditation(gateway_pb.WatchMeditationRequest(name=meditation, after_sequence=4))
    )
    assert [r.sequence for r in replay] == [r.sequence for r in original[4:]]
    assert [r.WhichOneof("event") for r in replay] == [r.WhichOneof("event") for r in original[4:]]


async def test_repeated_request_id_streams_the_same_meditation(
    gateway_stub: gateway_grpc.GatewayServiceStub,
) -> None:
    name = await create_conversation(gateway_stub)
    request = gateway_pb.GenerateMeditationRequest(conversation=name, request_id=str(uuid.uuid4()))
    first = await collect(gateway_stub.GenerateMeditation(request))
    second = await collect(gateway_stub.GenerateMeditation(request))
    assert second[0].accepted.meditation == first[0].accepted.meditation
    assert [r.sequence for r in second] == [r.sequence for r in first]


async def test_unknown_conversation_is_not_found(gateway_stub: gateway_grpc.GatewayServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(
            gateway_stub.GenerateMeditation(
                gateway_pb.GenerateMeditationRequest(conversation="conversations/0123456789abcdef")
            )
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "conversations/0123456789abcdef" in (raised.value.details() or "")


async def test_conversation_without_messages_fails_precondition(
    gateway_stub: gateway_grpc.GatewayServiceStub,
) -> None:
    name = await create_conversation(gateway_stub, messages=[])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(
            gateway_stub.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=name))
        )
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "AppendMessages" in (raised.value.details() or "")


async def test_oversized_message_is_invalid_and_says_the_limit(
    gateway_stub: gateway_grpc.GatewayServiceStub,
) -> None:
    huge = gateway_pb.Message(role=gateway_pb.MESSAGE_ROLE_USER, text="a" * 20_001)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await create_conversation(gateway_stub, messages=[huge])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = raised.value.details() or ""
    assert "messages[0].text" in details
    assert "20000" in details


@pytest.mark.parametrize("name", ["conversation/abc", "conversations/../../etc", "", "conversations/XYZ"])
async def test_malformed_conversation_name_is_invalid(
    gateway_stub: gateway_grpc.GatewayServiceStub, name: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway_stub.GetConversation(gateway_pb.GetConversationRequest(name=name))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "conversations/{id}" in (raised.value.details() or "")


async def test_malformed_meditation_name_is_invalid(gateway_stub: gateway_grpc.GatewayServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(
            gateway_stub.WatchMeditation(gateway_pb.WatchMeditationRequest(name="meditations/nope"))
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "meditations/{id}" in (raised.value.details() or "")


async def test_cancel_stops_a_running_meditation_and_removes_its_partial_assets(
    gateway_stub: gateway_grpc.GatewayServiceStub, storage: LocalAssetStorage
) -> None:
    name = await create_conversation(gateway_stub)
    stream = gateway_stub.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=name))
    accepted = await anext(aiter(stream))
    meditation = accepted.accepted.meditation
    before: list[gateway_pb.GenerateMeditationResponse] = []
    async for response in stream:  # let the narration produce something worth cleaning up
        before.append(response)
        if response.HasField("playlist_ready"):
            break
    cancelled = await gateway_stub.CancelMeditation(gateway_pb.CancelMeditationRequest(name=meditation))
    assert cancelled.meditation.state == gateway_pb.MEDITATION_STATE_CANCELLED
    rest: list[gateway_pb.GenerateMeditationResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _read_into(stream, rest)
    assert raised.value.code() == grpc.StatusCode.CANCELLED
    assert rest[-1].completed.state == gateway_pb.MEDITATION_STATE_CANCELLED
    # Every stage that started is closed in the log: the ones cut short as STOPPED.
    stages = [r.stage for r in [*before, *rest] if r.HasField("stage")]
    started = [s.stage for s in stages if s.state == gateway_pb.STAGE_STATE_STARTED]
    closed = [s.stage for s in stages if s.state != gateway_pb.STAGE_STATE_STARTED]
    assert sorted(started) == sorted(closed)
    assert any(s.state == gateway_pb.STAGE_STATE_STOPPED for s in stages)
    meditation_id = meditation.rsplit("/", 1)[1]
    leftovers = [
        path
        for kind in ("narrations", "live", "videos")
        for path in (storage.root / kind / meditation_id).glob("*")
    ]
    assert leftovers == []


async def test_a_conversation_full_of_the_shortest_messages_still_fits_a_default_grpc_client(
    gateway_server: serving.RunningServer, api_key: str
) -> None:
    """Property: at the default size limit a conversation's GetConversation response fits the 4 MiB a gRPC
    client accepts by default, however short its messages (each counts 32 bytes besides its text)."""
    address = f"127.0.0.1:{gateway_server.port}"
    # Default channel options: the 4 MiB receive limit every gRPC client starts with.
    async with grpc.aio.insecure_channel(address, interceptors=bearer_interceptors(api_key)) as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        name = await create_conversation(stub, [])
        batch = [gateway_pb.Message(role=gateway_pb.MESSAGE_ROLE_USER, text="a")] * 500
        # 100,000 one-character messages: 100 kB of text, refused only when each message's envelope counts.
        refused = await _append_until_refused(stub, name, batch, max_appends=200)
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        full = await stub.GetConversation(gateway_pb.GetConversationRequest(name=name))
    assert len(full.conversation.messages) >= 30_000
    assert full.ByteSize() < 2 * 1024 * 1024


async def _append_until_refused(
    stub: gateway_grpc.GatewayServiceStub, name: str, batch: list[gateway_pb.Message], *, max_appends: int
) -> grpc.aio.AioRpcError:
    for _ in range(max_appends):
        try:
            await stub.AppendMessages(gateway_pb.AppendMessagesRequest(conversation=name, messages=batch))
        except grpc.aio.AioRpcError as error:
            return error
    raise AssertionError(f"{max_appends} appends of {len(batch)} messages were all let in")
