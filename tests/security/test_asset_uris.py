"""Asset URIs are made for the reader when read, never stored (with local storage here; Supabase's signed,
expiring URLs in tests/test_data_plane_end_to_end.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.asset_fetch import fetch, stored_path
from tests.gateway.test_servicer import collect, create_conversation


def _stored_text(database: Path) -> str:
    with sqlite3.connect(database) as connection:
        payloads = [
            row[0].decode() for row in connection.execute("SELECT payload FROM meditation_job_events")
        ]
        assets = connection.execute(
            "SELECT image_storage_key, narration_storage_key, quick_video_storage_key,"
            " enhanced_video_storage_key FROM meditation_jobs"
        ).fetchall()
    return " ".join(payloads + [value for row in assets for value in row])


async def test_the_database_keeps_storage_keys_and_every_reader_gets_uris_that_work(
    gateway_stub: gateway_grpc.GatewayServiceStub, tmp_path: Path
) -> None:
    conversation = await create_conversation(gateway_stub)
    streamed = await collect(
        gateway_stub.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=conversation))
    )
    meditation = streamed[0].accepted.meditation

    stored = _stored_text(tmp_path / "gateway.db")
    assert "videos/" in stored and "images/" in stored and "narrations/" in stored
    assert "://" not in stored

    replayed = await collect(gateway_stub.WatchMeditation(gateway_pb.WatchMeditationRequest(name=meditation)))
    got = (await gateway_stub.GetMeditation(gateway_pb.GetMeditationRequest(name=meditation))).meditation
    listed = (await gateway_stub.ListMeditations(gateway_pb.ListMeditationsRequest())).meditations
    uris = [
        event.uri
        for response in [*streamed, *replayed]
        for event in (
            response.image_ready,
            response.narration_ready,
            response.playlist_ready,
            response.video_ready,
        )
        if event.uri
    ]
    uris += [got.image_uri, got.narration_uri, got.quick_video_uri, got.enhanced_video_uri]
    # (Each read mints its own links, with their own expiry: compare the assets they name.)
    assert [
        stored_path(m.enhanced_video_uri, tmp_path / "storage") for m in listed if m.name == meditation
    ] == [stored_path(got.enhanced_video_uri, tmp_path / "storage")]
    # Two of each asset event (streamed, replayed): image, narration, playlist, two videos; four from Get.
    assert len(uris) == 2 * 5 + 4
    for index, uri in enumerate(uris):
        # Every reader, anywhere, gets a link it can fetch over HTTP.
        assert uri.startswith("http://127.0.0.1:"), uri
        fetched = await asyncio.to_thread(fetch, uri, tmp_path / "fetched" / str(index))
        assert fetched.stat().st_size > 0


async def test_an_asset_that_is_gone_is_handed_out_without_a_uri(
    gateway_stub: gateway_grpc.GatewayServiceStub, tmp_path: Path
) -> None:
    """A URI is made only for what still exists: a deleted asset is never given a link that leads nowhere."""
    conversation = await create_conversation(gateway_stub)
    streamed = await collect(
        gateway_stub.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=conversation))
    )
    meditation = streamed[0].accepted.meditation
    enhanced = stored_path(streamed[-2].video_ready.uri, tmp_path / "storage")
    assert streamed[-2].video_ready.quality == gateway_pb.VIDEO_QUALITY_ENHANCED
    enhanced.unlink()

    got = (await gateway_stub.GetMeditation(gateway_pb.GetMeditationRequest(name=meditation))).meditation

    assert got.enhanced_video_uri == ""
    assert got.quick_video_uri.startswith("http://127.0.0.1:")
