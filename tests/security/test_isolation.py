"""Owner B cannot read, list, watch, append to, generate from, cancel or delete owner A's resources: every RPC
answers B exactly as it answers a name that does not exist."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from services import serving
from services.cli import gateway_channel
from services.gateway.api_keys import ApiKeyStore
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.security.rpcs import METHODS, call_for_details, request_of

MESSAGE = gateway_pb.Message(
    role=gateway_pb.MESSAGE_ROLE_USER, text="I have been having panic attacks since my divorce."
)
MISSING_CONVERSATION = "conversations/00000000000000aa"
MISSING_MEDITATION = "meditations/00000000000000aa"

# How each RPC names someone's resource: (conversation, meditation) -> request fields. CreateConversation
# names none (its own test below covers a reused request_id); nor do the List RPCs, which list only the
# caller's own (tests/security/test_listing.py).
TARGETING: dict[str, Callable[[str, str], dict[str, Any]]] = {
    "AppendMessages": lambda conversation, _: {"conversation": conversation, "messages": [MESSAGE]},
    "GetConversation": lambda conversation, _: {"name": conversation},
    "GenerateMeditation": lambda conversation, _: {"conversation": conversation},
    "WatchMeditation": lambda _, meditation: {"name": meditation},
    "GetMeditation": lambda _, meditation: {"name": meditation},
    "CancelMeditation": lambda _, meditation: {"name": meditation},
    "DeleteConversation": lambda conversation, _: {"name": conversation},
}


def test_every_rpc_that_names_a_resource_is_covered() -> None:
    assert {method.name for method in METHODS} == {
        *TARGETING,
        "CreateConversation",
        "ListConversations",
        "ListMeditations",
    }


async def _owner_a_resources(stub: gateway_grpc.GatewayServiceStub) -> tuple[str, str]:
    created = await stub.CreateConversation(
        gateway_pb.CreateConversationRequest(messages=[MESSAGE], request_id=str(uuid.uuid4()))
    )
    stream = stub.GenerateMeditation(
        gateway_pb.GenerateMeditationRequest(conversation=created.conversation.name)
    )
    first = await stream.read()
    assert isinstance(first, gateway_pb.GenerateMeditationResponse)
    stream.cancel()
    return created.conversation.name, first.accepted.meditation


@pytest.mark.parametrize("method", [m for m in METHODS if m.name in TARGETING], ids=lambda m: m.name)
async def test_another_owners_resource_answers_exactly_as_a_missing_one(
    gateway_server: serving.RunningServer, api_keys: ApiKeyStore, method: Any
) -> None:
    address = f"127.0.0.1:{gateway_server.port}"
    alice, bob = (await api_keys.create("alice")).key, (await api_keys.create("bob")).key
    async with gateway_channel(address, alice) as channel:
        conversation, meditation = await _owner_a_resources(gateway_grpc.GatewayServiceStub(channel))
    async with gateway_channel(address, bob) as channel:
        theirs = await call_for_details(
            channel, method, request_of(method, **TARGETING[method.name](conversation, meditation))
        )
        missing = await call_for_details(
            channel,
            method,
            request_of(method, **TARGETING[method.name](MISSING_CONVERSATION, MISSING_MEDITATION)),
        )
    assert theirs[0] == missing[0] == grpc.StatusCode.NOT_FOUND, (theirs, missing)
    anonymised = {
        theirs[1].replace(conversation, "<name>").replace(meditation, "<name>"),
        missing[1].replace(MISSING_CONVERSATION, "<name>").replace(MISSING_MEDITATION, "<name>"),
    }
    assert anonymised == {"<name> does not exist"}
    # And alice's resources are untouched: her conversation still has its one message, her job still runs.
    async with gateway_channel(address, alice) as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        mine = await stub.GetConversation(gateway_pb.GetConversationRequest(name=conversation))
        assert [m.text for m in mine.conversation.messages] == [MESSAGE.text]
        job = await stub.GetMeditation(gateway_pb.GetMeditationRequest(name=meditation))
        assert job.meditation.state != gateway_pb.MEDITATION_STATE_CANCELLED
        await stub.CancelMeditation(gateway_pb.CancelMeditationRequest(name=meditation))


async def test_a_reused_request_id_is_per_owner_and_bound_to_its_request(
    gateway_server: serving.RunningServer, api_keys: ApiKeyStore
) -> None:
    """Property: bob sending alice's request_id gets his own new conversation, never hers; alice reusing it
    for a different conversation is ALREADY_EXISTS; the same request again is the same conversation."""
    address = f"127.0.0.1:{gateway_server.port}"
    alice, bob = (await api_keys.create("alice")).key, (await api_keys.create("bob")).key
    shared_id = str(uuid.uuid4())
    request = gateway_pb.CreateConversationRequest(messages=[MESSAGE], request_id=shared_id)
    async with gateway_channel(address, alice) as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        hers = (await stub.CreateConversation(request)).conversation.name
        assert (await stub.CreateConversation(request)).conversation.name == hers
        different = gateway_pb.CreateConversationRequest(
            messages=[gateway_pb.Message(role=gateway_pb.MESSAGE_ROLE_USER, text="Something else.")],
            request_id=shared_id,
        )
        with pytest.raises(grpc.aio.AioRpcError) as reused:
            await stub.CreateConversation(different)
        assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    other_request = gateway_pb.CreateConversationRequest(
        messages=[gateway_pb.Message(role=gateway_pb.MESSAGE_ROLE_USER, text="Bob's own words.")],
        request_id=shared_id,
    )
    async with gateway_channel(address, bob) as channel:
        his = (await gateway_grpc.GatewayServiceStub(channel).CreateConversation(other_request)).conversation
    assert his.name != hers
    assert [m.text for m in his.messages] == ["Bob's own words."]
