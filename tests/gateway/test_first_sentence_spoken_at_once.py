"""The gateway hands media the script in whole sentences and says so: the first sentence is spoken, and the
preview playable, before the second one is written."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from services.gateway.backends import MediaClient
from services.gateway.ports import LivePlaylist, SpokenNarration
from tests.security.test_stream_limits import TIMEOUTS

FIRST_SENTENCE = "Take a moment to arrive. [pause 2s] "
THE_REST = "Let your shoulders soften. When you are ready, open your eyes."


@pytest.mark.timeout(90)
async def test_the_preview_plays_before_the_second_sentence_is_written(
    media_channel: grpc.aio.Channel,
) -> None:
    media = MediaClient(media_channel, TIMEOUTS)
    playable = asyncio.Event()

    async def script() -> AsyncIterator[str]:
        yield FIRST_SENTENCE
        # As a model that has written one sentence and not yet the next: until the preview is playable,
        # nothing more comes. Were media to wait for the next text to be sure the sentence had ended, it
        # would wait here for ever (the test's bound below).
        await playable.wait()
        yield THE_REST

    events: list[LivePlaylist | SpokenNarration] = []

    async def narrate() -> None:
        async for event in media.narrate_live("meditations/0123456789abcdef", "", script()):
            events.append(event)
            if isinstance(event, LivePlaylist):
                playable.set()

    await asyncio.wait_for(narrate(), timeout=30)

    assert isinstance(events[0], LivePlaylist)
    narration = events[-1]
    assert isinstance(narration, SpokenNarration)
    # The sentences are cut where they would have been had the whole script arrived at once.
    assert [sentence.text for sentence in narration.sentences] == [
        "Take a moment to arrive. [pause 2s]",
        "Let your shoulders soften.",
        "When you are ready, open your eyes.",
    ]
