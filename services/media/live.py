"""Live narration: sentences are spoken while the script is still being written, encoded once as they
arrive, and published as a growing HLS playlist that a player can open after the first sentence."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import functools
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from services.media.cleanup import finish_despite_cancellation
from services.media.errors import EncodingError, InvalidInputError
from services.media.loudness import master_speech
from services.media.placeholder import paint_placeholder
from services.media.room import in_room
from services.media.scratch import disk_full_reported, encoding_failure
from services.media.speech import Narration
from services.media.subtitles import WEBVTT_CONTENT_TYPE, webvtt
from services.media.urgency import PriorityLimiter, arrival, in_arrival_order, urgent
from services.media.video import ENHANCED_PROFILE, live_audio_graph, live_sound_profile
from services.script_marks import count_spoken_words, total_pause_seconds
from services.sentences import SentenceSplitter
from services.storage.base import AssetStorage, StorageUnavailableError, new_key

logger = logging.getLogger(__name__)

# FFmpeg cuts the preview into one-second pieces (a picture a second, each a keyframe); the publisher joins
# them into the segments it uploads. The first is one second, so the preview plays as soon as the first
# sentence is written; each next one is twice as long, up to LONGEST_SEGMENT_SECONDS, so a three-minute
# narration is a dozen uploads rather than ninety. Speech arrives far faster than it plays, so the longer
# segments are ready long before a player reaches them.
PIECE_SECONDS = 1
FIRST_SEGMENT_SECONDS = 1
# Past the first segments (1 + 2 + 4 seconds), pieces are cut this far apart. One second, as at the start:
# tried at 8 (a keyframe is the one picture of the preview that costs anything to encode), the last piece
# then ran seconds past the sound, which only a one-second piece can be trimmed of. A cheaper picture
# needs the sound's end to cut the video, not the publisher.
KEYFRAME_SECONDS = 1
LONGEST_SEGMENT_SECONDS = 32
# A player that started with the first segment would run out of published sound this soon: then whatever is
# cut is published at once, however short (a slow voice must not leave it waiting for a long segment).
RUNNING_DRY_SECONDS = 4.0
# Past the first segment, nothing is published while a player that started with it has more than this
# ahead of it; then every segment cut so far goes up in one publication (one playlist version, one signing
# request). Speech runs far ahead of playback, so a narration is a handful of publications, not one per
# segment; this is still far more time than an upload takes.
PUBLISHED_AHEAD_SECONDS = 15.0
# Segments of one publication go up side by side.
_UPLOADS_AT_ONCE = 4
# The placeholder is a soft gradient with no edge anywhere: at 360p it looks as it does at 720p once a player
# scales it up, and each second's keyframe costs a quarter of the encoder's time and of the preview's bytes.
PREVIEW_SIZE_PIXELS = (640, 360)
_POLL_SECONDS = 0.2
_ENCODER_EXIT_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class SpokenSentence:
    """A sentence's place in the narration."""

    text: str
    start_seconds: float
    end_seconds: float


@dataclass(frozen=True)
class SpokenSegment:
    """One sentence's audio, and who spoke it."""

    narration: Narration
    provider: str
    fallback_reason: str


@dataclass(frozen=True)
class PlaylistPublished:
    """The live playlist exists and can be played; later segments are appended to it."""

    uri: str
    storage_key: str


@dataclass(frozen=True)
class LiveNarrationResult:
    """The whole narration, mastered, with the room and bed around it (video.live_sound_profile), as AAC:
    the preview's sound, copied into both videos."""

    aac_key: str
    aac_uri: str
    duration_seconds: float
    sample_rate_hertz: int
    provider: str
    fallback_reason: str
    sentences: tuple[SpokenSentence, ...]
    playlist_uri: str
    # The sentences as WebVTT, stored beside the videos (which carry them as a subtitle track too).
    subtitles_key: str
    # Sentences the provider read other than written (see Narration).
    misread_sentence_count: int = 0


LiveEvent = PlaylistPublished | LiveNarrationResult
# Speaks one or more sentences (in one request, where the voice is remote), one segment per sentence.
SpeakSentences = Callable[[Sequence[str]], Awaitable[list[SpokenSegment]]]
# Grouped sentences (a remote voice): the first request is the first sentence alone, the quickest to come
# back; after it, a request waits until it holds this many characters, doubling each time up to the most,
# unless nothing else is being spoken (the narration would stall) or the script is complete. A three-minute
# script is then about eight requests instead of forty-five, most of them while the transcript is written.
FIRST_GROUP_CHARACTERS = 150
MOST_GROUP_CHARACTERS = 1200


@dataclass
class _Published:
    """The preview as published so far: the segments in storage (how the playlist names each, and its
    length), the pieces FFmpeg has cut that are not in one yet, and the initialisation segment they share."""

    segments: list[tuple[str, float]] = field(default_factory=list)
    # FFmpeg's pieces not yet published, by file name, with their lengths.
    pending: list[tuple[str, float]] = field(default_factory=list)
    # How many of FFmpeg's pieces have been taken (published or pending), and how long they are together.
    pieces_taken: int = 0
    pieces_seconds: float = 0.0
    # How much sound the encoder has been given. Its picture is endless and always at hand, and FFmpeg lets
    # it run up to ten seconds ahead of a sound that waits for speech: pieces past this hold no sound yet.
    sound_seconds: float = 0.0
    init_uri: str = ""
    playlist_key: str = ""
    playlist_uri: str = ""
    # When the playlist was first published: a player may have been playing it since.
    playable_since: float = 0.0

    @property
    def published_seconds(self) -> float:
        return sum(duration for _, duration in self.segments)

    def is_running_dry(self, now: float) -> bool:
        """Whether a player that started with the first segment is about to play all that is published."""
        return bool(self.segments) and self._seconds_ahead(now) < RUNNING_DRY_SECONDS

    def wants_more(self, now: float) -> bool:
        """Whether it is time to publish again: nothing is yet, or a player that started with the first
        segment has no more than PUBLISHED_AHEAD_SECONDS of it left to play."""
        return not self.segments or self._seconds_ahead(now) <= PUBLISHED_AHEAD_SECONDS

    def _seconds_ahead(self, now: float) -> float:
        return self.published_seconds - (now - self.playable_since)


class LiveNarration:
    """One job's live narration: speak sentences with bounded concurrency, feed their audio in order to one
    FFmpeg process (AAC for the videos, HLS for the live preview), and publish the playlist as it grows."""

    def __init__(
        self,
        *,
        meditation_id: str,
        speak: SpeakSentences,
        storage: AssetStorage,
        ffmpeg_path: str,
        work_root: Path,
        max_requests_in_flight: int = 3,
        groups_sentences: bool = False,
        mastering: PriorityLimiter | None = None,
    ) -> None:
        self._meditation_id = meditation_id
        self._speak = speak
        self._groups_sentences = groups_sentences
        self._storage = storage
        self._ffmpeg_path = ffmpeg_path
        self._work_root = work_root
        self._max_requests_in_flight = max_requests_in_flight
        # Mastering is CPU work: a few at a time (the process's workers), in the order of urgency and arrival.
        self._mastering = mastering or PriorityLimiter(os.cpu_count() or 1)
        # This job's place: its speech and mastering go ahead of the jobs that arrived after it.
        self._place = arrival()
        self._splitter = SentenceSplitter()
        self._texts: list[str] = []
        # One future per sentence, resolved when the request that speaks it returns.
        self._spoken: list[asyncio.Future[SpokenSegment]] = []
        # Sentences with words that no request has taken yet, by index, in order.
        self._unspoken: list[int] = []
        self._requests: list[asyncio.Task[None]] = []
        self._requests_in_flight = 0
        self._is_closing = False
        self._events: asyncio.Queue[LiveEvent | BaseException] = asyncio.Queue()
        self._new_sentence = asyncio.Event()
        self._is_script_complete = False
        self._writer: asyncio.Task[None] | None = None
        self._preview: asyncio.Task[Path] | None = None
        self._work_dir: Path | None = None

    async def __aenter__(self) -> LiveNarration:
        with disk_full_reported():
            self._work_dir = Path(
                await asyncio.to_thread(tempfile.mkdtemp, prefix="live-", dir=self._work_root)
            )
        # The preview's picture is painted while the first sentence is still being spoken, not after it.
        self._preview = asyncio.create_task(self._preview_image(self._work_dir))
        self._writer = asyncio.create_task(self._write_in_order())
        return self

    async def __aexit__(self, *_: object) -> None:
        self._is_closing = True
        tasks = [*self._requests, *(task for task in (self._preview, self._writer) if task is not None)]
        for task in tasks:
            task.cancel()
        for future in self._spoken:
            future.cancel()
        # A second cancellation (the end of a grace period lands while we wait) must not skip the clean-up,
        # nor end this task before it is done; the files go only once the writer has killed FFmpeg, or it
        # would write new ones.
        await finish_despite_cancellation(self._clean_up(tasks))

    async def _clean_up(self, tasks: list[asyncio.Task[Any]]) -> None:
        if tasks:
            await asyncio.wait(tasks)
        if self._preview is not None and not self._preview.cancelled():
            # Read, so a picture that failed after the narration had already ended is not logged as an
            # exception nobody retrieved; the writer reports it when it awaits the picture.
            self._preview.exception()
        if self._work_dir is not None:
            await asyncio.to_thread(shutil.rmtree, self._work_dir, True)

    def add_text(self, text: str) -> None:
        """Adds script text; each sentence it completes starts being spoken at once."""
        if self._is_script_complete:
            raise InvalidInputError("text", "arrived after the end of the script")
        for sentence in self._splitter.feed(text):
            self._start_speaking(sentence)

    def finish_script(self) -> None:
        """Marks the script complete; the narration ends after its last sentence."""
        for sentence in self._splitter.finish():
            self._start_speaking(sentence)
        if not self._texts:
            raise InvalidInputError("transcript", "is empty: there is nothing to narrate")
        self._is_script_complete = True
        self._new_sentence.set()
        self._send_requests()

    def fail(self, error: BaseException) -> None:
        """Ends the narration with `error` (the client's stream broke): events() raises it."""
        self._events.put_nowait(error)

    async def events(self) -> AsyncIterator[LiveEvent]:
        """Yields PlaylistPublished once the preview can be played, then the result, always last."""
        while True:
            event = await self._events.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, LiveNarrationResult):
                return

    def _start_speaking(self, sentence: str) -> None:
        self._texts.append(sentence)
        spoken = asyncio.get_running_loop().create_future()
        self._spoken.append(spoken)
        if count_spoken_words(sentence) == 0:
            # Only pause marks: silence, at whatever rate the rest uses (fixed up when written).
            seconds = total_pause_seconds(sentence)
            spoken.set_result(SpokenSegment(Narration(bytes(2 * round(seconds * 24_000)), 24_000), "", ""))
        else:
            self._unspoken.append(len(self._texts) - 1)
        self._new_sentence.set()
        self._send_requests()

    def _send_requests(self) -> None:
        """Starts as many speech requests as are due and have room (see FIRST_GROUP_CHARACTERS)."""
        while (
            not self._is_closing
            and self._unspoken
            and self._requests_in_flight < self._max_requests_in_flight
        ):
            group = self._next_group()
            if not group:
                return
            del self._unspoken[: len(group)]
            self._requests_in_flight += 1
            # The first sentence is what the listener is waiting for: its request goes ahead of other jobs'.
            # Said for every request: the next ones are started from the first one's task, urgent itself.
            with in_arrival_order(self._place), urgent(not self._requests):
                self._requests.append(asyncio.create_task(self._speak_group(group)))

    def _next_group(self) -> list[int]:
        """The sentences the next request speaks, or none when it should wait for more."""
        if not self._groups_sentences or not self._requests:
            return self._unspoken[:1]
        if self._is_script_complete:
            # The rest is spread over every free request, so the narration ends as soon as it can.
            free = self._max_requests_in_flight - self._requests_in_flight
            remaining = sum(len(self._texts[index]) for index in self._unspoken)
            wanted = min(max(FIRST_GROUP_CHARACTERS, remaining / free), MOST_GROUP_CHARACTERS)
        else:
            wanted = min(FIRST_GROUP_CHARACTERS * 2 ** (len(self._requests) - 1), MOST_GROUP_CHARACTERS)
        group: list[int] = []
        characters = 0
        for index in self._unspoken:
            if group and characters + len(self._texts[index]) > wanted:
                break
            group.append(index)
            characters += len(self._texts[index])
        is_due = characters >= wanted or len(group) < len(self._unspoken) or self._is_script_complete
        # Nothing being spoken: a request now keeps the narration moving, however short.
        return group if is_due or self._requests_in_flight == 0 else []

    async def _speak_group(self, group: list[int]) -> None:
        try:
            spoken = await self._speak([self._texts[index] for index in group])
            # Mastered here, a sentence at a time and while later ones are still being spoken, so the one
            # encode serves the live preview and the QUICK video already at the target loudness.
            for index, segment in zip(group, spoken, strict=True):
                async with self._mastering:
                    mastered = await asyncio.to_thread(_mastered, segment.narration)
                if not self._spoken[index].done():
                    self._spoken[index].set_result(dataclasses.replace(segment, narration=mastered))
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # handed to the writer, which awaits the sentences in order
            for index in group:
                if not self._spoken[index].done():
                    self._spoken[index].set_exception(error)
        finally:
            self._requests_in_flight -= 1
            self._send_requests()

    async def _write_in_order(self) -> None:
        try:
            # A write to the scratch folder (a WAV, the preview image) may find the disk full.
            with disk_full_reported():
                result = await self._narrate()
            await self._events.put(result)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # handed to the reader of events(), which raises it
            await self._events.put(error)

    async def _narrate(self) -> LiveNarrationResult:
        assert self._work_dir is not None
        work_dir = self._work_dir
        index = 0
        encoder: _LiveEncoder | None = None
        published = _Published()
        publisher: asyncio.Task[None] | None = None
        encoding_done = asyncio.Event()
        # The narration is kept only as the encoder's AAC: no PCM copy is held in memory (fifty jobs at once
        # would hold fifty, about ten megabytes each) nor stored (a WAV is four times the AAC's size, and
        # its upload was the longest step between the last sentence and the QUICK video).
        written_samples = 0
        sentences: list[SpokenSentence] = []
        providers: list[str] = []
        fallback_reason = ""
        misread_sentence_count = 0
        sample_rate = 0
        try:
            while True:
                while index >= len(self._spoken):
                    if self._is_script_complete:
                        break
                    self._new_sentence.clear()
                    await self._new_sentence.wait()
                if index >= len(self._spoken):
                    break
                segment = await self._spoken[index]
                if encoder is None:
                    sample_rate = segment.narration.sample_rate_hertz
                    encoder = await _LiveEncoder.start(
                        self._ffmpeg_path, work_dir, sample_rate, await self._preview_ready()
                    )
                    publisher = asyncio.create_task(
                        self._publish_while_encoding(work_dir, published, encoding_done)
                    )
                # The last sentence is known as such once the script is complete (it nearly always is by the
                # time its speech is back): the bed falls away over it.
                is_last = self._is_script_complete and index == len(self._spoken) - 1
                # Off the event loop: with fifty narrations, arrays the length of every sentence made on it
                # held up everything else it serves, new RPCs included.
                samples, count = await asyncio.to_thread(
                    _encoder_input, segment.narration, sample_rate, written_samples, is_last
                )
                start = written_samples / sample_rate
                written_samples += count
                sentences.append(SpokenSentence(self._texts[index], start, written_samples / sample_rate))
                if segment.provider:
                    providers.append(segment.provider)
                fallback_reason = fallback_reason or segment.fallback_reason
                if segment.narration.misread_sentence_count:
                    misread_sentence_count += segment.narration.misread_sentence_count
                    # The provider logged how far the reading strayed; this says where, never what was said.
                    logger.warning("%s: sentence %d was read differently", self._meditation_id, index + 1)
                await encoder.write(samples)
                published.sound_seconds = written_samples / sample_rate
                index += 1
            assert encoder is not None and publisher is not None
            await encoder.close()
            # Stopped between publications, never in one: a publication cut short would lose the segments
            # it had taken, or the playlist's first version (and with it the playlist_ready event).
            encoding_done.set()
            await publisher
            duration_seconds = written_samples / sample_rate
            # The last of the preview, the narration and its subtitles go up side by side.
            prefix = f"narrations/{self._meditation_id}"
            _, stored_aac, stored_subtitles = await asyncio.gather(
                self._publish(work_dir, published, is_final=True),
                self._storage.put_file(new_key(prefix, "aac"), encoder.aac_path, "audio/aac"),
                # Unsigned: the videos carry the subtitles and the gateway signs them for their owner.
                self._storage.put_bytes(
                    new_key(f"videos/{self._meditation_id}", "vtt"),
                    webvtt(sentences).encode(),
                    WEBVTT_CONTENT_TYPE,
                    signed=False,
                ),
            )
        finally:
            if publisher is not None:
                publisher.cancel()
            if encoder is not None:
                await encoder.kill()
        provider = max(set(providers), key=providers.count) if providers else "espeak-ng"
        return LiveNarrationResult(
            aac_key=stored_aac.key,
            aac_uri=stored_aac.uri,
            duration_seconds=duration_seconds,
            sample_rate_hertz=sample_rate,
            provider=provider,
            fallback_reason=fallback_reason,
            sentences=tuple(sentences),
            playlist_uri=published.playlist_uri,
            subtitles_key=stored_subtitles.key,
            misread_sentence_count=misread_sentence_count,
        )

    async def _preview_ready(self) -> Path:
        assert self._preview is not None
        return await self._preview

    async def _preview_image(self, work_dir: Path) -> Path:
        """The preview's picture at 720p: the placeholder, as no image is ready this early in a job. It is
        the same picture for every job, so it is painted once per process; each job writes its own copy
        into its scratch folder, which goes with the job."""
        target = work_dir / "preview.yuv"
        await asyncio.to_thread(target.write_bytes, _preview_frame())
        return target

    async def _publish_while_encoding(
        self, work_dir: Path, published: _Published, encoding_done: asyncio.Event
    ) -> None:
        while not encoding_done.is_set():
            await self._publish(work_dir, published, is_final=False)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_POLL_SECONDS):
                    await encoding_done.wait()

    async def _publish(self, work_dir: Path, published: _Published, *, is_final: bool) -> None:
        """Publishes what FFmpeg has cut: whole segments of the lengths they are due (all of it at the end,
        or when a player would otherwise run dry), uploaded side by side, then the playlist listing them."""
        listed = await asyncio.to_thread(_read_playlist, work_dir / "live.m3u8")
        for name, duration in listed[published.pieces_taken :]:
            is_past_the_sound = published.pieces_seconds >= published.sound_seconds - 0.05
            if is_past_the_sound and not is_final:
                break  # the picture ran ahead of the sound: taken once the sound reaches it
            published.pieces_taken += 1
            if is_past_the_sound:
                continue  # FFmpeg's picture runs a little past the sound's end: nothing there to hear
            published.pending.append((name, duration))
            published.pieces_seconds += duration
        now = time.monotonic()
        if not (is_final or published.wants_more(now)):
            return
        groups = _group_pieces(published, publish_all=is_final or published.is_running_dry(now))
        if not groups:
            if is_final and published.playlist_key:
                await self._write_playlist(published, is_final=True)
            return
        if not published.init_uri:
            stored = await self._storage.put_file(
                new_key(f"live/{self._meditation_id}", "mp4"),
                work_dir / "init.mp4",
                "video/mp4",
                signed=False,
            )
            published.init_uri = (await self._references([stored.key]))[0]
        uploads = asyncio.Semaphore(_UPLOADS_AT_ONCE)

        async def upload(group: list[tuple[str, float]]) -> str:
            data = await asyncio.to_thread(_joined_pieces, [work_dir / name for name, _ in group])
            async with uploads:
                stored = await self._storage.put_bytes(
                    new_key(f"live/{self._meditation_id}", "m4s"), data, "video/iso.segment", signed=False
                )
            return stored.key

        keys = await asyncio.gather(*(upload(group) for group in groups))
        references = await self._references(keys)
        for reference, group in zip(references, groups, strict=True):
            published.segments.append((reference, sum(duration for _, duration in group)))
        await self._write_playlist(published, is_final=is_final)

    async def _write_playlist(self, published: _Published, *, is_final: bool) -> None:
        is_first = not published.playlist_key
        if is_first:
            published.playlist_key = f"live/{self._meditation_id}/{secrets.token_hex(8)}.m3u8"
        playlist = _playlist(published.init_uri, published.segments, is_final=is_final)
        # Only the first version is signed: its URI is the one handed out, and stays valid for the rest.
        stored = await self._storage.put_mutable_bytes(
            published.playlist_key, playlist.encode(), "application/vnd.apple.mpegurl", signed=is_first
        )
        if is_first:
            published.playlist_uri = stored.uri
            published.playable_since = time.monotonic()
            await self._events.put(PlaylistPublished(uri=stored.uri, storage_key=stored.key))

    async def _references(self, keys: Sequence[str]) -> list[str]:
        """How the playlist names segments: by name when they sit beside the playlist in a local folder (so
        the folder can be served over HTTP as it is), else by signed URLs, signed in one request."""
        uris = await self._storage.signed_uris(keys)
        if any(not uri for uri in uris):
            raise StorageUnavailableError("storage signed no URL for a live segment it had just stored")
        return [
            key.rsplit("/", 1)[-1] if uri.startswith("file:") else uri
            for key, uri in zip(keys, uris, strict=True)
        ]


class _LiveEncoder:
    """One FFmpeg process fed PCM in order: it writes the narration's AAC and the preview's HLS segments.

    Its input is two channels at the voice's rate: the mastered voice, and the gain of the bed under it (0 to
    1 as 16-bit samples), which Python shapes because only it learns where the narration ends. Its sound is
    the voice through the room and over the bed (video.live_sound_profile), encoded once for the preview
    and both videos."""

    def __init__(self, process: asyncio.subprocess.Process, aac_path: Path) -> None:
        self._process = process
        self.aac_path = aac_path

    @classmethod
    async def start(cls, ffmpeg_path: str, work_dir: Path, sample_rate: int, image: Path) -> _LiveEncoder:
        aac_path = work_dir / "narration.aac"
        sound = live_sound_profile(sample_rate)
        hls = ":".join(
            [
                "f=hls",
                f"hls_time={PIECE_SECONDS}",
                "hls_playlist_type=event",
                "hls_flags=independent_segments+temp_file",
                # fMP4 segments: browsers' own HLS players load a live fMP4 playlist of still pictures, while
                # MPEG-TS with one picture per segment stalls (tried in Chromium).
                "hls_segment_type=fmp4",
                "hls_fmp4_init_filename=init.mp4",
                f"hls_segment_filename={work_dir / 'segment-%05d.m4s'}",
            ]
        )
        graph = ";".join(
            [
                "[0:a]channelsplit=channel_layout=stereo[voice][bedgain]",
                live_audio_graph(sound, voice="voice", envelope="bedgain", output="sound"),
            ]
        )
        arguments = [
            *("-nostdin", "-hide_banner", "-loglevel", "error", "-y"),
            *("-f", "s16le", "-ar", str(sample_rate), "-ac", "2", "-i", "pipe:0"),
            # A picture a second, read raw (already YUV 4:2:0: nothing to decode or convert). Only where
            # a piece may be cut is it a keyframe (KEYFRAME_SECONDS); every other picture repeats the one
            # before it, which x264 encodes for next to nothing.
            *("-protocol_whitelist", "file,pipe", "-stream_loop", "-1", "-f", "rawvideo"),
            *("-pix_fmt", "yuv420p", "-video_size", "x".join(map(str, PREVIEW_SIZE_PIXELS))),
            *("-framerate", f"1/{PIECE_SECONDS}", "-i", str(image)),
            *("-filter_complex", graph, "-map", "1:v", "-map", "[sound]"),
            # zerolatency: x264's lookahead would otherwise hold the first segment back for ten pictures.
            *("-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-crf", "23"),
            *("-pix_fmt", "yuv420p", "-g", "100000", "-force_key_frames", _keyframe_times()),
            # The sound is encoded once, as it arrives, and the same AAC goes to both outputs: the HLS
            # preview and the plain AAC file both videos copy.
            *("-c:a", "aac", "-b:a", str(sound.audio_bitrate_bits_per_second)),
            *("-ac", str(sound.audio_channels), "-aac_coder", sound.aac_coder, "-aac_ms", "0", "-shortest"),
            *("-f", "tee", f"[{hls}]{work_dir / 'live.m3u8'}|[f=adts:select=a]{aac_path}"),
        ]
        process = await asyncio.create_subprocess_exec(
            ffmpeg_path,
            *arguments,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _widen_pipe(process)
        return cls(process, aac_path)

    async def write(self, samples: bytes) -> None:
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(samples)
            await self._process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise encoding_failure("the live encoder stopped", await self._stderr()) from None

    async def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        started = time.monotonic()
        try:
            async with asyncio.timeout(_ENCODER_EXIT_TIMEOUT_SECONDS):
                await self._process.wait()
        except TimeoutError:
            raise EncodingError("the live encoder did not finish", detail="") from None
        if self._process.returncode != 0:
            raise encoding_failure(
                f"the live encoder failed (exit status {self._process.returncode})", await self._stderr()
            )
        logger.debug("live encoder drained in %.2f s", time.monotonic() - started)

    async def kill(self) -> None:
        if self._process.returncode is None:
            self._process.kill()
            await self._process.wait()

    async def _stderr(self) -> str:
        if self._process.stderr is None:
            return ""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1):
                return (await self._process.stderr.read()).decode(errors="replace")[-4000:]
        return ""


def _mastered(narration: Narration) -> Narration:
    samples = np.frombuffer(narration.pcm_s16le, dtype="<i2").astype(np.int16)
    # In the room first, so the limiter holds the peaks the room raises: the encoder adds only the bed.
    mastered = master_speech(samples, narration.sample_rate_hertz, voice_filter=in_room)
    # The same narration, louder or softer: what the provider reported about it (misread sentences) stays.
    return dataclasses.replace(narration, pcm_s16le=mastered.astype("<i2").tobytes())


def _at_rate(narration: Narration, sample_rate: int) -> bytes:
    """The narration's samples at `sample_rate`: a fallback voice may speak at another rate mid-script."""
    if narration.sample_rate_hertz == sample_rate:
        return narration.pcm_s16le
    samples = np.frombuffer(narration.pcm_s16le, dtype=np.int16).astype(np.float32)
    count = round(len(samples) * sample_rate / narration.sample_rate_hertz)
    positions = np.linspace(0, len(samples) - 1, count, dtype=np.float32) if len(samples) else samples
    resampled = np.interp(positions, np.arange(len(samples), dtype=np.float32), samples) if count else samples
    return np.asarray(np.clip(resampled, -32768, 32767), dtype=np.int16).tobytes()


_ENCODER_PIPE_BYTES = 1 << 20


def _widen_pipe(process: asyncio.subprocess.Process) -> None:
    """A sentence's samples (hundreds of kilobytes) go into the encoder's pipe in a few writes rather than
    one per 64 KiB, each a turn of the event loop; where the pipe cannot be widened, it works as it is."""
    transport = process.stdin.transport if process.stdin is not None else None
    pipe = transport.get_extra_info("pipe") if transport is not None else None
    # F_SETPIPE_SZ is Linux's alone.
    if pipe is not None and hasattr(fcntl, "F_SETPIPE_SZ"):
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _ENCODER_PIPE_BYTES)


def _encoder_input(
    narration: Narration, sample_rate: int, first_sample: int, is_last: bool
) -> tuple[bytes, int]:
    """The encoder's input for one sentence (the voice at the encoder's rate, and the bed's gain beside
    it), and how many samples it holds."""
    voice = _at_rate(narration, sample_rate)
    count = len(voice) // 2
    return _interleaved(voice, _bed_envelope(first_sample, count, sample_rate, is_last=is_last)), count


def _bed_envelope(
    first_sample: int, count: int, sample_rate: int, *, is_last: bool
) -> npt.NDArray[np.float64]:
    """The ENHANCED bed's gain for `count` samples from `first_sample`: rising from silence over the
    profile's fade at the start and, in the last sentence, falling back to it by its end (over the fade, or
    the whole sentence when it is shorter), along half a cosine, as FFmpeg's `hsin` fades do."""
    fade = max(1, round(ENHANCED_PROFILE.ambient_bed_fade_seconds * sample_rate))
    if first_sample >= fade and not is_last:
        return np.ones(count)  # most sentences: the bed has risen and is not falling yet
    positions = np.arange(first_sample, first_sample + count, dtype=np.float64)
    rising = np.clip(positions / fade, 0.0, 1.0)
    gain = (1 - np.cos(np.pi * rising)) / 2
    if is_last and count:
        falling = min(fade, count)
        remaining = np.clip((first_sample + count - positions) / falling, 0.0, 1.0)
        gain = np.minimum(gain, (1 - np.cos(np.pi * remaining)) / 2)
    return np.asarray(gain, dtype=np.float64)


def _interleaved(voice: bytes, bed_gain: npt.NDArray[np.float64]) -> bytes:
    """The encoder's two input channels, sample by sample: the voice, and the bed's gain as 16-bit."""
    both = np.empty(2 * bed_gain.size, dtype="<i2")
    both[0::2] = np.frombuffer(voice, dtype="<i2")
    both[1::2] = np.round(bed_gain * 32767)
    return both.tobytes()


@functools.cache
def _preview_frame() -> bytes:
    """The placeholder as one raw YUV 4:2:0 frame, painted once per process."""
    width, height = PREVIEW_SIZE_PIXELS
    rgb = np.asarray(paint_placeholder(width, height).convert("RGB"))
    return bytes(
        av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray().tobytes()
    )


@functools.cache
def _keyframe_times() -> str:
    """Where the live video has keyframes, as FFmpeg's list of seconds: every second up to KEYFRAME_SECONDS
    apart from then on; two hours of them."""
    early = range(0, FIRST_SEGMENT_SECONDS * 7 + 1, PIECE_SECONDS)
    late = range(early[-1] + KEYFRAME_SECONDS, 2 * 3600, KEYFRAME_SECONDS)
    return ",".join(str(second) for second in (*early, *late))


def _group_pieces(published: _Published, *, publish_all: bool) -> list[list[tuple[str, float]]]:
    """Takes FFmpeg's pending pieces off `published` in the groups to publish as segments: each as long as
    it is due; with `publish_all` the rest too, however short, in segments no longer than the longest."""
    groups: list[list[tuple[str, float]]] = []
    while published.pending:
        due = _segment_seconds(len(published.segments) + len(groups))
        group: list[tuple[str, float]] = []
        seconds = 0.0
        for piece in published.pending:
            if group and seconds + piece[1] > due + 0.05:
                break
            group.append(piece)
            seconds += piece[1]
        if seconds < due - 0.05 and not publish_all:
            break  # not long enough yet: more sound is on its way
        del published.pending[: len(group)]
        groups.append(group)
    return groups


def _segment_seconds(index: int) -> float:
    """How long the segment at `index` is due to be: the first one second, each next twice the last."""
    return float(min(FIRST_SEGMENT_SECONDS * 2**index, LONGEST_SEGMENT_SECONDS))


# Boxes that describe one FFmpeg piece alone: kept for the first piece of a segment (the segment type), or
# dropped (an index of the piece), when pieces are joined into one segment of several fragments.
_PIECE_ONLY_BOXES = (b"styp", b"sidx")


def _joined_pieces(paths: Sequence[Path]) -> bytes:
    """One fMP4 media segment made of FFmpeg's pieces: a segment may hold several fragments (moof + mdat),
    so the pieces' fragments follow each other; only the first piece's segment type box is kept."""
    joined = bytearray()
    for index, path in enumerate(paths):
        data = path.read_bytes()
        offset = 0
        while offset + 8 <= len(data):
            size = int.from_bytes(data[offset : offset + 4], "big")
            kind = data[offset + 4 : offset + 8]
            if size < 8 or offset + size > len(data):
                raise EncodingError(f"the live encoder wrote a malformed piece ({path.name})")
            if kind not in _PIECE_ONLY_BOXES or (kind == b"styp" and index == 0):
                joined += data[offset : offset + size]
            offset += size
    return bytes(joined)


def _read_playlist(path: Path) -> list[tuple[str, float]]:
    """The segments FFmpeg's playlist lists, in order; it writes the playlist atomically (temp_file)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    segments = []
    duration = 0.0
    for line in lines:
        if line.startswith("#EXTINF:"):
            duration = float(line.removeprefix("#EXTINF:").split(",")[0])
        elif line and not line.startswith("#"):
            segments.append((line, duration))
    return segments


def _playlist(init_uri: str, segments: list[tuple[str, float]], *, is_final: bool) -> str:
    target = max(1, round(max(duration for _, duration in segments) + 0.5))
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:EVENT",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        f'#EXT-X-MAP:URI="{init_uri}"',
    ]
    for uri, duration in segments:
        lines += [f"#EXTINF:{duration:.3f},", uri]
    if is_final:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
