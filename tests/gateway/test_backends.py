"""The gateway's content client carries a transcript stream on when the replica writing it stops."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from services import serving
from services.gateway import backends
from services.gateway.backends import ContentClient, TranscriptEvent, TranscriptRelay, backend_channel_options
from services.gateway.errors import FailureKind, GatewayError
from services.gateway.pipeline import StageTimeouts
from services.gateway.ports import TranscriptPiece, TranscriptRestart, WrittenTranscript
from stillpoint.content.v1 import content_service_pb2 as content_pb

SCRIPT = ["Settle in. ", "Breathe slowly. ", "Let the day go."]
WHOLE = "".join(SCRIPT)


def _written(text: str = WHOLE, *, is_cached: bool = False) -> WrittenTranscript:
    return WrittenTranscript(text=text, word_count=len(text.split()), is_cached=is_cached, provider="offline")


def _relay(*streams: list[TranscriptEvent]) -> list[TranscriptEvent]:
    """What the caller sees of streams that each start the script again (all but the last are cut)."""
    relay = TranscriptRelay()
    seen: list[TranscriptEvent] = []
    for stream in streams:
        relay.begin()
        for event in stream:
            seen += relay.take(event)
    return seen


def _script_of(events: list[TranscriptEvent]) -> str:
    """The script the narrator hears: pieces since the last restart."""
    script = ""
    for event in events:
        if isinstance(event, TranscriptRestart):
            script = ""
        elif isinstance(event, TranscriptPiece):
            script += event.text
    return script


def test_a_repeat_that_writes_the_same_script_resumes_with_no_seam() -> None:
    pieces = [TranscriptPiece(text) for text in SCRIPT]
    # Cut inside the second piece's worth of text; the repeat splits its text differently.
    cut: list[TranscriptEvent] = [pieces[0]]
    repeat: list[TranscriptEvent] = [TranscriptPiece("Settle"), TranscriptPiece(" in. Breathe slowly. ")]
    repeat += [pieces[2], _written()]
    seen = _relay(cut, repeat)
    assert not any(isinstance(event, TranscriptRestart) for event in seen)
    assert _script_of(seen) == WHOLE
    assert seen[-1] == _written()


def test_a_repeat_that_writes_another_script_voids_what_was_passed_on() -> None:
    cut: list[TranscriptEvent] = [TranscriptPiece(SCRIPT[0]), TranscriptPiece(SCRIPT[1])]
    other = "Settle in. Feel your feet. "
    repeat: list[TranscriptEvent] = [TranscriptPiece("Settle in. "), TranscriptPiece("Feel your feet. ")]
    seen = _relay(cut, [*repeat, _written(other)])
    assert [type(event) for event in seen].count(TranscriptRestart) == 1
    assert _script_of(seen) == other


def test_a_repeat_answered_from_the_cache_restarts_the_script_whole() -> None:
    seen = _relay([TranscriptPiece(SCRIPT[0])], [_written(is_cached=True)])
    assert isinstance(seen[-2], TranscriptRestart)
    assert seen[-1] == _written(is_cached=True)


def test_a_repeat_that_ends_inside_what_was_passed_on_replaces_it() -> None:
    seen = _relay([TranscriptPiece(WHOLE)], [TranscriptPiece("Settle in. "), _written("Settle in. ")])
    assert _script_of(seen) == "Settle in. "
    assert seen[-1] == _written("Settle in. ")


def test_a_writer_falling_back_in_a_repeat_is_passed_on_as_it_is() -> None:
    fallback = TranscriptRestart("the provider failed")
    seen = _relay(
        [TranscriptPiece(SCRIPT[0])],
        [TranscriptPiece(SCRIPT[0]), fallback, TranscriptPiece(WHOLE), _written()],
    )
    assert fallback in seen
    assert _script_of(seen) == WHOLE


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


async def _written_through_client(writer: _StoppingWriter) -> list[TranscriptEvent]:
    running = await serving.start_server(service_names=[], register=writer.register, address="127.0.0.1:0")
    try:
        target = f"127.0.0.1:{running.port}"
        async with grpc.aio.insecure_channel(target, options=backend_channel_options()) as channel:
            client = ContentClient(channel, StageTimeouts())
            return [event async for event in client.generate_transcript("source", skip_cache=False)]
    finally:
        await running.stop(0)


@pytest.fixture(autouse=True)
def quick_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "_TRANSCRIPT_RETRY_SECONDS", 0.01)


async def test_a_transcript_stream_cut_mid_way_is_asked_again_and_the_caller_sees_one_script() -> None:
    writer = _StoppingWriter(cuts=2)
    seen = await _written_through_client(writer)
    assert writer.calls == 3
    assert not any(isinstance(event, TranscriptRestart) for event in seen)
    assert _script_of(seen) == WHOLE
    assert isinstance(seen[-1], WrittenTranscript)


async def test_a_transcript_stream_cut_every_time_fails_as_unavailable() -> None:
    writer = _StoppingWriter(cuts=100)
    with pytest.raises(GatewayError) as raised:
        await _written_through_client(writer)
    assert raised.value.kind is FailureKind.UNAVAILABLE
    assert writer.calls == 4
