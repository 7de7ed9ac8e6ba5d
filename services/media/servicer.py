"""MediaService: translates gRPC requests into calls on the media studio and back."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import grpc

from services.media.errors import (
    AssetNotFoundError,
    EncodingError,
    InvalidInputError,
    MediaError,
    ScratchSpaceError,
    SpeechError,
    StageTimeoutError,
)
from services.media.live import LiveNarration, LiveNarrationResult, PlaylistPublished
from services.media.studio import MediaStudio
from services.media.video import ENHANCED_PROFILE, QUICK_PROFILE, RenderProfile, VideoEncoded, VideoStored
from services.proto_time import to_duration
from services.servicer_status import DEPENDENCY_FAILURES, abort, status_of_dependency_failure
from stillpoint.media.v2 import media_service_pb2 as media_pb
from stillpoint.media.v2 import media_service_pb2_grpc as media_grpc

logger = logging.getLogger(__name__)
# The stubs make the context generic; the servicer methods are typed by their request and response.
_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

_MEDITATION_NAME = re.compile(r"^meditations/([0-9a-f]{16})$")
_PROFILES: dict[int, RenderProfile] = {
    media_pb.VIDEO_PROFILE_QUICK: QUICK_PROFILE,
    media_pb.VIDEO_PROFILE_ENHANCED: ENHANCED_PROFILE,
}


class MediaServicer(media_grpc.MediaServiceServicer):
    """Validates, converts, makes one studio call, converts back."""

    def __init__(self, studio: MediaStudio) -> None:
        self._studio = studio

    async def RenderVideo(
        self, request: media_pb.RenderVideoRequest, context: _Context
    ) -> AsyncIterator[media_pb.RenderVideoResponse]:
        async with _status_for_errors(context):
            meditation_id = _meditation_id(request.meditation)
            profile = _PROFILES.get(request.profile)
            if profile is None:
                raise InvalidInputError(
                    "profile", "is unset: use VIDEO_PROFILE_QUICK or VIDEO_PROFILE_ENHANCED"
                )
            async for event in self._studio.render(
                meditation_id,
                request.image_storage_key,
                request.narration_storage_key,
                profile,
                narration_aac_key=request.narration_aac_storage_key,
                subtitles_key=request.subtitles_storage_key,
            ):
                if isinstance(event, VideoEncoded):
                    yield media_pb.RenderVideoResponse(encoded=_encoded(event))
                else:
                    yield media_pb.RenderVideoResponse(uploaded=_uploaded(event))

    async def NarrateLive(
        self, request_iterator: AsyncIterator[media_pb.NarrateLiveRequest], context: _Context
    ) -> AsyncIterator[media_pb.NarrateLiveResponse]:
        async with _status_for_errors(context):
            first = await anext(aiter(request_iterator), None)
            if first is None or not first.HasField("start"):
                raise InvalidInputError("start", "must be the first message of a live narration")
            meditation_id = _meditation_id(first.start.meditation)
            owner = first.start.owner
            live = await self._studio.open_live_narration(meditation_id)
            async with live:
                feeding = asyncio.create_task(_feed(request_iterator, live))
                # A broken request stream must end the narration, not leave it waiting for text.
                feeding.add_done_callback(
                    lambda task: (
                        live.fail(task.exception() or RuntimeError())
                        if not task.cancelled() and task.exception() is not None
                        else None
                    )
                )
                try:
                    async for event in live.events():
                        if isinstance(event, PlaylistPublished):
                            yield media_pb.NarrateLiveResponse(
                                playlist_ready=media_pb.LivePlaylistReady(
                                    storage_key=event.storage_key,
                                    owner_uri=self._studio.live_playlist_uri(event, owner),
                                )
                            )
                        else:
                            yield media_pb.NarrateLiveResponse(completed=_completed(event))
                    await feeding
                finally:
                    feeding.cancel()

    async def DeleteMeditationAssets(
        self, request: media_pb.DeleteMeditationAssetsRequest, context: _Context
    ) -> media_pb.DeleteMeditationAssetsResponse:
        async with _status_for_errors(context):
            deleted = await self._studio.delete_assets(_meditation_id(request.meditation))
        return media_pb.DeleteMeditationAssetsResponse(deleted_count=deleted)

    async def MeasureMeditationAssets(
        self, request: media_pb.MeasureMeditationAssetsRequest, context: _Context
    ) -> media_pb.MeasureMeditationAssetsResponse:
        async with _status_for_errors(context):
            size_bytes = await self._studio.measure_assets(_meditation_id(request.meditation))
        return media_pb.MeasureMeditationAssetsResponse(size_bytes=size_bytes)

    async def SignAssetUris(
        self, request: media_pb.SignAssetUrisRequest, context: _Context
    ) -> media_pb.SignAssetUrisResponse:
        async with _status_for_errors(context):
            uris = await self._studio.asset_uris(list(request.storage_keys), request.owner)
        return media_pb.SignAssetUrisResponse(uris=uris)

    async def GetEncoderInfo(
        self, request: media_pb.GetEncoderInfoRequest, context: _Context
    ) -> media_pb.GetEncoderInfoResponse:
        encoders = self._studio.encoders
        return media_pb.GetEncoderInfoResponse(
            selected_encoder=encoders.selected, probed_encoders=list(encoders.probes)
        )

    async def GetProviderStatus(
        self, request: media_pb.GetProviderStatusRequest, context: _Context
    ) -> media_pb.GetProviderStatusResponse:
        return media_pb.GetProviderStatusResponse(
            providers=[
                media_pb.ProviderStatus(
                    capability=report.capability,
                    provider=report.provider,
                    model=report.model,
                    fallback_to_offline=report.fallback_to_offline,
                    warnings=report.warnings,
                )
                for report in self._studio.providers
            ]
        )


@asynccontextmanager
async def _status_for_errors(context: _Context) -> AsyncIterator[None]:
    """The one place media errors become gRPC status codes (AIP-193: short and actionable)."""
    try:
        yield
    except InvalidInputError as error:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    except AssetNotFoundError as error:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
    except DEPENDENCY_FAILURES as error:
        await abort(context, *status_of_dependency_failure(error))
    except StageTimeoutError as error:
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(error))
    except ScratchSpaceError as error:
        # UNAVAILABLE, not RESOURCE_EXHAUSTED: the condition is this replica's and passes (other encodes
        # finish, an operator frees space), so the gateway's retry policy tries the job again later, on a
        # replica that has room, while this one's health says NOT_SERVING.
        logger.error("encoding refused or failed: %s", error)
        await abort(context, grpc.StatusCode.UNAVAILABLE, str(error))
    except EncodingError as error:
        # FFmpeg's log is for operators: it names paths and internals a client should not see.
        logger.error("encoding failed: %s\n%s", error, error.detail)
        await context.abort(grpc.StatusCode.INTERNAL, str(error))
    except SpeechError as error:
        logger.error("speech failed: %s", error)
        await context.abort(grpc.StatusCode.INTERNAL, str(error))
    except MediaError as error:
        logger.exception("media service error")
        await context.abort(grpc.StatusCode.INTERNAL, f"media service failed ({type(error).__name__})")


async def _feed(requests: AsyncIterator[media_pb.NarrateLiveRequest], live: LiveNarration) -> None:
    """Hands the client's script pieces to the live narration as they arrive."""
    async for request in requests:
        if request.HasField("text"):
            live.add_text(request.text.text, is_sentence_end=request.text.is_sentence_end)
        elif request.HasField("end"):
            live.finish_script()
            return
        else:
            raise InvalidInputError("start", "was sent twice")
    raise InvalidInputError("end", "never came: the client closed the stream before the script ended")


def _encoded(encoded: VideoEncoded) -> media_pb.VideoEncoded:
    return media_pb.VideoEncoded(encode_duration=to_duration(encoded.encode_seconds), encoder=encoded.encoder)


def _uploaded(stored: VideoStored) -> media_pb.VideoUploaded:
    return media_pb.VideoUploaded(
        storage_key=stored.storage_key,
        duration=to_duration(stored.duration_seconds),
        size_bytes=stored.size_bytes,
        width_pixels=stored.width_pixels,
        height_pixels=stored.height_pixels,
        encoder=stored.encoder,
        upload_duration=to_duration(stored.upload_seconds),
    )


def _completed(result: LiveNarrationResult) -> media_pb.LiveNarrationCompleted:
    quick = result.quick_video
    return media_pb.LiveNarrationCompleted(
        quick_video_encoded=_encoded(quick.encoded) if quick else None,
        quick_video=_uploaded(quick.stored) if quick else None,
        storage_key=result.aac_key,
        aac_storage_key=result.aac_key,
        duration=to_duration(result.duration_seconds),
        sample_rate_hertz=result.sample_rate_hertz,
        provider=result.provider,
        fallback_reason=result.fallback_reason,
        misread_sentence_count=result.misread_sentence_count,
        subtitles_storage_key=result.subtitles_key,
        stored_bytes=result.stored_bytes,
        sentences=[
            media_pb.SpokenSentence(
                text=sentence.text,
                start_offset=to_duration(sentence.start_seconds),
                end_offset=to_duration(sentence.end_seconds),
            )
            for sentence in result.sentences
        ],
    )


def _meditation_id(name: str) -> str:
    match = _MEDITATION_NAME.fullmatch(name)
    if match is None:
        raise InvalidInputError("meditation", f"{name!r} is not a valid name: expected meditations/{{id}}")
    return match.group(1)
