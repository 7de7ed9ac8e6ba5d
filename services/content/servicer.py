"""ContentService: translates gRPC requests into calls on the content domain and back."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import grpc

from services.cache.base import CacheUnavailableError, ResultCache
from services.content import conversations
from services.content.erasure import ConversationErasure
from services.content.errors import (
    AlreadyExistsError,
    ContentError,
    DatabaseUnavailableError,
    InvalidInputError,
    NotFoundError,
    PreconditionError,
    QuotaExceededError,
)
from services.content.generation import (
    ImageGenerator,
    TranscriptDelta,
    TranscriptGenerator,
    TranscriptRestart,
)
from services.content.pregeneration import pregenerate_images
from services.content.refuge import image_prompt_for
from services.content.repository import (
    ContentRepository,
    Conversation,
    ConversationCursor,
    NewMessage,
)
from services.content.spoken_safety import SpokenOutcome
from services.image_sizes import LANDSCAPE_SIZE_PIXELS
from services.message_roles import role_values, role_words
from services.proto_time import from_timestamp, to_timestamp
from services.provider_status import ProviderReport
from services.servicer_status import DEPENDENCY_FAILURES, abort, status_of_dependency_failure
from stillpoint.content.v2 import content_service_pb2 as content_pb
from stillpoint.content.v2 import content_service_pb2_grpc as content_grpc

logger = logging.getLogger(__name__)
# The stubs make the context generic; the servicer methods are typed by their request and response.
_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

_ID = r"[0-9a-f]{16}"
_CONVERSATION_NAME = re.compile(rf"^conversations/({_ID})$")

_ROLE_TO_DOMAIN = role_words(content_pb.MessageRole)
_ROLE_TO_PROTO = role_values(content_pb.MessageRole)
_SPOKEN_OUTCOME_TO_PROTO = {
    SpokenOutcome.ORDINARY: content_pb.SPOKEN_OUTCOME_ORDINARY,
    SpokenOutcome.CRISIS_GROUNDING: content_pb.SPOKEN_OUTCOME_CRISIS_GROUNDING,
}


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
        self._erasure = ConversationErasure(repository, transcripts, images)
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
                owner=_owner(request.owner),
                title=title,
                messages=messages,
                request_id=request_id,
                request_sha256=conversations.request_sha256(title, messages),
            )
        return content_pb.CreateConversationResponse(conversation=_conversation_proto(stored))

    async def AppendMessages(
        self, request: content_pb.AppendMessagesRequest, context: _Context
    ) -> content_pb.AppendMessagesResponse:
        async with _status_for_errors(context):
            conversation_id = _parse_name(request.conversation, _CONVERSATION_NAME, "conversation")
            messages = _new_messages(request.messages)
            conversations.validate_messages(messages, allow_empty=False)
            count = await self._repository.append_messages(_owner(request.owner), conversation_id, messages)
        return content_pb.AppendMessagesResponse(message_count=count)

    async def GetConversation(
        self, request: content_pb.GetConversationRequest, context: _Context
    ) -> content_pb.GetConversationResponse:
        async with _status_for_errors(context):
            conversation_id = _parse_name(request.name, _CONVERSATION_NAME, "name")
            stored = await self._repository.get_conversation(_owner(request.owner), conversation_id)
        return content_pb.GetConversationResponse(conversation=_conversation_proto(stored))

    async def CollectSourceContent(
        self, request: content_pb.CollectSourceContentRequest, context: _Context
    ) -> content_pb.CollectSourceContentResponse:
        async with _status_for_errors(context):
            conversation_id = _parse_name(request.conversation, _CONVERSATION_NAME, "conversation")
            source = await conversations.collect_source_content(
                self._repository, _owner(request.owner), conversation_id
            )
        return content_pb.CollectSourceContentResponse(
            source_text=source.text,
            source_sha256=source.sha256,
            themes=source.themes,
            crisis_signalled=source.is_crisis,
        )

    async def GenerateTranscript(
        self, request: content_pb.GenerateTranscriptRequest, context: _Context
    ) -> AsyncIterator[content_pb.GenerateTranscriptResponse]:
        async with _status_for_errors(context):
            events = self._transcripts.generate(
                request.source_text, skip_cache=request.skip_cache, is_crisis=request.crisis_signalled
            )
            if request.conversation:
                conversation_id = _parse_name(request.conversation, _CONVERSATION_NAME, "conversation")
                events = self._erasure.transcript(_owner(request.owner), conversation_id, events)
            async for event in events:
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
                            spoken_outcome=_SPOKEN_OUTCOME_TO_PROTO[event.spoken_outcome],
                            outcome_reason=event.outcome_reason,
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
            # Off the event loop: fifty prompts composed on it when fifty people arrived together held up
            # everyone's transcript, the first thing each of them waits for, by seconds.
            prompt = await asyncio.to_thread(image_prompt_for, request.source_text)
        return content_pb.CreateImagePromptResponse(prompt=prompt)

    async def GenerateImage(
        self, request: content_pb.GenerateImageRequest, context: _Context
    ) -> content_pb.GenerateImageResponse:
        async with _status_for_errors(context):
            conversation_id = (
                _parse_name(request.conversation, _CONVERSATION_NAME, "conversation")
                if request.conversation
                else None
            )
            if conversation_id is not None:
                await self._erasure.check_owner(_owner(request.owner), conversation_id)
            image = await self._images.generate(
                request.prompt, request.width_pixels, request.height_pixels, skip_cache=request.skip_cache
            )
            if conversation_id is not None:
                image = await self._erasure.image(request.owner, conversation_id, image)
        return content_pb.GenerateImageResponse(
            storage_key=image.storage_key,
            width_pixels=image.width_pixels,
            height_pixels=image.height_pixels,
            cached=image.is_cached,
            provider=image.provider,
            fallback_reason=image.fallback_reason,
        )

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
                await abort(
                    context, grpc.StatusCode.UNAVAILABLE, "the shared cache is unavailable; try again"
                )
            response.caches.add(name=cache.name, hits=stats.hits, misses=stats.misses, backend=cache.backend)
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

    async def ListConversations(
        self, request: content_pb.ListConversationsRequest, context: _Context
    ) -> content_pb.ListConversationsResponse:
        async with _status_for_errors(context):
            owner = _owner(request.owner)
            if not 1 <= request.page_size <= _MAX_PAGE_SIZE:
                raise InvalidInputError("page_size", f"must be 1 to {_MAX_PAGE_SIZE}")
            after = _cursor(request.after) if request.HasField("after") else None
            page = await self._repository.list_conversations(owner, request.page_size, after)
        response = content_pb.ListConversationsResponse(
            conversations=[_conversation_proto(conversation) for conversation in page.conversations]
        )
        if page.next_cursor is not None:
            response.next.create_time.CopyFrom(to_timestamp(page.next_cursor.create_time))
            response.next.id = page.next_cursor.id
        return response

    async def DeleteConversation(
        self, request: content_pb.DeleteConversationRequest, context: _Context
    ) -> content_pb.DeleteConversationResponse:
        async with _status_for_errors(context):
            conversation_id = _parse_name(request.name, _CONVERSATION_NAME, "name")
            erased = await self._erasure.delete(_owner(request.owner), conversation_id)
        return content_pb.DeleteConversationResponse(
            message_count=erased.message_count,
            cache_entry_count=erased.cache_entry_count,
            asset_count=erased.asset_count,
        )


@asynccontextmanager
async def _status_for_errors(context: _Context) -> AsyncIterator[None]:
    """The one place content errors become gRPC status codes (AIP-193: short and actionable)."""
    try:
        yield
    except AlreadyExistsError as error:
        await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(error))
    except InvalidInputError as error:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    except NotFoundError as error:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
    except PreconditionError as error:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
    except QuotaExceededError as error:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
    except DEPENDENCY_FAILURES as error:
        await abort(context, *status_of_dependency_failure(error))
    except DatabaseUnavailableError as error:
        # What the driver said is for operators; the client learns only that a retry may succeed.
        logger.warning("conversation database unavailable: %r", error.__cause__)
        await abort(context, grpc.StatusCode.UNAVAILABLE, str(error))
    except CacheUnavailableError:
        # Only an erasure needs Redis rather than degrading to a miss: it must not report done while an
        # entry may still be served. The address is for operators (the erasure logged the key).
        await abort(
            context, grpc.StatusCode.UNAVAILABLE, "the shared cache is unavailable; try again shortly"
        )
    except ContentError as error:
        logger.exception("content service error")
        await context.abort(grpc.StatusCode.INTERNAL, f"content service failed ({type(error).__name__})")


def _owner(owner: str) -> str:
    """The caller the gateway authenticated; every conversation RPC must name one."""
    if not owner or len(owner) > _MAX_OWNER_CHARS:
        raise InvalidInputError(
            "owner", f"must name the authenticated caller (1 to {_MAX_OWNER_CHARS} characters)"
        )
    return owner


_MAX_OWNER_CHARS = 128
# The gateway asks for at most this many conversations a page.
_MAX_PAGE_SIZE = 100
_BARE_ID = re.compile(_ID)


def _cursor(cursor: content_pb.ConversationCursor) -> ConversationCursor:
    if not _BARE_ID.fullmatch(cursor.id):
        raise InvalidInputError("after.id", "must be a conversation's 16-hex-digit id")
    try:
        create_time = from_timestamp(cursor.create_time)
    except ValueError:
        raise InvalidInputError("after.create_time", "is out of range") from None
    return ConversationCursor(create_time=create_time, id=cursor.id)


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
