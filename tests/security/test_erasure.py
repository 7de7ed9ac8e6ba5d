"""DeleteConversation erases everything made from a conversation: its rows, its meditations with their event
logs and stored files, and the cached transcript and image made from its text (SQLite and local storage here;
PostgreSQL, Redis and Supabase-compatible storage in tests/test_data_plane_end_to_end.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import pytest

from services.storage.local import LocalAssetStorage
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.asset_fetch import stored_path
from tests.gateway.test_servicer import SAMPLE_MESSAGES, collect, create_conversation

pytestmark = pytest.mark.timeout(600)
# Where the media service keeps a meditation's files, each in a folder named by the meditation's id.
_MEDIA_FOLDERS = ("videos", "narrations", "live")


async def _generate(
    stub: gateway_grpc.GatewayServiceStub, conversation: str
) -> list[gateway_pb.GenerateMeditationResponse]:
    responses = await collect(
        stub.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=conversation))
    )
    assert responses[-1].completed.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
    return responses


def _event(
    responses: list[gateway_pb.GenerateMeditationResponse], kind: str
) -> gateway_pb.GenerateMeditationResponse:
    return next(response for response in responses if response.WhichOneof("event") == kind)


def _path_of(uri: str, storage: LocalAssetStorage) -> Path:
    return stored_path(uri, storage.root)


def _rows(database: Path, query: str, *parameters: str) -> int:
    with sqlite3.connect(database) as connection:
        return int(connection.execute(query, parameters).fetchone()[0])


async def _code_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_deleting_a_conversation_leaves_nothing_of_it(
    gateway_stub: gateway_grpc.GatewayServiceStub, storage: LocalAssetStorage, tmp_path: Path
) -> None:
    conversation = await create_conversation(gateway_stub)
    first = await _generate(gateway_stub, conversation)
    # Generated again, both come from the caches: what the erasure below must take away.
    second = await _generate(gateway_stub, conversation)
    assert _event(second, "transcript_ready").transcript_ready.cached
    assert _event(second, "image_ready").image_ready.cached
    meditations = [first[0].accepted.meditation, second[0].accepted.meditation]
    image_file = _path_of(_event(first, "image_ready").image_ready.uri, storage)
    meditation_folders = [
        storage.root / kind / name.split("/")[1] for name in meditations for kind in _MEDIA_FOLDERS
    ]
    conversation_id = conversation.split("/")[1]
    content_db, gateway_db = tmp_path / "content.db", tmp_path / "gateway.db"
    artifacts = "SELECT count(*) FROM conversation_artifacts WHERE conversation_id = ?"
    assert _rows(content_db, artifacts, conversation_id) == 2  # its transcript and its image
    assert image_file.is_file()
    assert all(folder.is_dir() for folder in meditation_folders if folder.parent.name != "live")

    deleted = await gateway_stub.DeleteConversation(gateway_pb.DeleteConversationRequest(name=conversation))

    assert deleted.deleted_meditation_count == 2
    assert (
        await _code_of(gateway_stub.GetConversation(gateway_pb.GetConversationRequest(name=conversation)))
        == grpc.StatusCode.NOT_FOUND
    )
    for meditation in meditations:
        assert (
            await _code_of(gateway_stub.GetMeditation(gateway_pb.GetMeditationRequest(name=meditation)))
            == grpc.StatusCode.NOT_FOUND
        )
        assert (
            await _code_of(
                collect(gateway_stub.WatchMeditation(gateway_pb.WatchMeditationRequest(name=meditation)))
            )
            == grpc.StatusCode.NOT_FOUND
        )
    listed = await gateway_stub.ListMeditations(gateway_pb.ListMeditationsRequest())
    assert not set(meditations) & {meditation.name for meditation in listed.meditations}
    assert (
        await _code_of(
            gateway_stub.DeleteConversation(gateway_pb.DeleteConversationRequest(name=conversation))
        )
        == grpc.StatusCode.NOT_FOUND
    )
    # No row of it in either service's tables.
    assert _rows(content_db, "SELECT count(*) FROM conversations WHERE id = ?", conversation_id) == 0
    assert _rows(content_db, "SELECT count(*) FROM messages WHERE conversation_id = ?", conversation_id) == 0
    assert _rows(content_db, artifacts, conversation_id) == 0
    for meditation in meditations:
        job_id = meditation.split("/")[1]
        assert _rows(gateway_db, "SELECT count(*) FROM meditation_jobs WHERE id = ?", job_id) == 0
        assert _rows(gateway_db, "SELECT count(*) FROM meditation_job_events WHERE job_id = ?", job_id) == 0
    # No file of it in storage.
    assert not image_file.exists()
    assert not any(folder.exists() for folder in meditation_folders)
    # And no cache entry: the same words, stored again, are written and painted afresh.
    again = await _generate(gateway_stub, await create_conversation(gateway_stub))
    assert not _event(again, "transcript_ready").transcript_ready.cached
    assert not _event(again, "image_ready").image_ready.cached


async def test_a_running_meditation_is_cancelled_before_its_conversation_is_erased(
    gateway_stub: gateway_grpc.GatewayServiceStub, storage: LocalAssetStorage, tmp_path: Path
) -> None:
    conversation = await create_conversation(gateway_stub)
    stream = gateway_stub.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=conversation))
    accepted = await stream.read()
    assert isinstance(accepted, gateway_pb.GenerateMeditationResponse)

    deleted = await gateway_stub.DeleteConversation(gateway_pb.DeleteConversationRequest(name=conversation))

    assert deleted.deleted_meditation_count == 1
    # The stream that was following it ends: with its cancellation if it read that far before the erasure,
    # else because the meditation is gone. Either way it ends, and nothing more was made.
    assert await _code_of(collect(stream)) in {grpc.StatusCode.CANCELLED, grpc.StatusCode.NOT_FOUND}
    job_id = accepted.accepted.meditation.split("/")[1]
    assert _rows(tmp_path / "gateway.db", "SELECT count(*) FROM meditation_jobs WHERE id = ?", job_id) == 0
    assert not any((storage.root / kind / job_id).exists() for kind in _MEDIA_FOLDERS)
    conversation_id = conversation.split("/")[1]
    assert (
        _rows(
            tmp_path / "content.db",
            "SELECT count(*) FROM conversation_artifacts WHERE conversation_id = ?",
            conversation_id,
        )
        == 0
    )


async def test_an_image_another_conversation_uses_stays_with_it(
    gateway_stub: gateway_grpc.GatewayServiceStub, storage: LocalAssetStorage
) -> None:
    """The same words make the same prompt, so two conversations share one cached image: erasing one
    leaves the other's meditation whole."""
    erased, kept = await create_conversation(gateway_stub), await create_conversation(gateway_stub)
    await _generate(gateway_stub, erased)
    kept_responses = await _generate(gateway_stub, kept)
    shared_image = _path_of(_event(kept_responses, "image_ready").image_ready.uri, storage)
    assert _event(kept_responses, "image_ready").image_ready.cached

    await gateway_stub.DeleteConversation(gateway_pb.DeleteConversationRequest(name=erased))

    assert shared_image.is_file()
    fetched = await gateway_stub.GetConversation(gateway_pb.GetConversationRequest(name=kept))
    assert [message.text for message in fetched.conversation.messages] == [m.text for m in SAMPLE_MESSAGES]
    meditation = kept_responses[0].accepted.meditation
    kept_job = await gateway_stub.GetMeditation(gateway_pb.GetMeditationRequest(name=meditation))
    assert _path_of(kept_job.meditation.enhanced_video_uri, storage).is_file()
