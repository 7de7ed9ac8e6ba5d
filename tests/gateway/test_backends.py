"""The gateway's content client: a cut transcript stream fails once, for the job's retry policy to handle."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from services import serving
from services.gateway.backends import ContentClient, backend_channel_options
from services.gateway.errors import FailureKind, GatewayError
from services.gateway.pipeline import StageTimeouts
from services.gateway.ports import TranscriptPiece, TranscriptRestart, WrittenTranscript
from stillpoint.content.v2 import content_service_pb2 as content_pb

SCRIPT = ["Settle in. ", "Breathe slowly. ", "Let the day go."]
WHOLE = "".join(SCRIPT)
TranscriptEvent = TranscriptPiece | TranscriptRestart | WrittenTranscript


class _StoppingWriter:
    """GenerateTranscript alone: writes the script, but its first `cuts` streams stop with UNAVAILABLE after
    the first piece, as a content replica's do when its grace period ends."""

    def __init__(self, cuts: int) -> None:
        self.cuts = cuts
        self.calls = 0

    async def generate_transcript(
        self, request: content_pb.GenerateTranscriptRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[content_pb.GenerateTranscriptResponse]:
        self.calls += 1
        for index, text in enumerate(SCRIPT):
            if index == 1 and self.calls <= self.cuts:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "Cancelling all calls")
            yield content_pb.GenerateTranscriptResponse(delta=content_pb.TranscriptDelta(text=text))
        yield content_pb.GenerateTranscriptResponse(
            completed=content_pb.TranscriptCompleted(text=WHOLE, word_count=6, provider="offline")
        )

    def register(self, server: grpc.aio.Server) -> None:
        handler = grpc.unary_stream_rpc_method_handler(
            self.generate_transcript,
            request_deserializer=content_pb.GenerateTranscriptRequest.FromString,
            response_serializer=content_pb.GenerateTranscriptResponse.SerializeToString,
        )
        service = content_pb.DESCRIPTOR.services_by_name["ContentService"].full_name
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"GenerateTranscript": handler}),)
        )


async def _written_through_client(writer: _StoppingWriter, seen: list[TranscriptEvent]) -> None:
    running = await serving.start_server(service_names=[], register=writer.register, address="127.0.0.1:0")
    try:
        target = f"127.0.0.1:{running.port}"
        async with grpc.aio.insecure_channel(target, options=backend_channel_options()) as channel:
            client = ContentClient(channel, StageTimeouts())
            async for event in client.generate_transcript("source", skip_cache=False):
                seen.append(event)
    finally:
        await running.stop(0)


async def test_a_whole_transcript_stream_is_passed_on_piece_by_piece_then_whole() -> None:
    writer = _StoppingWriter(cuts=0)
    seen: list[TranscriptEvent] = []
    await _written_through_client(writer, seen)
    assert seen == [
        *(TranscriptPiece(text) for text in SCRIPT),
        WrittenTranscript(WHOLE, 6, False, "offline"),
    ]


async def test_a_transcript_stream_cut_mid_way_fails_once_as_unavailable_and_is_not_asked_again() -> None:
    """Property: streams have no retry layer of their own. A cut stream fails the call at once, after what
    it passed on, and the job's retry policy (one layer, in one module) decides whether to try again."""
    writer = _StoppingWriter(cuts=1)
    seen: list[TranscriptEvent] = []
    with pytest.raises(GatewayError) as raised:
        await _written_through_client(writer, seen)
    assert raised.value.kind is FailureKind.UNAVAILABLE
    assert writer.calls == 1
    assert seen == [TranscriptPiece(SCRIPT[0])]
