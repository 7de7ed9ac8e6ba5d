"""ListConversations and ListMeditations list only the caller's own, newest first, page after page; their
page tokens are opaque and tamper-evident: changed, foreign or cross-list tokens are INVALID_ARGUMENT."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from services import serving
from services.cli import gateway_channel
from services.gateway.api_keys import ApiKeyStore
from services.gateway.jobs.store import JobStore
from services.gateway.models import MeditationOptions
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc

MESSAGE = gateway_pb.Message(role=gateway_pb.MESSAGE_ROLE_USER, text="I walk by the sea on Sundays.")
REFUSED_TOKEN = "start again without it"


async def _create_conversation(stub: gateway_grpc.GatewayServiceStub, title: str) -> str:
    created = await stub.CreateConversation(
        gateway_pb.CreateConversationRequest(title=title, messages=[MESSAGE])
    )
    return created.conversation.name


async def _start_meditation(store: JobStore, owner: str, conversation: str) -> str:
    """A queued job of `owner`'s, as GenerateMeditation records it (never run: listing needs only the row)."""
    meditation, _ = await store.create(
        owner=owner,
        conversation=conversation,
        request_id="",
        options=MeditationOptions(),
        queue_lease_seconds=600.0,
    )
    return meditation.name


async def _keys(api_keys: ApiKeyStore) -> tuple[str, str]:
    return (await api_keys.create("alice")).key, (await api_keys.create("bob")).key


async def test_each_owner_pages_through_only_their_own_conversations_newest_first_while_more_arrive(
    gateway_server: serving.RunningServer, api_keys: ApiKeyStore
) -> None:
    address = f"127.0.0.1:{gateway_server.port}"
    alice_key, bob_key = await _keys(api_keys)
    async with gateway_channel(address, alice_key) as alice, gateway_channel(address, bob_key) as bob:
        alice_stub, bob_stub = gateway_grpc.GatewayServiceStub(alice), gateway_grpc.GatewayServiceStub(bob)
        hers = [await _create_conversation(alice_stub, f"alice {n}") for n in range(7)]
        his = [await _create_conversation(bob_stub, f"bob {n}") for n in range(2)]

        listed: list[str] = []
        token = ""
        arrived: list[str] = []
        while True:
            page = await alice_stub.ListConversations(
                gateway_pb.ListConversationsRequest(page_size=3, page_token=token)
            )
            assert len(page.conversations) <= 3
            assert all(not conversation.messages for conversation in page.conversations)
            listed += [conversation.name for conversation in page.conversations]
            token = page.next_page_token
            if not token:
                break
            # New conversations of both owners arrive between pages: no page repeats or skips one.
            arrived.append(await _create_conversation(alice_stub, "newer"))
            await _create_conversation(bob_stub, "newer")
        assert listed == hers[::-1]
        assert arrived  # the listing did span pages

        fresh = await alice_stub.ListConversations(gateway_pb.ListConversationsRequest())
        assert [c.name for c in fresh.conversations] == [*arrived[::-1], *hers[::-1]]
        assert not fresh.next_page_token
        bobs = await bob_stub.ListConversations(gateway_pb.ListConversationsRequest(page_size=100))
        assert [c.name for c in bobs.conversations][-2:] == his[::-1]
        assert not set(c.name for c in bobs.conversations) & set(hers + arrived)


async def test_each_owner_pages_through_only_their_own_meditations_newest_first_while_more_arrive(
    gateway_server: serving.RunningServer, api_keys: ApiKeyStore, job_store: JobStore
) -> None:
    address = f"127.0.0.1:{gateway_server.port}"
    alice_key, bob_key = await _keys(api_keys)
    conversation = "conversations/0123456789abcdef"
    other_conversation = "conversations/fedcba9876543210"
    hers = [await _start_meditation(job_store, "alice", conversation) for _ in range(5)]
    elsewhere = await _start_meditation(job_store, "alice", other_conversation)
    his = await _start_meditation(job_store, "bob", conversation)
    async with gateway_channel(address, alice_key) as alice, gateway_channel(address, bob_key) as bob:
        alice_stub, bob_stub = gateway_grpc.GatewayServiceStub(alice), gateway_grpc.GatewayServiceStub(bob)
        listed: list[str] = []
        token = ""
        while True:
            page = await alice_stub.ListMeditations(
                gateway_pb.ListMeditationsRequest(page_size=2, page_token=token, conversation=conversation)
            )
            listed += [meditation.name for meditation in page.meditations]
            assert all(m.state == gateway_pb.MEDITATION_STATE_RUNNING for m in page.meditations)
            token = page.next_page_token
            if not token:
                break
            await _start_meditation(job_store, "alice", conversation)
            await _start_meditation(job_store, "bob", conversation)
        assert listed == hers[::-1]

        everything = await alice_stub.ListMeditations(gateway_pb.ListMeditationsRequest(page_size=100))
        names = [m.name for m in everything.meditations]
        assert elsewhere in names and set(hers) <= set(names) and his not in names
        bobs = await bob_stub.ListMeditations(gateway_pb.ListMeditationsRequest(page_size=100))
        assert his in [m.name for m in bobs.meditations]
        assert not set(m.name for m in bobs.meditations) & set(names)
        # Alice's conversation filter on bob's side lists his own jobs of that name only.
        assert elsewhere not in [
            m.name
            for m in (
                await bob_stub.ListMeditations(
                    gateway_pb.ListMeditationsRequest(conversation=other_conversation)
                )
            ).meditations
        ]


def _changed(token: str) -> str:
    """The token with one character in its middle changed (still valid base64url)."""
    middle = len(token) // 2
    return token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]


async def test_a_changed_garbled_foreign_or_cross_list_page_token_is_invalid_argument(
    gateway_server: serving.RunningServer, api_keys: ApiKeyStore, job_store: JobStore
) -> None:
    address = f"127.0.0.1:{gateway_server.port}"
    alice_key, bob_key = await _keys(api_keys)
    conversation = "conversations/0123456789abcdef"
    for _ in range(3):
        await _start_meditation(job_store, "alice", conversation)
        await _start_meditation(job_store, "bob", conversation)
    async with gateway_channel(address, alice_key) as alice, gateway_channel(address, bob_key) as bob:
        alice_stub, bob_stub = gateway_grpc.GatewayServiceStub(alice), gateway_grpc.GatewayServiceStub(bob)
        for _ in range(3):
            await _create_conversation(alice_stub, "alice")
        conversations_token = (
            await alice_stub.ListConversations(gateway_pb.ListConversationsRequest(page_size=1))
        ).next_page_token
        meditations_token = (
            await alice_stub.ListMeditations(gateway_pb.ListMeditationsRequest(page_size=1))
        ).next_page_token
        filtered_token = (
            await alice_stub.ListMeditations(
                gateway_pb.ListMeditationsRequest(page_size=1, conversation=conversation)
            )
        ).next_page_token
        assert conversations_token and meditations_token and filtered_token

        def conversations(stub: gateway_grpc.GatewayServiceStub, token: str) -> Awaitable[Any]:
            return stub.ListConversations(gateway_pb.ListConversationsRequest(page_token=token))

        def meditations(
            stub: gateway_grpc.GatewayServiceStub, token: str, conversation: str = ""
        ) -> Awaitable[Any]:
            return stub.ListMeditations(
                gateway_pb.ListMeditationsRequest(page_token=token, conversation=conversation)
            )

        # The genuine tokens work for the caller and list they were issued for.
        await conversations(alice_stub, conversations_token)
        await meditations(alice_stub, meditations_token)
        await meditations(alice_stub, filtered_token, conversation)

        refused: dict[str, Callable[[], Awaitable[Any]]] = {
            "one character changed": lambda: conversations(alice_stub, _changed(conversations_token)),
            "truncated": lambda: conversations(alice_stub, conversations_token[:-4]),
            "a stray character added": lambda: conversations(alice_stub, conversations_token + "!"),
            "garbage": lambda: conversations(alice_stub, "not-a-page-token"),
            "not base64": lambda: meditations(alice_stub, "%%%%"),
            "far too long": lambda: conversations(alice_stub, "A" * 10_000),
            "another owner's conversations token": lambda: conversations(bob_stub, conversations_token),
            "another owner's meditations token": lambda: meditations(bob_stub, meditations_token),
            "a conversations token for meditations": lambda: meditations(alice_stub, conversations_token),
            "a meditations token for conversations": lambda: conversations(alice_stub, meditations_token),
            "a token of another filter": lambda: meditations(alice_stub, meditations_token, conversation),
            "a filtered token without its filter": lambda: meditations(alice_stub, filtered_token),
        }
        for problem, attempt in refused.items():
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await attempt()
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, problem
            details = error.value.details() or ""
            assert details.startswith("page_token:") and REFUSED_TOKEN in details, (problem, details)
            # The refusal never echoes the token back.
            assert conversations_token not in details and meditations_token not in details


async def test_page_sizes_default_to_20_are_clamped_to_100_and_negative_is_invalid(
    gateway_server: serving.RunningServer, api_keys: ApiKeyStore, job_store: JobStore
) -> None:
    address = f"127.0.0.1:{gateway_server.port}"
    alice_key, _ = await _keys(api_keys)
    for _ in range(105):
        await _start_meditation(job_store, "alice", "conversations/0123456789abcdef")
    async with gateway_channel(address, alice_key) as alice:
        stub = gateway_grpc.GatewayServiceStub(alice)
        default = await stub.ListMeditations(gateway_pb.ListMeditationsRequest())
        assert len(default.meditations) == 20 and default.next_page_token
        clamped = await stub.ListMeditations(gateway_pb.ListMeditationsRequest(page_size=1000))
        assert len(clamped.meditations) == 100 and clamped.next_page_token
        rest = await stub.ListMeditations(
            gateway_pb.ListMeditationsRequest(page_size=1000, page_token=clamped.next_page_token)
        )
        assert len(rest.meditations) == 5 and not rest.next_page_token
        for negative in (
            stub.ListMeditations(gateway_pb.ListMeditationsRequest(page_size=-1)),
            stub.ListConversations(gateway_pb.ListConversationsRequest(page_size=-1)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await negative
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (error.value.details() or "").startswith("page_size:")
        with pytest.raises(grpc.aio.AioRpcError) as bad_filter:
            await stub.ListMeditations(gateway_pb.ListMeditationsRequest(conversation="conversations/x"))
        assert bad_filter.value.code() == grpc.StatusCode.INVALID_ARGUMENT
