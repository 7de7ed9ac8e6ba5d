"""Live narration: sentences are spoken while the script is still being written, encoded once as they
arrive, and published as a growing HLS playlist that a player can open after the first sentence."""

from __future__ import annotations

import asyncio
import contextlib
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

from services.media.cleanup import finish_despite_cancellation
from services.media.errors import EncodingError, InvalidInputError
from services.media.live_encoder import PIECE_SECONDS, LiveEncoder, NarrationEncoder, WaitingSound
from services.media.scratch import disk_full_reported
from services.media.speech import Narration
from services.media.subtitles import WEBVTT_CONTENT_TYPE, webvtt
from services.media.urgency import DUE_HORIZON_SECONDS, CpuLane, arrival, due_by, in_arrival_order, urgent
from services.media.video import VideoEncoded, VideoStored
from services.script_marks import count_spoken_words, total_pause_seconds
from services.sentences import SentenceSplitter
from services.storage.base import AssetStorage, StorageUnavailableError, new_key

logger = logging.getLogger(__name__)

# The encoder cuts the preview into pieces (a keyframe picture each: a second long at first, then four, as
# live_encoder.picture_seconds says); the publisher joins them into the segments it uploads. The first is one
# second, so the preview plays as soon as the first sentence is written; each next one is twice as long, up
# to LONGEST_SEGMENT_SECONDS, so a three-minute narration is a dozen uploads rather than ninety. Speech
# arrives far faster than it plays, so the longer segments are ready long before a player reaches them.
FIRST_SEGMENT_SECONDS = PIECE_SECONDS
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
_PLAYLIST_CONTENT_TYPE = "application/vnd.apple.mpegurl"
# The live playlist before its first version: a playlist with nothing in it yet, should anyone read it.
_EMPTY_PLAYLIST = b"#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:1\n#EXT-X-PLAYLIST-TYPE:EVENT\n"


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
    """The live playlist exists and can be played; later segments are appended to it. `signed_uri`: storage's
    signed URI for it, made in the request that signed its first segments (the owner's link is made from it,
    with no request of its own)."""

    storage_key: str
    signed_uri: str


@dataclass(frozen=True)
class QuickVideo:
    """The QUICK video, made from the narration's own files the moment its sound is complete."""

    encoded: VideoEncoded
    stored: VideoStored


# Makes and stores the QUICK video from the narration's AAC, its WebVTT subtitles (both files in the
# narration's scratch folder) and its length in seconds. Made here, on the replica that holds the sound,
# while the AAC is still being uploaded, rather than asked for once the narration is stored: the QUICK video
# then waits for neither the AAC's upload nor a second round trip from the gateway, the two longest steps
# between the last sentence and the QUICK video.
MakeQuickVideo = Callable[[Path, Path, float], Awaitable[QuickVideo]]


@dataclass(frozen=True)
class LiveNarrationResult:
    """The whole narration, mastered, with the room and bed around it (video.live_sound_profile), as AAC:
    the preview's sound, copied into both videos."""

    aac_key: str
    duration_seconds: float
    sample_rate_hertz: int
    provider: str
    fallback_reason: str
    sentences: tuple[SpokenSentence, ...]
    # The sentences as WebVTT, stored beside the videos (which carry them as a subtitle track too).
    subtitles_key: str
    # Sentences the provider read other than written (see Narration).
    misread_sentence_count: int = 0
    # What its assets take in storage: the AAC, the subtitles, and the preview's segments and playlist.
    stored_bytes: int = 0
    # The QUICK video (its size is not in stored_bytes), or None when no maker was given.
    quick_video: QuickVideo | None = None


LiveEvent = PlaylistPublished | LiveNarrationResult
# Opens a job's encoder in its scratch folder, for sound at this rate (blocking): a LiveEncoder in this
# process, or one in the encoder process (encoder_process.EncoderProcess.open).
OpenEncoder = Callable[[Path, int], NarrationEncoder]
# Speaks one or more sentences (in one request, where the voice is remote), one segment per sentence.
SpeakSentences = Callable[[Sequence[str]], Awaitable[list[SpokenSegment]]]
# Grouped sentences (a remote voice): the first request is the first sentence alone, the quickest to come
# back; after it, a request waits until it holds as many whole sentences as fit in this many characters,
# unless nothing else is being spoken (the narration would stall) or the script is complete. A three-minute
# script is then about twenty requests instead of forty-five, most of them while the transcript is written.
# No more: a request sent just before the script ends is what the QUICK video waits for, and a provider takes
# time by length (300 characters: 0.6 to 1.2 s under make bench's latency model, 150: 0.3 to 0.6 s). Eight
# jobs one at a time, by turns: QUICK came 2.45 and 2.45 s after the transcript's end at 150 against 2.86 and
# 2.85 s at 300 (3.08 s at 600), for no CPU that the runs could tell apart (twice the requests for the same
# characters, and a request costs the client 1.4 to 3 ms).
GROUP_CHARACTERS = 150
# How fast a voice reads, for when a sentence not yet spoken will be heard (its work's urgency.due_by): on the
# quick side of a calm reading (OpenAI's voices read about 150 words a minute, slower when asked to be calm),
# so a guess errs towards needing the sound sooner.
ESTIMATED_WORDS_PER_SECOND = 2.5


@dataclass
class _Published:
    """The preview as published so far: the segments in storage (how the playlist names each, and its
    length), the pieces the encoder has cut that are not in one yet, and the initialisation segment they
    share."""

    segments: list[tuple[str, float]] = field(default_factory=list)
    # The encoder's pieces not yet published, by file name, with their lengths.
    pending: list[tuple[str, float]] = field(default_factory=list)
    # How many of the encoder's pieces have been taken (published or pending).
    pieces_taken: int = 0
    init_uri: str = ""
    playlist_key: str = ""
    # What the segments and the initialisation segment take in storage, and the playlist's last version.
    segment_bytes: int = 0
    playlist_bytes: int = 0
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

    def seconds_until_due(self, now: float) -> float | None:
        """How long until the pieces waiting become due without another being cut (a player that started with
        the first segment draws near the end of what is published), or None when nothing waits on the time:
        nothing is pending, or nothing is published yet (the first piece alone is due at once)."""
        if not self.segments or not self.pending:
            return None
        ahead = self._seconds_ahead(now)
        thresholds = (ahead - PUBLISHED_AHEAD_SECONDS, ahead - RUNNING_DRY_SECONDS)
        future = [seconds for seconds in thresholds if seconds > 0]
        return min(future) if future else None

    def _seconds_ahead(self, now: float) -> float:
        return self.published_seconds - (now - self.playable_since)


class LiveNarration:
    """One job's live narration: speak sentences with bounded concurrency, encode their sound in order
    (live_encoder: AAC for the videos, HLS for the live preview), and publish the playlist as it grows."""

    def __init__(
        self,
        *,
        meditation_id: str,
        speak: SpeakSentences,
        storage: AssetStorage,
        work_root: Path,
        max_requests_in_flight: int = 3,
        groups_sentences: bool = False,
        cpu_lane: CpuLane | None = None,
        open_encoder: OpenEncoder = LiveEncoder,
        make_quick_video: MakeQuickVideo | None = None,
    ) -> None:
        self._meditation_id = meditation_id
        self._open_encoder = open_encoder
        self._make_quick_video = make_quick_video
        self._speak = speak
        self._groups_sentences = groups_sentences
        self._storage = storage
        self._work_root = work_root
        self._max_requests_in_flight = max_requests_in_flight
        # Mastering and encoding are CPU work: a few at a time, urgent first, the rest in the order of arrival
        # and in the background (urgency.CpuLane).
        self._cpu_lane = cpu_lane or CpuLane(os.cpu_count() or 1)
        # This job's place: its speech and mastering go ahead of the jobs that arrived after it.
        self._place = arrival()
        self._splitter = SentenceSplitter()
        self._texts: list[str] = []
        # One future per sentence not yet encoded, by index, resolved when the request that speaks it
        # returns and its sound is mastered; the writer drops each once it has encoded it.
        self._spoken: dict[int, asyncio.Future[WaitingSound]] = {}
        # Sentences with words that no request has taken yet, by index, in order.
        self._unspoken: list[int] = []
        self._requests: list[asyncio.Task[None]] = []
        self._requests_in_flight = 0
        self._is_closing = False
        self._events: asyncio.Queue[LiveEvent | BaseException] = asyncio.Queue()
        self._new_sentence = asyncio.Event()
        self._is_script_complete = False
        self._writer: asyncio.Task[None] | None = None
        self._work_dir: Path | None = None
        # When each sentence is expected to end, in seconds from the start of the narration (estimated from
        # its words and pauses, before it is spoken), by index.
        self._estimated_ends: list[float] = []
        # When the preview was first published (time.monotonic()): a listener may be playing it since.
        self._playable_since: float | None = None

    async def __aenter__(self) -> LiveNarration:
        with disk_full_reported():
            self._work_dir = Path(
                await asyncio.to_thread(tempfile.mkdtemp, prefix="live-", dir=self._work_root)
            )
        with in_arrival_order(self._place):
            self._writer = asyncio.create_task(self._write_in_order())
        return self

    async def __aexit__(self, *_: object) -> None:
        self._is_closing = True
        tasks = [*self._requests, *(task for task in (self._writer,) if task is not None)]
        for task in tasks:
            task.cancel()
        for future in self._spoken.values():
            future.cancel()
        # A second cancellation (the end of a grace period lands while we wait) must not skip the clean-up,
        # nor end this task before it is done; the files go only once the writer has abandoned the encoder,
        # or it would write new ones.
        await finish_despite_cancellation(self._clean_up(tasks))

    async def _clean_up(self, tasks: list[asyncio.Task[Any]]) -> None:
        if tasks:
            await asyncio.wait(tasks)
        if self._work_dir is not None:
            await asyncio.to_thread(shutil.rmtree, self._work_dir, True)

    def add_text(self, text: str, *, is_sentence_end: bool = False) -> None:
        """Adds script text; each sentence it completes starts being spoken at once. With
        `is_sentence_end`, the text ends a sentence (its pause marks included), which is spoken now rather
        than once the next text shows where it ended."""
        if self._is_script_complete:
            raise InvalidInputError("text", "arrived after the end of the script")
        sentences = self._splitter.feed(text)
        if is_sentence_end:
            sentences += self._splitter.finish()
        for sentence in sentences:
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
        words, pause_seconds = count_spoken_words(sentence), total_pause_seconds(sentence)
        self._estimated_ends.append(
            (self._estimated_ends[-1] if self._estimated_ends else 0.0)
            + words / ESTIMATED_WORDS_PER_SECOND
            + pause_seconds
        )
        spoken = asyncio.get_running_loop().create_future()
        self._spoken[len(self._texts) - 1] = spoken
        if words == 0:
            # Only pause marks: silence, at whatever rate the rest uses (fixed up when written).
            spoken.set_result(WaitingSound(sample_rate_hertz=24_000, samples=round(pause_seconds * 24_000)))
        else:
            self._unspoken.append(len(self._texts) - 1)
        self._new_sentence.set()
        self._send_requests()

    def _send_requests(self) -> None:
        """Starts as many speech requests as are due and have room (see GROUP_CHARACTERS)."""
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
            # The later ones are due when the listener will reach them (guessed from the words before).
            is_first = not self._requests
            starts_at = self._estimated_ends[group[0] - 1] if group[0] else 0.0
            with (
                in_arrival_order(self._place),
                urgent(is_first),
                due_by(None if is_first else self._heard_at(starts_at)),
            ):
                self._requests.append(asyncio.create_task(self._speak_group(group)))

    def _heard_at(self, narration_seconds: float) -> float:
        """When a listener who started the preview as soon as it could be played reaches this point of the
        narration (time.monotonic()); before it can be played, as if it could be now."""
        started = self._playable_since if self._playable_since is not None else time.monotonic()
        return started + narration_seconds

    def _next_group(self) -> list[int]:
        """The sentences the next request speaks, or none when it should wait for more."""
        if not self._groups_sentences or not self._requests:
            return self._unspoken[:1]
        group: list[int] = []
        characters = 0
        for index in self._unspoken:
            if group and characters + len(self._texts[index]) > GROUP_CHARACTERS:
                break
            group.append(index)
            characters += len(self._texts[index])
        # Once the script is complete, the rest goes out at once, a group a free request, so the narration
        # ends as soon as it can.
        is_due = (
            characters >= GROUP_CHARACTERS or len(group) < len(self._unspoken) or self._is_script_complete
        )
        # Nothing being spoken: a request now keeps the narration moving, however short.
        return group if is_due or self._requests_in_flight == 0 else []

    async def _speak_group(self, group: list[int]) -> None:
        assert self._work_dir is not None
        work_dir = self._work_dir
        try:
            spoken = await self._speak([self._texts[index] for index in group])
            # The sound waits for its turn on disk, not in memory: fifty jobs' speech comes back long before
            # two cores can master and encode it, and held in memory it was most of media's peak RSS. It is
            # mastered in its turn to be encoded, when a listener is about to need it (or in the
            # background), not as it comes back: mastered then, a group far ahead of every listener took
            # the cores from the sentences someone was about to hear.
            with disk_full_reported():
                waiting = await asyncio.to_thread(_set_aside, work_dir, group, spoken)
            del spoken
            for index, sound in zip(group, waiting, strict=True):
                future = self._spoken.get(index)
                if future is not None and not future.done():
                    future.set_result(sound)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # handed to the writer, which awaits the sentences in order
            for index in group:
                future = self._spoken.get(index)
                if future is not None and not future.done():
                    future.set_exception(error)
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
        encoder: NarrationEncoder | None = None
        published = _Published()
        publisher: asyncio.Task[None] | None = None
        encoding_done = asyncio.Event()
        # Set whenever the encoder has cut more (or is done): the publisher looks then, not on a timer.
        more_written = asyncio.Event()
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
                while index >= len(self._texts):
                    if self._is_script_complete:
                        break
                    self._new_sentence.clear()
                    await self._new_sentence.wait()
                if index >= len(self._texts):
                    break
                await self._spoken[index]
                # This sentence and every one after it already spoken: encoded in one turn of the CPU lane,
                # so a job's narration is not spread among other jobs' work a sentence per turn.
                ready = self._ready_from(index)
                heard_at = self._heard_at(written_samples / sample_rate) if sample_rate else None
                if index and heard_at is not None:
                    # A listener needs the next of it soon (due): as much as they will reach within the
                    # horizon, in a turn at the process's priority; the rest in the background, after it.
                    ready = _heard_within_horizon(ready, heard_at - time.monotonic())
                if encoder is None:
                    sample_rate = ready[0].sample_rate_hertz
                    encoder = await asyncio.to_thread(self._open_encoder, work_dir, sample_rate)
                    publisher = asyncio.create_task(
                        self._publish_while_encoding(work_dir, published, encoding_done, more_written)
                    )
                # The last sentence is known as such once the script is complete (it nearly always is by the
                # time its speech is back): the bed falls away over it.
                last = len(self._texts) - 1 if self._is_script_complete else -1
                # In the CPU lane, the first sentence ahead of other jobs' later ones (it is the first piece
                # a listener waits for), then what a listener will reach soonest, and off the event loop,
                # which serves every other job's RPCs.
                with urgent(index == 0), due_by(heard_at if index else None):
                    counts = await self._cpu_lane.run(encoder.write_all, ready, index, last)
                more_written.set()
                for segment, count in zip(ready, counts, strict=True):
                    del self._spoken[index]
                    start = written_samples / sample_rate
                    written_samples += count
                    sentences.append(SpokenSentence(self._texts[index], start, written_samples / sample_rate))
                    if segment.provider:
                        providers.append(segment.provider)
                    fallback_reason = fallback_reason or segment.fallback_reason
                    if segment.misread_sentence_count:
                        misread_sentence_count += segment.misread_sentence_count
                        # The provider logged how far the reading strayed; this says where, never what.
                        logger.warning("%s: sentence %d was read differently", self._meditation_id, index + 1)
                    index += 1
            assert encoder is not None and publisher is not None
            await self._cpu_lane.run(encoder.close)
            # Stopped between publications, never in one: a publication cut short would lose the segments
            # it had taken, or the playlist's first version (and with it the playlist_ready event).
            encoding_done.set()
            more_written.set()
            await publisher
            duration_seconds = written_samples / sample_rate
            subtitles = webvtt(sentences).encode()
            aac_path = encoder.aac_path

            async def quick_video() -> QuickVideo | None:
                if self._make_quick_video is None:
                    return None
                subtitles_path = work_dir / "subtitles.vtt"
                with disk_full_reported():
                    await asyncio.to_thread(subtitles_path.write_bytes, subtitles)
                return await self._make_quick_video(aac_path, subtitles_path, duration_seconds)

            # The last of the preview, the narration, its subtitles and the QUICK video go up side by side.
            prefix = f"narrations/{self._meditation_id}"
            _, stored_aac, stored_subtitles, quick = await asyncio.gather(
                self._publish(work_dir, published, is_final=True),
                # Both read back at once by this process's renders: kept where they need no download.
                self._storage.put_file(
                    new_key(prefix, "aac"), encoder.aac_path, "audio/aac", signed=False, read_back=True
                ),
                # Unsigned: the videos carry the subtitles and the gateway signs them for their owner.
                self._storage.put_bytes(
                    new_key(f"videos/{self._meditation_id}", "vtt"),
                    subtitles,
                    WEBVTT_CONTENT_TYPE,
                    signed=False,
                    read_back=True,
                ),
                quick_video(),
            )
        finally:
            if publisher is not None:
                publisher.cancel()
            if encoder is not None:
                # Waits for a write still running in its worker thread (this task was cancelled while it
                # ran), so the scratch folder is removed only after the encoder's last file.
                await asyncio.to_thread(encoder.abandon)
        provider = max(set(providers), key=providers.count) if providers else "espeak-ng"
        return LiveNarrationResult(
            aac_key=stored_aac.key,
            duration_seconds=duration_seconds,
            sample_rate_hertz=sample_rate,
            provider=provider,
            fallback_reason=fallback_reason,
            sentences=tuple(sentences),
            subtitles_key=stored_subtitles.key,
            misread_sentence_count=misread_sentence_count,
            stored_bytes=(
                published.segment_bytes
                + published.playlist_bytes
                + stored_aac.size_bytes
                + stored_subtitles.size_bytes
            ),
            quick_video=quick,
        )

    def _ready_from(self, index: int) -> list[WaitingSound]:
        """The sentence at `index` (spoken) and those after it spoken already, in order. The first sentence
        alone: it is what a listener waits for, ahead of everything else."""
        ready: list[WaitingSound] = []
        while (
            (future := self._spoken.get(index)) is not None
            and future.done()
            and not future.cancelled()
            and future.exception() is None
        ):
            ready.append(future.result())
            if index == 0:
                break
            index += 1
        return ready

    async def _publish_while_encoding(
        self, work_dir: Path, published: _Published, encoding_done: asyncio.Event, more_written: asyncio.Event
    ) -> None:
        """Publishes as the encoder cuts pieces, from the first one on (no timer stands between the first
        piece and a listener), and when pieces that wait for a longer segment fall due because time passed."""
        while not encoding_done.is_set():
            more_written.clear()
            await self._publish(work_dir, published, is_final=False)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(published.seconds_until_due(time.monotonic())):
                    await more_written.wait()

    async def _publish(self, work_dir: Path, published: _Published, *, is_final: bool) -> None:
        """Publishes what the encoder has cut: whole segments of the lengths they are due (all of it at the
        end, or when a player would otherwise run dry), uploaded side by side, then the playlist listing
        them."""
        listed = await asyncio.to_thread(_read_playlist, work_dir / "live.m3u8")
        # The encoder cuts a piece only once the sound has gone past its end: every piece listed is whole.
        published.pending += listed[published.pieces_taken :]
        published.pieces_taken = len(listed)
        now = time.monotonic()
        if not (is_final or published.wants_more(now)):
            return
        groups = _group_pieces(published, publish_all=is_final or published.is_running_dry(now))
        if not groups:
            if is_final and published.playlist_key:
                await self._write_playlist(published, is_final=True)
            return
        uploads = asyncio.Semaphore(_UPLOADS_AT_ONCE)

        async def upload_init() -> str:
            stored = await self._storage.put_file(
                new_key(f"live/{self._meditation_id}", "mp4"),
                work_dir / "init.mp4",
                "video/mp4",
                signed=False,
            )
            published.segment_bytes += stored.size_bytes
            return stored.key

        async def upload(group: list[tuple[str, float]]) -> str:
            data = await asyncio.to_thread(_joined_pieces, [work_dir / name for name, _ in group])
            async with uploads:
                stored = await self._storage.put_bytes(
                    new_key(f"live/{self._meditation_id}", "m4s"), data, "video/iso.segment", signed=False
                )
            published.segment_bytes += stored.size_bytes
            return stored.key

        async def reserve_playlist() -> str:
            # Storage signs only what it holds: an empty playlist now, so that the playlist is signed in the
            # same request as the segments it will list, not in a request of its own after its first version
            # (one round trip fewer on the way to first playable media: with fifty jobs at once, storage's
            # round trips took 0.3-1.5 s each). Nobody reads it: its URI is handed out with the first version.
            published.playlist_key = f"live/{self._meditation_id}/{secrets.token_hex(8)}.m3u8"
            await self._storage.put_mutable_bytes(
                published.playlist_key, _EMPTY_PLAYLIST, _PLAYLIST_CONTENT_TYPE, signed=False
            )
            return published.playlist_key

        # The first publication is what a listener waits for: the initialisation segment and the empty
        # playlist go up beside the first segment, and all three are signed in one request.
        is_first = not published.init_uri
        keys = await asyncio.gather(
            *([upload_init()] if is_first else []),
            *(upload(group) for group in groups),
            *([reserve_playlist()] if is_first else []),
        )
        uris = await self._storage.signed_uris(keys)
        if any(not uri for uri in uris):
            raise StorageUnavailableError("storage signed no URL for a live asset it had just stored")
        references = _references(keys, uris)
        playlist_uri = ""
        if is_first:
            published.init_uri = references.pop(0)
            references.pop()
            playlist_uri = uris[-1]
        for reference, group in zip(references, groups, strict=True):
            published.segments.append((reference, sum(duration for _, duration in group)))
        await self._write_playlist(published, is_final=is_final)
        if is_first:
            published.playable_since = self._playable_since = time.monotonic()
            await self._events.put(
                PlaylistPublished(storage_key=published.playlist_key, signed_uri=playlist_uri)
            )

    async def _write_playlist(self, published: _Published, *, is_final: bool) -> None:
        playlist = _playlist(published.init_uri, published.segments, is_final=is_final)
        # Unsigned: the first publication signed it once for the owner's link, and the gateway signs each
        # later reader's URI of the playlist, valid as the playlist grows.
        stored = await self._storage.put_mutable_bytes(
            published.playlist_key, playlist.encode(), _PLAYLIST_CONTENT_TYPE, signed=False
        )
        published.playlist_bytes = stored.size_bytes  # rewritten in place: only its last version is kept


def _set_aside(work_dir: Path, group: Sequence[int], spoken: Sequence[SpokenSegment]) -> list[WaitingSound]:
    """Writes each spoken sentence's sound to the scratch folder, named by its place in the script."""
    waiting = []
    for index, segment in zip(group, spoken, strict=True):
        path = work_dir / f"sentence-{index:05d}.pcm"
        path.write_bytes(segment.narration.pcm_s16le)
        waiting.append(
            WaitingSound(
                sample_rate_hertz=segment.narration.sample_rate_hertz,
                provider=segment.provider,
                fallback_reason=segment.fallback_reason,
                misread_sentence_count=segment.narration.misread_sentence_count,
                path=path,
                samples=len(segment.narration.pcm_s16le) // 2,
            )
        )
    return waiting


def _heard_within_horizon(sounds: Sequence[WaitingSound], seconds_until_heard: float) -> list[WaitingSound]:
    """The first of `sounds` (in order, the first heard in `seconds_until_heard`), and those after it that a
    listener reaches within urgency.DUE_HORIZON_SECONDS; all of them when the first is beyond it."""
    if seconds_until_heard > DUE_HORIZON_SECONDS:
        return list(sounds)
    taken = list(sounds[:1])
    for sound in sounds[1:]:
        seconds_until_heard += taken[-1].seconds
        if seconds_until_heard > DUE_HORIZON_SECONDS:
            break
        taken.append(sound)
    return taken


def _group_pieces(published: _Published, *, publish_all: bool) -> list[list[tuple[str, float]]]:
    """Takes the encoder's pending pieces off `published` in the groups to publish as segments: each as long
    as it is due; with `publish_all` the rest too, however short, in segments no longer than the longest."""
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


# Boxes that describe one piece alone: kept for the first piece of a segment (the segment type), or
# dropped (an index of the piece), when pieces are joined into one segment of several fragments.
_PIECE_ONLY_BOXES = (b"styp", b"sidx")


def _joined_pieces(paths: Sequence[Path]) -> bytes:
    """One fMP4 media segment made of the encoder's pieces: a segment may hold several fragments (moof +
    mdat), so the pieces' fragments follow each other; only the first piece's segment type box is kept."""
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
    """The segments the encoder's playlist lists, in order; FFmpeg's HLS muxer writes it atomically
    (temp_file)."""
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


def _references(keys: Sequence[str], uris: Sequence[str]) -> list[str]:
    """How the playlist names the assets: by name when they sit beside the playlist in a local folder (so the
    folder can be served over HTTP as it is), else by their signed URLs."""
    return [
        key.rsplit("/", 1)[-1] if uri.startswith("file:") else uri
        for key, uri in zip(keys, uris, strict=True)
    ]


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
