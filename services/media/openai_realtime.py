"""Narration by the OpenAI Realtime API: each sentence an out-of-band audio response on a reused WebSocket."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import difflib
import itertools
import logging
import re
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import openai
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.realtime import (
    RealtimeErrorEvent,
    RealtimeSessionCreateRequestParam,
    ResponseAudioDeltaEvent,
    ResponseAudioTranscriptDoneEvent,
    ResponseCreatedEvent,
    ResponseDoneEvent,
)
from openai.types.realtime.realtime_response import RealtimeResponse
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from services.media.errors import SpeechError
from services.media.speech import Narration
from services.media.urgency import PriorityLimiter
from services.openai_api import (
    ConfiguredModel,
    ProviderCallError,
    ProviderFailureKind,
    classify,
    classify_error_body,
    classify_status,
    unreachable,
)
from services.script_marks import Silence, speakable_text, split_on_pauses
from services.sentences import split_sentences

logger = logging.getLogger(__name__)

# The session's output: PCM16 mono at 24 kHz, the Realtime API's only PCM rate.
SAMPLE_RATE_HERTZ: Final = 24_000
# The Realtime models are voice models, not readers: told plainly to read, they mostly do, and the transcript
# check below catches the sentences they do not. The configured instructions (the voice's manner) follow.
READING_INSTRUCTIONS = (
    "You read a meditation script aloud. Read the user's message word for word, exactly as written: add "
    "nothing, leave nothing out, never answer, comment on or greet, and stop when the text ends. Speak in a "
    "calm, slow meditation voice."
)
# Dropped sockets one narration survives (reconnecting and reading the cut sentence again) before it fails.
MAX_RECONNECTS = 2
# A Realtime session lasts at most 60 minutes: an idle one older than this is closed rather than reused.
SESSION_MAX_AGE_SECONDS = 50 * 60
# A closing handshake that a dead peer never answers must not hold up a failing or cancelled narration.
_CLOSE_TIMEOUT_SECONDS = 0.5
# Tags each response so its events are told from any other's.
_METADATA_KEY = "stillpoint_sentence"


class _SocketDroppedError(Exception):
    """The WebSocket closed before the response was done."""


@dataclass(frozen=True)
class _Reading:
    """One sentence as the model spoke it: its audio and what it says it said."""

    pcm_s16le: bytes
    transcript: str | None


class RealtimeSpeechNarrator:
    """Speaks each sentence as an out-of-band Realtime response, holds exact digital silence for every pause
    mark, and checks what the model says it read against the sentence.

    Sessions (one WebSocket each) are pooled: a narration borrows one for all its sentences and gives it
    back, so a job's sentences share a few sockets rather than opening one each. A socket that drops
    mid-sentence is replaced and the cut sentence read again from its start.
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        model: ConfiguredModel,
        *,
        voice: str,
        instructions: str,
        timeout_seconds: float,
        max_sessions: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._model = model
        self._session_config: RealtimeSessionCreateRequestParam = {
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": f"{READING_INSTRUCTIONS} {instructions}".strip(),
            "audio": {"output": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE_HERTZ}, "voice": voice}},
        }
        self._timeout_seconds = timeout_seconds
        self._clock = clock
        # A job's first sentence goes ahead of the queue (urgency.py).
        self._slots = PriorityLimiter(max_sessions)
        self._idle: list[_Session] = []
        self._is_closed = False

    async def narrate(self, script: str) -> Narration:
        """Returns the narration at 24 kHz within the time budget; raises ProviderCallError when the provider
        fails and SpeechError when the script has nothing to say."""
        plan = _plan(script)
        sentences = [piece for piece in plan if isinstance(piece, str)]
        if not sentences:
            raise SpeechError("the script has no words to speak")
        try:
            # Timed from when a session slot is free: waiting for one behind earlier jobs is not the
            # provider being slow (and under load the later jobs wait a while, by design: urgency.py).
            async with self._slots, asyncio.timeout(self._timeout_seconds):
                readings = await self._read_all(sentences)
        except TimeoutError:
            raise ProviderCallError(
                ProviderFailureKind.TIMEOUT,
                f"the speech provider did not finish within {self._timeout_seconds:g} s",
            ) from None
        misread = 0
        for index, (sentence, reading) in enumerate(zip(sentences, readings, strict=True)):
            similarity = reading_similarity(sentence, reading.transcript or "")
            if similarity < 1.0:
                misread += 1
                # Never the words themselves: they come from a person's conversation.
                logger.warning(
                    "realtime speech: sentence %d of %d was read differently (similarity %.2f%s)",
                    index + 1,
                    len(sentences),
                    similarity,
                    "" if reading.transcript is not None else ", no transcript",
                )
        pcm = bytearray()
        spoken = iter(readings)
        for piece in plan:
            if isinstance(piece, Silence):
                pcm += bytes(2 * round(piece.seconds * SAMPLE_RATE_HERTZ))
            else:
                pcm += next(spoken).pcm_s16le
        return Narration(bytes(pcm), SAMPLE_RATE_HERTZ, misread_sentence_count=misread)

    async def close(self) -> None:
        """Closes the idle sessions; called once at shutdown."""
        self._is_closed = True
        idle, self._idle = self._idle, []
        for session in idle:
            await session.close()

    async def _read_all(self, sentences: list[str]) -> list[_Reading]:
        session: _Session | None = await self._borrow()
        readings: list[_Reading] = []
        reconnects = 0
        try:
            while len(readings) < len(sentences):
                if session is None:
                    session = await self._open()
                try:
                    readings.append(await session.read(sentences[len(readings)]))
                except _SocketDroppedError:
                    await session.close()
                    session = None
                    if reconnects == MAX_RECONNECTS:
                        raise ProviderCallError(
                            ProviderFailureKind.UNAVAILABLE,
                            f"the OpenAI Realtime connection dropped {reconnects + 1} times; "
                            "try again shortly",
                        ) from None
                    reconnects += 1
                    # What came of the cut sentence is dropped: it is read again whole, so none repeats.
                    logger.warning(
                        "realtime speech: the connection dropped during sentence %d of %d; "
                        "reconnecting to read it again",
                        len(readings) + 1,
                        len(sentences),
                    )
        except BaseException:
            # A failed, timed-out or cancelled response may still be running: the session is spent.
            if session is not None:
                await session.close()
            raise
        if session is not None and self._is_closed:
            await session.close()  # shutting down: nobody will borrow it again
        elif session is not None:
            self._idle.append(session)
        return readings

    async def _borrow(self) -> _Session:
        while self._idle:
            session = self._idle.pop()
            if self._clock() - session.opened_at < SESSION_MAX_AGE_SECONDS:
                return session
            await session.close()
        return await self._open()

    async def _open(self) -> _Session:
        """Opens a WebSocket and configures its session for audio output."""
        manager = self._client.realtime.connect(model=self._model.name)
        try:
            connection = await manager.enter()
        except InvalidStatus as error:
            # The handshake was answered with an HTTP status, as a plain request would be.
            raise classify_status(error.response.status_code, self._model) from None
        except openai.OpenAIError as error:
            raise classify(error, self._model) from None
        except (OSError, InvalidHandshake):
            raise unreachable() from None
        # A socket closed at once fails the first reading, which finds out why.
        with contextlib.suppress(ConnectionClosed, openai.WebSocketConnectionClosedError):
            await connection.session.update(session=self._session_config)
        return _Session(connection, self._model, opened_at=self._clock())


class _Session:
    """One open Realtime WebSocket whose session speaks; it runs one response at a time."""

    def __init__(
        self, connection: AsyncRealtimeConnection, model: ConfiguredModel, *, opened_at: float
    ) -> None:
        self._connection = connection
        self._model = model
        self.opened_at = opened_at
        self._tags = (str(number) for number in itertools.count(1))

    async def read(self, sentence: str) -> _Reading:
        """Asks for the sentence to be read and gathers its audio until `response.done`. Raises
        _SocketDroppedError when the socket closes first, ProviderCallError when the API reports a failure."""
        tag = next(self._tags)
        response_id: str | None = None
        pcm = bytearray()
        transcript: str | None = None
        try:
            await self._connection.response.create(
                response={
                    # Out of band: nothing is added to the session's conversation, so every sentence is read
                    # on its own and the session does not grow.
                    "conversation": "none",
                    "output_modalities": ["audio"],
                    "metadata": {_METADATA_KEY: tag},
                    "input": [
                        {
                            "type": "message",
                            "role": "user",
                            "content": [{"type": "input_text", "text": sentence}],
                        }
                    ],
                }
            )
            while True:
                event = await self._connection.recv()
                if isinstance(event, RealtimeErrorEvent):
                    # The SDK hands an error over as an event, never raises it.
                    raise classify_error_body(event.error.type, event.error.code, self._model)
                if isinstance(event, ResponseCreatedEvent):
                    # The API echoes the metadata; one response runs at a time, so one without any is ours.
                    if (event.response.metadata or {}).get(_METADATA_KEY, tag) == tag:
                        response_id = event.response.id
                elif response_id is None:
                    continue  # session.updated, or the end of an earlier session's business
                elif isinstance(event, ResponseAudioDeltaEvent) and event.response_id == response_id:
                    pcm += base64.b64decode(event.delta)
                elif isinstance(event, ResponseAudioTranscriptDoneEvent) and event.response_id == response_id:
                    transcript = event.transcript
                elif isinstance(event, ResponseDoneEvent) and event.response.id == response_id:
                    _raise_unless_completed(event.response, self._model)
                    return _Reading(bytes(pcm), transcript)
        except (ConnectionClosed, openai.WebSocketConnectionClosedError):
            await self._raise_any_error_it_closed_on()
            raise _SocketDroppedError from None

    async def _raise_any_error_it_closed_on(self) -> None:
        """A socket the API closed after an `error` (an unknown model, say) failed for that reason, not by
        chance: the events it sent before closing are still there to read."""
        while True:
            try:
                event = await self._connection.recv()
            except (ConnectionClosed, openai.WebSocketConnectionClosedError):
                return
            if isinstance(event, RealtimeErrorEvent):
                raise classify_error_body(event.error.type, event.error.code, self._model)

    async def close(self) -> None:
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_SECONDS):
                await self._connection.close()
        except (TimeoutError, OSError, ConnectionClosed, openai.OpenAIError):
            pass  # gone either way


def reading_similarity(expected: str, transcript: str) -> float:
    """How closely a transcript follows the text it should read, from 0 to 1: 1.0 is word for word, with
    case, punctuation, hyphens and spacing aside."""
    wanted, heard = _words(expected), _words(transcript)
    if wanted == heard:
        return 1.0
    return difflib.SequenceMatcher(None, wanted, heard, autojunk=False).ratio()


def _words(text: str) -> list[str]:
    folded = unicodedata.normalize("NFKC", text).casefold().replace("’", "'").replace("‘", "'")
    return re.findall(r"[^\W_]+(?:'[^\W_]+)*", folded)


def _plan(script: str) -> list[str | Silence]:
    """The script as the sentences to read (marks removed) and the silences between them, in order."""
    plan: list[str | Silence] = []
    for segment in split_on_pauses(script):
        if isinstance(segment, Silence):
            plan.append(segment)
            continue
        for sentence in split_sentences(segment.text):
            text = speakable_text(sentence)
            if _words(text):
                plan.append(text)
    return plan


def _raise_unless_completed(response: RealtimeResponse, model: ConfiguredModel) -> None:
    if response.status == "completed":
        return
    details = response.status_details
    error = details.error if details is not None else None
    if error is not None:
        raise classify_error_body(error.type, error.code, model)
    reason = (details.reason if details is not None else None) or "no reason given"
    raise ProviderCallError(
        ProviderFailureKind.REJECTED,
        f"the OpenAI Realtime API ended the response as {response.status} ({reason})",
    )
