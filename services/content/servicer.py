"""ContentService: translates gRPC requests into calls on the content domain and back."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import grpc
from google.protobuf.duration_pb2 import Duration

from services.cache import CacheUnavailableError, RedisCache, ResultCache
from services.content import conversations
from services.content.errors import (
    ConflictError,
    ContentError,
    ExhaustedError,
    InvalidInputError,
    NotFoundError,
    PreconditionError,
)
from services.content.generation import (
    ImageGenerator,
    TranscriptDelta,
    TranscriptGenerator,
    TranscriptRestart,
)
from services.content.image_prompts import create_image_prompt
from services.content.pregeneration import pregenerate_images
from services.content.repository import (
    ContentRepository,
    Conversation,
    Meditation,
    MeditationChanges,
    MeditationState,
    NewMessage,
)
from services.content.themes import extract_themes
from services.image_sizes import LANDSCAPE_SIZE_PIXELS
from services.openai_api import ProviderCallError, ProviderFailureKind
from services.proto_time import from_timestamp, seconds_of, to_timestamp
from services.provider_status import ProviderReport
from services.supabase_storage import StorageUnavailableError
from stillpoint.content.v1 import content_service_pb2 as content_pb
from stillpoint.content.v1 import content_service_pb2_grpc as content_grpc

logger = logging.getLogger(__name__)
# The stubs make the context generic; the servicer methods are typed by their request and response.
_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

_ID = r"[0-9a-f]{16}"
_CONVERSATION_NAME = re.compile(rf"^conversations/({_ID})$")
_MEDITATION_NAME = re.compile(rf"^meditations/({_ID})$")
MAX_EVENTS_PER_PAGE = 1000

_ROLE_TO_DOMAIN = {
    content_pb.MESSAGE_ROLE_USER: "user",
    content_pb.MESSAGE_ROLE_ASSISTANT: "assistant",
    content_pb.MESSAGE_ROLE_SYSTEM: "system",
}
_ROLE_TO_PROTO = {value: key for key, value in _ROLE_TO_DOMAIN.items()}
_STATE_TO_PROTO = {
    MeditationState.RUNNING: content_pb.MEDITATION_STATE_RUNNING,
    MeditationState.SUCCEEDED: content_pb.MEDITATION_STATE_SUCCEEDED,
    MeditationState.FAILED: content_pb.MEDITATION_STATE_FAILED,
    MeditationState.CANCELLED: content_pb.MEDITATION_STATE_CANCELLED,
}
_STATE_TO_DOMAIN = {value: key for key, value in _STATE_TO_PROTO.items()}


class ContentServicer(content_grpc.ContentServiceServicer):
    """Validates, converts, makes one domain call, converts back."""

    def __init__(
        self,
        repository: ContentRepository,
        transcripts: TranscriptGenerator,
        images: ImageGenerator,
        providers: list[ProviderReport] | None = None,
        *,
        caches: Sequence[ResultCache] = (),
        pregenerate_prompts: Sequence[str] = (),
    ) -> None:
        self._repository = repository
        self._transcripts = transcripts
        self._images = images
        self._providers = providers or []
        self._caches = list(caches)
        self._pregenerate_prompts = list(pregenerate_prompts)

    async def CreateConversation(
        self, request: content_pb.CreateConversationRequest, context: _Context
    ) -> content_pb.CreateConversationResponse:
        async with _status_for_errors(context):
            title = conversations.validate_title(request.title)
            request_id = conversations.validate_request_id(request.request_id)
            messages = _new_messages(request.messages)
            conversations.validate_messages(messages, allow_empty=True)
            stored = await self._repository.create_conversation(
                title=title, messages=messages, request_id=request_id
            )
        return content_pb.CreateConversationResponse(conversation=_conversation_proto(stored))

    async def AppendMessages(
        self, request: content_pb.AppendMessagesRequest, context: _Context
    ) -> content_pb.AppendMessagesResponse:
        async with _status_for_errors(context):
            conversation_id = _parse_name(request.conversation, _CONVERSATION_NAME, "conversation")
            messages = _new_messages(request.messages)
            conversations.validate_messages(messages, allow_empty=False)
            count = await self._repository.append_messages(conversation_id, messages)
        return content_pb.AppendMessagesResponse(message_count=count)

    async def GetConversation(
        self, request: content_pb.GetConversationRequest, context: _Context
    ) -> content_pb.GetConversationResponse:
        async with _status_for_errors(context):
            conversation_id = _parse_name(request.name, _CONVERSATION_NAME, "name")
            stored = await self._repository.get_conversation(conversation_id)
        return content_pb.GetConversationResponse(conversation=_conversation_proto(stored))

    async def CollectSourceContent(
        self, request: content_pb.CollectSourceContentRequest, context: _Context
    ) -> content_pb.CollectSourceContentResponse:
        async with _status_for_errors(context):
            conversation_id = _parse_name(request.conversation, _CONVERSATION_NAME, "conversation")
            source = await conversations.collect_source_content(self._repository, conversation_id)
        return content_pb.CollectSourceContentResponse(
            source_text=source.text, source_sha256=source.sha256, themes=source.themes
        )

    async def GenerateTranscript(
        self, request: content_pb.GenerateTranscriptRequest, context: _Context
    ) -> AsyncIterator[content_pb.GenerateTranscriptResponse]:
        async with _status_for_errors(context):
            async for event in self._transcripts.generate(request.source_text, skip_cache=request.skip_cache):
                if isinstance(event, TranscriptDelta):
                    yield content_pb.GenerateTranscriptResponse(
                        delta=content_pb.TranscriptDelta(text=event.text)
                    )
                elif isinstance(event, TranscriptRestart):
                    yield content_pb.GenerateTranscriptResponse(
                        delta=content_pb.TranscriptDelta(restart=True, restart_reason=event.reason)
                    )
                else:
                    yield content_pb.GenerateTranscriptResponse(
                        completed=content_pb.TranscriptCompleted(
                            text=event.text,
                            word_count=event.word_count,
                            cached=event.is_cached,
                            provider=event.provider,
                            fallback_reason=event.fallback_reason,
                        )
                    )

    async def CreateImagePrompt(
        self, request: content_pb.CreateImagePromptRequest, context: _Context
    ) -> content_pb.CreateImagePromptResponse:
        async with _status_for_errors(context):
            if not request.source_text.strip():
                raise InvalidInputError(
                    "source_text", "is empty: collect source content from a conversation first"
                )
            prompt = create_image_prompt(extract_themes(request.source_text), request.source_text)
        return content_pb.CreateImagePromptResponse(prompt=prompt)

    async def GenerateImage(
        self, request: content_pb.GenerateImageRequest, context: _Context
    ) -> content_pb.GenerateImageResponse:
        async with _status_for_errors(context):
            image = await self._images.generate(
                request.prompt, request.width_pixels, request.height_pixels, skip_cache=request.skip_cache
            )
        return content_pb.GenerateImageResponse(
            storage_key=image.storage_key,
            uri=image.uri,
            width_pixels=image.width_pixels,
            height_pixels=image.height_pixels,
            cached=image.is_cached,
            provider=image.provider,
            fallback_reason=image.fallback_reason,
        )

    async def CreateMeditation(
        self, request: content_pb.CreateMeditationRequest, context: _Context
    ) -> content_pb.CreateMeditationResponse:
        async with _status_for_errors(context):
            conversation_id = _parse_name(request.conversation, _CONVERSATION_NAME, "conversation")
            request_id = conversations.validate_request_id(request.request_id)
            meditation, created = await self._repository.create_meditation(
                conversation_id=conversation_id,
                request_id=request_id,
                options_json=request.options_json or "{}",
                owner=request.owner or None,
                lease_seconds=(
                    _lease_seconds(request.lease_duration)
                    if request.owner or request.HasField("lease_duration")
                    else 0.0
                ),
                client=_client(request.client),
                max_running_per_client=max(0, request.max_running_per_client),
            )
        return content_pb.CreateMeditationResponse(meditation=_meditation_proto(meditation), created=created)

    async def RecordMeditationEvent(
        self, request: content_pb.RecordMeditationEventRequest, context: _Context
    ) -> content_pb.RecordMeditationEventResponse:
        async with _status_for_errors(context):
            meditation_id = _parse_name(request.meditation, _MEDITATION_NAME, "meditation")
            if request.sequence < 1:
                raise InvalidInputError("sequence", "must be 1 or more")
            update = request.update
            changes = MeditationChanges(
                state=_STATE_TO_DOMAIN.get(update.state),
                transcript=update.transcript or None,
                image_uri=update.image_uri or None,
                narration_uri=update.narration_uri or None,
                quick_video_uri=update.quick_video_uri or None,
                enhanced_video_uri=update.enhanced_video_uri or None,
                failure_message=update.failure_message or None,
            )
            event_time = await self._repository.record_event(
                meditation_id, request.sequence, request.payload, changes
            )
        return content_pb.RecordMeditationEventResponse(event_time=to_timestamp(event_time))

    async def ListMeditationEvents(
        self, request: content_pb.ListMeditationEventsRequest, context: _Context
    ) -> content_pb.ListMeditationEventsResponse:
        async with _status_for_errors(context):
            meditation_id = _parse_name(request.meditation, _MEDITATION_NAME, "meditation")
            if request.after_sequence < 0:
                raise InvalidInputError("after_sequence", "must be 0 or more")
            if not 0 <= request.max_events <= MAX_EVENTS_PER_PAGE:
                raise InvalidInputError("max_events", f"must be 0..{MAX_EVENTS_PER_PAGE}")
            page = await self._repository.list_events(
                meditation_id, request.after_sequence, request.max_events or MAX_EVENTS_PER_PAGE
            )
        return content_pb.ListMeditationEventsResponse(
            events=[
                content_pb.RecordedEvent(
                    sequence=event.sequence, payload=event.payload, event_time=to_timestamp(event.event_time)
                )
                for event in page.events
            ],
            state=_STATE_TO_PROTO[page.state],
        )

    async def GetMeditation(
        self, request: content_pb.GetMeditationRequest, context: _Context
    ) -> content_pb.GetMeditationResponse:
        async with _status_for_errors(context):
            meditation_id = _parse_name(request.name, _MEDITATION_NAME, "name")
            meditation = await self._repository.get_meditation(meditation_id)
        return content_pb.GetMeditationResponse(meditation=_meditation_proto(meditation))

    async def GetProviderStatus(
        self, request: content_pb.GetProviderStatusRequest, context: _Context
    ) -> content_pb.GetProviderStatusResponse:
        return content_pb.GetProviderStatusResponse(
            providers=[
                content_pb.ProviderStatus(
                    capability=report.capability,
                    provider=report.provider,
                    model=report.model,
                    fallback_to_offline=report.fallback_to_offline,
                    warnings=report.warnings,
                )
                for report in self._providers
            ]
        )

    async def ClaimMeditation(
        self, request: content_pb.ClaimMeditationRequest, context: _Context
    ) -> content_pb.ClaimMeditationResponse:
        async with _status_for_errors(context):
            meditation_id = _parse_name(request.meditation, _MEDITATION_NAME, "meditation")
            lease_seconds = _lease_seconds(request.lease_duration)
            if request.requeue:
                claimed = await self._repository.requeue(meditation_id, lease_seconds)
            elif not request.owner:
                raise InvalidInputError("owner", "is empty: name the claiming process")
            else:
                claimed = await self._repository.claim(meditation_id, request.owner, lease_seconds)
        return content_pb.ClaimMeditationResponse(claimed=claimed)

    async def ReleaseMeditation(
        self, request: content_pb.ReleaseMeditationRequest, context: _Context
    ) -> content_pb.ReleaseMeditationResponse:
        async with _status_for_errors(context):
            meditation_id = _parse_name(request.meditation, _MEDITATION_NAME, "meditation")
            queue_lease_seconds = (
                _lease_seconds(request.queue_lease_duration)
                if request.HasField("queue_lease_duration")
                else 0.0
            )
            await self._repository.release(meditation_id, request.owner, queue_lease_seconds)
        return content_pb.ReleaseMeditationResponse()

    async def ListClaimableMeditations(
        self, request: content_pb.ListClaimableMeditationsRequest, context: _Context
    ) -> content_pb.ListClaimableMeditationsResponse:
        async with _status_for_errors(context):
            if not 0 <= request.max_meditations <= 100:
                raise InvalidInputError("max_meditations", "must be 0..100")
            ids = await self._repository.list_claimable(request.max_meditations or 10)
        return content_pb.ListClaimableMeditationsResponse(meditations=[f"meditations/{i}" for i in ids])

    async def GetCacheStats(
        self, request: content_pb.GetCacheStatsRequest, context: _Context
    ) -> content_pb.GetCacheStatsResponse:
        response = content_pb.GetCacheStatsResponse()
        for cache in self._caches:
            try:
                stats = await cache.read_stats()
            except CacheUnavailableError:
                # The address is for operators (it is in the log), not for clients.
                logger.warning("cache %s: Redis is unavailable for its counters", cache.name)
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the shared cache is unavailable; try again")
            backend = "redis" if isinstance(cache, RedisCache) else "in-process"
            response.caches.add(name=cache.name, hits=stats.hits, misses=stats.misses, backend=backend)
        return response

    async def PregenerateImages(
        self, request: content_pb.PregenerateImagesRequest, context: _Context
    ) -> AsyncIterator[content_pb.PregenerateImagesResponse]:
        async with _status_for_errors(context):
            prompts = list(request.prompts) or self._pregenerate_prompts
            default_width, default_height = LANDSCAPE_SIZE_PIXELS
            width, height = (request.width_pixels or default_width), (request.height_pixels or default_height)
            async for made in pregenerate_images(self._images, prompts, width, height):
                yield content_pb.PregenerateImagesResponse(
                    prompt=made.prompt,
                    storage_key=made.image.storage_key,
                    cached=made.image.is_cached,
                    provider=made.image.provider,
                )


_PROVIDER_STATUS = {
    ProviderFailureKind.CREDENTIALS: grpc.StatusCode.FAILED_PRECONDITION,
    ProviderFailureKind.MODEL: grpc.StatusCode.FAILED_PRECONDITION,
    ProviderFailureKind.REJECTED: grpc.StatusCode.FAILED_PRECONDITION,
    ProviderFailureKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ProviderFailureKind.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
}


@asynccontextmanager
async def _status_for_errors(context: _Context) -> AsyncIterator[None]:
    """The one place content errors become gRPC status codes (AIP-193: short and actionable)."""
    try:
        yield
    except InvalidInputError as error:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    except NotFoundError as error:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
    except PreconditionError as error:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
    except ConflictError as error:
        await context.abort(grpc.StatusCode.ABORTED, str(error))
    except ExhaustedError as error:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
    except ProviderCallError as error:
        await context.abort(_PROVIDER_STATUS[error.kind], error.message)
    except StorageUnavailableError as error:
        logger.warning("storage unavailable: %s", error)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "asset storage is unavailable; try again shortly")
    except ContentError as error:
        logger.exception("content service error")
        await context.abort(grpc.StatusCode.INTERNAL, f"content service failed ({type(error).__name__})")


def _client(client: str) -> str | None:
    if len(client) > _MAX_CLIENT_CHARACTERS:
        raise InvalidInputError("client", f"is longer than {_MAX_CLIENT_CHARACTERS} characters")
    return client or None


_MAX_CLIENT_CHARACTERS = 128


def _lease_seconds(duration: Duration) -> float:
    seconds = seconds_of(duration)
    if not 1 <= seconds <= 3600:
        raise InvalidInputError("lease_duration", "must be between 1 s and 1 h")
    return seconds


def _parse_name(name: str, pattern: re.Pattern[str], field: str) -> str:
    match = pattern.fullmatch(name)
    if match is None:
        example = pattern.pattern.strip("^$").split("/")[0]
        raise InvalidInputError(
            field, f"{name!r} is not a valid name: expected {example}/ and a 16-hex-digit id"
        )
    return match.group(1)


def _new_messages(messages: Iterable[content_pb.Message]) -> list[NewMessage]:
    return [
        NewMessage(
            role=_ROLE_TO_DOMAIN.get(message.role, ""),
            text=message.text,
            create_time=from_timestamp(message.create_time) if message.HasField("create_time") else None,
        )
        for message in messages
    ]


def _conversation_proto(conversation: Conversation) -> content_pb.Conversation:
    return content_pb.Conversation(
        name=f"conversations/{conversation.id}",
        title=conversation.title,
        create_time=to_timestamp(conversation.create_time),
        messages=[
            content_pb.Message(
                role=_ROLE_TO_PROTO[message.role],
                text=message.text,
                create_time=to_timestamp(message.create_time),
            )
            for message in conversation.messages
        ],
    )


def _meditation_proto(meditation: Meditation) -> content_pb.Meditation:
    return content_pb.Meditation(
        name=f"meditations/{meditation.id}",
        conversation=f"conversations/{meditation.conversation_id}",
        state=_STATE_TO_PROTO[meditation.state],
        transcript=meditation.transcript,
        image_uri=meditation.image_uri,
        narration_uri=meditation.narration_uri,
        quick_video_uri=meditation.quick_video_uri,
        enhanced_video_uri=meditation.enhanced_video_uri,
        failure_message=meditation.failure_message,
        last_sequence=meditation.last_sequence,
        create_time=to_timestamp(meditation.create_time),
        options_json=meditation.options_json,
    )
