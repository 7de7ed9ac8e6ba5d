"""MediaService through a real in-process server with local storage and the bundled FFmpeg."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import pytest
from PIL import Image

from services.media.speech import EspeakNarrator, encode_wav
from services.media.video import probe_media
from services.storage.base import StoredAsset
from services.storage.local import LocalAssetStorage
from stillpoint.media.v2 import media_service_pb2 as media_pb
from stillpoint.media.v2 import media_service_pb2_grpc as media_grpc

MEDITATION = "meditations/0123456789abcdef"
SCRIPT = "Settle into your seat. [pause 2s] Breathe in slowly, and out. [pause 1s] Well done."


async def narrate(narrator: EspeakNarrator, storage: LocalAssetStorage) -> StoredAsset:
    """Stores a spoken WAV where a live narration would have left it."""
    wav = encode_wav(await narrator.narrate(SCRIPT))
    return await storage.put_bytes("narrations/0123456789abcdef/narration.wav", wav, "audio/wav")


async def test_render_reports_encode_then_upload_and_stores_a_playable_mp4(
    media_stub: media_grpc.MediaServiceStub, storage: LocalAssetStorage, narrator: EspeakNarrator
) -> None:
    narration = await narrate(narrator, storage)
    picture = io.BytesIO()
    Image.new("RGB", (1024, 1024), (70, 110, 160)).save(picture, format="PNG")
    image = await storage.put_bytes("images/test.png", picture.getvalue(), "image/png")
    responses = [
        r
        async for r in media_stub.RenderVideo(
            media_pb.RenderVideoRequest(
                meditation=MEDITATION,
                image_storage_key=image.key,
                narration_storage_key=narration.key,
                profile=media_pb.VIDEO_PROFILE_QUICK,
            )
        )
    ]
    assert [r.WhichOneof("event") for r in responses] == ["encoded", "uploaded"]
    uploaded = responses[1].uploaded
    path = await storage.local_path(uploaded.storage_key)
    info = probe_media(Path(path))
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert (uploaded.width_pixels, uploaded.height_pixels) == (720, 720)
    assert uploaded.size_bytes == path.stat().st_size
    assert uploaded.encoder == "libx264"


async def test_render_without_an_image_uses_a_placeholder(
    media_stub: media_grpc.MediaServiceStub, storage: LocalAssetStorage, narrator: EspeakNarrator
) -> None:
    narration = await narrate(narrator, storage)
    responses = [
        r
        async for r in media_stub.RenderVideo(
            media_pb.RenderVideoRequest(
                meditation=MEDITATION,
                narration_storage_key=narration.key,
                profile=media_pb.VIDEO_PROFILE_QUICK,
            )
        )
    ]
    assert responses[-1].uploaded.height_pixels == 720


async def test_missing_narration_is_not_found(media_stub: media_grpc.MediaServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in media_stub.RenderVideo(
            media_pb.RenderVideoRequest(
                meditation=MEDITATION,
                narration_storage_key="narrations/0123456789abcdef/absent.wav",
                profile=media_pb.VIDEO_PROFILE_QUICK,
            )
        ):
            pass
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("key", ["../../etc/passwd", "/etc/passwd", "narrations/../../secret.wav"])
async def test_storage_keys_that_leave_storage_are_invalid(
    media_stub: media_grpc.MediaServiceStub, key: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in media_stub.RenderVideo(
            media_pb.RenderVideoRequest(
                meditation=MEDITATION, narration_storage_key=key, profile=media_pb.VIDEO_PROFILE_QUICK
            )
        ):
            pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unset_profile_is_invalid(
    media_stub: media_grpc.MediaServiceStub, storage: LocalAssetStorage, narrator: EspeakNarrator
) -> None:
    narration = await narrate(narrator, storage)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in media_stub.RenderVideo(
            media_pb.RenderVideoRequest(meditation=MEDITATION, narration_storage_key=narration.key)
        ):
            pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "VIDEO_PROFILE_QUICK" in (raised.value.details() or "")


async def test_encoder_info_names_the_selected_encoder(media_stub: media_grpc.MediaServiceStub) -> None:
    info = await media_stub.GetEncoderInfo(media_pb.GetEncoderInfoRequest())
    assert info.selected_encoder == "libx264"
    assert info.probed_encoders
