"""The QUICK video: made by media as the narration ends, or, from a media service that sends none (one not
yet upgraded), asked for with RenderVideo as before."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator

import pytest

from services.gateway.backends import MediaClient
from services.gateway.ports import LivePlaylist, SpokenNarration
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.gateway.test_servicer import collect, create_conversation


async def _quick_video_stage(stub: gateway_grpc.GatewayServiceStub) -> tuple[str, gateway_pb.VideoReady]:
    """The QUICK stage's detail, and the QUICK video, of one job run to its end."""
    name = await create_conversation(stub)
    responses = await collect(
        stub.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=name))
    )
    assert responses[-1].completed.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
    [detail] = [
        r.stage.detail
        for r in responses
        if r.HasField("stage")
        and r.stage.stage == gateway_pb.STAGE_QUICK_VIDEO
        and r.stage.state == gateway_pb.STAGE_STATE_SUCCEEDED
    ]
    [quick] = [
        r.video_ready
        for r in responses
        if r.HasField("video_ready") and r.video_ready.quality == gateway_pb.VIDEO_QUALITY_QUICK
    ]
    return detail, quick


async def test_the_quick_video_media_made_is_reported_with_its_stages(
    gateway_stub: gateway_grpc.GatewayServiceStub,
) -> None:
    detail, quick = await _quick_video_stage(gateway_stub)
    assert detail.startswith("from a placeholder (the preview's picture)")
    assert quick.uri.startswith("http") and quick.size_bytes > 0 and quick.height_pixels == 720


async def test_a_media_service_that_makes_no_quick_video_is_asked_for_one(
    gateway_stub: gateway_grpc.GatewayServiceStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    narrate_live = MediaClient.narrate_live

    async def without_quick_video(
        client: MediaClient, meditation: str, owner: str, script: AsyncIterator[str]
    ) -> AsyncGenerator[LivePlaylist | SpokenNarration, None]:
        async for event in narrate_live(client, meditation, owner, script):
            yield (
                dataclasses.replace(event, quick_video=None) if isinstance(event, SpokenNarration) else event
            )

    monkeypatch.setattr(MediaClient, "narrate_live", without_quick_video)
    detail, quick = await _quick_video_stage(gateway_stub)
    # The gateway's own RenderVideo: its detail says which picture it had.
    assert detail.startswith(("from the generated image", "from a placeholder (the image was not ready)"))
    assert quick.uri.startswith("http") and quick.size_bytes > 0 and quick.height_pixels == 720
