"""MediaService through a real in-process server with local storage and the bundled FFmpeg."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import grpc
import pytest
from PIL import Image

from services.media.video import probe_media
from services.storage.local import LocalAssetStorage
from stillpoint.media.v1 import media_service_pb2 as media_pb
from stillpoint.media.v1 import media_service_pb2_grpc as media_grpc

MEDITATION = "meditations/0123456789abcdef"
SCRIPT = "Settle into your seat. [pause 2s] Breathe in slowly, and out. [pause 1s] Well done."


async def narrate(stub: media_grpc.MediaServiceStub) -> media_pb.SynthesizeNarrationResponse:
    return await stub.SynthesizeNarration(
        media_pb.SynthesizeNarrationRequest(meditation=MEDITATION, transcript=SCRIPT)
    )


async def test_narration_is_stored_as_wav_with_its_pauses(
    media_stub: media_grpc.MediaServiceStub, storage: LocalAssetStorage
) -> None:
    narration = await narrate(media_stub)
    path = await storage.local_path(narration.storage_key)
    with wave.open(str(path)) as reader:
        seconds = reader.getnframes() / reader.getframerate()
    assert seconds == pytest.approx(narration.duration.ToNanoseconds() / 1e9, abs=0.01)
    assert seconds > 3.0  # the two pauses alone hold three seconds
    assert narration.storage_key.startswith("narrations/0123456789abcdef/")


async def test_render_reports_encode_then_upload_and_stores_a_playable_mp4(
    media_stub: media_grpc.MediaServiceStub, storage: LocalAssetStorage
) -> None:
    narration = await narrate(media_stub)
    picture = io.BytesIO()
    Image.new("RGB", (1024, 1024), (70, 110, 160)).save(picture, format="PNG")
    image = await storage.put_bytes("images/test.png", picture.getvalue(), "image/png")
    responses = [
        r
        async for r in media_stub.RenderVideo(
            media_pb.RenderVideoRequest(
                meditation=MEDITATION,
                image_storage_key=image.key,
                narration_storage_key=narration.storage_key,
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
    media_stub: media_grpc.MediaServiceStub,
) -> None:
    narration = await narrate(media_stub)
    responses = [
        r
        async for r in media_stub.RenderVideo(
            media_pb.RenderVideoRequest(
                meditation=MEDITATION,
                narration_storage_key=narration.storage_key,
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


async def test_unset_profile_is_invalid(media_stub: media_grpc.MediaServiceStub) -> None:
    narration = await narrate(media_stub)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in media_stub.RenderVideo(
            media_pb.RenderVideoRequest(meditation=MEDITATION, narration_storage_key=narration.storage_key)
        ):
            pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "VIDEO_PROFILE_QUICK" in (raised.value.details() or "")


async def test_empty_transcript_is_invalid(media_stub: media_grpc.MediaServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await media_stub.SynthesizeNarration(media_pb.SynthesizeNarrationRequest(meditation=MEDITATION))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_encoder_info_names_the_selected_encoder(media_stub: media_grpc.MediaServiceStub) -> None:
    info = await media_stub.GetEncoderInfo(media_pb.GetEncoderInfoRequest())
    assert info.selected_encoder == "libx264"
    assert info.probed_encoders
