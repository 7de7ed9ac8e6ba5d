"""Live narration: sentences spoken while the script streams in, a playable playlist early, AAC reused."""

from __future__ import annotations

import asyncio
import io
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import av
import grpc
import pytest
from PIL import Image

from services.media.video import probe_media
from services.proto_time import seconds_of
from services.storage.local import LocalAssetStorage
from stillpoint.media.v2 import media_service_pb2 as media_pb
from stillpoint.media.v2 import media_service_pb2_grpc as media_grpc

MEDITATION = "meditations/0123456789abcdef"
SCRIPT = (
    "Take a moment to arrive. [pause 2s] Let your shoulders soften, and your hands grow heavy. "
    "Breathe in slowly, one, two, three, four. [pause 2s] And out, slowly. [pause 3s] "
    "Notice the sound of the sea, far away. Let it carry the day's worries. [pause 2s] "
    "When you are ready, open your eyes."
)


async def _requests(script: str, pieces: int) -> AsyncIterator[media_pb.NarrateLiveRequest]:
    yield media_pb.NarrateLiveRequest(start=media_pb.NarrateLiveStart(meditation=MEDITATION))
    size = max(1, len(script) // pieces)
    for start in range(0, len(script), size):
        yield media_pb.NarrateLiveRequest(text=media_pb.NarrateLiveText(text=script[start : start + size]))
        # Text arrives over time, as a model streams it; the server must not rely on it all being there.
        await asyncio.sleep(0.01)
    yield media_pb.NarrateLiveRequest(end=media_pb.NarrateLiveEnd())


def _path(uri: str) -> Path:
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(uri).path))


async def test_live_narration_publishes_a_playlist_then_the_whole_narration(
    media_stub: media_grpc.MediaServiceStub, storage: LocalAssetStorage
) -> None:
    responses = [response async for response in media_stub.NarrateLive(_requests(SCRIPT, 25))]
    assert [r.WhichOneof("event") for r in responses] == ["playlist_ready", "completed"]
    completed = responses[-1].completed
    duration = seconds_of(completed.duration)
    assert completed.sentences[0].text == "Take a moment to arrive. [pause 2s]"
    assert len(completed.sentences) == 7
    ends = [seconds_of(s.end_offset) for s in completed.sentences]
    starts = [seconds_of(s.start_offset) for s in completed.sentences]
    assert starts[1:] == ends[:-1]
    assert ends[-1] == pytest.approx(duration, abs=0.01)
    assert duration > 9  # the pauses alone hold nine seconds
    playlist_path = _path(completed.playlist_uri)
    playlist = playlist_path.read_text()
    assert playlist.startswith("#EXTM3U")
    assert playlist.rstrip().endswith("#EXT-X-ENDLIST")
    listed = sum(
        float(line.split(":")[1].rstrip(",")) for line in playlist.splitlines() if line.startswith("#EXTINF")
    )
    assert abs(listed - duration) < 2.5
    # A player reads the whole playlist: the init segment and every media segment it names.
    with av.open(str(playlist_path), options={"allowed_extensions": "ALL"}) as played:
        assert {stream.type for stream in played.streams} == {"video", "audio"}
        audio = next(stream for stream in played.streams if stream.type == "audio")
        assert audio.time_base is not None
        heard = float(sum(packet.duration or 0 for packet in played.demux(audio)) * audio.time_base)
        assert abs(heard - duration) < 0.5
    aac = await storage.local_path(completed.aac_storage_key)
    assert probe_media(aac).audio_codec == "aac"


async def test_the_quick_video_copies_the_live_aac_and_matches_the_narration(
    media_stub: media_grpc.MediaServiceStub, storage: LocalAssetStorage
) -> None:
    completed = [r async for r in media_stub.NarrateLive(_requests(SCRIPT, 5))][-1].completed
    picture = io.BytesIO()
    Image.new("RGB", (1792, 1024), (90, 120, 160)).save(picture, format="PNG")
    image = await storage.put_bytes("images/live.png", picture.getvalue(), "image/png")
    rendered = [
        r
        async for r in media_stub.RenderVideo(
            media_pb.RenderVideoRequest(
                meditation=MEDITATION,
                image_storage_key=image.key,
                narration_storage_key=completed.storage_key,
                narration_aac_storage_key=completed.aac_storage_key,
                profile=media_pb.VIDEO_PROFILE_QUICK,
            )
        )
    ]
    info = probe_media(await storage.local_path(rendered[-1].uploaded.storage_key))
    duration = seconds_of(completed.duration)
    assert info.audio_codec == "aac"
    assert info.video_duration_seconds is not None and abs(info.video_duration_seconds - duration) < 0.5
    assert info.audio_duration_seconds is not None and abs(info.audio_duration_seconds - duration) < 0.5


async def test_a_live_narration_without_start_is_invalid(media_stub: media_grpc.MediaServiceStub) -> None:
    async def requests() -> AsyncIterator[media_pb.NarrateLiveRequest]:
        yield media_pb.NarrateLiveRequest(text=media_pb.NarrateLiveText(text="Hello."))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in media_stub.NarrateLive(requests()):
            pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_stream_that_ends_without_end_is_invalid_and_does_not_hang(
    media_stub: media_grpc.MediaServiceStub,
) -> None:
    async def requests() -> AsyncIterator[media_pb.NarrateLiveRequest]:
        yield media_pb.NarrateLiveRequest(start=media_pb.NarrateLiveStart(meditation=MEDITATION))
        yield media_pb.NarrateLiveRequest(text=media_pb.NarrateLiveText(text="Breathe in. And out. "))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in media_stub.NarrateLive(requests(), timeout=30):
            pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "end" in (raised.value.details() or "")
