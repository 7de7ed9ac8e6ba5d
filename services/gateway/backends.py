"""gRPC clients of the content and media services behind the gateway's ports; statuses become errors."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from services import rpc_tracing
from services.gateway.deadlines import bounded
from services.gateway.errors import FailureKind, GatewayError
from services.gateway.events import SentenceTiming, SpokenOutcome, VideoQuality
from services.gateway.models import Conversation, ConversationPage, Message, PageCursor
from services.gateway.pipeline import StageTimeouts
from services.gateway.ports import (
    ConversationRef,
    EncodedVideo,
    GeneratedImage,
    LivePlaylist,
    MadeVideo,
    SourceContent,
    SpokenNarration,
    StoredVideo,
    TranscriptPiece,
    TranscriptRestart,
    WrittenTranscript,
)
from services.message_roles import role_values, role_words
from services.proto_time import from_timestamp, seconds_of, to_timestamp
from services.servicer_status import ANSWERED_UNAVAILABLE_KEY
from services.serving import channel_options, internal_channel_credentials
from services.tls import InternalTls
from stillpoint.content.v2 import content_service_pb2 as content_pb
from stillpoint.content.v2 import content_service_pb2_grpc as content_grpc
from stillpoint.media.v2 import media_service_pb2 as media_pb
from stillpoint.media.v2 import media_service_pb2_grpc as media_grpc

# The channel's retry policy is the one retry layer of idempotent unary calls: only UNAVAILABLE (the call most
# likely never reached a server), and only for calls that are safe to repeat (reads, writes made idempotent
# by a request_id, cached generation). Everything else — AppendMessages, the transcript stream, the live
# narration, the renders — is never retried here: a failure fails the job's attempt, and the job's retry
# policy (services/gateway/jobs/retry_policy.py) decides whether it is tried again.
_RETRIED_METHODS = {
    "stillpoint.content.v2.ContentService": (
        "CreateConversation",
        "GetConversation",
        "ListConversations",
        "CollectSourceContent",
        "CreateImagePrompt",
        "GenerateImage",
        # Idempotent in effect: a retry after a lost answer finds nothing (NOT_FOUND), erased all the same.
        "DeleteConversation",
    ),
    "stillpoint.media.v2.MediaService": (
        "GetEncoderInfo",
        "GetProviderStatus",
        "DeleteMeditationAssets",
        "SignAssetUris",
        "MeasureMeditationAssets",
    ),
}
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": service, "method": method} for method in methods],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
            for service, methods in _RETRIED_METHODS.items()
        ]
    }
)


def backend_channel_options() -> list[tuple[str, str | int]]:
    """Options of the gateway's channels to content and media: shared limits and keepalive, round-robin
    over every address a name resolves to (replicas), the retry policy, and quick reconnection."""
    return [
        *channel_options(),
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        # A peer that restarts is back within a second or two: do not wait out a long reconnect backoff.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


def open_backend_channel(address: str, service: str, tls: InternalTls | None) -> grpc.aio.Channel:
    """A channel to the content or media replicas at `address` (made once per process, closed at shutdown):
    mutual TLS with the internal CA when `tls` is given. Internal certificates name their service (`content`,
    `media`) in their subjectAltName, and that name is what the channel checks, whatever the address."""
    # Every call carries the job's trace context, so content's and media's spans join the job's trace.
    interceptors = rpc_tracing.client_interceptors()
    if tls is None:
        return grpc.aio.insecure_channel(
            address, options=backend_channel_options(), interceptors=interceptors
        )
    options = [*backend_channel_options(), ("grpc.ssl_target_name_override", service)]
    return grpc.aio.secure_channel(
        address, internal_channel_credentials(tls), options=options, interceptors=interceptors
    )


# Bookkeeping calls (conversations, asset deletion) are small database or storage operations.
BOOKKEEPING_TIMEOUT_SECONDS = 10.0

_ROLE_TO_PROTO = role_values(content_pb.MessageRole)
_ROLE_TO_DOMAIN = role_words(content_pb.MessageRole)
_SPOKEN_OUTCOME = {
    content_pb.SPOKEN_OUTCOME_ORDINARY: SpokenOutcome.ORDINARY,
    content_pb.SPOKEN_OUTCOME_CRISIS_GROUNDING: SpokenOutcome.CRISIS_GROUNDING,
}
_PROFILE = {
    VideoQuality.QUICK: media_pb.VIDEO_PROFILE_QUICK,
    VideoQuality.ENHANCED: media_pb.VIDEO_PROFILE_ENHANCED,
}
# Statuses whose message was written for the caller and can be passed on as it is.
_PASSED_ON = {
    grpc.StatusCode.INVALID_ARGUMENT: FailureKind.INVALID_INPUT,
    grpc.StatusCode.NOT_FOUND: FailureKind.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: FailureKind.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION: FailureKind.PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED: FailureKind.EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED: FailureKind.DEADLINE,
}

# What gRPC itself says when a call's own deadline expires (a service's StageTimeoutError says more).
_CLIENT_DEADLINE_DETAILS = "Deadline Exceeded"

T = TypeVar("T")
logger = logging.getLogger(__name__)


def _translate(error: grpc.aio.AioRpcError, service: str) -> GatewayError:
    code = error.code()
    kind = _PASSED_ON.get(code)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and error.details() == _CLIENT_DEADLINE_DETAILS:
        # Our own deadline ran out before the service answered: gRPC's words say nothing of whose.
        return GatewayError(FailureKind.DEADLINE, f"the {service} service did not answer in time")
    if kind is not None:
        return GatewayError(kind, error.details() or f"{service} service: {code.name}")
    if code == grpc.StatusCode.UNAVAILABLE:
        if error.details() and _is_answered(error):
            # The service answered: what it depends on is down, and its message says what.
            return GatewayError(FailureKind.UNAVAILABLE, f"{service}: {error.details()}")
        return GatewayError(
            FailureKind.UNAVAILABLE, f"the {service} service is unavailable; try again shortly"
        )
    if code == grpc.StatusCode.CANCELLED:
        return GatewayError(FailureKind.CANCELLED, f"the {service} call was cancelled")
    return GatewayError(FailureKind.INTERNAL, f"the {service} service failed: {error.details() or code.name}")


def _is_answered(error: grpc.aio.AioRpcError) -> bool:
    return any(key == ANSWERED_UNAVAILABLE_KEY for key, _ in error.trailing_metadata() or ())


async def _call(service: str, call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except grpc.aio.AioRpcError as error:
        raise _translate(error, service) from None


def _transcript_event(
    response: content_pb.GenerateTranscriptResponse,
) -> TranscriptPiece | TranscriptRestart | WrittenTranscript:
    if response.HasField("delta") and response.delta.restart:
        return TranscriptRestart(response.delta.restart_reason)
    if response.HasField("delta"):
        return TranscriptPiece(response.delta.text)
    done = response.completed
    return WrittenTranscript(
        text=done.text,
        word_count=done.word_count,
        is_cached=done.cached,
        provider=done.provider,
        fallback_reason=done.fallback_reason,
        spoken_outcome=_SPOKEN_OUTCOME.get(done.spoken_outcome, SpokenOutcome.ORDINARY),
        outcome_reason=done.outcome_reason,
    )


def _messages(messages: Sequence[Message]) -> list[content_pb.Message]:
    return [
        content_pb.Message(
            role=_ROLE_TO_PROTO.get(message.role, content_pb.MESSAGE_ROLE_UNSPECIFIED),
            text=message.text,
            create_time=to_timestamp(message.create_time) if message.create_time else None,
        )
        for message in messages
    ]


def _conversation(proto: content_pb.Conversation) -> Conversation:
    return Conversation(
        name=proto.name,
        title=proto.title,
        create_time=from_timestamp(proto.create_time),
        messages=tuple(
            Message(
                role=_ROLE_TO_DOMAIN.get(message.role, "user"),
                text=message.text,
                create_time=from_timestamp(message.create_time),
            )
            for message in proto.messages
        ),
    )


def _encoded_video(encoded: media_pb.VideoEncoded) -> EncodedVideo:
    return EncodedVideo(encode_seconds=seconds_of(encoded.encode_duration), encoder=encoded.encoder)


def _stored_video(stored: media_pb.VideoUploaded) -> StoredVideo:
    return StoredVideo(
        storage_key=stored.storage_key,
        duration_seconds=seconds_of(stored.duration),
        size_bytes=stored.size_bytes,
        width_pixels=stored.width_pixels,
        height_pixels=stored.height_pixels,
        encoder=stored.encoder,
        upload_seconds=seconds_of(stored.upload_duration),
    )


class ContentClient:
    """The content service over gRPC, with a deadline on every call."""

    def __init__(self, channel: grpc.aio.Channel, timeouts: StageTimeouts) -> None:
        self._stub = content_grpc.ContentServiceStub(channel)
        self._timeouts = timeouts

    async def create_conversation(
        self, owner: str, title: str, messages: Sequence[Message], request_id: str
    ) -> Conversation:
        """Stores `owner`'s conversation."""
        request = content_pb.CreateConversationRequest(
            title=title, messages=_messages(messages), request_id=request_id, owner=owner
        )
        response = await _call(
            "content",
            lambda: self._stub.CreateConversation(request, timeout=bounded(BOOKKEEPING_TIMEOUT_SECONDS)),
        )
        return _conversation(response.conversation)

    async def append_messages(self, owner: str, conversation: str, messages: Sequence[Message]) -> int:
        """Appends messages to `owner`'s conversation and returns the new count."""
        request = content_pb.AppendMessagesRequest(
            conversation=conversation, messages=_messages(messages), owner=owner
        )
        response = await _call(
            "content",
            lambda: self._stub.AppendMessages(request, timeout=bounded(BOOKKEEPING_TIMEOUT_SECONDS)),
        )
        return response.message_count

    async def get_conversation(self, owner: str, name: str) -> Conversation:
        """Returns `owner`'s conversation."""
        request = content_pb.GetConversationRequest(name=name, owner=owner)
        response = await _call(
            "content",
            lambda: self._stub.GetConversation(request, timeout=bounded(BOOKKEEPING_TIMEOUT_SECONDS)),
        )
        return _conversation(response.conversation)

    async def list_conversations(
        self, owner: str, page_size: int, after: PageCursor | None
    ) -> ConversationPage:
        """One page of `owner`'s conversations, newest first, without their messages."""
        request = content_pb.ListConversationsRequest(owner=owner, page_size=page_size)
        if after is not None:
            request.after.create_time.CopyFrom(to_timestamp(after.create_time))
            request.after.id = after.id
        response = await _call(
            "content",
            lambda: self._stub.ListConversations(request, timeout=bounded(BOOKKEEPING_TIMEOUT_SECONDS)),
        )
        next_cursor = (
            PageCursor(create_time=from_timestamp(response.next.create_time), id=response.next.id)
            if response.HasField("next")
            else None
        )
        return ConversationPage(
            conversations=tuple(_conversation(proto) for proto in response.conversations),
            next_cursor=next_cursor,
        )

    async def collect_source_content(self, owner: str, conversation: str) -> SourceContent:
        """Cuts `owner`'s conversation to its source content."""
        request = content_pb.CollectSourceContentRequest(conversation=conversation, owner=owner)
        response = await _call(
            "content",
            lambda: self._stub.CollectSourceContent(request, timeout=bounded(self._timeouts.source_seconds)),
        )
        return SourceContent(
            text=response.source_text,
            themes=tuple(response.themes),
            is_crisis_signalled=response.crisis_signalled,
            origin=ConversationRef(owner=owner, name=conversation),
        )

    async def generate_transcript(
        self,
        source_text: str,
        *,
        skip_cache: bool,
        is_crisis_signalled: bool = False,
        made_for: ConversationRef | None = None,
    ) -> AsyncIterator[TranscriptPiece | TranscriptRestart | WrittenTranscript]:
        """Streams the script as it is written, then the whole of it.

        A stream cut mid-way (its content replica stopped or crashed) fails the job's attempt with
        UNAVAILABLE, and the job's retry policy tries again: streams have no retry layer of their own.
        """
        request = content_pb.GenerateTranscriptRequest(
            source_text=source_text,
            skip_cache=skip_cache,
            crisis_signalled=is_crisis_signalled,
            conversation=made_for.name if made_for else "",
            owner=made_for.owner if made_for else "",
        )
        stream = self._stub.GenerateTranscript(request, timeout=bounded(self._timeouts.transcript_seconds))
        try:
            async for response in stream:
                yield _transcript_event(response)
        except grpc.aio.AioRpcError as error:
            raise _translate(error, "content") from None
        finally:
            stream.cancel()

    async def create_image_prompt(self, source_text: str) -> str:
        """Derives the image prompt."""
        request = content_pb.CreateImagePromptRequest(source_text=source_text)
        response = await _call(
            "content",
            lambda: self._stub.CreateImagePrompt(request, timeout=bounded(self._timeouts.image_seconds)),
        )
        return response.prompt

    async def generate_image(
        self,
        prompt: str,
        width_pixels: int,
        height_pixels: int,
        *,
        skip_cache: bool,
        made_for: ConversationRef | None = None,
    ) -> GeneratedImage:
        """Makes or finds the image."""
        request = content_pb.GenerateImageRequest(
            prompt=prompt,
            width_pixels=width_pixels,
            height_pixels=height_pixels,
            skip_cache=skip_cache,
            conversation=made_for.name if made_for else "",
            owner=made_for.owner if made_for else "",
        )
        response = await _call(
            "content",
            lambda: self._stub.GenerateImage(request, timeout=bounded(self._timeouts.image_seconds)),
        )
        return GeneratedImage(
            storage_key=response.storage_key,
            width_pixels=response.width_pixels,
            height_pixels=response.height_pixels,
            is_cached=response.cached,
            provider=response.provider,
            fallback_reason=response.fallback_reason,
        )

    async def delete_conversation(self, owner: str, name: str) -> None:
        """Erases `owner`'s conversation and what content made from it."""
        request = content_pb.DeleteConversationRequest(name=name, owner=owner)
        await _call(
            "content",
            lambda: self._stub.DeleteConversation(request, timeout=bounded(BOOKKEEPING_TIMEOUT_SECONDS)),
        )


class MediaClient:
    """The media service over gRPC, with a deadline on every call."""

    def __init__(self, channel: grpc.aio.Channel, timeouts: StageTimeouts) -> None:
        self._stub = media_grpc.MediaServiceStub(channel)
        self._timeouts = timeouts

    async def narrate_live(
        self, meditation: str, owner: str, script: AsyncIterator[str]
    ) -> AsyncGenerator[LivePlaylist | SpokenNarration, None]:
        """Streams the script to the media service as it arrives and relays the playlist (with its URI for
        `owner`) and the narration."""

        async def requests() -> AsyncIterator[media_pb.NarrateLiveRequest]:
            yield media_pb.NarrateLiveRequest(
                start=media_pb.NarrateLiveStart(meditation=meditation, owner=owner)
            )
            async for text in script:
                # Whole sentences, so media speaks the last of them now instead of waiting for the next text
                # to show where it ended: the first sentence no longer waits for the second to be written.
                yield media_pb.NarrateLiveRequest(
                    text=media_pb.NarrateLiveText(text=text, is_sentence_end=True)
                )
            yield media_pb.NarrateLiveRequest(end=media_pb.NarrateLiveEnd())

        # The narration runs alongside the transcript, so its deadline covers both.
        timeout = self._timeouts.transcript_seconds + self._timeouts.narration_seconds
        stream = self._stub.NarrateLive(requests(), timeout=bounded(timeout))
        try:
            async for response in stream:
                if response.HasField("playlist_ready"):
                    ready = response.playlist_ready
                    yield LivePlaylist(storage_key=ready.storage_key, owner_uri=ready.owner_uri)
                    continue
                done = response.completed
                yield SpokenNarration(
                    storage_key=done.storage_key,
                    duration_seconds=seconds_of(done.duration),
                    provider=done.provider,
                    fallback_reason=done.fallback_reason,
                    aac_storage_key=done.aac_storage_key,
                    misread_sentence_count=done.misread_sentence_count,
                    subtitles_storage_key=done.subtitles_storage_key,
                    stored_bytes=done.stored_bytes,
                    quick_video=(
                        MadeVideo(_encoded_video(done.quick_video_encoded), _stored_video(done.quick_video))
                        if done.HasField("quick_video") and done.HasField("quick_video_encoded")
                        else None
                    ),
                    sentences=tuple(
                        SentenceTiming(
                            text=sentence.text,
                            start_seconds=seconds_of(sentence.start_offset),
                            end_seconds=seconds_of(sentence.end_offset),
                        )
                        for sentence in done.sentences
                    ),
                )
        except grpc.aio.AioRpcError as error:
            raise _translate(error, "media") from None
        finally:
            stream.cancel()

    async def delete_meditation_assets(self, meditation: str) -> int:
        """Removes a meditation's narration, preview and videos."""
        request = media_pb.DeleteMeditationAssetsRequest(meditation=meditation)
        response = await _call(
            "media",
            lambda: self._stub.DeleteMeditationAssets(request, timeout=bounded(BOOKKEEPING_TIMEOUT_SECONDS)),
        )
        return response.deleted_count

    async def measure_meditation_assets(self, meditation: str) -> int:
        """Asks media what the meditation's assets take in storage."""
        request = media_pb.MeasureMeditationAssetsRequest(meditation=meditation)
        response = await _call(
            "media",
            lambda: self._stub.MeasureMeditationAssets(request, timeout=bounded(BOOKKEEPING_TIMEOUT_SECONDS)),
        )
        return response.size_bytes

    async def asset_uris(self, storage_keys: Sequence[str], owner: str) -> list[str]:
        """Asks media to sign the assets' URIs now, for `owner`."""
        request = media_pb.SignAssetUrisRequest(storage_keys=list(storage_keys), owner=owner)
        response = await _call(
            "media",
            lambda: self._stub.SignAssetUris(request, timeout=bounded(BOOKKEEPING_TIMEOUT_SECONDS)),
        )
        if len(response.uris) != len(storage_keys):
            raise GatewayError(FailureKind.INTERNAL, "the media service signed a different number of URIs")
        return list(response.uris)

    async def render_video(
        self, meditation: str, image_storage_key: str, narration: SpokenNarration, quality: VideoQuality
    ) -> AsyncGenerator[EncodedVideo | StoredVideo, None]:
        """Renders and stores a video, reporting the encode and then the upload."""
        request = media_pb.RenderVideoRequest(
            meditation=meditation,
            image_storage_key=image_storage_key,
            narration_storage_key=narration.storage_key,
            narration_aac_storage_key=narration.aac_storage_key,
            subtitles_storage_key=narration.subtitles_storage_key,
            profile=_PROFILE[quality],
        )
        # One deadline covers the encode and the upload: the video stage's budget, doubled.
        stream = self._stub.RenderVideo(request, timeout=bounded(2 * self._timeouts.video_seconds))
        try:
            async for response in stream:
                if response.HasField("encoded"):
                    yield _encoded_video(response.encoded)
                else:
                    yield _stored_video(response.uploaded)
        except grpc.aio.AioRpcError as error:
            raise _translate(error, "media") from None
        finally:
            stream.cancel()
