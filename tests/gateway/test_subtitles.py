"""The meditation's WebVTT subtitles reach clients: a URI made on read in `narration_ready` and both
`video_ready` events, stored in the log as a storage key, fetchable, and erased with the conversation."""

from __future__ import annotations

import asyncio
import io
import json
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.cli import Progress, follow
from services.gateway.asset_links import AssetLinks
from services.gateway.events import (
    NarrationReady,
    SentenceTiming,
    SequencedEvent,
    VideoQuality,
    VideoReady,
    decode_event,
    encode_event,
)
from services.proto_time import seconds_of
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.asset_fetch import fetch, stored_path
from tests.gateway.test_events import CountingSigner
from tests.gateway.test_servicer import collect, create_conversation
from tests.media.test_subtitles import mov_text_track, webvtt_cues

pytestmark = pytest.mark.timeout(600)
NOW = datetime(2026, 12, 3, tzinfo=UTC)
# The test's own reading of a pause mark, independent of the one the services share.
_PAUSE_MARK = re.compile(r"\[pause [0-9.]+s\]")


def _spoken(text: str) -> str:
    return " ".join(_PAUSE_MARK.sub(" ", text).split())


def _path_of(uri: str, tmp_path: Path) -> Path:
    """The stored file a media endpoint link names (the in-process services store under tmp_path)."""
    return stored_path(uri, tmp_path / "storage")


def _of_kind(
    responses: list[gateway_pb.GenerateMeditationResponse], kind: str
) -> list[gateway_pb.GenerateMeditationResponse]:
    return [response for response in responses if response.WhichOneof("event") == kind]


async def test_the_subtitles_come_with_the_narration_and_both_videos_and_match_the_sentences(
    gateway_stub: gateway_grpc.GatewayServiceStub, tmp_path: Path
) -> None:
    streamed = await collect(
        gateway_stub.GenerateMeditation(
            gateway_pb.GenerateMeditationRequest(conversation=await create_conversation(gateway_stub))
        )
    )
    assert streamed[-1].completed.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
    [narration] = [response.narration_ready for response in _of_kind(streamed, "narration_ready")]
    videos = [response.video_ready for response in _of_kind(streamed, "video_ready")]

    subtitles = _path_of(narration.subtitles_uri, tmp_path)
    assert subtitles.suffix == ".vtt" and subtitles.is_file()
    # What a browser's <track> loads: the same file, over HTTP.
    fetched = await asyncio.to_thread(fetch, narration.subtitles_uri, tmp_path / "fetched.vtt")
    assert fetched.read_bytes() == subtitles.read_bytes()
    assert [_path_of(video.subtitles_uri, tmp_path) for video in videos] == [subtitles, subtitles]
    cues = webvtt_cues(subtitles)
    # The offline script holds pause marks; no cue shows one.
    assert any(_PAUSE_MARK.search(sentence.text) for sentence in narration.sentences)
    expected = [
        (
            round(seconds_of(sentence.start_offset) * 1000),
            round(seconds_of(sentence.end_offset) * 1000),
            _spoken(sentence.text),
        )
        for sentence in narration.sentences
        if _spoken(sentence.text)
    ]
    assert len(expected) > 3
    assert [(cue.start_ms, cue.end_ms, " ".join(cue.lines)) for cue in cues] == expected
    # The track in each MP4 holds the same cues.
    for video in videos:
        codec, language, track = mov_text_track(_path_of(video.uri, tmp_path))
        assert (codec, language) == ("mov_text", "eng")
        assert [(cue.start_ms, cue.end_ms) for cue in track] == [(cue.start_ms, cue.end_ms) for cue in cues]

    # The log keeps the key; a replay, read later, gets a URI made then.
    with sqlite3.connect(tmp_path / "gateway.db") as connection:
        payloads = [
            row[0].decode() for row in connection.execute("SELECT payload FROM meditation_job_events")
        ]
    stored = [json.loads(payload)["event"] for payload in payloads if '"subtitles_storage_key"' in payload]
    assert len(stored) == 3  # the narration and both videos
    assert all(event["subtitles_storage_key"].endswith(".vtt") for event in stored)
    assert not any("subtitles_uri" in event for event in stored)
    replayed = await collect(
        gateway_stub.WatchMeditation(gateway_pb.WatchMeditationRequest(name=streamed[0].accepted.meditation))
    )
    replayed_narration = _of_kind(replayed, "narration_ready")[0].narration_ready
    assert _path_of(replayed_narration.subtitles_uri, tmp_path) == subtitles
    assert [_path_of(r.video_ready.subtitles_uri, tmp_path) for r in _of_kind(replayed, "video_ready")] == [
        subtitles
    ] * 2


async def test_erasing_the_conversation_removes_the_subtitles(
    gateway_stub: gateway_grpc.GatewayServiceStub, tmp_path: Path
) -> None:
    conversation = await create_conversation(gateway_stub)
    streamed = await collect(
        gateway_stub.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=conversation))
    )
    subtitles = _path_of(_of_kind(streamed, "narration_ready")[0].narration_ready.subtitles_uri, tmp_path)
    assert subtitles.is_file()

    await gateway_stub.DeleteConversation(gateway_pb.DeleteConversationRequest(name=conversation))

    assert not subtitles.exists()


async def test_the_cli_saves_the_subtitles_beside_both_videos(
    gateway_stub: gateway_grpc.GatewayServiceStub, tmp_path: Path
) -> None:
    stream = gateway_stub.GenerateMeditation(
        gateway_pb.GenerateMeditationRequest(conversation=await create_conversation(gateway_stub))
    )
    printed = io.StringIO()

    meditation, saved = await follow(stream, Progress(printed, is_live=False), tmp_path / "out")

    meditation_id = meditation.split("/")[1]
    assert [path.name for path in saved] == [
        f"{meditation_id}.vtt",
        f"{meditation_id}-quick.mp4",
        f"{meditation_id}-enhanced.mp4",
    ]
    assert saved[0].read_text(encoding="utf-8").startswith("WEBVTT\n")
    assert len(webvtt_cues(saved[0])) > 3
    assert f"saved {saved[0]}" in printed.getvalue()


def test_the_subtitles_are_stored_by_key_and_a_uri_is_refused() -> None:
    event = NarrationReady(
        storage_key="narrations/0123456789abcdef/a.wav",
        duration_seconds=4.0,
        sentences=(SentenceTiming("Breathe in. [pause 2s]", 0.0, 4.0),),
        subtitles_storage_key="videos/0123456789abcdef/a.vtt",
    )
    stored = json.loads(encode_event(1.0, event))["event"]
    assert stored["subtitles_storage_key"] == event.subtitles_storage_key
    assert "subtitles_uri" not in stored
    assert decode_event(2, NOW, encode_event(1.0, event)).event == event
    with pytest.raises(ValueError, match="storage key only"):
        encode_event(1.0, NarrationReady(storage_key="", duration_seconds=1.0, subtitles_uri="file:///a.vtt"))


async def test_an_event_logged_before_subtitles_reads_without_them() -> None:
    legacy = json.dumps(
        {
            "kind": "video_ready",
            "elapsed_seconds": 9.0,
            "event": {
                "quality": "quick",
                "storage_key": "videos/0123456789abcdef/a.quick.mp4",
                "duration_seconds": 60.0,
                "size_bytes": 10,
                "width_pixels": 1280,
                "height_pixels": 720,
                "encoder": "libx264",
            },
        }
    ).encode()

    recorded = decode_event(5, NOW, legacy)
    [linked] = await AssetLinks(None).for_events([recorded], "alice")

    assert isinstance(linked.event, VideoReady)
    assert linked.event.quality is VideoQuality.QUICK
    assert (linked.event.subtitles_storage_key, linked.event.subtitles_uri) == ("", "")


async def test_a_page_of_events_signs_each_subtitles_key_once_with_the_assets() -> None:
    vtt = "videos/0123456789abcdef/a.vtt"
    page = [
        SequencedEvent(1, NOW, 1.0, NarrationReady("narrations/x/a.wav", 4.0, subtitles_storage_key=vtt)),
        SequencedEvent(
            2, NOW, 2.0, VideoReady(VideoQuality.QUICK, "videos/x/q.mp4", 4.0, 1, 2, 2, "libx264", "", vtt)
        ),
    ]
    media = CountingSigner()

    linked = await AssetLinks(media).for_events(page, "alice")  # type: ignore[arg-type]

    assert media.requests == [["narrations/x/a.wav", vtt, "videos/x/q.mp4"]]
    narration, video = (recorded.event for recorded in linked)
    assert isinstance(narration, NarrationReady) and isinstance(video, VideoReady)
    assert (narration.uri, narration.subtitles_uri) == ("signed:narrations/x/a.wav", f"signed:{vtt}")
    assert (video.uri, video.subtitles_uri) == ("signed:videos/x/q.mp4", f"signed:{vtt}")
