"""GatewayService: translates client requests into calls on conversations and meditation jobs, and back."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeAlias, TypeVar

import grpc

from services.gateway import erasure, events
from services.gateway.authentication import Authenticator, caller, set_caller
from services.gateway.deadlines import client_deadline
from services.gateway.errors import FailureKind, GatewayError, InvalidInputError
from services.gateway.jobs import MeditationJobs
from services.gateway.models import (
    Conversation,
    ImageAspect,
    Meditation,
    MeditationOptions,
    MeditationState,
    Message,
)
from services.gateway.open_streams import OpenStreams
from services.gateway.pagination import PageTokens, page_size
from services.gateway.ports import ContentPort
from services.message_roles import role_values, role_words
from services.proto_time import from_timestamp, to_duration, to_timestamp
from services.rpc_handlers import with_behaviour
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc

logger = logging.getLogger(__name__)
# The stubs make the context generic; the servicer methods are typed by their request and response.
_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

_CONVERSATION_NAME = re.compile(r"^conversations/[0-9a-f]{16}$")
_MEDITATION_NAME = re.compile(r"^meditations/[0-9a-f]{16}$")
# AIP-155: a request_id is a UUID in its canonical 8-4-4-4-12 hexadecimal form; hex digits are
# case-insensitive on input (RFC 9562), and some tools (macOS uuidgen) print upper case.
_REQUEST_ID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")

_STATUS = {
    FailureKind.INVALID_INPUT: grpc.StatusCode.INVALID_ARGUMENT,
    FailureKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    FailureKind.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    FailureKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    FailureKind.PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    FailureKind.EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    FailureKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    FailureKind.DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED,
    FailureKind.CANCELLED: grpc.StatusCode.CANCELLED,
    FailureKind.ABORTED: grpc.StatusCode.ABORTED,
    FailureKind.INTERNAL: grpc.StatusCode.INTERNAL,
}
_ROLE_TO_DOMAIN = role_words(gateway_pb.MessageRole)
_ROLE_TO_PROTO = role_values(gateway_pb.MessageRole)
_ASPECT: dict[int, ImageAspect] = {
    gateway_pb.IMAGE_ASPECT_UNSPECIFIED: ImageAspect.LANDSCAPE,
    gateway_pb.IMAGE_ASPECT_LANDSCAPE: ImageAspect.LANDSCAPE,
    gateway_pb.IMAGE_ASPECT_SQUARE: ImageAspect.SQUARE,
}
_MEDITATION_STATE = {
    MeditationState.RUNNING: gateway_pb.MEDITATION_STATE_RUNNING,
    MeditationState.SUCCEEDED: gateway_pb.MEDITATION_STATE_SUCCEEDED,
    MeditationState.FAILED: gateway_pb.MEDITATION_STATE_FAILED,
    MeditationState.CANCELLED: gateway_pb.MEDITATION_STATE_CANCELLED,
}
_STAGE = {
    events.Stage.SOURCE: gateway_pb.STAGE_SOURCE,
    events.Stage.TRANSCRIPT: gateway_pb.STAGE_TRANSCRIPT,
    events.Stage.IMAGE: gateway_pb.STAGE_IMAGE,
    events.Stage.NARRATION: gateway_pb.STAGE_NARRATION,
    events.Stage.QUICK_VIDEO: gateway_pb.STAGE_QUICK_VIDEO,
    events.Stage.ENHANCED_VIDEO: gateway_pb.STAGE_ENHANCED_VIDEO,
    events.Stage.UPLOAD: gateway_pb.STAGE_UPLOAD,
}
_STAGE_STATE = {
    events.StageState.STARTED: gateway_pb.STAGE_STATE_STARTED,
    events.StageState.SUCCEEDED: gateway_pb.STAGE_STATE_SUCCEEDED,
    events.StageState.FAILED: gateway_pb.STAGE_STATE_FAILED,
    events.StageState.STOPPED: gateway_pb.STAGE_STATE_STOPPED,
}
_SPOKEN_OUTCOME = {
    events.SpokenOutcome.UNSPECIFIED: gateway_pb.SPOKEN_OUTCOME_UNSPECIFIED,
    events.SpokenOutcome.ORDINARY: gateway_pb.SPOKEN_OUTCOME_ORDINARY,
    events.SpokenOutcome.CRISIS_GROUNDING: gateway_pb.SPOKEN_OUTCOME_CRISIS_GROUNDING,
}
_QUALITY = {
    events.VideoQuality.QUICK: gateway_pb.VIDEO_QUALITY_QUICK,
    events.VideoQuality.ENHANCED: gateway_pb.VIDEO_QUALITY_ENHANCED,
}

_TRequest = TypeVar("_TRequest")
_TResponse = TypeVar("_TResponse")
StreamResponse = TypeVar(
    "StreamResponse", gateway_pb.GenerateMeditationResponse, gateway_pb.WatchMeditationResponse
)


class GatewayServicer(gateway_grpc.GatewayServiceServicer):
    """Validates, converts, makes one domain call, converts back."""

    def __init__(
        self,
        content: ContentPort,
        jobs: MeditationJobs,
        page_tokens: PageTokens | None = None,
        open_streams: OpenStreams | None = None,
    ) -> None:
        self._content = content
        self._jobs = jobs
        self._open_streams = open_streams or OpenStreams()
        # Without a shared secret, a key of this process's own: its tokens work only here.
        self._page_tokens = page_tokens or PageTokens()

    async def CreateConversation(
        self, request: gateway_pb.CreateConversationRequest, context: _Context
    ) -> gateway_pb.CreateConversationResponse:
        async with _status_for_errors(context):
            messages = _messages(request.messages)
            conversation = await self._content.create_conversation(
                caller(), request.title, messages, _checked_request_id(request.request_id)
            )
        return gateway_pb.CreateConversationResponse(conversation=_conversation_proto(conversation))

    async def AppendMessages(
        self, request: gateway_pb.AppendMessagesRequest, context: _Context
    ) -> gateway_pb.AppendMessagesResponse:
        async with _status_for_errors(context):
            name = _checked_name(request.conversation, _CONVERSATION_NAME, "conversation")
            count = await self._content.append_messages(caller(), name, _messages(request.messages))
        return gateway_pb.AppendMessagesResponse(message_count=count)

    async def GetConversation(
        self, request: gateway_pb.GetConversationRequest, context: _Context
    ) -> gateway_pb.GetConversationResponse:
        async with _status_for_errors(context):
            name = _checked_name(request.name, _CONVERSATION_NAME, "name")
            conversation = await self._content.get_conversation(caller(), name)
        return gateway_pb.GetConversationResponse(conversation=_conversation_proto(conversation))

    async def GenerateMeditation(
        self, request: gateway_pb.GenerateMeditationRequest, context: _Context
    ) -> AsyncIterator[gateway_pb.GenerateMeditationResponse]:
        async with _status_for_errors(context):
            conversation = _checked_name(request.conversation, _CONVERSATION_NAME, "conversation")
            options = MeditationOptions(
                image_aspect=_image_aspect(request.options.image_aspect),
                skip_cache=request.options.skip_cache,
            )
            request_id = _checked_request_id(request.request_id)
            owner = caller()
            # Counted before the job starts: a refused stream starts nothing.
            with self._open_streams.hold(owner):
                name = await self._jobs.start(owner, conversation, request_id, options)
                async for event in self._jobs.watch(owner, name, after_sequence=0):
                    yield _response(gateway_pb.GenerateMeditationResponse, event)
                    _raise_if_failed(event)

    async def WatchMeditation(
        self, request: gateway_pb.WatchMeditationRequest, context: _Context
    ) -> AsyncIterator[gateway_pb.WatchMeditationResponse]:
        async with _status_for_errors(context):
            name = _checked_name(request.name, _MEDITATION_NAME, "name")
            if request.after_sequence < 0:
                raise InvalidInputError("after_sequence", "must be 0 or more: the last sequence you received")
            owner = caller()
            with self._open_streams.hold(owner):
                async for event in self._jobs.watch(owner, name, after_sequence=request.after_sequence):
                    yield _response(gateway_pb.WatchMeditationResponse, event)
                    _raise_if_failed(event)

    async def GetMeditation(
        self, request: gateway_pb.GetMeditationRequest, context: _Context
    ) -> gateway_pb.GetMeditationResponse:
        async with _status_for_errors(context):
            meditation = await self._jobs.get(caller(), _checked_name(request.name, _MEDITATION_NAME, "name"))
        return gateway_pb.GetMeditationResponse(meditation=_meditation_proto(meditation))

    async def CancelMeditation(
        self, request: gateway_pb.CancelMeditationRequest, context: _Context
    ) -> gateway_pb.CancelMeditationResponse:
        async with _status_for_errors(context):
            meditation = await self._jobs.cancel(
                caller(), _checked_name(request.name, _MEDITATION_NAME, "name")
            )
        return gateway_pb.CancelMeditationResponse(meditation=_meditation_proto(meditation))

    async def ListConversations(
        self, request: gateway_pb.ListConversationsRequest, context: _Context
    ) -> gateway_pb.ListConversationsResponse:
        async with _status_for_errors(context):
            owner, size = caller(), page_size(request.page_size)
            after = self._page_tokens.verify(request.page_token, scope=_CONVERSATIONS_SCOPE, owner=owner)
            page = await self._content.list_conversations(owner, size, after)
            next_page_token = self._page_tokens.issue(
                page.next_cursor, scope=_CONVERSATIONS_SCOPE, owner=owner
            )
        return gateway_pb.ListConversationsResponse(
            conversations=[_conversation_proto(conversation) for conversation in page.conversations],
            next_page_token=next_page_token,
        )

    async def ListMeditations(
        self, request: gateway_pb.ListMeditationsRequest, context: _Context
    ) -> gateway_pb.ListMeditationsResponse:
        async with _status_for_errors(context):
            owner, size = caller(), page_size(request.page_size)
            conversation = (
                _checked_name(request.conversation, _CONVERSATION_NAME, "conversation")
                if request.conversation
                else ""
            )
            # A token is bound to its filter too: another filter's token would resume in the wrong list.
            scope = f"{_MEDITATIONS_SCOPE}?conversation={conversation}"
            after = self._page_tokens.verify(request.page_token, scope=scope, owner=owner)
            page = await self._jobs.list(owner, size, after, conversation=conversation)
            next_page_token = self._page_tokens.issue(page.next_cursor, scope=scope, owner=owner)
        return gateway_pb.ListMeditationsResponse(
            meditations=[_meditation_proto(meditation) for meditation in page.meditations],
            next_page_token=next_page_token,
        )

    async def DeleteConversation(
        self, request: gateway_pb.DeleteConversationRequest, context: _Context
    ) -> gateway_pb.DeleteConversationResponse:
        async with _status_for_errors(context):
            name = _checked_name(request.name, _CONVERSATION_NAME, "name")
            erased = await erasure.delete_conversation(caller(), name, content=self._content, jobs=self._jobs)
        return gateway_pb.DeleteConversationResponse(deleted_meditation_count=erased)


# What a page token is bound to besides its owner: the list it pages through.
_CONVERSATIONS_SCOPE = "ListConversations"
_MEDITATIONS_SCOPE = "ListMeditations"


class AuthenticationInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call but health checks (reflection included) before its handler runs, from its
    `authorization` metadata; the owner it names is the call's `caller()`. A refused call ends with
    UNAUTHENTICATED and never reaches a handler."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_TRequest, _TResponse] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_TRequest, _TResponse] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_OPEN_PREFIX):
            return handler
        authorization = _metadata_value(handler_call_details.invocation_metadata, "authorization")
        try:
            # Interceptors run in the RPC's own task and context, so the handler sees this caller.
            set_caller(await self._authenticator.owner_of(authorization))
        except GatewayError as error:
            refusing: grpc.RpcMethodHandler[_TRequest, _TResponse] = _refusing(
                handler, _STATUS[error.kind], error.message
            )
            return refusing
        return handler


# Load balancers and orchestrators probe health without credentials.
_OPEN_PREFIX = "/grpc.health.v1.Health/"


def _metadata_value(metadata: Sequence[tuple[str, str | bytes]] | None, key: str) -> str | None:
    for name, value in metadata or ():
        if name == key:
            return value.decode(errors="replace") if isinstance(value, bytes) else value
    return None


def _refusing(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same shape as `handler` that ends the call with `code` before reading anything.

    One coroutine for every shape: grpc.aio takes a streaming method's behaviour as a coroutine too (one
    that would write with context.write), and this one only aborts."""

    async def refuse(_request: object, context: _Context) -> None:
        await context.abort(code, message)

    return with_behaviour(handler, lambda _behaviour: refuse)


@asynccontextmanager
async def _status_for_errors(context: _Context) -> AsyncIterator[None]:
    """The one place gateway errors become gRPC status codes; messages were written for clients. Every
    internal call made inside is bounded by the client's deadline."""
    try:
        with client_deadline(context.time_remaining()):
            yield
    except GatewayError as error:
        await context.abort(_STATUS[error.kind], error.message)


def _raise_if_failed(event: events.SequencedEvent) -> None:
    """A failed or cancelled job's stream ends with its status, after its `completed` event."""
    completed = event.event
    if isinstance(completed, events.Completed) and completed.failure_kind is not None:
        raise GatewayError(completed.failure_kind, completed.failure_message)


def _checked_name(name: str, pattern: re.Pattern[str], field: str) -> str:
    if not pattern.fullmatch(name):
        collection = pattern.pattern.lstrip("^").split("/")[0]
        raise InvalidInputError(
            field, f"{name!r} is not a valid name: use {collection}/{{id}} as returned by the server"
        )
    return name


def _checked_request_id(request_id: str) -> str:
    """Empty (no idempotency) or a UUID (AIP-155). The value is not echoed: it could be megabytes."""
    if request_id and not _REQUEST_ID.fullmatch(request_id):
        raise InvalidInputError(
            "request_id",
            "must be a UUID such as 123e4567-e89b-42d3-a456-426614174000: a new one for each request, "
            "the same one for its retries (or leave it empty)",
        )
    return request_id


def _image_aspect(value: int) -> ImageAspect:
    aspect = _ASPECT.get(value)
    if aspect is None:
        raise InvalidInputError("options.image_aspect", "use IMAGE_ASPECT_LANDSCAPE or IMAGE_ASPECT_SQUARE")
    return aspect


def _messages(messages: Iterable[gateway_pb.Message]) -> list[Message]:
    converted = []
    for index, message in enumerate(messages):
        role = _ROLE_TO_DOMAIN.get(message.role)
        if role is None:
            raise InvalidInputError(
                f"messages[{index}].role",
                "use MESSAGE_ROLE_USER, MESSAGE_ROLE_ASSISTANT or MESSAGE_ROLE_SYSTEM",
            )
        try:
            create_time = from_timestamp(message.create_time) if message.HasField("create_time") else None
        except ValueError:
            raise InvalidInputError(
                f"messages[{index}].create_time", "is out of range: use a time between the years 1 and 9999"
            ) from None
        converted.append(Message(role=role, text=message.text, create_time=create_time))
    return converted


def _conversation_proto(conversation: Conversation) -> gateway_pb.Conversation:
    return gateway_pb.Conversation(
        name=conversation.name,
        title=conversation.title,
        create_time=to_timestamp(conversation.create_time),
        messages=[
            gateway_pb.Message(
                role=_ROLE_TO_PROTO.get(message.role, gateway_pb.MESSAGE_ROLE_UNSPECIFIED),
                text=message.text,
                create_time=to_timestamp(message.create_time) if message.create_time else None,
            )
            for message in conversation.messages
        ],
    )


def _meditation_proto(meditation: Meditation) -> gateway_pb.Meditation:
    return gateway_pb.Meditation(
        name=meditation.name,
        conversation=meditation.conversation,
        state=_MEDITATION_STATE[meditation.state],
        transcript=meditation.transcript,
        image_uri=meditation.image_uri,
        narration_uri=meditation.narration_uri,
        quick_video_uri=meditation.quick_video_uri,
        enhanced_video_uri=meditation.enhanced_video_uri,
        failure_message=meditation.failure_message,
        last_sequence=meditation.last_sequence,
        create_time=to_timestamp(meditation.create_time),
    )


def _response(response_type: type[StreamResponse], recorded: events.SequencedEvent) -> StreamResponse:
    """One event as either stream's response; both messages have the same fields."""
    response = response_type(
        sequence=recorded.sequence,
        event_time=to_timestamp(recorded.event_time),
        elapsed=to_duration(recorded.elapsed_seconds),
    )
    event = recorded.event
    match event:
        case events.Accepted():
            response.accepted.meditation = event.meditation
            response.accepted.conversation = event.conversation
        case events.StageChanged():
            response.stage.stage = _STAGE[event.stage]
            response.stage.state = _STAGE_STATE[event.state]
            response.stage.stage_elapsed.CopyFrom(to_duration(event.stage_elapsed_seconds))
            response.stage.detail = event.detail
        case events.TranscriptReady():
            response.transcript_ready.text = event.text
            response.transcript_ready.word_count = event.word_count
            response.transcript_ready.cached = event.is_cached
            response.transcript_ready.provider = event.provider
            response.transcript_ready.fallback_reason = event.fallback_reason
            response.transcript_ready.spoken_outcome = _SPOKEN_OUTCOME[event.spoken_outcome]
        case events.ImageReady():
            response.image_ready.uri = event.uri
            response.image_ready.width_pixels = event.width_pixels
            response.image_ready.height_pixels = event.height_pixels
            response.image_ready.cached = event.is_cached
            response.image_ready.provider = event.provider
            response.image_ready.fallback_reason = event.fallback_reason
        case events.NarrationReady():
            response.narration_ready.uri = event.uri
            response.narration_ready.duration.CopyFrom(to_duration(event.duration_seconds))
            response.narration_ready.provider = event.provider
            response.narration_ready.fallback_reason = event.fallback_reason
            response.narration_ready.subtitles_uri = event.subtitles_uri
            for sentence in event.sentences:
                response.narration_ready.sentences.add(
                    text=sentence.text,
                    start_offset=to_duration(sentence.start_seconds),
                    end_offset=to_duration(sentence.end_seconds),
                )
        case events.PlaylistReady():
            response.playlist_ready.uri = event.uri
        case events.VideoReady():
            video = response.video_ready
            video.quality = _QUALITY[event.quality]
            video.uri = event.uri
            video.duration.CopyFrom(to_duration(event.duration_seconds))
            video.size_bytes = event.size_bytes
            video.width_pixels = event.width_pixels
            video.height_pixels = event.height_pixels
            video.encoder = event.encoder
            video.subtitles_uri = event.subtitles_uri
        case events.AttemptFailed():
            response.attempt_failed.attempt = event.attempt
            response.attempt_failed.max_attempts = event.max_attempts
            response.attempt_failed.reason = event.reason
            response.attempt_failed.retry_delay.CopyFrom(to_duration(event.retry_delay_seconds))
        case events.Completed():
            completed = response.completed
            completed.state = _MEDITATION_STATE[event.state]
            completed.transcript_cache_hit = event.transcript_cache_hit
            completed.image_cache_hit = event.image_cache_hit
            completed.total_duration.CopyFrom(to_duration(event.total_seconds))
            completed.spoken_outcome = _SPOKEN_OUTCOME[event.spoken_outcome]
            completed.outcome_reason = event.outcome_reason
            completed.misread_sentence_count = event.misread_sentence_count
            for stage in events.Stage:
                if stage.value in event.stage_seconds:
                    completed.stage_timings.add(
                        stage=_STAGE[stage], duration=to_duration(event.stage_seconds[stage.value])
                    )
    return response
