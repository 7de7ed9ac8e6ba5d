"""Narration by the OpenAI speech endpoint (or a compatible server)."""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import openai

from services.media.errors import SpeechError
from services.media.speech import Narration
from services.media.speech_gaps import cut_at_gaps
from services.media.urgency import PriorityLimiter, is_urgent
from services.media.video import run_ffmpeg
from services.openai_api import ConfiguredModel, ProviderCallError, ProviderFailureKind, classify
from services.script_marks import Silence, SpokenText, split_on_pauses
from services.sentences import split_sentences

# The endpoint's input limit; longer stretches are split at sentence boundaries below it.
MAX_INPUT_CHARS = 4096
# `pcm` is raw 16-bit little-endian mono at 24 kHz; every other format is decoded to the same.
SAMPLE_RATE_HERTZ = 24_000
AUDIO_FORMATS = ("wav", "pcm", "aac", "opus", "mp3", "flac")
_DECODE_TIMEOUT_SECONDS = 60.0
# Far more than the longest input takes to say at 24 kHz (4096 characters are about five minutes, 14 MB of
# PCM): a provider that keeps sending is cut off rather than let fill the memory.
MAX_AUDIO_BYTES = 32_000_000


def split_for_speech(text: str, max_chars: int = MAX_INPUT_CHARS) -> list[str]:
    """Splits text at sentence boundaries into pieces of at most `max_chars` (words split only if one
    sentence alone is longer)."""
    pieces: list[str] = []
    current = ""
    for sentence in split_sentences(text):
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            if current:
                pieces.append(current)
                current = ""
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        candidate = f"{current} {sentence}".strip()
        if len(candidate) > max_chars:
            pieces.append(current)
            current = sentence
        else:
            current = candidate
    if current:
        pieces.append(current)
    return [piece for piece in pieces if piece]


class OpenAISpeechNarrator:
    """Speaks each stretch between pause marks with `audio.speech`, a few requests at a time, and holds
    exact digital silence for every pause mark; or several sentences in one request (`narrate_sentences`),
    cut back into sentences at the breaths between them."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        model: ConfiguredModel,
        *,
        voice: str,
        instructions: str,
        audio_format: str,
        ffmpeg_path: str,
        work_root: Path,
        timeout_seconds: float,
        max_concurrent_requests: int = 4,
    ) -> None:
        if audio_format not in AUDIO_FORMATS:
            raise ValueError(f"audio format {audio_format!r} is not one of {', '.join(AUDIO_FORMATS)}")
        self._client = client
        self._model = model
        self._voice = voice
        self._instructions = instructions
        self._audio_format = audio_format
        self._ffmpeg_path = ffmpeg_path
        self._work_root = work_root
        self._timeout_seconds = timeout_seconds
        # Shared by every job of the process; a job's first sentence goes ahead of the queue (urgency.py).
        # Half of them are kept for first sentences, which a listener is waiting for: with every other slot
        # held by later sentences' longer requests (fifty jobs at once), a first sentence would wait for one
        # of those to finish, seconds, before its own request of a fraction of a second. With a quarter kept
        # (6 of make bench's 24), the last of fifty first sentences still waited 0.3-0.7 s for a slot; with
        # half, under 0.25 s, and the level's first playable came about half a second sooner. More slots in
        # all made it later: the later sentences' speech took the cores the first sentences needed.
        reserved = max_concurrent_requests // 2
        self._requests = PriorityLimiter(max_concurrent_requests - reserved)
        self._first_sentence_requests = PriorityLimiter(reserved) if reserved else None

    async def narrate(self, script: str) -> Narration:
        """Returns the whole narration at 24 kHz, each request within the time budget (retries included);
        raises ProviderCallError when the provider fails."""
        return await self._narrate(script)

    async def narrate_sentences(self, sentences: Sequence[str]) -> list[Narration]:
        """Speaks several sentences in one request and cuts the audio back into one narration each, at the
        breaths between them; pause marks are held as exact silence, as `narrate` holds them. Raises
        ProviderCallError when the provider fails, SpeechError when there is nothing to say."""
        plans = [split_on_pauses(sentence) for sentence in sentences]
        stretches = [segment.text for plan in plans for segment in plan if isinstance(segment, SpokenText)]
        if not stretches:
            raise SpeechError("the sentences have no words to speak")
        text = " ".join(stretches)
        if len(text) > MAX_INPUT_CHARS:
            raise SpeechError(f"{len(sentences)} sentences are too long for one speech request")
        pcm = await self._speak(text)
        samples = np.frombuffer(pcm, dtype="<i2")
        cuts = await asyncio.to_thread(
            cut_at_gaps, samples, SAMPLE_RATE_HERTZ, [len(stretch) for stretch in stretches]
        )
        pieces = iter(np.split(samples, cuts))
        narrations = []
        for plan in plans:
            sentence_pcm = bytearray()
            for segment in plan:
                if isinstance(segment, Silence):
                    sentence_pcm += bytes(2 * round(segment.seconds * SAMPLE_RATE_HERTZ))
                else:
                    sentence_pcm += next(pieces).astype("<i2").tobytes()
            narrations.append(Narration(pcm_s16le=bytes(sentence_pcm), sample_rate_hertz=SAMPLE_RATE_HERTZ))
        return narrations

    async def _narrate(self, script: str) -> Narration:
        segments = split_on_pauses(script)
        try:
            spoken: dict[int, asyncio.Task[bytes]] = {}
            async with asyncio.TaskGroup() as group:
                index = 0
                for segment in segments:
                    if isinstance(segment, SpokenText):
                        for piece in split_for_speech(segment.text):
                            spoken[index] = group.create_task(self._speak(piece))
                            index += 1
        except* ProviderCallError as failures:
            raise failures.exceptions[0] from None
        if not spoken:
            raise SpeechError("the script has no words to speak")
        pcm = bytearray()
        index = 0
        for segment in segments:
            if isinstance(segment, Silence):
                pcm += bytes(2 * round(segment.seconds * SAMPLE_RATE_HERTZ))
            else:
                for _ in split_for_speech(segment.text):
                    pcm += spoken[index].result()
                    index += 1
        return Narration(pcm_s16le=bytes(pcm), sample_rate_hertz=SAMPLE_RATE_HERTZ)

    async def _speak(self, text: str) -> bytes:
        """One request, its audio gathered in memory as it arrives, then decoded to PCM.

        Timed from when a request slot is free: waiting for one behind earlier jobs is not the provider
        being slow (under load the later jobs wait a while, by design: urgency.py)."""
        async with self._slots_for_this_request():
            try:
                async with asyncio.timeout(self._timeout_seconds):
                    audio = await self._receive(text)
            except TimeoutError:
                raise ProviderCallError(
                    ProviderFailureKind.TIMEOUT,
                    f"the speech provider did not finish within {self._timeout_seconds:g} s",
                ) from None
        return await self._decode(audio)

    def _slots_for_this_request(self) -> PriorityLimiter:
        """The shared slots, or for urgent work (a first sentence) when none of those is free, the reserved
        ones."""
        if self._first_sentence_requests is None or not is_urgent() or self._requests.has_free_slot:
            return self._requests
        return self._first_sentence_requests

    async def _receive(self, text: str) -> bytes:
        """The provider's audio for `text`. Gathered in memory, not written to a file chunk by chunk: with
        fifty narrations at once, those writes (a few kilobytes each, on the event loop) were the largest
        share of the media service's event loop, and the PCM is read back into memory whole anyway."""
        audio = bytearray()
        try:
            # tts-1 and tts-1-hd ignore instructions; leave them out rather than pretend.
            instructions = openai.omit if self._model.name.startswith("tts-1") else self._instructions
            async with self._client.audio.speech.with_streaming_response.create(
                model=self._model.name,
                voice=self._voice,
                input=text,
                response_format=self._audio_format,  # type: ignore[arg-type]
                instructions=instructions,
            ) as response:
                async for chunk in response.iter_bytes():
                    audio += chunk
                    if len(audio) > MAX_AUDIO_BYTES:
                        raise ProviderCallError(
                            ProviderFailureKind.REJECTED,
                            f"the speech provider sent more than {MAX_AUDIO_BYTES // 1_000_000} MB of audio"
                            " for one request",
                        )
        except openai.OpenAIError as error:
            raise classify(error, self._model) from None
        return bytes(audio)

    async def _decode(self, audio: bytes) -> bytes:
        if self._audio_format == "pcm":
            return audio
        if self._audio_format == "wav":
            wav = await asyncio.to_thread(_read_wav, audio)
            if wav is not None:
                return wav
        # Compressed audio is decoded by an FFmpeg process, from a file: a provider's bytes are parsed outside
        # this service's memory.
        work_dir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="speech-", dir=self._work_root))
        try:
            return await self._decode_with_ffmpeg(audio, work_dir)
        finally:
            await asyncio.to_thread(shutil.rmtree, work_dir, True)

    async def _decode_with_ffmpeg(self, audio: bytes, work_dir: Path) -> bytes:
        path = work_dir / f"received.{self._audio_format}"
        await asyncio.to_thread(path.write_bytes, audio)
        decoded = path.with_suffix(".s16le")
        result = await run_ffmpeg(
            self._ffmpeg_path,
            [
                "-nostdin",
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-protocol_whitelist",
                "file,pipe",
                "-i",
                str(path),
                "-f",
                "s16le",
                "-acodec",
                "pcm_s16le",
                "-ac",
                "1",
                "-ar",
                str(SAMPLE_RATE_HERTZ),
                str(decoded),
            ],
            timeout_seconds=_DECODE_TIMEOUT_SECONDS,
        )
        if result.return_code != 0:
            raise ProviderCallError(
                ProviderFailureKind.REJECTED,
                f"the speech provider returned audio that is not {self._audio_format}",
            )
        return await asyncio.to_thread(decoded.read_bytes)


def _read_wav(audio: bytes) -> bytes | None:
    """The samples of a 24 kHz mono 16-bit WAV, or None when it needs FFmpeg to convert it."""
    try:
        with wave.open(io.BytesIO(audio), "rb") as reader:
            if (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) != (
                SAMPLE_RATE_HERTZ,
                1,
                2,
            ):
                return None
            return reader.readframes(reader.getnframes())
    except (wave.Error, EOFError):
        return None
